"""LoRA layers: start as the base layer, merge exactly, train only the adapters."""

import pytest
import torch
from timm.layers import Conv2dSame
from torch import nn

from tests.helpers import fit, Recorder, tiny_data, tiny_model
from tlx.finetuning import FinetuningError, LoRA, merge_lora
from tlx.finetuning.lora import LoRALayer, inject_lora, merged_state_dict
from tlx.models import ImageClassifier

LAYERS = {
    "linear": (lambda: nn.Linear(12, 7), (3, 12)),
    "conv": (lambda: nn.Conv2d(4, 6, 3, padding=1, bias=True), (2, 4, 9, 9)),
    "conv_strided_same": (lambda: Conv2dSame(4, 6, 3, stride=2, bias=False), (2, 4, 9, 9)),
}


@pytest.mark.parametrize("kind", list(LAYERS))
def test_lora_layer_starts_as_base_and_merges_exactly(kind):
    make, shape = LAYERS[kind]
    torch.manual_seed(0)
    base, x = make(), torch.randn(*shape)
    expected = base(x)
    layer = LoRALayer(base, rank=2, alpha=4)
    assert torch.equal(layer(x), expected)  # B = 0: the pretrained function
    with torch.no_grad():
        layer.lora_B.normal_()
    adapted = layer(x)
    assert not torch.allclose(adapted, expected)
    merged = layer.merged()
    assert type(merged) is type(base)
    torch.testing.assert_close(merged(x), adapted, rtol=1e-5, atol=1e-5)


def test_depthwise_conv_is_refused():
    with pytest.raises(FinetuningError, match="groups=1"):
        LoRALayer(nn.Conv2d(4, 4, 3, groups=4))


def test_unmatched_pattern_names_the_layers():
    model = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(FinetuningError, match="target_modules.*named like: 0"):
        inject_lora(model, ["nothing*"])


def test_lora_run_trains_adapters_and_exports_merged_weights(tiny_folder, tmp_path):
    rec = Recorder()
    model = tiny_model()
    trainer = fit(tmp_path, model, tiny_data(tiny_folder), [LoRA(target_modules=["blocks.*", "conv_head"], rank=2), rec],
                  epochs=2, logger=True)
    wrapped = [n for n, m in model.backbone.model.named_modules() if isinstance(m, LoRALayer)]
    assert wrapped and "conv_head" in wrapped
    assert all(n.startswith("blocks.") or n == "conv_head" for n in wrapped)
    trained = {n for n in rec.trained if n.startswith("backbone.")}
    assert trained and all(".lora_" in n for n in trained)
    # the merged export loads into a plain classifier and computes the same outputs
    merged = torch.load(f"{trainer.log_dir}/lora_merged.pt", weights_only=True)
    plain = tiny_model(class_names=["cat", "dog"])
    plain.load_state_dict(merged)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), plain.eval()
    torch.testing.assert_close(plain(x), model(x), rtol=1e-4, atol=1e-5)
    # and merging in place gives the same plain architecture
    merge_lora(model.backbone.model)
    assert not any(isinstance(m, LoRALayer) for m in model.modules())
    torch.testing.assert_close(model(x), plain(x), rtol=1e-4, atol=1e-5)
    assert isinstance(plain, ImageClassifier) and set(merged_state_dict(model)) == set(plain.state_dict())
