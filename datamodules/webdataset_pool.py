"""Reading an ASR pool stored as WebDataset tar shards, in the layout video2dataset writes.

video2dataset (``output_format="webdataset"``) writes ``00000.tar``, ``00001.tar``, … (with a
``00000_stats.json`` and a ``00000.parquet`` of metadata beside each). Inside a shard, the members
of one sample share a key and follow each other: ``{key}.mp4`` (absent when the download failed),
``{key}.txt`` (the caption column; with per-clip subtitles, the clip's own line) and
``{key}.json`` (the input row's columns plus ``key``, ``status``, ``error_message``, …). Keys are
nine digits, shard id then index; its clipping subsampler cuts one sample per clip, keyed
``{key}_{clip:05d}``, whose json holds the clip's span in the source video, ``clips: [[start,
end]]`` (seconds, or ``"HH:MM:SS.mmm"`` strings), and whose video starts at that span's start.

Each sample becomes one record: ``clip_id`` is the json's ``clip_id`` column when the pool has
one (an extra column video2dataset copies into every json), else the key; the transcript is the
``.txt`` member, else the json's ``caption``; ``start``/``end`` come from ``clips`` (a sample
without it is a whole video: ``[0, WHOLE_VIDEO_END]``, clamped to the duration when decoded);
``video_path`` is ``<shard>/<member>`` relative to the pool folder (``tar_members``).

A pool is named by a folder of ``*.tar`` shards, one ``.tar`` file, or a brace pattern such as
``pool/{00000..00009}.tar``. Iteration streams shard by shard, reading only headers and the
small json/txt members (video data is skipped by seeking): memory does not grow with the pool.
A clip id met again within one shard (a key written twice, a repeated ``clip_id`` column) is
skipped, the first kept. Ids are not remembered across shards, which would cost memory in
proportion to the pool (about 100 bytes per clip); video2dataset's keys are unique across shards,
so a repeat there means two pools were concatenated, and each rank's round writer still refuses a
clip id it holds (``duplicates_skipped`` in the manifest).
Samples that cannot become a record (no video, a failed download, unreadable or oversized
json/txt, an empty transcript, an unsafe member name, a duplicate clip id) are counted in
``skipped`` and, by reason, in ``skip_reasons``, which also counts shards that cannot be opened or
end early (truncated or corrupt: their remaining samples are lost). Each is logged with shard and
member, never raised: one bad shard costs its bad samples, not the epoch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamodules.records import WHOLE_VIDEO_END, AnnotationRecord

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "mov", "avi")
#: A json or txt member larger than this is hostile or broken input, not metadata (DESIGN §10).
MAX_META_BYTES = 1 << 20
LOGGED_SKIPS = 20  # per reader: enough to see what goes wrong, bounded on a large pool


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's shard patterns: ``{00000..00009}`` (zero padding kept) and ``{a,b}``, nestable in sequence."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end():]
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if span:
        first, last = span.groups()
        width = max(len(first), len(last)) if first.startswith("0") or last.startswith("0") else 0
        items = [f"{n:0{width}d}" for n in range(int(first), int(last) + 1)]
    else:
        items = body.split(",")
    return [head + item + rest for item in items for rest in expand_braces(tail)]


def find_shards(spec: str | os.PathLike) -> tuple[list[Path], Path]:
    """The shards a pool spec names, in order, and the folder their ``video_path``s are relative to."""
    text = os.fspath(spec)
    if "{" in text:
        shards = [Path(p) for p in expand_braces(text)]
        missing = [str(p) for p in shards if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{text}: {len(missing)} shard(s) missing, e.g. {', '.join(missing[:3])}")
        return shards, Path(os.path.commonpath([str(p.parent) for p in shards]))
    path = Path(text)
    if path.is_file() and path.suffix == ".tar":
        return [path], path.parent
    if path.is_dir():
        shards = sorted(p for p in path.glob("*.tar") if not p.name.startswith("."))
        if shards:
            return shards, path
    raise FileNotFoundError(f"{text}: no tar shards (expected a folder of *.tar, a .tar file or a brace pattern)")


def is_webdataset_pool(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names tar shards (cheap: no shard is opened)."""
    text = os.fspath(spec)
    if "{" in text:
        return text.endswith(".tar")
    path = Path(text)
    if path.is_dir():
        return any(not p.name.startswith(".") for p in path.glob("*.tar"))
    return path.suffix == ".tar"


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's grouping rule: the key is the name up to the first dot of its last component."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def clip_seconds(value: Any) -> float:
    """A clip time as video2dataset stores it: seconds, or an ``"HH:MM:SS.mmm"`` string."""
    if isinstance(value, str):
        hours, minutes, seconds = value.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"not a clip time: {value!r}")


