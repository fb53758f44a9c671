"""L2-SP adds exactly the penalty's gradient and keeps the backbone near its pretrained weights."""

import torch

from tests.helpers import fit, tiny_data, tiny_model
from tlx.finetuning import L2SP, FullFinetune


def test_l2sp_gradient_is_the_penalty_gradient():
    model = tiny_model(class_names=["a", "b"])
    cb = L2SP(alpha=0.3, beta=0.05)
    cb.setup(None, model, "fit")
    w0 = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
            p.grad = torch.zeros_like(p)
    logged = {}
    model.log = lambda name, value, **kw: logged.setdefault(name, value)
    cb.on_before_optimizer_step(None, model, None)
    # autograd of the penalty itself
    penalty = sum(0.5 * 0.3 * (p - w0[n]).pow(2).sum() for n, p in model.backbone.named_parameters())
    penalty = penalty + sum(0.5 * 0.05 * p.pow(2).sum() for n, p in model.head.named_parameters() if not n.endswith("bias"))
    expected = torch.autograd.grad(penalty, list(model.parameters()), allow_unused=True)
    for (n, p), g in zip(model.named_parameters(), expected):
        torch.testing.assert_close(p.grad, g if g is not None else torch.zeros_like(p), msg=n)
    torch.testing.assert_close(logged["train/l2sp"], penalty.detach())


def drift(model, w0):
    return sum((p.detach() - w0[n]).pow(2).sum().item() for n, p in model.backbone.named_parameters())


def test_l2sp_pulls_toward_pretrained_weights(tiny_folder, tmp_path):
    drifts = {}
    for alpha in (0.0, 50.0):
        model = tiny_model()
        w0 = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
        fit(tmp_path / str(alpha), model, tiny_data(tiny_folder), [FullFinetune(backbone_lr_scale=1.0), L2SP(alpha=alpha, beta=0.0)], epochs=2)
        drifts[alpha] = drift(model, w0)
    assert drifts[50.0] < 0.5 * drifts[0.0]
