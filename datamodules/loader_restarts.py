"""A pass over a rank's batches that survives DataLoader failures, or fails naming rank and files.

A DataLoader worker can die mid-shard (killed for memory, a crash in native decoding code) or
raise; PyTorch then ends the whole iteration. Batch ``b`` of a rank is the same whatever the
workers (``streaming_dataset``), so a fresh loader started at the first batch not yet delivered
continues exactly where the failed one stopped. After ``retries`` failures in a row without a
batch delivered in between, the pass stops with a ``DataLoadingError`` that names the rank, the
batch and the files (tar shards) that batch and the ones prefetched with it read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader

log = logging.getLogger(__name__)


class DataLoadingError(RuntimeError):
    """Loading a batch kept failing; the message names the rank, the batch and its files."""


def batches_with_restarts(
    make_loader: Callable[[int], DataLoader], start_batch: int, retries: int, rank: int
) -> Iterator[dict[str, Any]]:
    """Yield the batches of ``make_loader(start)`` from ``start_batch`` on, restarting after failures."""
    next_batch, failures = start_batch, 0
    while True:
        loader = make_loader(next_batch)
        try:
            for batch in loader:
                next_batch, failures = batch["batch_index"] + 1, 0
                yield batch
            return
        except Exception as error:  # a dead worker surfaces as RuntimeError, a raising one as its own type
            where = _where(loader, next_batch, rank)
            if failures >= retries:
                raise DataLoadingError(
                    f"{where}: data loading failed {failures + 1} time(s) in a row: {type(error).__name__}: {error}"
                ) from error
            failures += 1
            log.warning("%s: data loading failed (%s: %s); restarting the loader there (%d/%d)",
                        where, type(error).__name__, error, failures, retries)


def _where(loader: DataLoader, batch: int, rank: int) -> str:
    # In flight: this batch and the ones the other workers were decoding at the same time.
    in_flight = max(1, loader.num_workers)
    files = loader.dataset.batch_files(batch, in_flight)
    shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
    span = f"batch {batch}" if in_flight == 1 else f"batches {batch}-{batch + in_flight - 1}"
    return f"rank {rank}, {span} (reading {shown or 'nothing'})"
