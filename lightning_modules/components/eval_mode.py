"""``with eval_mode(module):`` runs a block with ``module`` in eval mode (no dropout, running
statistics) and leaves it in the mode it had before, whether the block returns or raises."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
