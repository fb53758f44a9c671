"""Transferability metrics against the papers' formulas, and ``python -m tlx rank`` end to end (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import make_imagefolder
from tlx.cli import gather_list_options, main
from tlx.transferability.hscore import hscore
from tlx.transferability.knn import knn
from tlx.transferability.leep import leep
from tlx.transferability.logme import logme
from tlx.transferability.nce import nce


def _blobs(n_per_class=30, classes=3, dim=16, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim)) * 3
    y = np.repeat(np.arange(classes), n_per_class)
    return centres[y] + rng.normal(0, spread, (len(y), dim)), y


def logme_reference(f: np.ndarray, y: np.ndarray, iters: int = 200) -> float:
    """LogME from the ICML 2021 paper's Algorithm 1, written plainly: A = alpha I + beta F^T F,
    m = beta A^-1 F^T y, gamma = sum beta s_i / (alpha + beta s_i), alpha = gamma / m^T m,
    beta = (N - gamma) / |Fm - y|^2, evidence = D/2 log alpha + N/2 log beta - beta/2 |Fm - y|^2
    - alpha/2 m^T m - 1/2 log|A| - N/2 log 2pi, divided by N and averaged over one-hot columns.
    The updates carry the reference code's 1e-5 guards: with N < D the labels fit exactly."""
    n, d = f.shape
    s = np.linalg.eigvalsh(f.T @ f).clip(min=0)
    out = []
    for c in range(y.max() + 1):
        t = (y == c).astype(float)
        alpha, beta = 1.0, 1.0
        for _ in range(iters):
            a = alpha * np.eye(d) + beta * f.T @ f
            m = beta * np.linalg.solve(a, f.T @ t)
            gamma = (beta * s / (alpha + beta * s)).sum()
            alpha, beta = gamma / (m @ m + 1e-5), (n - gamma) / ((f @ m - t) @ (f @ m - t) + 1e-5)
        a = alpha * np.eye(d) + beta * f.T @ f
        m = beta * np.linalg.solve(a, f.T @ t)
        r = f @ m - t
        ev = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - beta / 2 * r @ r - alpha / 2 * m @ m
              - np.linalg.slogdet(a)[1] / 2 - n / 2 * np.log(2 * np.pi))
        out.append(ev / n)
    return float(np.mean(out))


def leep_reference(theta: np.ndarray, y: np.ndarray) -> float:
    """LEEP as in Nguyen et al. 2020, eqs. (1)-(2), with explicit loops."""
    n, z = theta.shape
    c = y.max() + 1
    joint = np.zeros((c, z))
    for i in range(n):
        joint[y[i]] += theta[i] / n
    cond = joint / joint.sum(axis=0)
    return float(np.mean([np.log(sum(cond[y[i], k] * theta[i, k] for k in range(z))) for i in range(n)]))


@pytest.mark.parametrize("n_per_class,dim", [(20, 8), (4, 30)])  # N > D, and N < D (zero singular values)
def test_logme_matches_the_papers_algorithm(n_per_class, dim):
    f, y = _blobs(n_per_class, 3, dim, spread=1.0, seed=1)
    assert logme(f, y) == pytest.approx(logme_reference(f, y), rel=1e-5)


def test_logme_ranks_separable_features_above_noise():
    separable, y = _blobs()
    noise = np.random.default_rng(1).normal(0, 1, separable.shape) * separable.std()
    assert logme(separable, y) > logme(noise, y) + 0.1
    # H-score and kNN agree on this easy case.
    assert hscore(separable, y) > hscore(noise, y)
    assert knn(separable, y) == 1.0 and knn(noise, y) < 0.6


def test_leep_and_nce_match_the_papers_formulas():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (12, 5))
    theta = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    assert leep(theta, y) == pytest.approx(leep_reference(theta, y), rel=1e-10)
    # NCE (Tran et al. 2019): -H(Y|Z) with hard source labels, from counts.
    z = theta.argmax(1)
    ref = sum((np.sum((y == a) & (z == b)) / 12) * np.log(np.sum((y == a) & (z == b)) / np.sum(z == b))
              for a in range(3) for b in range(5) if np.sum((y == a) & (z == b)))
    assert nce(theta, y) == pytest.approx(ref, rel=1e-10)
    # Source labels that determine the target: LEEP near 0 and NCE exactly 0.
    perfect = np.eye(3)[y] * 0.98 + 0.01
    assert leep(perfect, y) > -0.05 and nce(perfect, y) == 0.0


@pytest.mark.parametrize("n,d", [(50, 20), (30, 200)])
def test_hscore_matches_the_direct_shrinkage_formula(n, d):
    """tr(cov_a^-1 (1 - a) cov(E[f|y])) with the D x D Ledoit-Wolf estimate, written out plainly."""
    rng = np.random.default_rng(n)
    y = rng.integers(0, 4, n)
    f = rng.normal(size=(n, d)) + y[:, None] * 0.5
    x = f - f.mean(0)
    emp = x.T @ x / n
    mu = np.trace(emp) / d
    delta = np.sum((emp - mu * np.eye(d)) ** 2) / d
    beta = (np.sum((x**2).T @ (x**2)) / n - np.sum(emp**2)) / (d * n)
    a = min(beta, delta) / delta
    means = np.stack([x[y == c].mean(0) for c in y])
    ref = np.trace(np.linalg.inv((1 - a) * emp + a * mu * np.eye(d)) @ ((1 - a) * np.cov(means, rowvar=False)))
    assert hscore(f, y) == pytest.approx(ref, rel=1e-9)


