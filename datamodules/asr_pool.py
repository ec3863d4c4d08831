"""Reading an ASR pool in HowTo100M's caption format.

``asr.json`` maps each video id to its timed transcript segments::

    {"<video_id>": {"start": [0.0, 2.1], "end": [2.1, 4.0], "text": ["...", "..."]}}

Each segment is one clip. Videos live in ``<pool>/videos/<video_id>.mp4``. The file is streamed
video by video (``json_object_stream``), never loaded whole. A segment with an empty or
undecodable (non-UTF-8) transcript is skipped, counted and logged, not fatal; a structurally
broken entry is an error that names the file and the video id. A video id the file repeats (JSON
allows duplicate keys) keeps its first entry: a later one is counted in ``duplicate_videos`` and
logged, since two entries would give a round two records for one clip id. The ids seen so far are
the only thing held in memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from datamodules.annotation_store import AnnotationFormatError
from datamodules.json_object_stream import iter_json_object
from datamodules.records import AnnotationRecord, make_clip_id

log = logging.getLogger(__name__)

ASR_FILE = "asr.json"
VIDEO_DIR = "videos"


def _is_clean_text(text: object) -> bool:
    if not isinstance(text, str) or not text.strip():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the source bytes were not UTF-8
        return False
    return True


class AsrPoolReader:
    """Streams the clips of an ASR pool as records whose caption is the raw transcript."""

    def __init__(self, pool_dir: str | os.PathLike, video_ext: str = ".mp4") -> None:
        pool_dir = Path(pool_dir)
        self.asr_path = pool_dir / ASR_FILE if pool_dir.is_dir() else pool_dir
        self.pool_dir = self.asr_path.parent
        self.video_ext = video_ext
        self.skipped = 0
        self.duplicate_videos = 0
        if not self.asr_path.is_file():
            raise FileNotFoundError(f"{self.asr_path}: ASR file not found")

    @property
    def video_root(self) -> Path:
        return self.pool_dir

    def __iter__(self) -> Iterator[AnnotationRecord]:
        seen: set[str] = set()
        for video_id, entry in iter_json_object(self.asr_path):
            if video_id in seen:
                self.duplicate_videos += 1
                log.warning("%s: video %r skipped: a repeated key (its first entry is kept)", self.asr_path, video_id)
                continue
            seen.add(video_id)
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), list) for k in ("start", "end", "text")):
                raise AnnotationFormatError(f"{self.asr_path}: video {video_id!r} needs lists 'start', 'end' and 'text'")
            starts, ends, texts = entry["start"], entry["end"], entry["text"]
            if not len(starts) == len(ends) == len(texts):
                raise AnnotationFormatError(
                    f"{self.asr_path}: video {video_id!r} has {len(starts)} starts, {len(ends)} ends, {len(texts)} texts"
                )
            for k, (start, end, text) in enumerate(zip(starts, ends, texts)):
                clip_id = make_clip_id(video_id, k)
                if not _is_clean_text(text):
                    self.skipped += 1
                    log.warning("%s: clip %s skipped: empty or non-UTF-8 transcript", self.asr_path, clip_id)
                    continue
                text = " ".join(text.split())
                yield {
                    "clip_id": clip_id,
                    "video_path": f"{VIDEO_DIR}/{video_id}{self.video_ext}",
                    "start": float(start),
                    "end": float(end),
                    "asr": text,
                    "caption": text,
                    "round": -1,
                    "source": "asr",
                }
