"""Puts the DataModule's count of skipped clips (undecodable videos) into the logger."""

from __future__ import annotations

import lightning as L


class SkippedSamplesMonitor(L.Callback):
    """Logs ``data/skipped_clips``: clips dropped since the run began (summed over ranks, kept across resumes)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        count = getattr(trainer.datamodule, "skipped_total", None)
        if count is not None:
            pl_module.log("data/skipped_clips", float(count), on_step=True, on_epoch=False, reduce_fx="sum", sync_dist=True)