def test_scores_of_bf16_and_fp32_features_agree_to_three_digits():
    f, y = _blobs(40, 4, 64, spread=1.0, seed=3)
    f = torch.tensor(f, dtype=torch.float32).relu()  # post-ReLU features, as a backbone gives
    bf16 = f.to(torch.bfloat16)
    for metric in (logme, hscore, knn):
        a, b = metric(f, y), metric(bf16, y)
        assert b == pytest.approx(a, rel=1e-3), metric.__name__
    theta = torch.softmax(torch.tensor(np.random.default_rng(0).normal(0, 2, (160, 10))), 1).float()
    for metric in (leep, nce):
        assert metric(theta.to(torch.bfloat16), y) == pytest.approx(metric(theta, y), rel=1e-3)


def test_space_separated_lists_become_jsonargparse_lists():
    assert gather_list_options(["rank", "--backbones", "a", "b", "--metrics", "logme", "--layer", "x"]) == [
        "rank", '--backbones=["a", "b"]', '--metrics=["logme"]', "--layer", "x"]
    assert gather_list_options(["rank", "--backbones", "[a,b]"]) == ["rank", "--backbones", "[a,b]"]
    assert gather_list_options(["fuse", "--alphas", "0", "0.5", "1"]) == ["fuse", "--alphas=[0.0, 0.5, 1.0]"]


def _rank(tmp_path: Path, *extra: str) -> None:
    data = tmp_path / "data"
    if not data.exists():  # written once: the feature cache is keyed by the files' modification times
        make_imagefolder(data, classes=("cat", "dog", "fox"), n_train=6)
    main(["rank", "--data.root", str(data), "--data.num_workers", "0", "--trainer.accelerator", "cpu",
          "--trainer.default_root_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), *extra])


def test_rank_without_source_classifier_skips_leep_with_a_note(tmp_path, capsys):
    _rank(tmp_path, "--backbones", "timm:test_efficientnet", "timm:test_vit", "--weights", "null",
          "--cache_dir", str(tmp_path / "cache"))
    result = json.loads((tmp_path / "out" / "ranking.json").read_text())
    rows = result["ranking"]
    assert {r["backbone"] for r in rows} == {"timm:test_efficientnet", "timm:test_vit"}
    for r in rows:
        assert r["scores"]["leep"] is None and r["scores"]["nce"] is None
        assert any("leep, nce skipped" in n for n in r["notes"])
        assert r["scores"]["logme"] is not None and r["images"] == 18 and r["extraction"] == "computed"
    assert rows[0]["scores"]["logme"] >= rows[1]["scores"]["logme"]  # sorted by the first metric
    assert result["precision"] == "auto"  # rank's own default: bf16 where native, not the trainer's fp32
    out = capsys.readouterr().out
    assert "leep, nce skipped" in out and (tmp_path / "out" / "ranking.csv").read_text().startswith("rank,backbone,logme")
    # Ranking again reads the features from the cache, with the same scores.
    _rank(tmp_path, "--backbones", "timm:test_efficientnet", "--weights", "null", "--metrics", "logme",
          "--cache_dir", str(tmp_path / "cache"), "--max_images_per_class", "6")
    again = json.loads((tmp_path / "out" / "ranking.json").read_text())["ranking"][0]
    first = next(r for r in rows if r["backbone"] == "timm:test_efficientnet")
    assert again["extraction"] == "disk" and again["scores"]["logme"] == first["scores"]["logme"]


def test_rank_a_bad_backbone_name_among_several_ranks_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _rank(tmp_path, "--backbones", "timm:test_efficientnet", "timm:test_efficientnett", "--weights", "null")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "timm:test_efficientnett" in err[0] and "Nothing was ranked" in err[0]
    assert not (tmp_path / "out").exists()


def test_rank_intermediate_layer_and_a_bad_layer(tmp_path, capsys):
    _rank(tmp_path, "--backbones", "timm:test_efficientnet", "--weights", "null", "--layer", "blocks.1",
          "--metrics", "logme", "knn")
    row = json.loads((tmp_path / "out" / "ranking.json").read_text())["ranking"][0]
    assert row["feature_dim"] != 256 and row["scores"]["knn"] is not None
    with pytest.raises(SystemExit):
        _rank(tmp_path, "--backbones", "timm:test_efficientnet", "--weights", "null", "--layer", "blocks.99")
    assert "--layer 'blocks.99'" in capsys.readouterr().err


def test_packaged_weights_keep_their_imagenet_classifier_outside_the_module():
    from tlx.backbones import create_backbone

    backbone = create_backbone("efficientnet_lite0")
    head = backbone.source_classifier
    assert isinstance(head, torch.nn.Linear) and head.out_features == 1000
    assert not any(k.startswith("source_classifier") for k in backbone.state_dict())  # not trained, not saved
    assert create_backbone("efficientnet_lite0", weights=None).source_classifier is None
