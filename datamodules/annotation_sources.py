"""One way to name where training captions come from: a round, the raw ASR pool, or a JSONL file.

``open_source(path)`` accepts
- a round folder (``…/annotations/round_NNN`` with its ``manifest.json``),
- an ASR pool folder holding ``asr.json``, or the ``asr.json`` file itself (captions = transcripts),
- a ``.jsonl`` file of records (for example the pool's ``human_refined.jsonl``).

The returned object is re-iterable (each ``iter`` streams from disk again) and counts the
records it skipped in ``skipped``.
"""

from __future__ import annotations

import os
from pathlib import Path

from datamodules.annotation_store import MANIFEST_NAME, JsonlRecordReader, RoundReader
from datamodules.asr_pool import ASR_FILE, AsrPoolReader


def open_source(path: str | os.PathLike) -> RoundReader | AsrPoolReader | JsonlRecordReader:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: annotation source not found")
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return RoundReader(path)
    if (path.is_dir() and (path / ASR_FILE).is_file()) or path.suffix == ".json":
        return AsrPoolReader(path)
    if path.is_file() and path.suffix == ".jsonl":
        return JsonlRecordReader([path])
    raise ValueError(
        f"{path}: not an annotation source; expected a round folder with {MANIFEST_NAME}, "
        f"a pool folder with {ASR_FILE}, an .json ASR file or a .jsonl record file"
    )
