"""``eval_mode`` gives a module back in the mode it had, also when the block raises."""

from __future__ import annotations

import pytest
from torch import nn

from lightning_modules.components.eval_mode import eval_mode


def test_eval_mode_restores_the_mode_it_found():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    with eval_mode(net):
        assert not net.training and not net[1].training
    assert net.training and net[1].training
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError("generation failed")
    assert net.training
    net.eval()
    with eval_mode(net):
        pass
    assert not net.training
