"""The flywheel's data: each epoch streams the round or the human examples its phase needs.

Epoch e of round r pretrains on ``<run>/annotations/round_{r-1}`` or fine-tunes on the human
refinement examples (see ``FlywheelSchedule``); a held-out share of the human examples is the
validation set. Before the first epoch of a round the previous round must exist: if it does not
(the round boundary has just passed, or a run was killed while re-annotating), the
``FlywheelCallback`` writes it first, with the model as it is now. This is why the trainer must
rebuild the train loader every epoch (``reload_dataloaders_every_n_epochs: 1``).
"""

from __future__ import annotations

import functools
from pathlib import Path

from datamodules.annotation_sources import open_source, source_exists
from datamodules.annotation_store import MANIFEST_NAME, round_dir
from datamodules.clip_datamodule import ClipCaptionDataModule, ResumableLoader, _keep_split
from datamodules.flywheel_schedule import FlywheelSchedule


class FlywheelDataModule(ClipCaptionDataModule):
    """Rounds for pretraining, human examples for SFT and validation, the pool for re-annotation."""

    def __init__(
        self,
        run_dir: str,
        pool: str,
        human_examples: str,
        rounds: int = 2,
        pretrain_epochs: int = 2,
        sft_epochs: int = 1,
        human_val_fraction: float = 0.2,
        batch_size: int = 16,
        num_workers: int = 0,
        num_frames: int = 8,
        image_size: int = 32,
        shuffle_buffer_size: int = 1000,
        seed: int = 0,
        backend: str = "auto",
    ) -> None:
        """
        Args:
            run_dir: the run's folder; rounds live in ``<run_dir>/annotations/round_NNN``.
            pool: the ASR pool, the clips every round re-annotates: a folder with ``asr.json`` +
                ``videos/``, or video2dataset tar shards (a folder of ``*.tar``, a ``.tar`` file or
                a brace pattern such as ``pool/{00000..00009}.tar``).
            human_examples: ``.jsonl`` of human refinement records, the only clean supervision.
            rounds: flywheel rounds run by this fit (round 0 comes from initial refinement).
            pretrain_epochs: epochs of AdaTaiLr pretraining on the previous round, per round.
            sft_epochs: epochs of SFT on the human examples, per round.
            human_val_fraction: share of human examples held out for validation (hash of clip id).
            batch_size: clips per batch on each rank.
            num_workers: DataLoader worker processes per rank.
            num_frames: frames sampled per clip.
            image_size: frame side after resizing and cropping.
            shuffle_buffer_size: records held by the streaming shuffle buffer.
            seed: seed of shuffling and frame offsets.
            backend: video decoder: ``decord``, ``pyav`` or ``auto``.
        """
        super().__init__(
            train_source=pool, val_source=None, video_root=_pool_folder(pool), val_fraction=human_val_fraction,
            batch_size=batch_size, num_workers=num_workers, num_frames=num_frames, image_size=image_size,
            shuffle_buffer_size=shuffle_buffer_size, seed=seed, backend=backend,
        )
        self.save_hyperparameters()
        self.opts.update(
            run_dir=run_dir, pool=pool, human_examples=human_examples, rounds=rounds,
            pretrain_epochs=pretrain_epochs, sft_epochs=sft_epochs, human_val_fraction=human_val_fraction,
        )
        if not Path(human_examples).is_file():
            raise FileNotFoundError(f"data.human_examples: {human_examples} does not exist")
        self.schedule = FlywheelSchedule(rounds, pretrain_epochs, sft_epochs)

    def round_path(self, index: int) -> Path:
        return round_dir(self.opts.run_dir, index)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        if self.trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError("trainer.reload_dataloaders_every_n_epochs must be 1 for the flywheel (each epoch picks its round)")
        if not (self.round_path(0) / MANIFEST_NAME).is_file():
            raise FileNotFoundError(
                f"{self.round_path(0)}: round 0 is missing; write it first with initial refinement "
                "(python train.py predict --config configs/demo/initial_refine.yaml)"
            )

    def train_dataloader(self) -> ResumableLoader:
        epoch = self.trainer.current_epoch
        round_index, phase = self.schedule.round_of(epoch), self.schedule.phase_of(epoch)
        if phase == "pretrain":
            previous = self.round_path(round_index - 1)
            if not (previous / MANIFEST_NAME).is_file():
                _flywheel_callback(self.trainer).ensure_round(self.trainer, round_index - 1)
            stream = self._stream(str(previous), train=True, keep=None)
        else:
            stream = self._stream(self.opts.human_examples, train=True, keep=self._human_split(want_val=False))
        return self._loader(stream, self._train_position)

    def val_dataloader(self) -> ResumableLoader | list:
        if self.opts.human_val_fraction <= 0:
            return []
        stream = self._stream(self.opts.human_examples, train=False, keep=self._human_split(want_val=True))
        return self._loader(stream, lambda: (0, 0))

    def annotation_dataloader(self, start_batch: int = 0) -> ResumableLoader:
        """This rank's share of the pool from batch ``start_batch`` on: every clip once across ranks,
        uniform frames, fixed order (record ``i`` goes to rank ``i % world_size``, unpadded)."""
        stream = self._stream(self.opts.pool, train=False, keep=None, drop_uneven=False)
        return self._loader(stream, lambda: (0, start_batch))

    def _human_split(self, want_val: bool):
        return functools.partial(_keep_split, val_fraction=self.opts.human_val_fraction, want_val=want_val)


def _pool_folder(pool: str) -> str | None:
    """The folder pool records' ``video_path``s are relative to, as the pool's reader gives it (for
    shards in several folders, their common folder). None for a missing pool: the DataModule's
    check of its sources names it."""
    return str(open_source(pool).video_root) if source_exists(pool) else None


def _flywheel_callback(trainer):
    from callbacks.flywheel import FlywheelCallback

    for callback in trainer.callbacks:
        if isinstance(callback, FlywheelCallback):
            return callback
    raise RuntimeError("the flywheel needs callbacks.flywheel.FlywheelCallback among trainer.callbacks to write rounds")
