"""Γ monitor: AdaTaiLr's trade-off and token statistics, every step, in the logger and a CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import lightning as L

from datamodules.annotation_store import atomic_write_text

COLUMNS = ("step", "gamma", "mean_p", "mean_weight", "clamped_fraction", "nll")


class GammaMonitor(L.Callback):
    """Logs ``adatailr/{gamma,mean_p,mean_weight,clamped_fraction,nll}`` each training step.

    The whole curve is kept in the callback's state, so it survives a resume, and is written to
    ``gamma_curve.csv`` in the logger's folder when training ends.
    """

    def __init__(self, csv_name: str = "gamma_curve.csv") -> None:
        """
        Args:
            csv_name: file name of the curve written into the log directory at the end of fit.
        """
        self.csv_name = csv_name
        self.history: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        stats = getattr(pl_module, "last_token_stats", None)
        if stats is None or outputs is None:
            return
        row = {
            "step": float(trainer.global_step),
            "gamma": float(pl_module.last_gamma),
            "mean_p": float(stats.mean_p),
            "mean_weight": float(stats.mean_weight),
            "clamped_fraction": float(stats.clamped_frac),
            "nll": float(stats.nll),
        }
        self.history.append(row)
        for key in COLUMNS[1:]:
            pl_module.log(f"adatailr/{key}", row[key], on_step=True, on_epoch=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # every rank asks: the property may broadcast
        if trainer.is_global_zero and log_dir is not None and self.history:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.history)
            atomic_write_text(Path(log_dir) / self.csv_name, buffer.getvalue())

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
