"""Prediction writer that stores a refinement round in the annotation store (DESIGN §6).

Each rank appends its predictions, as full records (``clip_id, video_path, start, end, asr,
caption, round, source``), to its own shard ``<run_dir>/annotations/round_NNN/part-<rank>.jsonl``
through ``ShardWriter``: written as ``.partial`` record by record, renamed when the rank is done.
After a barrier, rank 0 writes ``manifest.json``: record counts, failures, throughput, timing,
what model wrote the round and a hash of its configuration. Every rank takes part in the
collectives (gather, barriers); only the file writes are rank 0's.

Sanity checks (``caption_failure``): a caption that is empty, repeats a word pair more than
``max_ngram_repeats`` times, runs over ``max_words`` words or is mostly in another script is
replaced by the clip's transcript, stored with ``source = fallback_source`` and counted. Round 0
has no earlier caption to keep, so the transcript is the fallback; the manifest's ``failures``
counts those records in the shards themselves, so it stays exact across resumes.

Resume: run the same command again with ``data.exclude_clips`` pointing at the round folder. The
DataModule then skips every clip already stored (in finished or ``.partial`` shards), each
rank's writer reopens its ``.partial`` shard and appends, and the round ends with exactly one
record per clip. Shards of ranks that no longer exist (a resume with fewer ranks) are finished
by rank 0 before the manifest.

``video_path``, ``start`` and ``end`` come from the batch when it carries them; otherwise they
are looked up by clip id in the DataModule's prediction source (read once, on first need).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from datamodules.annotation_sources import open_source
from datamodules.annotation_store import (
    PARTIAL_SUFFIX,
    JsonlRecordReader,
    ShardWriter,
    round_dir,
    write_manifest,
)
from datamodules.caption_checks import FAILURE_REASONS, caption_failure

log = logging.getLogger(__name__)

LOGGED_FAILURES = 20  # per rank and run: enough to see what goes wrong, bounded on a large pool


class AnnotationWriter(BasePredictionWriter):
    """Writes ``predict`` outputs (``[{clip_id, caption}, …]`` per batch) as one round of records."""

    def __init__(
        self,
        run_dir: str,
        round_index: int = 0,
        source: str = "initial_refiner",
        fallback_source: str = "asr_fallback",
        max_words: int = 40,
        ngram_size: int = 2,
        max_ngram_repeats: int = 2,
    ) -> None:
        """
        Args:
            run_dir: the run folder; the round goes to ``<run_dir>/annotations/round_NNN``.
            round_index: the round number NNN (0 for the initial refinement).
            source: the ``source`` field of refined records.
            fallback_source: the ``source`` field of records whose caption failed the sanity
                checks and was replaced by the transcript.
            max_words: a caption longer than this (in words) fails.
            ngram_size: length of the word n-grams checked for repetition.
            max_ngram_repeats: a caption where one n-gram occurs more often than this fails.
        """
        super().__init__(write_interval="batch")
        if source == fallback_source:
            raise ValueError("source and fallback_source must differ (failures are counted by source)")
        self.run_dir = run_dir
        self.round_index = round_index
        self.source = source
        self.fallback_source = fallback_source
        self.checks = dict(max_words=max_words, ngram_size=ngram_size, max_ngram_repeats=max_ngram_repeats)
        self.round_path = round_dir(run_dir, round_index)
        self._writer: ShardWriter | None = None
        self._clip_index: dict[str, tuple[str, float, float]] | None = None
        self._reset_counts()

    def _reset_counts(self) -> None:
        self.written = 0
        self.duplicates = 0
        self.reasons: Counter[str] = Counter()
        self.done_before = 0
        self._started = time.time()
        self._t0 = time.perf_counter()

    # ---- lifecycle -------------------------------------------------------------------------------
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset_counts()
        self._writer = ShardWriter(self.round_path, part=trainer.global_rank)
        self.done_before = len(self._writer.done_ids)
        if self.done_before:
            log.info("%s: rank %d resumes with %d clips already stored", self.round_path, trainer.global_rank,
                     self.done_before)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        assert self._writer is not None, "on_predict_start did not run"
        if not prediction:
            return
        position = {c: i for i, c in enumerate(batch["clip_id"])}
        for pred in prediction:
            clip_id = pred["clip_id"]
            i = position[clip_id]
            asr = batch["asr"][i]
            video_path, start, end = self._where(trainer, batch, i, clip_id)
            caption, source = " ".join(str(pred["caption"]).split()), self.source
            reason = caption_failure(caption, **self.checks)
            if reason is not None:
                self.reasons[reason] += 1
                if sum(self.reasons.values()) <= LOGGED_FAILURES:
                    log.warning("clip %s: caption fails the sanity checks (%s), the transcript replaces it: %r",
                             clip_id, reason, caption[:200])
                caption, source = asr, self.fallback_source
            record = {
                "clip_id": clip_id, "video_path": video_path, "start": start, "end": end, "asr": asr,
                "caption": caption, "round": self.round_index, "source": source,
            }
            if self._writer.write(record):
                self.written += 1
            else:
                self.duplicates += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self._writer is not None, "on_predict_start did not run"
        self._writer.finish()
        self._writer = None
        elapsed = time.perf_counter() - self._t0
        # Collectives on every rank; file writes on rank 0 only, between two barriers.
        local = torch.tensor(
            [self.written, self.duplicates, self.done_before, *(self.reasons[r] for r in FAILURE_REASONS), elapsed],
            dtype=torch.float64, device=pl_module.device,
        )
        gathered = trainer.strategy.all_gather(local).reshape(-1, local.numel()).cpu()
        totals = gathered[:, :-1].sum(dim=0).tolist()
        wall = float(gathered[:, -1].max())
        trainer.strategy.barrier("annotation_writer.shards_done")
        if trainer.is_global_zero:
            self._write_manifest(trainer, pl_module, totals, wall, num_ranks=gathered.shape[0])
        trainer.strategy.barrier("annotation_writer.manifest_done")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._writer is not None:
            self._writer.close()  # keep the .partial shard for the resume
            self._writer = None

    # ---- helpers ---------------------------------------------------------------------------------
    def _where(self, trainer, batch: dict[str, Any], i: int, clip_id: str) -> tuple[str, float, float]:
        if all(k in batch for k in ("video_path", "start", "end")):
            return str(batch["video_path"][i]), float(batch["start"][i]), float(batch["end"][i])
        if self._clip_index is None:
            self._clip_index = {
                r["clip_id"]: (r["video_path"], float(r["start"]), float(r["end"]))
                for r in open_source(_predict_source(trainer))
            }
        return self._clip_index[clip_id]

    def _write_manifest(self, trainer, pl_module, totals: list[float], wall: float, num_ranks: int) -> None:
        written, duplicates, done_before = (int(x) for x in totals[:3])
        reasons = {r: int(n) for r, n in zip(FAILURE_REASONS, totals[3:])}
        _finish_orphans(self.round_path, num_ranks)
        failures = sum(
            1 for p in sorted(self.round_path.glob("part-*.jsonl"))
            for r in JsonlRecordReader([p]) if r["source"] == self.fallback_source
        )
        source = _predict_source(trainer)
        extra: dict[str, Any] = {
            "failures": failures,
            "failure_reasons_this_run": reasons,
            "written_this_run": written,
            "already_stored_before_this_run": done_before,
            "duplicates_skipped": duplicates,
            "num_ranks": num_ranks,
            "throughput_clips_per_s": round(written / wall, 3) if wall > 0 else None,
            "timing": {
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self._started)),
                "wall_s": round(wall, 2),
            },
            "model": _describe(pl_module),
            "config_hash": config_hash(pl_module, trainer.datamodule, self),
            "sanity_checks": self.checks,
            "source": self.source,
            "fallback_source": self.fallback_source,
        }
        if source is not None:
            extra["predict_source"] = str(source)
            root = getattr(trainer.datamodule, "hparams", {}).get("video_root") or open_source(source).video_root
            extra["video_root"] = os.path.relpath(Path(root).resolve(), self.round_path.resolve())
        manifest = write_manifest(self.round_path, self.round_index, **extra)
        log.info("%s: %d records (%d written now, %d failures), %.2f clips/s", self.round_path,
                 manifest["records"], written, failures, extra["throughput_clips_per_s"] or 0.0)


def _predict_source(trainer) -> str | None:
    hp = getattr(trainer.datamodule, "hparams", None)
    if hp is None:
        return None
    return hp.get("predict_source") or hp.get("train_source")


def _finish_orphans(round_path: Path, num_ranks: int) -> None:
    """Finish ``.partial`` shards of ranks beyond the current world (all writers are done by now)."""
    for partial in sorted(round_path.glob(f"part-*.jsonl{PARTIAL_SUFFIX}")):
        part = int(partial.name[len("part-") : len("part-") + 5])
        if part >= num_ranks:
            log.warning("%s: finishing the shard of rank %d, absent from this run", partial, part)
            ShardWriter(round_path, part).finish()  # keeps the complete lines, cuts a torn tail


def _describe(pl_module) -> Any:
    describe = getattr(pl_module, "describe", None)
    return describe() if callable(describe) else type(pl_module).__name__


def config_hash(pl_module, datamodule, writer: AnnotationWriter) -> str:
    """SHA-256 (first 16 hex digits) of the model's and DataModule's hyper-parameters and the writer's settings.

    ``exclude_clips`` is left out: it is how a run resumes, not what it computes.
    """
    data_hp = dict(getattr(datamodule, "hparams", {}) or {})
    data_hp.pop("exclude_clips", None)
    blob = {
        "model": {"class": type(pl_module).__qualname__, **dict(getattr(pl_module, "hparams", {}) or {})},
        "data": {"class": type(datamodule).__qualname__, **data_hp},
        "writer": {"round": writer.round_index, "source": writer.source, **writer.checks},
    }
    text = json.dumps(blob, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
