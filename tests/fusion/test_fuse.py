"""Model soups, WiSE-FT, ensembles, BatchNorm recalibration, and `python -m tlx fuse` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.helpers import TINY_MODEL, make_imagefolder, run_cli, tiny_fit_args
from tlx.cli import main
from tlx.fusion import (EnsembleClassifier, FusionError, greedy_soup, interpolate_weights, load_ingredients,
                        recalibrate_batchnorm, recalibration_plan, uniform_soup)
from tlx.fusion.bn_recalibration import DEFAULT_BATCHES, statistics_keys
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
    net = _bn_net()
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


def _bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())


def test_recalibration_plan_re_estimates_only_when_statistics_differ():
    net = _bn_net()
    a = {k: v.clone() for k, v in net.state_dict().items()}
    b = {k: v + 1 if k == "0.weight" else v.clone() for k, v in a.items()}  # other weights, same statistics
    b["1.num_batches_tracked"] += 7  # a step count is no statistic: trained longer, measured nothing new
    assert statistics_keys(net) == ["1.running_mean", "1.running_var"]
    same = recalibration_plan(net, [a, b])
    assert (same.batches, same.statistics_differ) == (0, False) and "identical" in same.reason
    c = dict(b, **{"1.running_var": b["1.running_var"] * 1.5})
    differ = recalibration_plan(net, [a, b, c])
    assert (differ.batches, differ.statistics_differ) == (DEFAULT_BATCHES, True) and "differ" in differ.reason
    # an explicit number wins either way; 0 switches re-estimation off
    assert recalibration_plan(net, [a, b], requested=5).batches == 5
    assert recalibration_plan(net, [a, c], requested=0).batches == 0
    assert recalibration_plan(nn.Linear(2, 2), [nn.Linear(2, 2).state_dict()] * 2).batches == 0


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


def _same_statistics_as(src: str, stats_from: str, out) -> str:
    """A copy of checkpoint ``src`` whose BatchNorm running statistics are those of ``stats_from``
    (as if both had been fine-tuned with the statistics frozen)."""
    ckpt, donor = torch.load(src, weights_only=True), torch.load(stats_from, weights_only=True)["state_dict"]
    for key in ckpt["state_dict"]:
        if key.endswith(("running_mean", "running_var")):
            ckpt["state_dict"][key] = donor[key].clone()
    torch.save(ckpt, out)
    return str(out)


def _wise_ft(data, paths, out, *extra) -> tuple[dict, dict]:
    args = [a for a in _fuse_args(data, paths, out, "wise_ft", "--alphas", "0.5") if "bn_recalibration" not in a]
    run_cli([*args, *extra])
    return json.loads((out / "fusion.json").read_text()), torch.load(out / "fused.ckpt", weights_only=True)["state_dict"]


def test_identical_bn_statistics_are_kept_and_differing_ones_re_estimated(three_runs, tmp_path):
    data, paths = three_runs
    lp, ft = (load_ingredients([p])[0].state_dict for p in paths[:2])
    keys = [k for k in lp if k.endswith(("running_mean", "running_var"))]
    assert keys and any(not torch.equal(lp[k], ft[k]) for k in keys)  # these runs trained their statistics

    # identical statistics: by default no re-estimation, the result is exactly the interpolation
    same = _same_statistics_as(paths[1], paths[0], tmp_path / "ft_frozen_bn.ckpt")
    report, fused = _wise_ft(data, [paths[0], same], tmp_path / "same")
    assert report["bn_recalibration"]["batches"] == 0 and not report["bn_recalibration"]["statistics_differ"]
    assert not report["recalibrated"]
    expected = interpolate_weights(lp, load_ingredients([same])[0].state_dict, 0.5)
    assert all(torch.equal(fused[k], expected[k]) for k in expected)
    assert all(torch.equal(fused[k], lp[k]) for k in keys)

    # differing statistics: re-estimated by default; only the statistics move away from the interpolation
    report, fused = _wise_ft(data, paths[:2], tmp_path / "differ")
    assert report["bn_recalibration"] == {"requested": None, "batches": DEFAULT_BATCHES, "statistics_differ": True,
                                          "reason": report["bn_recalibration"]["reason"]}
    assert report["recalibrated"]
    mixed = interpolate_weights(lp, ft, 0.5)
    counters = {k.replace("running_mean", "num_batches_tracked") for k in keys}
    assert {k for k in mixed if not torch.equal(fused[k], mixed[k])} <= {*keys, *counters}
    assert any(not torch.equal(fused[k], mixed[k]) for k in keys)

    # forced either way
    report, fused = _wise_ft(data, [paths[0], same], tmp_path / "forced", "--bn_recalibration_batches=2")
    assert report["bn_recalibration"]["batches"] == 2 and report["recalibrated"]
    report, fused = _wise_ft(data, paths[:2], tmp_path / "off", "--bn_recalibration_batches=0")
    assert report["bn_recalibration"]["batches"] == 0 and not report["recalibrated"]
    assert all(torch.equal(fused[k], mixed[k]) for k in mixed)


def test_default_recipe_runs_fuse_without_re_estimation(tmp_path):
    """Runs of the default recipe (LP-FT, statistics frozen on small data) share their BatchNorm
    statistics, so by default the soup keeps them."""
    from tests.helpers import TINY_PREPROCESSING

    data = make_imagefolder(tmp_path / "data", n_train=6, n_val=3)
    paths = []
    for seed in (1, 2):
        run_cli(["fit", "--data.root", str(data), f"--model.init_args.backbone={TINY_MODEL['backbone']}",
                 "--model.init_args.weights=null", f"--model.init_args.preprocessing={json.dumps(TINY_PREPROCESSING)}",
                 "--data.init_args.num_workers=0", "--trainer.max_steps=3", f"--seed_everything={seed}",
                 f"--trainer.default_root_dir={tmp_path / str(seed)}", "--trainer.enable_progress_bar=false",
                 "--trainer.logger=false"])
        paths.append(str(next((tmp_path / str(seed)).rglob("best.ckpt"))))
    args = [a for a in _fuse_args(data, paths, tmp_path / "out", "uniform_soup") if "bn_recalibration" not in a]
    run_cli(args)
    report = json.loads((tmp_path / "out" / "fusion.json").read_text())
    assert report["batchnorm"] and report["bn_recalibration"]["batches"] == 0 and not report["recalibrated"]
    assert "identical" in report["bn_recalibration"]["reason"]


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