class WebDatasetPoolReader:
    """Streams the samples of video2dataset tar shards as records whose caption is the transcript."""

    def __init__(self, spec: str | os.PathLike, max_meta_bytes: int = MAX_META_BYTES) -> None:
        self.shards, self.root = find_shards(spec)
        self.max_meta_bytes = max_meta_bytes
        self.skipped = 0
        self.skip_reasons: Counter[str] = Counter()

    @property
    def video_root(self) -> Path:
        return self.root

    def __iter__(self) -> Iterator[AnnotationRecord]:
        for shard in self.shards:
            seen: set[str] = set()  # per shard: memory bounded by the shard size
            for record in self.shard_records(shard):
                if record["clip_id"] in seen:
                    self._skip(shard, record["video_path"],
                               f"clip id {record['clip_id']!r} read before in this shard (the first is kept)", "duplicate")
                    continue
                seen.add(record["clip_id"])
                yield record

    def shard_records(self, shard: Path) -> Iterator[AnnotationRecord]:
        rel = shard.relative_to(self.root).as_posix()
        try:
            tar = tarfile.open(shard, "r:")
        except (tarfile.TarError, OSError) as e:
            self._skip(shard, "the shard", f"unreadable ({e})", "unreadable_shard", sample=False)
            return
        with tar:
            key, members, last = None, {}, "(start)"
            while True:
                try:
                    info = tar.next()
                except (tarfile.TarError, EOFError, OSError) as e:
                    self._skip(shard, f"after {last}", f"the shard ends early ({e}); the rest of it is lost",
                               "truncated_shard", sample=False)
                    if key is not None:
                        self._skip(shard, key, "sample cut by the end of the shard", "incomplete")
                    return
                tar.members = []  # tarfile keeps every header otherwise
                if info is None:
                    break
                last = info.name
                if not info.isfile():
                    if not info.isdir():
                        self._skip(shard, info.name, "not a regular file (link or device)", "unsafe_member")
                    continue
                if not _safe_name(info.name):
                    self._skip(shard, info.name, "unsafe member name", "unsafe_member")
                    continue
                sample, ext = split_key(info.name)
                if sample != key:
                    if key is not None:
                        yield from self._record(shard, rel, key, members)
                    key, members = sample, {}
                members[ext] = self._content(tar, info) if ext in ("json", "txt") else info
            if key is not None:
                yield from self._record(shard, rel, key, members)

    def _content(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes | Exception:
        if info.size > self.max_meta_bytes:
            return ValueError(f"{info.size} bytes, over the {self.max_meta_bytes}-byte cap")
        try:
            data = tar.extractfile(info).read()
        except (tarfile.TarError, OSError) as e:
            return e
        return data if len(data) == info.size else EOFError("cut short")

    def _record(self, shard: Path, rel: str, key: str, members: dict) -> Iterator[AnnotationRecord]:
        meta: dict = {}
        if "json" in members:
            try:
                meta = _json_object(members["json"])
            except (ValueError, UnicodeDecodeError, TypeError) as e:
                self._skip(shard, f"{key}.json", f"unreadable metadata: {e}", "bad_json")
                return
        video = next((ext for ext in VIDEO_EXTENSIONS if ext in members), None)
        if video is None:
            status = meta.get("status") or "no video member"
            self._skip(shard, key, f"no video ({status})", f"status:{status}" if meta.get("status") else "no_video")
            return
        try:
            text = _transcript(members.get("txt"), meta)
            start, end = _span(meta.get("clips"))
        except (ValueError, UnicodeDecodeError, TypeError) as e:
            self._skip(shard, key, str(e), "bad_sample")
            return
        clip_id = meta.get("clip_id") if isinstance(meta.get("clip_id"), str) and meta["clip_id"] else key
        yield {
            "clip_id": clip_id,
            "video_path": f"{rel}/{members[video].name}",
            "start": start,
            "end": end,
            "asr": text,
            "caption": text,
            "round": -1,
            "source": "asr",
        }

    def _skip(self, shard: Path, where: str, reason: str, kind: str, sample: bool = True) -> None:
        """Count a lost sample (``skipped``) or a damaged shard (only ``skip_reasons``), and log it."""
        self.skipped += sample
        self.skip_reasons[kind] += 1
        events = sum(self.skip_reasons.values())
        if events <= LOGGED_SKIPS or not sample:
            log.warning("%s: %s skipped: %s", shard, where, reason)
        elif events == LOGGED_SKIPS + 1:
            log.warning("%s: more skipped samples; counting them without logging each (skip_reasons)", shard)


def _safe_name(name: str) -> bool:
    return bool(name) and not name.startswith("/") and ".." not in name.split("/") and "\\" not in name


def _json_object(content: bytes | Exception) -> dict:
    if isinstance(content, Exception):
        raise ValueError(str(content))
    obj = json.loads(content.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _transcript(content: bytes | Exception | None, meta: dict) -> str:
    """The ``.txt`` member, else the json's ``caption``; whitespace collapsed, never empty."""
    if isinstance(content, Exception):
        raise ValueError(f"unreadable transcript: {content}")
    text = content.decode("utf-8") if content is not None else meta.get("caption")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty transcript")
    return " ".join(text.split())


def _span(clips: Any) -> tuple[float, float]:
    if clips is None:
        return 0.0, WHOLE_VIDEO_END
    if isinstance(clips, list) and len(clips) == 1 and isinstance(clips[0], (list, tuple)):
        clips = clips[0]  # after clipping: [[start, end]]
    if not isinstance(clips, (list, tuple)) or len(clips) != 2:
        raise ValueError(f"'clips' must hold one [start, end] span, got {clips!r}")
    start, end = clip_seconds(clips[0]), clip_seconds(clips[1])
    if not 0 <= start < end:
        raise ValueError(f"bad clip span [{start}, {end}]")
    return start, end
