"""Domain-adaptation objectives: gradient reversal, and each loss against a hand computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from tlx.domain_adaptation.objectives import (
    CDAN, CORAL, DAN, DANN, MCC, DomainBatch, InformationMaximization, InstanceWeighting, SourceOnly,
)
from tlx.domain_adaptation.objectives.base import certainty_weights, entropy
from tlx.domain_adaptation.objectives.cdan import RandomizedMultilinearMap, multilinear_map
from tlx.domain_adaptation.objectives.coral import coral
from tlx.domain_adaptation.objectives.dan import mk_mmd
from tlx.domain_adaptation.objectives.grl import reverse_gradient, warm_start
from tlx.domain_adaptation.objectives.information_maximization import information_maximization, pseudo_label_loss
from tlx.domain_adaptation.objectives.instance_weighting import importance_weights
from tlx.domain_adaptation.objectives.mcc import class_confusion


def test_gradient_reversal_is_identity_forward_and_scales_negated_gradient_backward():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x.detach())
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.3, -0.6, -0.9]))


def test_warm_start_schedule():
    assert warm_start(0.0) == 0.0
    assert warm_start(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert warm_start(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert warm_start(2.0) == warm_start(1.0)  # clamped


def test_coral_by_hand():
    s = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # cov: [[2, 0], [0, 0]]
    t = torch.tensor([[0.0, 0.0], [0.0, 2.0]])  # cov: [[0, 0], [0, 2]]
    # ||diff||_F^2 = 4 + 4 = 8, / (4 * d^2 = 16)
    assert coral(s, t).item() == pytest.approx(0.5)
    assert coral(s, s).item() == pytest.approx(0.0)


def test_mk_mmd_by_hand():
    s = torch.tensor([[0.0], [0.0]])
    t = torch.tensor([[1.0], [1.0]])
    # squared distances: 0 within a domain, 1 across; mean over the 4x4 matrix = 8/16 = 0.5
    k_cross = sum(math.exp(-1 / (2 * a * 0.5)) for a in (1.0, 2.0))
    expected = 2.0 + 2.0 - 2 * k_cross  # within-domain kernels are 1 per kernel, 2 kernels
    assert mk_mmd(s, t, [1.0, 2.0]).item() == pytest.approx(expected, rel=1e-5)
    assert mk_mmd(s, s, [1.0]).item() == pytest.approx(0.0, abs=1e-6)


def test_mcc_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = 2.0
    p = (logits / t).softmax(1)
    w = 1 + torch.exp(-(-(p * torch.log(p + 1e-5)).sum(1)))
    w = 3 * w / w.sum()
    c = torch.zeros(2, 2)
    for i in range(3):
        c += w[i] * torch.outer(p[i], p[i])
    c = c / c.sum(1, keepdim=True)
    expected = (c[0, 1] + c[1, 0]) / 2
    assert class_confusion(logits, t).item() == pytest.approx(expected.item(), rel=1e-5)
    # Confident, one-class-per-sample predictions: no confusion.
    assert class_confusion(torch.tensor([[50.0, 0.0], [0.0, 50.0]]), 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_and_certainty_weights():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    h = entropy(p, eps=0.0 + 1e-12)
    assert h[0].item() == pytest.approx(0.0, abs=1e-6) and h[1].item() == pytest.approx(math.log(2), rel=1e-5)
    w = certainty_weights(p)
    raw = torch.tensor([2.0, 1.5])
    assert torch.allclose(w, raw * 2 / raw.sum(), atol=1e-4)


def test_importance_weights_are_odds_of_target_normalised():
    z = torch.tensor([0.0, math.log(3.0), -math.log(2.0)])  # p(source|x) = 1/2, 3/4, 1/3
    raw = torch.tensor([1.0, 1 / 3, 2.0])  # p(target|x) / p(source|x)
    assert torch.allclose(importance_weights(z, 10.0), raw * 3 / raw.sum())
    clipped = importance_weights(torch.tensor([-10.0, 0.0]), 5.0)  # raw exp(10) clipped to 5
    assert (clipped[0] / clipped[1]).item() == pytest.approx(5.0)


def test_multilinear_maps():
    f, g = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.25, 0.75]])
    assert torch.allclose(multilinear_map(f, g), torch.tensor([[0.25, 0.5, 0.75, 1.5]]))
    rmap = RandomizedMultilinearMap(2, 2, 4)
    expected = (f @ rmap.rf) * (g @ rmap.rg) / 2.0
    assert torch.allclose(rmap(f, g), expected)


def _batch(n=4, d=6, c=3, progress=1.0):
    g = torch.Generator().manual_seed(0)
    return DomainBatch(
        torch.randn(n, d, generator=g, requires_grad=True), torch.randn(n, d, generator=g) + 1,
        torch.randn(n, c, generator=g), torch.randn(n, c, generator=g), torch.tensor([0, 1, 2, 0]), progress,
    )


def test_dann_loss_is_bce_of_discriminator_and_reverses_into_features():
    obj = DANN(trade_off=2.0)
    obj.build(6, 3)
    batch = _batch()
    out = obj(batch)
    with torch.no_grad():
        d = obj.discriminator(torch.cat([batch.source_features, batch.target_features])).squeeze(1)
    bce = F.binary_cross_entropy_with_logits(d, torch.tensor([1.0] * 4 + [0.0] * 4))
    assert out.loss.item() == pytest.approx(2.0 * bce.item(), rel=1e-5)
    # The features get the negated, scaled gradient of what the discriminator gets.
    out.loss.backward()
    grad_reversed = batch.source_features.grad.clone()
    f = batch.source_features.detach().requires_grad_(True)
    d2 = obj.discriminator(torch.cat([f, batch.target_features])).squeeze(1)
    (2.0 * F.binary_cross_entropy_with_logits(d2, torch.tensor([1.0] * 4 + [0.0] * 4))).backward()
    assert torch.allclose(grad_reversed, -warm_start(1.0) * f.grad, atol=1e-6)
    assert obj(_batch(progress=0.0)).loss.requires_grad  # coefficient 0 still trains the discriminator


def test_cdan_entropy_conditioned_loss_by_hand():
    obj = CDAN(randomized=False)
    obj.build(6, 3)
    assert obj.discriminator[0].in_features == 18
    batch = _batch()
    out = obj(batch)
    g = torch.cat([batch.source_logits, batch.target_logits]).softmax(1)
    h = multilinear_map(torch.cat([batch.source_features, batch.target_features]), g)
    with torch.no_grad():
        d = obj.discriminator(h).squeeze(1)
    w = 1 + torch.exp(-entropy(g))
    w = w * 8 / w.sum()
    labels = torch.tensor([1.0] * 4 + [0.0] * 4)
    expected = -(w * (labels * F.logsigmoid(d) + (1 - labels) * F.logsigmoid(-d))).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    wide = CDAN()  # 256 features x 31 classes: the randomized map
    wide.build(256, 31)
    assert isinstance(wide.map, RandomizedMultilinearMap) and wide.discriminator[0].in_features == 1024


def test_instance_weighting_weights_source_and_trains_only_its_classifier():
    obj = InstanceWeighting()
    obj.build(6, 3)
    batch = _batch()
    out = obj(batch)
    assert out.source_weights.shape == (4,) and out.source_weights.mean().item() == pytest.approx(1.0)
    assert not out.source_weights.requires_grad
    out.loss.backward()
    assert batch.source_features.grad is None  # features are detached: the classifier only observes
    assert obj.domain_classifier[0].weight.grad is not None


@pytest.mark.parametrize(
    "objective", [SourceOnly(), DAN(), CORAL(), MCC(), InformationMaximization(pseudo_label_weight=1.0)]
)
def test_parameter_free_objectives_give_scalar_losses(objective):
    objective.build(6, 3)
    out = objective(_batch())
    assert out.loss.ndim == 0 and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert list(objective.parameters()) == []


def test_losses_stay_float32_under_bf16_autocast():
    batch = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        im = InformationMaximization(pseudo_label_weight=1.0)
        for obj in (DANN(), CDAN(), DAN(), CORAL(), MCC(), InstanceWeighting(), im):
            obj.build(6, 3)
            assert obj(batch).loss.dtype == torch.float32, type(obj).__name__
    assert coral(batch.source_features.bfloat16(), batch.target_features.bfloat16()).dtype == torch.float32


def test_information_maximization_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    p = logits.softmax(1)
    ent = -(p * torch.log(p + 1e-5)).sum(1).mean()
    m = p.mean(0)
    div = -(m * torch.log(m + 1e-5)).sum()
    got_ent, got_div = information_maximization(logits)
    assert got_ent.item() == pytest.approx(ent.item(), rel=1e-5)
    assert got_div.item() == pytest.approx(div.item(), rel=1e-5)
    # One-hot and diverse: the best value, -log(C); collapsed onto one class: no diversity, loss 0.
    ent, div = information_maximization(torch.tensor([[50.0, 0.0], [0.0, 50.0]]))
    assert (ent - div).item() == pytest.approx(-math.log(2), abs=1e-4)
    ent, div = information_maximization(torch.tensor([[50.0, 0.0], [50.0, 0.0]]))
    assert (ent - div).item() == pytest.approx(0.0, abs=1e-4)


def test_pseudo_labels_keep_only_confident_target_samples():
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.2], [0.0, 5.0]], requires_grad=True)  # p_max .98, .55, .99
    loss, kept = pseudo_label_loss(logits, 0.9)
    ce = F.cross_entropy(logits.detach(), torch.tensor([0, 1, 1]), reduction="none")
    assert kept.item() == pytest.approx(2 / 3)
    assert loss.item() == pytest.approx(((ce[0] + ce[2]) / 3).item(), rel=1e-5)  # mean over the whole batch
    loss.backward()
    assert torch.equal(logits.grad[1], torch.zeros(2))  # the unconfident sample teaches nothing


def test_information_maximization_objective_trains_only_through_target_logits():
    batch = _batch()
    batch.target_logits.requires_grad_(True)
    out = InformationMaximization(trade_off=2.0, pseudo_label_weight=0.5, threshold=0.0)(batch)
    ent, div = information_maximization(batch.target_logits)
    pl, kept = pseudo_label_loss(batch.target_logits, 0.0)
    assert out.loss.item() == pytest.approx((2.0 * (ent - div) + 0.5 * pl).item(), rel=1e-5)
    assert kept.item() == 1.0 and set(out.logs) >= {"target_entropy", "target_diversity", "pseudo_label_kept"}
    out.loss.backward()
    assert batch.target_logits.grad is not None and batch.source_features.grad is None
    assert "pseudo_label_loss" not in InformationMaximization()(_batch()).logs  # pseudo-labels off by default
