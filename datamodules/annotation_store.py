"""The annotation store: versioned rounds of refined captions on disk.

Layout (DESIGN §6)::

    <run>/annotations/round_NNN/part-RRRRR.jsonl   one shard per writer (rank)
    <run>/annotations/round_NNN/manifest.json      written last; a round without it is unfinished

A shard is written to ``part-RRRRR.jsonl.partial`` record by record and renamed to its final
name when the writer finishes, so a finished shard never holds half a round. A writer restarted
on the same shard keeps every complete line already written (a torn last line from a crash is
cut off) and skips records whose ``clip_id`` is already there: resumable at the record level,
never duplicating.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamodules.records import RECORD_FIELDS, AnnotationRecord

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
PARTIAL_SUFFIX = ".partial"
# A caption line larger than this is hostile or broken input, not data (DESIGN §10).
MAX_LINE_BYTES = 1 << 20


class AnnotationFormatError(ValueError):
    """A record file that cannot be read as annotations; the message names file and line."""


def round_dir(run_dir: str | os.PathLike, round_index: int) -> Path:
    return Path(run_dir) / "annotations" / f"round_{round_index:03d}"


def shard_path(round_path: str | os.PathLike, part: int) -> Path:
    return Path(round_path) / f"part-{part:05d}.jsonl"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_record(line: str, path: str | os.PathLike, lineno: int) -> AnnotationRecord:
    """Parse one JSONL line into a record; any defect raises an error naming file and line."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise AnnotationFormatError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise AnnotationFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in RECORD_FIELDS if k not in obj]
    if missing:
        raise AnnotationFormatError(f"{path}:{lineno}: record lacks field(s) {', '.join(missing)}")
    for key in ("clip_id", "video_path", "asr", "caption", "source"):
        if not isinstance(obj[key], str):
            raise AnnotationFormatError(f"{path}:{lineno}: field {key!r} must be a string")
    for key in ("start", "end"):
        if not isinstance(obj[key], (int, float)) or isinstance(obj[key], bool):
            raise AnnotationFormatError(f"{path}:{lineno}: field {key!r} must be a number")
    if not isinstance(obj["round"], int) or isinstance(obj["round"], bool):
        raise AnnotationFormatError(f"{path}:{lineno}: field 'round' must be an integer")
    return obj  # type: ignore[return-value]


