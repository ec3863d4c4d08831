"""A resumable stream of decoded clips over any annotation source.

How a record finds its way into a batch, and why resume is exact:

1. Every rank and every worker reads the same record stream (cheap: JSON lines, no video) and
   keeps the records that pass ``keep`` (the train/val split).
2. A shuffle buffer seeded by ``(seed, epoch)`` reorders it, identically everywhere.
3. Records are dealt to ranks in groups of ``world_size``; in training an incomplete last group
   is dropped so every rank gets the same number of batches (no padding duplicates); passes that
   must see every record (``drop_uneven=False``: prediction, re-annotation) keep it.
4. Each rank cuts its records into batches numbered 0, 1, 2…; batch ``b`` is decoded by worker
   ``(b - start_batch) % num_workers``. DataLoader's in-order round robin over workers then
   delivers batches ``start_batch, start_batch + 1, …`` in order, whatever the worker count.

So the position in an epoch is one number per rank, the count of batches consumed. Resuming
sets ``start_batch`` to it and the rest of the epoch is exactly what the uninterrupted run
would have produced; skipped batches are only parsed, never decoded.

A clip that fails to decode is dropped from its batch, counted in the batch's ``skipped``,
kept whole in its ``skipped_records`` (so that an annotation pass can still write it) and logged
with its file; the batch may then be smaller (or empty: ``video`` with 0 rows).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from datamodules.records import AnnotationRecord
from datamodules.tar_members import split_member_path
from datamodules.video_reader import VideoDecodeError, read_clip

log = logging.getLogger(__name__)


def _main_module() -> list[str]:
    """The main script's importable name (``train`` for ``python train.py``), if it has one."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        return [spec.name]
    path = getattr(main, "__file__", None)
    if path and sys.path and os.path.dirname(os.path.abspath(path)) == os.path.abspath(sys.path[0] or "."):
        return [Path(path).stem]
    return []


# DataLoader workers start from a fork server (``clip_datamodule``); each one unpickles the stream
# and re-imports the main script. The server imports both first, so a worker starts in well under
# a second instead of importing Lightning again (seconds, each worker, each epoch). The main
# script goes by its module name: Python 3.11's fork server ignores "__main__" in this list.
multiprocessing.set_forkserver_preload(
    [*_main_module(), "datamodules.streaming_dataset", "datamodules.video_transforms", "datamodules.annotation_sources"])


def shuffle_buffer(items: Iterable[Any], buffer_size: int, rng: random.Random) -> Iterator[Any]:
    """Approximate shuffle of a stream with a bounded buffer (a size of 0 or 1 keeps the order)."""
    if buffer_size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        i = rng.randrange(buffer_size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


def in_split(clip_id: str, val_fraction: float, want_val: bool) -> bool:
    """Stable train/val membership from a hash of the clip id: independent of order and rank."""
    is_val = (zlib.crc32(clip_id.encode("utf-8")) % 10_000) < round(val_fraction * 10_000)
    return is_val == want_val


class ClipStream(IterableDataset):
    """Yields collated batches of ``{video, clip_id, caption, asr, video_path, start, end, …}``.

    Use with ``DataLoader(dataset, batch_size=None)``: batching happens here, so that the batch
    numbering, and with it resume, does not depend on the number of workers.
    """

    def __init__(
        self,
        source_factory: Callable[[], Iterable[AnnotationRecord]],
        video_root: str | Path,
        batch_size: int,
        num_frames: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        keep: Callable[[AnnotationRecord], bool] | None = None,
        shuffle: bool = False,
        shuffle_buffer_size: int = 1000,
        seed: int = 0,
        sampling: str = "uniform",
        drop_last: bool = False,
        drop_uneven: bool = True,
        backend: str = "auto",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.source_factory = source_factory
        self.video_root = Path(video_root)
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.transform = transform
        self.keep = keep
        self.shuffle = shuffle
        self.shuffle_buffer_size = shuffle_buffer_size
        self.seed = seed
        self.sampling = sampling
        self.drop_last = drop_last
        self.drop_uneven = drop_uneven
        self.backend = backend
        self.rank = rank
        self.world_size = world_size
        # Set by the loader before each pass (see ResumableLoader).
        self.epoch = 0
        self.start_batch = 0

    def rank_records(self) -> Iterator[AnnotationRecord]:
        """This rank's records for the current epoch, in order; no video is touched."""
        records: Iterable[AnnotationRecord] = self.source_factory()
        if self.keep is not None:
            records = filter(self.keep, records)
        if self.shuffle:
            rng = random.Random(f"{self.seed}/{self.epoch}")
            records = shuffle_buffer(records, self.shuffle_buffer_size, rng)
        group: list[AnnotationRecord] = []
        for record in records:
            group.append(record)
            if len(group) == self.world_size:
                yield group[self.rank]
                group = []
        if not self.drop_uneven and self.rank < len(group):
            yield group[self.rank]  # annotation passes must cover every record exactly once

    def rank_batches(self) -> Iterator[tuple[int, list[AnnotationRecord]]]:
        batch: list[AnnotationRecord] = []
        index = 0
        for record in self.rank_records():
            batch.append(record)
            if len(batch) == self.batch_size:
                yield index, batch
                batch, index = [], index + 1
        if batch and not self.drop_last:
            yield index, batch

    def batch_files(self, first: int, count: int) -> list[str]:
        """The files that batches ``first … first + count - 1`` of this rank read (a tar shard once for
        all its members), for error messages; parses records, decodes nothing."""
        files: dict[str, None] = {}
        for index, records in self.rank_batches():
            if index >= first + count:
                break
            if index >= first:
                for record in records:
                    member = split_member_path(self.video_root / record["video_path"])
                    files[member[0] if member else record["video_path"]] = None
        return list(files)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for index, records in self.rank_batches():
            if index < self.start_batch or (index - self.start_batch) % num_workers != worker:
                continue
            yield self.decode_batch(index, records)

    def decode_batch(self, index: int, records: list[AnnotationRecord]) -> dict[str, Any]:
        videos, kept, skipped_files, skipped = [], [], [], []
        for position, record in enumerate(records):
            path = Path(record["video_path"])
            path = path if path.is_absolute() else self.video_root / path
            # A per-clip generator makes random frame offsets independent of worker layout.
            generator = torch.Generator().manual_seed(
                zlib.crc32(f"{self.seed}/{self.epoch}/{self.rank}/{index}/{position}".encode())
            )
            try:
                frames = read_clip(
                    str(path), record["start"], record["end"], self.num_frames,
                    mode=self.sampling, generator=generator, backend=self.backend,
                )
            except VideoDecodeError as e:
                log.warning("skipping clip %s: %s", record["clip_id"], e)
                skipped_files.append(str(path))
                skipped.append(record)
                continue
            if self.transform is not None:
                # Crops draw from torch's global RNG: seed a private copy so that augmentation,
                # too, is the same in a resumed run, without disturbing the trainer's RNG.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(generator.initial_seed()) + 1)
                    frames = self.transform(frames)
            videos.append(frames)
            kept.append(record)
        video = torch.stack(videos) if videos else torch.empty(0)
        return {
            "video": video,
            "clip_id": [r["clip_id"] for r in kept],
            "caption": [r["caption"] for r in kept],
            "asr": [r["asr"] for r in kept],
            "video_path": [r["video_path"] for r in kept],
            "start": [r["start"] for r in kept],
            "end": [r["end"] for r in kept],
            "epoch": self.epoch,
            "batch_index": index,
            "skipped": len(skipped_files),
            "skipped_files": skipped_files,
            "skipped_records": skipped,
        }
