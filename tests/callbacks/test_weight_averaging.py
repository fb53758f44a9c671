"""configs/callbacks/ema.yaml and swa.yaml (tlx.callbacks.EMA / SWA on Lightning's WeightAveraging)
with every fine-tuning strategy, frozen parts, the checkpoints and resume."""

import pytest
import torch
import yaml
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

import tlx
import tlx.callbacks
from tests.helpers import REPO, STRATEGIES, OrderedData, build_callbacks, fit, fragment_callbacks, ids, tiny_model
from tlx.errors import TLXError

AVERAGING = [REPO / "configs" / "callbacks" / f"{name}.yaml" for name in ("ema", "swa")]
FROZEN = next(f for f in STRATEGIES if f.stem == "feature_extraction")
FULL = next(f for f in STRATEGIES if f.stem == "full")


def adamw(params):  # a plain function: checkpoints load with weights_only=True
    return torch.optim.AdamW(params, lr=0.05)


def averaging_callbacks(fragment, **overrides):
    specs = yaml.safe_load(fragment.read_text())["trainer"]["callbacks+"]
    for spec in specs:
        spec["init_args"].update(overrides)
    return specs


class SeenByValidation(Callback):
    """The head's weights each (non-sanity) validation ran with."""

    def __init__(self):
        self.heads = []

    def on_validation_epoch_start(self, trainer, pl_module):  # after the averaging callback's swap
        if not trainer.sanity_checking:
            self.heads.append(pl_module.head.fc.weight.detach().clone())


def run(tmp_path, data, averaging, strategy=FROZEN, ckpt_path=None, epochs=3, **overrides):
    model = tiny_model(optimizer=adamw)
    callbacks = build_callbacks(fragment_callbacks(strategy) + averaging_callbacks(averaging, **overrides))
    seen = SeenByValidation()
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer = fit(tmp_path, model, data, [*callbacks, seen, ckpt], epochs=epochs, enable_checkpointing=True,
                  ckpt_path=ckpt_path)
    return trainer, model, seen


@pytest.mark.parametrize("averaging", AVERAGING, ids=ids(AVERAGING))
def test_average_with_a_frozen_backbone_is_what_validation_and_checkpoints_use_and_resumes_exactly(
        averaging, tiny_folder, tmp_path):
    data = OrderedData(str(tiny_folder))
    initial = {k: v.clone() for k, v in tiny_model().state_dict().items()}
    trainer, model, seen = run(tmp_path / "full", data, averaging)
    assert any(isinstance(cb, tlx.callbacks.weight_averaging.LateWeightAveraging) for cb in trainer.callbacks)
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
    assert torch.equal(seen.heads[-1], averaged)  # validation (and so best.ckpt's choice) saw the average
    assert torch.equal(state["head.fc.weight"], averaged)  # at the end of fit the model takes the average

    # resumed from the first epoch (SWA: before its start at epoch 1, so a checkpoint without an average)
    trainer, resumed, _ = run(tmp_path / "resumed", data, averaging, ckpt_path=str(tmp_path / "full" / "ckpt" / "epoch=0.ckpt"))
    assert trainer.current_epoch == 3
    diff = [k for k, v in resumed.state_dict().items() if not torch.equal(v, state[k])]
    assert not diff, f"resumed run differs in {diff[:5]}"


