import pytest
import torch

from tlx.heads import CosineHead, LinearHead, MLPHead


def test_linear_head_maps_features_to_logits():
    head = LinearHead(16, 3, dropout=0.5).eval()
    x = torch.randn(4, 16)
    assert head(x).shape == (4, 3)
    assert torch.allclose(head(x), head.fc(x))  # dropout is off in eval


@pytest.mark.parametrize("norm", ["batch", "layer", None])
def test_mlp_head_builds_the_requested_layers(norm):
    head = MLPHead(16, 3, hidden_sizes=[32, 8], norm=norm, activation="gelu", dropout=0.1)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 8), (8, 3)]
    norms = [m for m in head.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.LayerNorm))]
    assert len(norms) == (0 if norm is None else 2)
    assert head(torch.randn(5, 16)).shape == (5, 3)


def test_cosine_head_logits_are_scaled_cosines_and_the_scale_learns():
    head = CosineHead(8, 4, scale=10.0)
    x = torch.randn(6, 8)
    logits = head(x)
    assert logits.abs().max() <= 10.0 + 1e-4
    # Scaling a feature vector does not change its logits: only direction counts.
    assert torch.allclose(head(3 * x), logits, atol=1e-5)
    logits.sum().backward()
    assert head.log_scale.grad is not None
    fixed = CosineHead(8, 4, scale=5.0, learn_scale=False)
    assert "log_scale" not in dict(fixed.named_parameters())
    assert fixed.scale.item() == pytest.approx(5.0)


def test_a_model_rebuilds_from_its_own_plain_hyperparameters(tmp_path):
    """Python API (no LightningCLI instantiator): classes given directly are saved as dotted names
    and come back as the same classes, so load_from_checkpoint works."""
    import torch

    from tests.helpers import TINY_MODEL
    from tlx.heads import CosineHead
    from tlx.models import ImageClassifier

    model = ImageClassifier(**TINY_MODEL, head=CosineHead, optimizer=torch.optim.SGD, class_names=["a", "b"])
    assert model.hparams["head"] == "tlx.heads.cosine.CosineHead"
    again = ImageClassifier(**dict(model.hparams))
    again.configure_model()
    assert isinstance(again.head, CosineHead) and again.optimizer_factory is torch.optim.SGD
    spec = {"class_path": "tlx.heads.MLPHead", "init_args": {"hidden_sizes": [8]}}
    third = ImageClassifier(**{**dict(model.hparams), "head": spec})
    third.configure_model()
    assert type(third.head).__name__ == "MLPHead"
