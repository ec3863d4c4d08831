"""One way to name where training captions come from: a round, the raw ASR pool, or a JSONL file.

``open_source(path)`` accepts
- a round folder (``…/annotations/round_NNN`` with its ``manifest.json``),
- an ASR pool folder holding ``asr.json``, or the ``asr.json`` file itself (captions = transcripts),
- an ASR pool as video2dataset tar shards: a folder of ``*.tar``, one ``.tar`` file or a brace
  pattern such as ``pool/{00000..00009}.tar`` (captions = transcripts; ``webdataset_pool``),
- a ``.jsonl`` file of records (for example the pool's ``human_refined.jsonl``).

The returned object is re-iterable (each ``iter`` streams from disk again) and counts the
records it skipped in ``skipped``.
"""

from __future__ import annotations

import os
from pathlib import Path

from datamodules.annotation_store import MANIFEST_NAME, JsonlRecordReader, RoundReader
from datamodules.asr_pool import ASR_FILE, AsrPoolReader
from datamodules.webdataset_pool import WebDatasetPoolReader, expand_braces, is_webdataset_pool

Source = RoundReader | AsrPoolReader | WebDatasetPoolReader | JsonlRecordReader


def source_exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists; a brace pattern exists when every shard it names does."""
    return all(Path(p).exists() for p in expand_braces(os.fspath(path)))


def iter_source(path: str | os.PathLike):
    """A fresh record stream of ``path`` (a picklable source factory for DataLoader workers)."""
    return iter(open_source(path))


def open_source(path: str | os.PathLike) -> Source:
    if not source_exists(path):
        raise FileNotFoundError(f"{path}: annotation source not found")
    path = Path(path)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return RoundReader(path)
    if (path.is_dir() and (path / ASR_FILE).is_file()) or path.suffix == ".json":
        return AsrPoolReader(path)
    if is_webdataset_pool(path):
        return WebDatasetPoolReader(path)
    if path.is_file() and path.suffix == ".jsonl":
        return JsonlRecordReader([path])
    raise ValueError(
        f"{path}: not an annotation source; expected a round folder with {MANIFEST_NAME}, "
        f"a pool folder with {ASR_FILE} or *.tar shards, an .json ASR file or a .jsonl record file"
    )