def test_swa_starts_late_without_the_random_head_and_resumes_inside_its_lr_phase(tiny_folder, tmp_path):
    """Before swa_epoch_start validation and checkpoints hold the current weights (the average
    would be the initial copy, a random head); swa_lr swaps the model's scheduler for SWALR, and a
    run resumed inside the SWA phase continues both the average and SWALR."""
    data = OrderedData(str(tiny_folder))
    swa = AVERAGING[1]
    trainer, model, seen = run(tmp_path / "full", data, swa, strategy=FULL, epochs=4, swa_epoch_start=2,
                               swa_lr=0.01, annealing_epochs=1)
    first = torch.load(tmp_path / "full" / "ckpt" / "epoch=0.ckpt", weights_only=True)
    assert "current_model_state" not in first  # no average yet: the trained weights, not the initial head
    assert torch.equal(first["state_dict"]["head.fc.weight"], seen.heads[0])
    assert "current_model_state" in torch.load(tmp_path / "full" / "ckpt" / "epoch=2.ckpt", weights_only=True)
    assert all(g["lr"] == pytest.approx(g["swa_lr"]) for g in trainer.optimizers[0].param_groups)
    swa_lrs = {round(g["swa_lr"], 9) for g in trainer.optimizers[0].param_groups}
    assert max(swa_lrs) == pytest.approx(0.01) and len(swa_lrs) > 1  # the backbone keeps its fraction of the head's LR

    trainer, resumed, _ = run(tmp_path / "resumed", data, swa, strategy=FULL, epochs=4, swa_epoch_start=2,
                              swa_lr=0.01, annealing_epochs=1,
                              ckpt_path=str(tmp_path / "full" / "ckpt" / "epoch=2.ckpt"))
    diff = [k for k, v in resumed.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert not diff, f"resumed run differs in {diff[:5]}"


def test_swa_resumed_mid_epoch_continues_its_lr_phase_and_average(tiny_folder, tmp_path):
    # 4 steps an epoch; step 6 is inside epoch 1, the first SWA epoch (Lightning calls no
    # on_train_epoch_start for the rest of a resumed epoch). The loader is not resumable, so only
    # the bookkeeping is compared, not the weights.
    def swa_run(out, ckpt_path=None):
        callbacks = build_callbacks(fragment_callbacks(FULL) + averaging_callbacks(AVERAGING[1], swa_epoch_start=1,
                                                                                   swa_lr=0.01))
        ckpt = ModelCheckpoint(dirpath=str(out), filename="{step}", save_top_k=-1, every_n_train_steps=2)
        trainer = fit(out, tiny_model(optimizer=adamw), OrderedData(str(tiny_folder)), [*callbacks, ckpt], epochs=3,
                      enable_checkpointing=True, ckpt_path=ckpt_path)
        return trainer, callbacks[-1]

    full, swa = swa_run(tmp_path / "full")
    resumed, swa_resumed = swa_run(tmp_path / "resumed", ckpt_path=str(tmp_path / "full" / "step=6.ckpt"))
    assert type(resumed.lr_scheduler_configs[0].scheduler).__name__ == "SWALR"
    assert int(swa_resumed._average_model.n_averaged) == int(swa._average_model.n_averaged) == 8
    assert [g["lr"] for g in resumed.optimizers[0].param_groups] == pytest.approx(
        [g["lr"] for g in full.optimizers[0].param_groups])


@pytest.mark.parametrize("averaging", AVERAGING, ids=ids(AVERAGING))
@pytest.mark.parametrize("fragment", STRATEGIES, ids=ids(STRATEGIES))
def test_averaging_fits_with_every_strategy_and_keeps_frozen_weights(fragment, averaging, tiny_folder, tmp_path):
    model = tiny_model(optimizer=adamw)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    callbacks = build_callbacks(fragment_callbacks(fragment, unfreeze_at_epoch=1, unfreeze_every=1)
                                + averaging_callbacks(averaging))
    fit(tmp_path, model, OrderedData(str(tiny_folder)), callbacks, epochs=2, limit_train_batches=2)
    state = model.state_dict()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and n in initial]
    assert all(torch.equal(state[n], initial[n]) for n in frozen), fragment.stem
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    averager = next(cb for cb in callbacks if isinstance(cb, tlx.callbacks.weight_averaging.LateWeightAveraging))
    assert averager.started and torch.equal(state["head.fc.weight"], averager._average_model.module.head.fc.weight)


@pytest.mark.parametrize("bad", [{"swa_epoch_start": 1.5}, {"swa_epoch_start": -1}, {"swa_lr": 0.0}])
def test_swa_refuses_bad_options_in_one_line(bad):
    with pytest.raises(TLXError, match="SWA"):
        tlx.callbacks.SWA(**bad)
