"""The flywheel's round logic: phases per epoch, and re-annotation of the pool at round boundaries.

Round r's captions are written by ``ensure_round(trainer, r)``, which the ``FlywheelDataModule``
calls before the first epoch that needs them, and which ``on_fit_end`` calls for the last
round. It first saves ``last.ckpt`` (in the ModelCheckpoint folder), so that resuming a run
killed while annotating continues with the same model. Every rank captions its share of the pool (video + ASR in the prompt) into its own
shard; after a barrier rank 0 writes the manifest. A shard is resumable at the record level,
so a run killed mid-annotation and resumed with ``--ckpt_path`` captions only what is missing:
the round ends with exactly one record per pool clip. Captions that fail the sanity checks, and
clips whose video cannot be decoded, keep their previous-round caption and are counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
from tqdm import tqdm

from datamodules.annotation_sources import open_source
from datamodules.annotation_store import (
    MANIFEST_NAME,
    ShardWriter,
    atomic_write_json,
    done_clip_ids,
    round_dir,
    write_manifest,
)
from datamodules.caption_checks import caption_failure

log = logging.getLogger(__name__)


class FlywheelCallback(L.Callback):
    """Switches the VideoLLM between pretraining and SFT and writes each round's annotations."""

    def __init__(self, max_caption_words: int = 40, progress: bool = True) -> None:
        """
        Args:
            max_caption_words: refined captions longer than this fail the sanity check.
            progress: show a progress bar while re-annotating (rank 0).
        """
        self.max_caption_words = max_caption_words
        self.progress = progress

    # ---- phases --------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        schedule = trainer.datamodule.schedule
        max_epochs = trainer.fit_loop.max_epochs
        if max_epochs in (None, -1, 1000):  # 1000: Lightning's stand-in when neither limit is set
            trainer.fit_loop.max_epochs = schedule.total_epochs
        elif max_epochs != schedule.total_epochs:
            raise ValueError(
                f"trainer.max_epochs={max_epochs} but the flywheel needs {schedule.total_epochs} "
                f"({schedule.rounds} rounds × ({schedule.pretrain_epochs} pretrain + {schedule.sft_epochs} SFT)); "
                "leave trainer.max_epochs unset or make them agree"
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        schedule = trainer.datamodule.schedule
        pl_module.phase = schedule.phase_of(trainer.current_epoch)
        pl_module.log("flywheel/round", float(schedule.round_of(trainer.current_epoch)), on_epoch=True, on_step=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        schedule = trainer.datamodule.schedule
        if trainer.current_epoch >= schedule.total_epochs:
            self.ensure_round(trainer, schedule.rounds)

    # ---- re-annotation -------------------------------------------------------------------
    def ensure_round(self, trainer: L.Trainer, index: int) -> Path:
        """Write round ``index`` of the pool with the current model, unless its manifest exists."""
        dm, module = trainer.datamodule, trainer.lightning_module
        path = round_dir(dm.opts.run_dir, index)
        if (path / MANIFEST_NAME).is_file():
            return path
        self._checkpoint_before_annotation(trainer)
        rank = trainer.global_rank
        previous = {r["clip_id"]: r["caption"] for r in open_source(round_dir(dm.opts.run_dir, index - 1))}
        stats_path = path / f"part-{rank:05d}.stats.json"
        stats = _load_stats(stats_path)
        started, done_now = time.time(), 0
        loader = dm.annotation_dataloader(done=done_clip_ids(path))
        was_training = module.training
        module.eval()
        bar = tqdm(desc=f"re-annotating round {index:03d} (rank {rank})", unit="clip",
                   disable=not (self.progress and trainer.is_global_zero))
        undecodable: set[str] = set()

        def save_progress() -> None:  # what a resumed run needs: records on disk, then their stats
            writer.flush()
            stats["seconds"] = stats.get("seconds_before", 0.0) + time.time() - started
            stats["records"] = len(writer.done_ids)
            atomic_write_json(stats_path, stats)

        with ShardWriter(path, part=rank) as writer:
            for batch in loader:
                captions = module.caption(_to_device(batch, module.device)) if batch["clip_id"] else []
                for i, clip_id in enumerate(batch["clip_id"]):
                    caption = " ".join(captions[i].split())
                    problem = caption_failure(caption, max_words=self.max_caption_words)
                    if problem is not None:
                        _count_failure(stats, problem)
                        caption = previous.get(clip_id, batch["asr"][i])
                    writer.write(_record(batch, i, caption, index))
                undecodable.update(batch["skipped_clips"])
                done_now += len(batch["clip_id"]) + len(batch["skipped_clips"])
                bar.update(len(batch["clip_id"]) + len(batch["skipped_clips"]))
                save_progress()
            # Clips that failed to decode keep their previous caption; their records come from one
            # pass over the pool. Killed before this, a resumed run tries them again.
            for record in _pool_records(dm.opts.pool, undecodable):
                _count_failure(stats, "decode")
                caption = previous.get(record["clip_id"], record["asr"])
                writer.write({**record, "caption": caption, "round": index, "source": "previous"})
            save_progress()
        bar.close()
        module.train(was_training)
        trainer.strategy.barrier("flywheel_round_shards")
        if trainer.is_global_zero:
            self._write_manifest(path, index, trainer, module)
        trainer.strategy.barrier("flywheel_round_manifest")
        log.info("round %03d written to %s (%d clips captioned on rank %d this time)", index, path, done_now, rank)
        return path

    @staticmethod
    def _checkpoint_before_annotation(trainer: L.Trainer) -> None:
        """Save ``last.ckpt`` first, so a run killed while annotating resumes with this very model."""
        checkpoint = trainer.checkpoint_callback
        if checkpoint is None or not getattr(checkpoint, "dirpath", None):
            return
        trainer.save_checkpoint(Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}")

    def _write_manifest(self, path: Path, index: int, trainer: L.Trainer, module: L.LightningModule) -> None:
        failures: dict[str, int] = {}
        seconds, records = 0.0, 0
        for stats_file in sorted(path.glob("part-*.stats.json")):
            part = json.loads(stats_file.read_text())
            for reason, n in part["failures"].items():
                failures[reason] = failures.get(reason, 0) + n
            seconds = max(seconds, part.get("seconds", 0.0))
            records += part.get("records", 0)
        config = json.dumps({"model": dict(module.hparams), "data": dict(trainer.datamodule.opts)}, sort_keys=True, default=str)
        write_manifest(
            path, index,
            failures=sum(failures.values()),
            failures_detail=failures,
            annotation_seconds=round(seconds, 2),
            clips_per_second=round(records / seconds, 2) if seconds > 0 else None,
            world_size=trainer.world_size,
            model=f"{type(module).__name__}(preset={module.hparams.get('preset')}) after {trainer.global_step} steps",
            config_hash=hashlib.sha256(config.encode()).hexdigest()[:16],
            # relative to the round folder, as round 0 writes it: the run and world move together
            video_root=os.path.relpath(open_source(trainer.datamodule.opts.pool).video_root.resolve(), path.resolve()),
            source="videollm",
        )


def _to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    return {**batch, "video": batch["video"].to(device)}


def _record(batch: dict[str, Any], i: int, caption: str, index: int) -> dict[str, Any]:
    return {
        "clip_id": batch["clip_id"][i], "video_path": batch["video_path"][i], "start": batch["start"][i],
        "end": batch["end"][i], "asr": batch["asr"][i], "caption": caption, "round": index, "source": "videollm",
    }


def _count_failure(stats: dict[str, Any], reason: str) -> None:
    stats["failures"][reason] = stats["failures"].get(reason, 0) + 1


def _pool_records(pool: str, clip_ids: set[str]) -> list[dict[str, Any]]:
    """The pool records of ``clip_ids``, in one pass; a clip absent from the pool is an error."""
    if not clip_ids:
        return []
    found = [r for r in open_source(pool) if r["clip_id"] in clip_ids]
    missing = clip_ids - {r["clip_id"] for r in found}
    if missing:
        raise KeyError(f"clips {sorted(missing)[:5]} not in the pool {pool}")
    return found


def _load_stats(path: Path) -> dict[str, Any]:
    if path.is_file():
        stats = json.loads(path.read_text())
        stats["seconds_before"] = stats.get("seconds", 0.0)
        return stats
    return {"failures": {}, "records": 0, "seconds": 0.0}
