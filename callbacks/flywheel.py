"""The flywheel's round logic: phases per epoch, and re-annotation of the pool at round boundaries.

Round r's captions are written by ``ensure_round(trainer, r)``, which the ``FlywheelDataModule``
calls before the first epoch that needs them, and which ``on_fit_end`` calls for the last
round. It first saves ``last.ckpt`` (in the ModelCheckpoint folder), so that resuming a run
killed while annotating continues with the same model. Then:

- Work split: record ``i`` of the pool goes to rank ``i % world_size``, unpadded
  (``FlywheelDataModule.annotation_dataloader``), so every clip is captioned by exactly one rank
  and N processes write the same records as one. Each rank writes its records, batch after
  batch, to its own shard; after every rank has finished, rank 0 writes the manifest.
- Resume: a rank's shard holds its first batches, so a resumed run (same world size and batch
  size, which the rank's stats file records and checks) starts at the next batch
  (``start_batch``: the batches before are parsed, not decoded) and skips the records of a batch
  the kill cut short. No set of finished clips is held.
- Fallbacks: captions that fail the sanity checks, and clips whose video cannot be decoded, keep
  their previous-round caption (the transcript if that round lacks the clip) and are counted.
  Previous captions are looked up batch by batch in an SQLite index of the previous round
  (``caption_index``), built once by rank 0: no round is held in memory.
- Lockstep and failures: before each batch the ranks agree (``rank_sync``) whether any of them
  still has one; a rank whose share is done, or whose batch failed to decode entirely, captions a
  blank clip (``VideoLLMModule.blank_batch``), so that a sharded model's collectives line up. The
  same agreement carries failures, within ``sync_timeout_s``: a rank whose loading fails for good (a dead DataLoader
  worker is first restarted, ``loader_restarts``) or that raises posts its error, which names the
  rank and shard, and every rank stops with it; a rank that does not report in time is named.
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
import torch
from tqdm import tqdm

from callbacks.rank_sync import RankFailure, RankSync
from datamodules.annotation_sources import open_source
from datamodules.annotation_store import (
    MANIFEST_NAME,
    ShardWriter,
    atomic_write_json,
    round_dir,
    write_manifest,
)
from datamodules.caption_checks import caption_failure
from datamodules.caption_index import CaptionIndex, build_caption_index
from datamodules.loader_restarts import batches_with_restarts
from lightning_modules.components.eval_mode import eval_mode

log = logging.getLogger(__name__)

#: The previous round's captions, indexed in the folder of the round being written (removed with its manifest).
PREVIOUS_CAPTIONS = "previous_captions.sqlite"


class FlywheelCallback(L.Callback):
    """Switches the VideoLLM between pretraining and SFT and writes each round's annotations."""

    def __init__(
        self, max_caption_words: int = 40, progress: bool = True, sync_timeout_s: float = 1800.0, loader_retries: int = 2
    ) -> None:
        """
        Args:
            max_caption_words: refined captions longer than this fail the sanity check.
            progress: show a progress bar while re-annotating (rank 0).
            sync_timeout_s: while re-annotating, the longest a rank waits for the others at one
                agreement point (one batch, or building the index of previous captions) before
                it stops, naming the ranks that did not report.
            loader_retries: DataLoader failures in a row (a worker killed or crashing) after which
                a rank gives up on its share and stops the round, naming itself and the shard.
        """
        self.max_caption_words = max_caption_words
        self.progress = progress
        self.sync_timeout_s = sync_timeout_s
        self.loader_retries = loader_retries

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
        sync = RankSync(f"re-annotation of round {index:03d}", self.sync_timeout_s)
        previous = path / PREVIOUS_CAPTIONS
        sync.agree(_attempt(build_caption_index, round_dir(dm.opts.run_dir, index - 1), previous)
                   if trainer.is_global_zero else None)
        _share_buffers(module)
        with eval_mode(module):
            done_now = self._annotate(trainer, path, index, previous, sync)
        error = None
        if trainer.is_global_zero:
            error = _attempt(self._write_manifest, path, index, trainer, module)
            previous.unlink(missing_ok=True)
        sync.agree(error)
        log.info("round %03d written to %s (%d clips captioned on rank %d this time)", index, path, done_now,
                 trainer.global_rank)
        return path

    def _annotate(self, trainer: L.Trainer, path: Path, index: int, previous_path: Path, sync: RankSync) -> int:
        """Caption this rank's share into its shard, in lockstep with the other ranks; returns clips done now."""
        dm, module, rank = trainer.datamodule, trainer.lightning_module, trainer.global_rank
        stats_path = path / f"part-{rank:05d}.stats.json"
        started, done_now, writer = time.time(), 0, None
        bar = tqdm(desc=f"re-annotating round {index:03d} (rank {rank})", unit="clip",
                   disable=not (self.progress and trainer.is_global_zero))
        try:
            # one read of a .partial shard gives its count and the ids of a batch the kill cut short
            writer = ShardWriter(path, part=rank, track_ids=False, keep_tail=dm.opts.batch_size)
            stats = _load_stats(stats_path)
            start_batch, tail = _resume_point(writer, stats, trainer.world_size, dm.opts.batch_size, path)
            stats.update(world_size=trainer.world_size, batch_size=dm.opts.batch_size)
            batches = None if writer.finished else batches_with_restarts(
                dm.annotation_dataloader, start_batch, self.loader_retries, rank)
            with CaptionIndex(previous_path) as previous:
                while True:
                    batch = next(batches, None) if batches is not None else None
                    if batch is None:
                        batches = None  # this rank's share is done; it keeps step while others work
                        if not writer.finished:  # before it says so: rank 0 writes the manifest once all agree
                            writer.finish()
                            _save_progress(writer, stats, stats_path, started)
                    if not sync.agree(work=batch is not None):
                        break
                    if sync.active and (batch is None or not batch["clip_id"]):
                        module.caption(module.blank_batch())  # keeps a sharded model's collectives in step
                    if batch is None:
                        continue
                    _check_resume(tail, batch, writer, start_batch)
                    captions = module.caption(_to_device(batch, module.device)) if batch["clip_id"] else []
                    self._write_batch(writer, batch, captions, tail, previous, stats, index)
                    tail = set()
                    done = len(batch["clip_id"]) + len(batch["skipped_records"])
                    done_now += done
                    bar.update(done)
                    _save_progress(writer, stats, stats_path, started)
        except RankFailure:
            raise
        except Exception as e:
            sync.agree(f"{type(e).__name__}: {e}")  # stops every rank, naming this one; raises
            raise
        finally:
            if writer is not None:
                writer.close()  # after a failure the .partial shard stays for the resume
            bar.close()
        return done_now

    def _write_batch(self, writer: ShardWriter, batch: dict[str, Any], captions: list[str], tail: set[str],
                     previous: CaptionIndex, stats: dict[str, Any], index: int) -> None:
        """Write the batch's records; failed captions and undecodable clips take the previous caption."""
        records, fallback = [], []
        for i, clip_id in enumerate(batch["clip_id"]):
            caption = " ".join(captions[i].split())
            problem = caption_failure(caption, max_words=self.max_caption_words)
            record = _record(batch, i, caption, index)
            if problem is not None:
                _count_failure(stats, problem)
                fallback.append(record)
            records.append(record)
        for skipped in batch["skipped_records"]:
            _count_failure(stats, "decode")
            record = {**skipped, "round": index, "source": "previous"}
            fallback.append(record)
            records.append(record)
        found = previous.lookup(r["clip_id"] for r in fallback)
        for record in fallback:
            record["caption"] = found.get(record["clip_id"], record["asr"])
        for record in records:
            if record["clip_id"] not in tail:  # written before the kill that cut this batch short
                writer.write(record)

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