class JsonlRecordReader:
    """Streams records from JSONL files one line at a time.

    A malformed line raises :class:`AnnotationFormatError`; a torn final line (no trailing
    newline, a crash mid-write) and lines over ``max_line_bytes`` are counted in ``skipped``
    and logged instead, since they are the normal scars of a crash or of hostile input.
    """

    def __init__(self, paths: list[Path], max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.paths = paths
        self.max_line_bytes = max_line_bytes
        self.skipped = 0

    @property
    def video_root(self) -> Path:
        """Folder that relative ``video_path``s are resolved against: the (first) file's folder."""
        return self.paths[0].parent if self.paths else Path(".")

    def __iter__(self) -> Iterator[AnnotationRecord]:
        for path in self.paths:
            yield from self._read(path)

    def _read(self, path: Path) -> Iterator[AnnotationRecord]:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(_bounded_lines(f, self.max_line_bytes), start=1):
                if raw is None:
                    self.skipped += 1
                    log.warning("%s:%d: line longer than %d bytes skipped", path, lineno, self.max_line_bytes)
                    continue
                if not raw.strip():
                    continue
                torn = not raw.endswith(b"\n")
                try:
                    line = raw.decode("utf-8")
                    yield parse_record(line, path, lineno)
                except (UnicodeDecodeError, AnnotationFormatError) as e:
                    if torn:
                        self.skipped += 1
                        log.warning("%s:%d: truncated final line skipped", path, lineno)
                        continue
                    if isinstance(e, UnicodeDecodeError):
                        raise AnnotationFormatError(f"{path}:{lineno}: not valid UTF-8") from None
                    raise


def _bounded_lines(f, max_bytes: int) -> Iterator[bytes | None]:
    """Yield lines of a binary file; a line over ``max_bytes`` is consumed and yields None."""
    while True:
        line = f.readline(max_bytes + 1)
        if not line:
            return
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # drain the rest of the oversized line
                line = f.readline(1 << 16)
            yield None
            continue
        yield line


def read_manifest(round_path: str | os.PathLike) -> dict[str, Any]:
    path = Path(round_path) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{round_path}: no {MANIFEST_NAME}; the round is unfinished or not a round folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AnnotationFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parts"), list):
        raise AnnotationFormatError(f"{path}: manifest must be an object with a 'parts' list")
    return manifest


class RoundReader(JsonlRecordReader):
    """Streams a finished round: the shards its manifest lists, in order."""

    def __init__(self, round_path: str | os.PathLike, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.round_path = Path(round_path)
        self.manifest = read_manifest(round_path)
        paths = [self.round_path / name for name in self.manifest["parts"]]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"{p}: listed in {self.round_path / MANIFEST_NAME} but missing")
        super().__init__(paths, max_line_bytes)

    @property
    def video_root(self) -> Path:
        """The pool folder recorded in the manifest (relative to the round folder), if any."""
        root = self.manifest.get("video_root")
        return self.round_path / root if root else self.round_path


class ShardWriter:
    """Writes one shard of a round, atomically at the end and resumably record by record.

    Use as a context manager: leaving the block normally finishes the shard (rename to its
    final name); leaving it by an exception keeps the ``.partial`` file for the next attempt.
    """

    def __init__(self, round_path: str | os.PathLike, part: int, sync_every: int = 64, track_ids: bool = True,
                 keep_tail: int = 0) -> None:
        """``track_ids``: keep the set of stored clip ids so that ``write`` refuses a clip already
        stored; a caller that never repeats a clip (it resumes by ``count``) saves that memory.
        ``keep_tail``: keep the clip ids of the last ``keep_tail`` records of a ``.partial`` shard in
        ``tail_ids``, read in the same pass that recovers it (what a resume by ``count`` needs to
        finish a batch the kill cut short)."""
        self.path = shard_path(round_path, part)
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.sync_every = sync_every
        self._unsynced = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.done_ids, self.count = _stored(self.path, track_ids)
            self.tail_ids: list[str] = []
            self.finished = True
            self._file = None
        else:
            self.done_ids, self.count, self.tail_ids = _recover_partial(self.partial, track_ids, keep_tail)
            self.finished = False
            self._file = open(self.partial, "ab")

    def __contains__(self, clip_id: str) -> bool:
        if self.done_ids is None:
            raise TypeError(f"{self.path}: opened with track_ids=False; it does not know its clip ids")
        return clip_id in self.done_ids

    def write(self, record: AnnotationRecord) -> bool:
        """Append ``record``; returns False (and writes nothing) if its clip is already stored
        (checked only with ``track_ids``)."""
        if self.done_ids is not None and record["clip_id"] in self.done_ids:
            return False
        if self._file is None:
            raise RuntimeError(f"{self.path}: shard already finished; it cannot take new records")
        missing = [k for k in RECORD_FIELDS if k not in record]
        if missing:
            raise ValueError(f"record for {record.get('clip_id')!r} lacks field(s) {', '.join(missing)}")
        line = json.dumps({k: record[k] for k in RECORD_FIELDS}, ensure_ascii=False) + "\n"
        self._file.write(line.encode("utf-8"))
        if self.done_ids is not None:
            self.done_ids.add(record["clip_id"])
        self.count += 1
        self._unsynced += 1
        if self._unsynced >= self.sync_every:
            self.flush()
        return True

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._unsynced = 0

    def finish(self) -> Path:
        """Make the shard final: flush, fsync and rename ``.partial`` to ``part-RRRRR.jsonl``."""
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None
            os.replace(self.partial, self.path)
            _fsync_dir(self.path.parent)
            self.finished = True
        return self.path

    def close(self) -> None:
        """Close without finishing; the ``.partial`` file stays for a later resume."""
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.close()


def stored_records(round_path: str | os.PathLike) -> Iterator[AnnotationRecord]:
    """Stream the records a round folder holds so far, finished shards and ``.partial`` ones alike
    (a torn last line is a counted skip, so its clip is done again)."""
    round_path = Path(round_path)
    if round_path.is_dir():
        paths = sorted(round_path.glob("part-*.jsonl")) + sorted(round_path.glob(f"part-*.jsonl{PARTIAL_SUFFIX}"))
        yield from JsonlRecordReader(paths)


def _stored(path: Path, track_ids: bool) -> tuple[set[str] | None, int]:
    done: set[str] | None = set() if track_ids else None
    count = 0
    for record in JsonlRecordReader([path]):
        count += 1
        if done is not None:
            done.add(record["clip_id"])
    return done, count


def _recover_partial(partial: Path, track_ids: bool = True,
                     keep_tail: int = 0) -> tuple[set[str] | None, int, list[str]]:
    """Keep the complete lines of an interrupted shard, cut a torn tail; return their clip ids
    (None without ``track_ids``), their count and the clip ids of the last ``keep_tail`` of them."""
    done: set[str] | None = set() if track_ids else None
    tail: deque[str] = deque(maxlen=keep_tail)
    if not partial.exists():
        return done, 0, []
    count = 0
    good_bytes = 0
    with open(partial, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                break  # torn by a crash mid-write
            try:
                record = parse_record(raw.decode("utf-8"), partial, lineno)
            except (UnicodeDecodeError, AnnotationFormatError):
                break
            if done is not None:
                done.add(record["clip_id"])
            tail.append(record["clip_id"])  # a no-op at maxlen 0
            count += 1
            good_bytes += len(raw)
    if good_bytes < partial.stat().st_size:
        log.warning("%s: cut %d bytes of a torn tail", partial, partial.stat().st_size - good_bytes)
        with open(partial, "r+b") as f:
            f.truncate(good_bytes)
    return done, count, list(tail)


def write_manifest(round_path: str | os.PathLike, round_index: int, **extra: Any) -> dict[str, Any]:
    """Write the manifest of a round whose shards are all finished; returns it.

    Counts are taken from the shards themselves; ``extra`` carries what the producer knows
    (failures, timing, model, config hash…).
    """
    round_path = Path(round_path)
    partial = sorted(p.name for p in round_path.glob(f"part-*.jsonl{PARTIAL_SUFFIX}"))
    if partial:
        raise RuntimeError(f"{round_path}: unfinished shard(s) {', '.join(partial)}; finish them before the manifest")
    parts = sorted(p.name for p in round_path.glob("part-*.jsonl"))
    counts = {}
    for name in parts:
        reader = JsonlRecordReader([round_path / name])
        counts[name] = sum(1 for _ in reader)
    manifest = {
        "round": round_index,
        "parts": parts,
        "records_per_part": counts,
        "records": sum(counts.values()),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    atomic_write_json(round_path / MANIFEST_NAME, manifest)
    return manifest
