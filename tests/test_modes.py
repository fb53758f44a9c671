"""tlx.modes.evaluating: every module's own mode back after an evaluation pass."""

from __future__ import annotations

from torch import nn

from tlx.modes import evaluating


def test_each_module_gets_its_own_mode_back_not_the_parents():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Linear(4, 2))
    net.train()
    net[1].eval()  # a frozen BatchNorm, as a fine-tuning strategy leaves it
    with evaluating(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[0].training and not net[1].training and net[2].training


def test_modes_come_back_when_the_block_raises():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    net[1].eval()
    try:
        with evaluating(net):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert net.training and not net[1].training
