"""LightningDataModule that streams decoded clips and their captions from any annotation source.

The source is a refinement round, the raw ASR pool or a JSONL record file (see
``annotation_sources.open_source``). Training resumes exactly mid-epoch: the module counts the
batches the training loop actually consumed (in ``on_before_batch_transfer``, which runs for
the batch being trained on, not for the one the loop prefetched) and saves that position in the
checkpoint; the next pass starts from it (see ``streaming_dataset``).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.data import AttributeDict
from torch.utils.data import DataLoader

from datamodules.annotation_sources import iter_source, open_source, source_exists
from datamodules.caption_index import CaptionIndex, snapshot_stored_clips
from datamodules.streaming_dataset import ClipStream, in_split
from datamodules.video_transforms import build_video_transform

log = logging.getLogger(__name__)

STORED_CLIPS_INDEX = ".stored_clips.sqlite"  # inside the round folder being resumed


class ResumableLoader(DataLoader):
    """A DataLoader that asks its owner where each pass starts (epoch and first batch)."""

    def __init__(self, dataset: ClipStream, position_fn, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self._position_fn = position_fn

    def __iter__(self):
        self.dataset.epoch, self.dataset.start_batch = self._position_fn()
        return super().__iter__()


class ClipCaptionDataModule(L.LightningDataModule):
    """Clips (decoded frames) with captions from a round, the ASR pool or a JSONL file."""

    def __init__(
        self,
        train_source: str,
        val_source: str | None = None,
        predict_source: str | None = None,
        exclude_clips: str | None = None,
        video_root: str | None = None,
        val_fraction: float = 0.05,
        batch_size: int = 8,
        num_workers: int = 0,
        num_frames: int = 8,
        image_size: int = 32,
        shuffle_buffer_size: int = 1000,
        seed: int = 0,
        backend: str = "auto",
    ) -> None:
        """
        Args:
            train_source: round folder, ASR pool (folder with ``asr.json`` or tar shards: folder,
                ``.tar`` or brace pattern), ``asr.json``, or ``.jsonl`` records to train on.
            val_source: source to validate on; None carves ``val_fraction`` of the train clips instead.
            predict_source: source ``predict`` captions (every record, once); None = ``train_source``.
            exclude_clips: a round folder whose shards (finished or ``.partial``) hold clips that
                ``predict`` must not do again: how an interrupted annotation pass resumes.
            video_root: folder that relative ``video_path``s resolve against; None takes the source's own.
            val_fraction: share of clips (by a stable hash of the clip id) held out when ``val_source`` is None.
            batch_size: clips per batch on each rank.
            num_workers: DataLoader worker processes per rank.
            num_frames: frames sampled per clip (random offsets in training, uniform in evaluation).
            image_size: side of the square frames after resizing and cropping.
            shuffle_buffer_size: records held by the streaming shuffle buffer.
            seed: seed of the shuffle and of the frame offsets (the epoch is folded in).
            backend: video decoder: ``decord``, ``pyav`` or ``auto``.
        """
        super().__init__()
        self.save_hyperparameters()
        # Our own record of the arguments: under LightningCLI, ``hparams`` holds what the CLI
        # was given for the concrete class (a subclass's arguments), not these.
        self.opts = AttributeDict(
            train_source=train_source, val_source=val_source, predict_source=predict_source,
            exclude_clips=exclude_clips, video_root=video_root, val_fraction=val_fraction,
            batch_size=batch_size, num_workers=num_workers, num_frames=num_frames, image_size=image_size,
            shuffle_buffer_size=shuffle_buffer_size, seed=seed, backend=backend,
        )
        for name in ("train_source", "val_source", "predict_source", "video_root"):
            value = self.opts[name]
            if value is not None and not source_exists(value):
                raise FileNotFoundError(f"data.{name}: {value} does not exist")
        self.epoch = 0
        self.batches_consumed = 0
        self.skipped_total = 0
        self._epoch_counter = -1  # epochs started outside a Trainer

    # ---- datasets -------------------------------------------------------------------------
    def _stream(self, source: str, train: bool, keep, drop_uneven: bool = True) -> ClipStream:
        hp = self.opts
        root = hp.video_root or open_source(source).video_root
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self._trainer_attached() else (0, 1)
        return ClipStream(
            source_factory=functools.partial(iter_source, source),
            video_root=root,
            batch_size=hp.batch_size,
            num_frames=hp.num_frames,
            transform=build_video_transform(hp.image_size, train=train),
            keep=keep,
            shuffle=train,
            shuffle_buffer_size=hp.shuffle_buffer_size,
            seed=hp.seed,
            sampling="random" if train else "uniform",
            drop_last=False,
            drop_uneven=drop_uneven,
            backend=hp.backend,
            rank=rank,
            world_size=world,
        )

    def _snapshot_stored_clips(self) -> Path:
        """Rank 0 indexes the clips ``exclude_clips`` holds before any rank writes again; every
        rank then reads that one snapshot, so all agree on which clips are left and how they split."""
        path = Path(self.opts.exclude_clips) / STORED_CLIPS_INDEX
        attached = self._trainer_attached()
        if not attached or self.trainer.is_global_zero:
            snapshot_stored_clips(self.opts.exclude_clips, path)
        if attached:
            self.trainer.strategy.barrier("stored-clips-snapshot")
        return path

    def teardown(self, stage: str) -> None:
        # The snapshot only serves the pass that took it; a later resume takes a new one.
        if stage == "predict" and self.opts.exclude_clips is not None:
            if not self._trainer_attached() or self.trainer.is_global_zero:
                (Path(self.opts.exclude_clips) / STORED_CLIPS_INDEX).unlink(missing_ok=True)

    def _trainer_attached(self) -> bool:
        return getattr(self, "trainer", None) is not None

    def _split_filter(self, want_val: bool):
        if self.opts.val_source is not None or self.opts.val_fraction <= 0:
            return None
        return functools.partial(_keep_split, val_fraction=self.opts.val_fraction, want_val=want_val)

    def train_dataloader(self) -> ResumableLoader:
        stream = self._stream(self.opts.train_source, train=True, keep=self._split_filter(want_val=False))
        return self._loader(stream, self._train_position)

    def val_dataloader(self) -> ResumableLoader | list:
        hp = self.opts
        if hp.val_source is None and hp.val_fraction <= 0:
            return []
        source = hp.val_source or hp.train_source
        stream = self._stream(source, train=False, keep=self._split_filter(want_val=True))
        return self._loader(stream, lambda: (0, 0))

    def predict_dataloader(self) -> ResumableLoader:
        source = self.opts.predict_source or self.opts.train_source
        keep = None
        if self.opts.exclude_clips is not None:
            keep = functools.partial(_not_in, done=StoredClips(self._snapshot_stored_clips()))
        stream = self._stream(source, train=False, keep=keep, drop_uneven=False)
        return self._loader(stream, lambda: (0, 0))

    def _loader(self, stream: ClipStream, position_fn) -> ResumableLoader:
        workers = self.opts.num_workers
        # Workers start from a fork server, not by forking this process: a fork taken while
        # decoder or OpenMP threads hold locks can deadlock the child (seen in our test suite).
        return ResumableLoader(
            stream, position_fn, num_workers=workers, persistent_workers=False, pin_memory=False,
            prefetch_factor=2 if workers > 0 else None,
            multiprocessing_context="forkserver" if workers > 0 else None,
        )

    # ---- resume bookkeeping ---------------------------------------------------------------
    def _train_position(self) -> tuple[int, int]:
        if self._trainer_attached():
            epoch = self.trainer.current_epoch
        else:
            self._epoch_counter += 1
            epoch = max(self._epoch_counter, self.epoch)
        start = self.batches_consumed if epoch == self.epoch else 0
        return epoch, start

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "batch_index" in batch and self._trainer_attached() and self.trainer.training:
            self.epoch = batch["epoch"]
            self.batches_consumed = batch["batch_index"] + 1
            self.skipped_total += batch["skipped"]
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed, "skipped_total": self.skipped_total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch = state_dict["epoch"]
        self.batches_consumed = state_dict["batches_consumed"]
        self.skipped_total = state_dict["skipped_total"]


class StoredClips:
    """Membership in a stored-clips snapshot; each DataLoader worker opens its own connection."""

    def __init__(self, index_path: Path) -> None:
        self.index_path = index_path
        self._index: CaptionIndex | None = None

    def __contains__(self, clip_id: str) -> bool:
        if self._index is None:
            self._index = CaptionIndex(self.index_path)
        return clip_id in self._index

    def __getstate__(self) -> dict:
        return {"index_path": self.index_path, "_index": None}


def _not_in(record, done: StoredClips) -> bool:
    return record["clip_id"] not in done


def _keep_split(record, val_fraction: float, want_val: bool) -> bool:
    return in_split(record["clip_id"], val_fraction, want_val)