def _share_buffers(module: L.LightningModule) -> None:
    """Give every rank rank 0's buffers (a stem's batch-norm running statistics): each rank updated
    them on its own batches, and a clip's caption must not depend on the rank that writes it. Rank 0's
    are the ones its checkpoint keeps."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for buffer in module.buffers():
        torch.distributed.broadcast(buffer.data, src=0)


def _attempt(fn, *args) -> str | None:
    """Run ``fn``; None when it succeeds, else its error as text (posted to the other ranks)."""
    try:
        fn(*args)
    except Exception as e:
        log.exception("%s failed", getattr(fn, "__name__", fn))
        return f"{type(e).__name__}: {e}"
    return None


def _resume_point(writer: ShardWriter, stats: dict[str, Any], world_size: int, batch_size: int,
                  path: Path) -> tuple[int, set[str]]:
    """The batch to start at, and the clips of that batch already written (the kill cut it short)."""
    if writer.count == 0 or writer.finished:
        return 0, set()
    before = (stats.get("world_size", world_size), stats.get("batch_size", batch_size))
    if before != (world_size, batch_size):
        raise ValueError(
            f"{writer.partial} was written by {before[0]} rank(s) with batch size {before[1]}, resumed with "
            f"{world_size} and {batch_size}; resume with the same devices and data.batch_size, or delete {path} "
            "to write the round again"
        )
    start, cut = divmod(writer.count, batch_size)
    return start, set(writer.tail_ids[len(writer.tail_ids) - cut:])


def _check_resume(tail: set[str], batch: dict[str, Any], writer: ShardWriter, start_batch: int) -> None:
    if tail and not tail <= set(batch["clip_id"]) | {r["clip_id"] for r in batch["skipped_records"]}:
        raise ValueError(f"{writer.partial}: its last records are not in batch {start_batch} of this rank's share; "
                         "was the pool changed since it was written?")


def _save_progress(writer: ShardWriter, stats: dict[str, Any], stats_path: Path, started: float) -> None:
    """What a resumed run needs: records on disk first, then their stats."""
    writer.flush()
    stats["seconds"] = stats.get("seconds_before", 0.0) + time.time() - started
    stats["records"] = writer.count
    atomic_write_json(stats_path, stats)


def _load_stats(path: Path) -> dict[str, Any]:
    if path.is_file():
        stats = json.loads(path.read_text())
        stats["seconds_before"] = stats.get("seconds", 0.0)
        return stats
    return {"failures": {}, "records": 0, "seconds": 0.0}
