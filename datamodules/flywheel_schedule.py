"""Which round and phase an epoch of a flywheel ``fit`` belongs to.

Round r (1-based) is ``pretrain_epochs`` epochs of pretraining on round r−1's captions, then
``sft_epochs`` epochs of SFT on the human examples; after its last epoch the pool is
re-annotated into round r. Epochs count from 0 across the whole fit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlywheelSchedule:
    rounds: int
    pretrain_epochs: int
    sft_epochs: int

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.pretrain_epochs < 0 or self.sft_epochs < 0:
            raise ValueError(f"need rounds >= 1 and non-negative epoch counts, got {self}")
        if self.epochs_per_round == 0:
            raise ValueError("a round needs at least one epoch (pretrain_epochs + sft_epochs > 0)")

    @property
    def epochs_per_round(self) -> int:
        return self.pretrain_epochs + self.sft_epochs

    @property
    def total_epochs(self) -> int:
        return self.rounds * self.epochs_per_round

    def round_of(self, epoch: int) -> int:
        """The round (1-based) that ``epoch`` trains for."""
        return epoch // self.epochs_per_round + 1

    def phase_of(self, epoch: int) -> str:
        return "pretrain" if epoch % self.epochs_per_round < self.pretrain_epochs else "sft"
