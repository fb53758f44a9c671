"""configs/callbacks/ema.yaml: Lightning's EMAWeightAveraging with a tlx fine-tuning strategy, and resume."""

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

import tlx
import tlx.callbacks
from tests.helpers import REPO, STRATEGIES, OrderedData, build_callbacks, fit, fragment_callbacks, ids, tiny_model

EMA = REPO / "configs" / "callbacks" / "ema.yaml"
FROZEN = next(f for f in STRATEGIES if f.stem == "feature_extraction")


def adamw(params):  # a plain function: checkpoints load with weights_only=True
    return torch.optim.AdamW(params, lr=0.05)


def run(tmp_path, data, ckpt_path=None, epochs=3):
    model = tiny_model(optimizer=adamw)
    callbacks = build_callbacks(fragment_callbacks(FROZEN) + yaml.safe_load(EMA.read_text())["trainer"]["callbacks+"])
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer = fit(tmp_path, model, data, [*callbacks, ckpt], epochs=epochs, enable_checkpointing=True, ckpt_path=ckpt_path)
    return trainer, model


def test_ema_with_a_frozen_backbone_averages_the_head_and_resumes_exactly(tiny_folder, tmp_path):
    data = OrderedData(str(tiny_folder))
    initial = {k: v.clone() for k, v in tiny_model().state_dict().items()}
    trainer, model = run(tmp_path / "full", data)
    assert any(isinstance(cb, tlx.callbacks.EMA) for cb in trainer.callbacks)
    state = model.state_dict()
    # the frozen backbone (BatchNorm statistics included) is untouched by training and by the average
    backbone = [k for k in state if k.startswith("backbone.") and "num_batches_tracked" not in k]
    changed = [(k, float((state[k] - initial[k]).abs().max())) for k in backbone if not torch.equal(state[k], initial[k])]
    assert backbone and not changed, changed[:5]
    # the checkpoint holds the average; the raw weights ride along; tlx.load gives the average
    ckpt_path = tmp_path / "full" / "ckpt" / "epoch=2.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    raw, averaged = ckpt["current_model_state"]["head.fc.weight"], ckpt["state_dict"]["head.fc.weight"]
    assert not torch.equal(raw, averaged)
    assert torch.equal(tlx.load(ckpt_path).state_dict()["head.fc.weight"], averaged)
    assert torch.equal(state["head.fc.weight"], averaged)  # at the end of fit the model takes the average

    trainer, resumed = run(tmp_path / "resumed", data, ckpt_path=str(tmp_path / "full" / "ckpt" / "epoch=0.ckpt"))
    assert trainer.current_epoch == 3
    diff = [k for k, v in resumed.state_dict().items() if not torch.equal(v, state[k])]
    assert not diff, f"resumed run differs in {diff[:5]}"


@pytest.mark.parametrize("fragment", STRATEGIES, ids=ids(STRATEGIES))
def test_ema_fits_with_every_strategy_and_keeps_frozen_weights(fragment, tiny_folder, tmp_path):
    model = tiny_model(optimizer=adamw)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    callbacks = build_callbacks(fragment_callbacks(fragment, unfreeze_at_epoch=1, unfreeze_every=1)
                                + yaml.safe_load(EMA.read_text())["trainer"]["callbacks+"])
    fit(tmp_path, model, OrderedData(str(tiny_folder)), callbacks, epochs=2)
    state = model.state_dict()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and n in initial]
    assert all(torch.equal(state[n], initial[n]) for n in frozen), fragment.stem
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
