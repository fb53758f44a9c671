"""BatchNorm statistics re-estimated on the training images (tlx.recipes.bn_stats), and the
recipe's choice between them and the pretrained ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tlx.recipes.bn_stats import batchnorm_layers, load_bn_state, reestimate_bn_stats, save_bn_state, shift


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5))
    with torch.no_grad():  # "pretrained" statistics, far from the data's
        net[1].running_mean.fill_(3.0)
        net[4].running_mean.fill_(-2.0)
        net[4].running_var.fill_(4.0)
    return net


def test_reestimated_statistics_are_the_datas_for_the_chosen_layers_only():
    net = _net()
    images = torch.randn(10, 3, 4, 4) * 2 + 1
    data = TensorDataset(images, torch.zeros(10, dtype=torch.long))
    net.train()  # modes come back as they were
    first = net[1].running_mean.clone()
    before = reestimate_bn_stats(net, [net[4]], data, batch_size=5)
    # the inputs of the chosen layer, with the frozen layer's pretrained statistics in force
    with torch.no_grad():
        net.eval()
        inputs = net[:4](images)
    batches = inputs.split(5)
    assert torch.allclose(net[4].running_mean, inputs.mean(dim=(0, 2, 3)), atol=1e-5)
    # the average of the batches' unbiased variances (precise BN)
    var = torch.stack([b.transpose(0, 1).flatten(1).var(dim=1) for b in batches]).mean(0)
    assert torch.allclose(net[4].running_var, var, atol=1e-4)
    assert torch.equal(net[1].running_mean, first)  # the layer not chosen keeps its statistics
    assert net[4].momentum == 0.1
    assert torch.all(before[net[4]][0] == -2.0)
    # shift: |new - old| / old std, averaged over channels
    expected = float(((inputs.mean(dim=(0, 2, 3)) + 2.0).abs() / (4.0 + net[4].eps) ** 0.5).mean())
    assert shift(before) == pytest.approx(expected, rel=1e-5)
    load_bn_state(before)
    assert torch.all(net[4].running_mean == -2.0) and torch.all(net[4].running_var == 4.0)


def test_modes_are_restored_and_layers_found_once():
    net = _net()
    net.train()
    net[0].eval()
    reestimate_bn_stats(net, batchnorm_layers([net, net[3:]]), TensorDataset(torch.randn(4, 3, 4, 4), torch.zeros(4)), 2)
    assert [m.training for m in net] == [False, True, True, True, True]
    assert batchnorm_layers([net, net[3:]]) == [net[1], net[4]]
    state = save_bn_state([net[1]])
    assert set(state) == {net[1]}
