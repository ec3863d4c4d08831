"""A round's captions by clip id, looked up without loading the round: an SQLite file on disk.

Also the set of clips an unfinished round already holds (``snapshot_stored_clips``), which a
resumed initial refinement skips.

Re-annotation keeps a clip's previous caption when the new one fails the sanity checks or the
clip cannot be decoded. A dict of the previous round would hold that whole round in memory; this
index holds it on disk (``clip_id`` is the primary key) and answers one batch of ids at a time.
It is built by one process into a temporary file that is renamed into place, so a reader never
sees half an index, and it is tagged with the round's manifest, so an index built from an older
version of the round is rebuilt rather than trusted.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from datamodules.annotation_store import RoundReader, read_manifest, stored_records

INSERT_CHUNK = 10_000
LOOKUP_CHUNK = 500  # below SQLite's limit on bound parameters on every build


def build_caption_index(round_path: str | os.PathLike, index_path: str | os.PathLike) -> Path:
    """Index the captions of the finished round ``round_path`` into ``index_path``, unless an index
    of this very round is already there; returns ``index_path``."""
    index_path = Path(index_path)
    tag = _tag(round_path)
    if index_path.is_file() and _read_tag(index_path) == tag:
        return index_path
    return _write_index(RoundReader(round_path), tag, index_path)


def snapshot_stored_clips(round_path: str | os.PathLike, index_path: str | os.PathLike) -> Path:
    """Index what an unfinished round already holds (finished and ``.partial`` shards), as it is
    now: a resumed run skips these clips. Always rebuilt; returns ``index_path``."""
    return _write_index(stored_records(round_path), "stored", Path(index_path))


def _write_index(records: Iterable[dict], tag: str, index_path: Path) -> Path:
    index_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(f".{index_path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    try:
        con.execute("PRAGMA journal_mode=OFF")  # a crash leaves only the temporary file, redone next time
        con.execute("CREATE TABLE captions (clip_id TEXT PRIMARY KEY, caption TEXT NOT NULL) WITHOUT ROWID")
        con.execute("CREATE TABLE meta (tag TEXT NOT NULL)")
        rows: list[tuple[str, str]] = []
        for record in records:
            rows.append((record["clip_id"], record["caption"]))
            if len(rows) >= INSERT_CHUNK:
                _insert(con, rows)
        _insert(con, rows)
        con.execute("INSERT INTO meta VALUES (?)", (tag,))
        con.commit()
    finally:
        con.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, index_path)
    return index_path


def _insert(con: sqlite3.Connection, rows: list[tuple[str, str]]) -> None:
    con.executemany("INSERT OR REPLACE INTO captions VALUES (?, ?)", rows)  # a repeated clip: the last wins
    rows.clear()


def _tag(round_path: str | os.PathLike) -> str:
    manifest = read_manifest(round_path)
    return json.dumps({k: manifest.get(k) for k in ("round", "records", "parts", "written_at")}, sort_keys=True)


def _read_tag(index_path: Path) -> str | None:
    try:
        with CaptionIndex(index_path) as index:
            return index.tag()
    except sqlite3.Error:
        return None  # damaged or foreign: rebuild


class CaptionIndex:
    """Read-only lookups in an index written by ``build_caption_index``."""

    def __init__(self, index_path: str | os.PathLike) -> None:
        # immutable: no locks and no journal, so it reads from any file system; nothing writes it now
        uri = Path(index_path).resolve().as_uri() + "?mode=ro&immutable=1"
        self._con = sqlite3.connect(uri, uri=True)

    def tag(self) -> str | None:
        row = self._con.execute("SELECT tag FROM meta").fetchone()
        return row[0] if row else None

    def lookup(self, clip_ids: Iterable[str]) -> dict[str, str]:
        """``{clip_id: caption}`` for the given ids that the round holds."""
        ids = list(dict.fromkeys(clip_ids))
        found: dict[str, str] = {}
        for i in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[i : i + LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(self._con.execute(f"SELECT clip_id, caption FROM captions WHERE clip_id IN ({marks})", chunk))
        return found

    def __contains__(self, clip_id: str) -> bool:
        return self._con.execute("SELECT 1 FROM captions WHERE clip_id = ?", (clip_id,)).fetchone() is not None

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> CaptionIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
