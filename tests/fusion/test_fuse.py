"""Model soups, WiSE-FT, ensembles, BatchNorm recalibration, and `python -m tlx fuse` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.helpers import TINY_MODEL, make_imagefolder, run_cli, tiny_fit_args
from tlx.cli import main
from tlx.fusion import (EnsembleClassifier, FusionError, greedy_soup, interpolate_weights, load_ingredients,
                        recalibrate_batchnorm, uniform_soup)
from tlx.models import ImageClassifier


def _net(seed: int) -> ImageClassifier:
    torch.manual_seed(seed)
    return ImageClassifier(**TINY_MODEL, class_names=["cat", "dog"])


def test_soup_of_copies_equals_the_checkpoint():
    state = _net(0).state_dict()
    soup = uniform_soup([state] * 3)
    for key, value in state.items():
        assert soup[key].dtype == value.dtype
        torch.testing.assert_close(soup[key], value, rtol=1e-6, atol=1e-7)


def test_uniform_soup_is_the_mean():
    a, b = _net(0).state_dict(), _net(1).state_dict()
    soup = uniform_soup([a, b])
    key = "head.fc.weight" if "head.fc.weight" in a else next(k for k in a if a[k].is_floating_point())
    torch.testing.assert_close(soup[key], (a[key] + b[key]) / 2)


def test_wise_ft_ends_reproduce_their_inputs_bit_for_bit():
    lp, ft = _net(0).state_dict(), _net(1).state_dict()
    for alpha, expected in ((0.0, lp), (1.0, ft)):
        mixed = interpolate_weights(lp, ft, alpha)
        assert all(torch.equal(mixed[k], expected[k]) for k in expected)
    with pytest.raises(FusionError, match=r"\[0, 1\]"):
        interpolate_weights(lp, ft, 1.5)


def test_greedy_soup_keeps_only_ingredients_that_do_not_hurt():
    states = [{"w": torch.tensor([float(v)])} for v in (1.0, 3.0, 100.0)]
    accuracy = lambda s: 90.0 - abs(float(s["w"]) - 2.0)  # noqa: E731  best near w = 2
    soup, members, steps = greedy_soup(states, [89.0, 89.0, 0.0], accuracy)
    assert members == [0, 1] and float(soup["w"]) == 2.0
    assert [s["kept"] for s in steps] == [True, True, False]


def test_bn_recalibration_changes_only_running_statistics():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loader = [(torch.randn(8, 3, 6, 6) * 3 + 1, torch.zeros(8)) for _ in range(4)]
    assert recalibrate_batchnorm(net, loader, num_batches=3)
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert int(after["1.num_batches_tracked"]) == 3 and net[1].momentum == 0.1 and not net.training
    # the statistics are those of the three batches' conv outputs (a cumulative average)
    with torch.no_grad():
        means = torch.stack([net[0](x).mean(dim=(0, 2, 3)) for x, _ in loader[:3]]).mean(0)
    torch.testing.assert_close(after["1.running_mean"], means, rtol=1e-4, atol=1e-5)


def test_ensemble_is_the_mean_of_the_members_logits():
    nets = [_net(s).eval() for s in (0, 1)]
    hparams = [dict(n.hparams) for n in nets]
    ensemble = EnsembleClassifier.from_members(hparams, [n.state_dict() for n in nets]).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ensemble(x), (nets[0](x) + nets[1](x)) / 2)


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse")
    data = make_imagefolder(root / "data")
    paths = []
    for seed in (1, 2, 3):
        run_cli(tiny_fit_args(data, root / f"r{seed}", extra=[f"--seed_everything={seed}", "--trainer.logger=false"]))
        paths.append(str(root / f"r{seed}" / "checkpoints" / "best.ckpt"))
    return data, paths


def _fuse_args(data, paths, out, method, *extra):
    return ["fuse", "--ckpt_paths", *paths, "--method", method, f"--data.init_args.root={data}",
            "--data.init_args.num_workers=0", "--data.init_args.batch_size=4", "--bn_recalibration_batches=2",
            f"--output_dir={out}", *extra]


@pytest.mark.parametrize("method", ["greedy_soup", "ensemble"])
def test_fuse_end_to_end_writes_a_checkpoint_that_test_reads(three_runs, tmp_path, method):
    data, paths = three_runs
    run_cli(_fuse_args(data, paths, tmp_path / "out", method))
    report = json.loads((tmp_path / "out" / "fusion.json").read_text())
    assert [i["path"] for i in report["ingredients"]] == paths
    assert report["inference_cost_vs_one_model"] == (3.0 if method == "ensemble" else 1.0)
    if method == "greedy_soup":
        assert report["greedy_order"][0]["kept"] and report["result"]["val_acc"] >= report["best_single"]["val_acc"]
    test = run_cli(["test", "--data.class_path=tlx.data.ImageFolderDataModule", f"--data.init_args.root={data}",
                    "--data.init_args.num_workers=0", f"--trainer.default_root_dir={tmp_path / 'eval'}",
                    "--trainer.enable_progress_bar=false", f"--ckpt_path={tmp_path / 'out' / 'fused.ckpt'}"])
    assert 100 * float(test.trainer.callback_metrics["test/acc"]) == pytest.approx(report["result"]["val_acc"])


def test_wise_ft_end_to_end_reports_the_alpha_curve(three_runs, tmp_path):
    data, paths = three_runs
    run_cli(_fuse_args(data, paths[:2], tmp_path, "wise_ft", "--alphas", "0", "0.5", "1"))
    report = json.loads((tmp_path / "fusion.json").read_text())
    assert [p["alpha"] for p in report["alpha_curve"]] == [0.0, 0.5, 1.0]
    assert report["alpha"] in (0.0, 0.5, 1.0)
    assert report["result"]["val_acc"] == max(p["val_acc"] for p in report["alpha_curve"])


@pytest.mark.parametrize("case, message", [
    ("single", "at least 2 checkpoints"),
    ("alpha", r"--alphas must be numbers in \[0, 1\]"),
    ("classes", "fuse checkpoints trained on the same class folders"),
    ("architecture", "only checkpoints of one architecture"),
])
def test_bad_fuse_input_is_one_clear_line(three_runs, tmp_path, capsys, case, message):
    data, paths = three_runs
    if case == "single":
        args = _fuse_args(data, paths[:1], tmp_path, "uniform_soup")
    elif case == "alpha":
        args = _fuse_args(data, paths[:2], tmp_path, "wise_ft", "--alphas", "0.5", "1.2")
    else:  # a copy of one run that claims other classes, or holds another network's tensors
        ckpt = torch.load(paths[1], weights_only=True)
        if case == "classes":
            ckpt["hyper_parameters"]["class_names"] = ["cat", "fox"]
        else:
            ckpt["hyper_parameters"]["backbone"] = "timm:test_resnet"
        torch.save(ckpt, tmp_path / "other.ckpt")
        args = _fuse_args(data, [paths[0], str(tmp_path / "other.ckpt")], tmp_path, "uniform_soup")
    with pytest.raises(SystemExit):
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tlx: error:")
    assert any(__import__("re").search(message, line) for line in err)


def test_load_ingredients_accepts_one_architecture(three_runs):
    _, paths = three_runs
    assert [i.class_names for i in load_ingredients(paths)] == [["cat", "dog"]] * 3
