"""Ranks agreeing step by step, with a deadline, naming the rank that failed or went missing.

``strategy.barrier`` waits for the process group's timeout (30 minutes for gloo by default) and
then reports a timeout that names no rank; a rank that raised leaves the others waiting all that
time. ``RankSync.agree`` instead posts this rank's outcome (ok, or the error that stopped it) and
whether it has more work in the process group's store, and waits until every rank has posted:

- every rank is ok: it returns whether any rank has more work (a lockstep loop's condition);
- a rank posted an error: every rank raises ``RankFailure`` carrying that rank's message (which
  names its shard) at once, without waiting out the deadline;
- ``timeout_s`` passes: ``RankFailure`` naming the ranks that never posted (crashed, killed, or
  still working: the deadline must exceed the slowest rank's work between two agreements).

Every rank makes the same calls in the same order, so step numbers agree; a resumed run has a new process
group, hence a new store. On one process, ``agree`` raises its own error or returns ``work``.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import torch.distributed as dist

_instances = itertools.count()


class RankFailure(RuntimeError):
    """A rank failed or did not report in time; the message names it and says why."""


class RankSync:
    """A sequence of agreement points shared by all ranks."""

    def __init__(self, name: str, timeout_s: float) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if self.active else (0, 1)
        self._prefix = f"viddf/sync{next(_instances)}/"
        self._step = 0
        # The default group's store (private in torch, stable for years); our keys do not disturb
        # collectives, and blocking ``wait`` on a key needs no polling.
        self._store = dist.distributed_c10d._get_default_store() if self.active else None

    def agree(self, error: str | None = None, work: bool = False) -> bool:
        """Post this rank's outcome, wait for every rank's; returns whether any rank has more work."""
        if not self.active:
            if error is not None:
                raise RankFailure(f"{self.name}: rank 0: {error}")
            return work
        step, self._step = self._step, self._step + 1
        here = f"{self._prefix}{step}/"
        try:
            self._store.set(f"{self._prefix}progress/{self.rank}", str(step))
            if error is not None:
                self._store.set(f"{self._prefix}error/{self.rank}", error)
                self._store.add(self._prefix + "errors", 1)
                self._store.set(here + "go", "")  # wake the ranks waiting at this step now
            if work:
                self._store.add(here + "work", 1)
            if self._store.add(here + "arrived", 1) == self.world:
                self._store.set(here + "go", "")
            try:
                self._store.wait([here + "go"], timedelta(seconds=self.timeout_s))
            except Exception:  # the store's timeout error
                raise RankFailure(
                    f"{self.name}: rank(s) {self._behind(step)} did not report within {self.timeout_s:.0f} s "
                    f"(crashed, killed, or still working); rank {self.rank} stops waiting"
                ) from None
            if self._store.add(self._prefix + "errors", 0):
                raise RankFailure(f"{self.name}: {self._errors()}")
            more = self._store.add(here + "work", 0) > 0
            if self.rank == 0 and step >= 2:  # every rank is past step - 2: forget its keys
                for key in ("arrived", "work", "go"):
                    self._store.delete_key(f"{self._prefix}{step - 2}/{key}")
        except RankFailure:
            raise
        except Exception as e:  # the store lives in rank 0's process, which may be gone
            raise RankFailure(f"{self.name}: rank {self.rank} cannot reach the other ranks ({e})") from e
        return more

    def _behind(self, step: int) -> list[int]:
        behind = []
        for r in range(self.world):
            key = f"{self._prefix}progress/{r}"
            if not self._store.check([key]) or int(self._store.get(key)) < step:
                behind.append(r)
        return behind

    def _errors(self) -> str:
        failed = []
        for r in range(self.world):
            key = f"{self._prefix}error/{r}"
            if self._store.check([key]):
                failed.append(f"rank {r}: {self._store.get(key).decode()}")
        return "; ".join(failed)
