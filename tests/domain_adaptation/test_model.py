"""Domain adaptation end to end on tiny generated two-domain data (colours shifted in the target)."""

import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import (
    COLOURS,
    DA_BASE,
    DA_TASKS,
    OBJECTIVES,
    OFFICE31,
    STRATEGIES,
    TINY_MODEL,
    build,
    da_fit_args,
    fragment_callbacks,
    fragment_objective,
    ids,
    make_domain,
    run_cli,
    tiny_trainer,
    write_image,
)
from tlx.domain_adaptation import DANN, DomainAdaptationClassifier, DomainAdaptationDataModule
from tlx.domain_adaptation.objectives import Objective
from tlx.errors import DataError


@pytest.fixture
def two_domains(tmp_path):
    return make_domain(tmp_path / "source", 0, 6), make_domain(tmp_path / "target", 60, 3, seed0=100)


@pytest.mark.parametrize("fragment", OBJECTIVES, ids=ids(OBJECTIVES))
def test_fit_each_objective_validates_on_target(two_domains, tmp_path, fragment):
    """Every objective of configs/domain_adaptation/objectives/, as its fragment builds it."""
    objective = build(fragment_objective(fragment), Objective)
    source, target = two_domains
    dm = DomainAdaptationDataModule(str(source), str(target), batch_size=4, num_workers=0)
    model = DomainAdaptationClassifier(**TINY_MODEL, bottleneck_dim=16, objective=objective)
    trainer = tiny_trainer(tmp_path)
    trainer.fit(model, dm)
    assert dm.target_labelled
    # An epoch runs over the larger domain (12 source images, 4 a step); the target cycles.
    assert trainer.global_step == 3
    metrics = trainer.callback_metrics
    assert "val/acc" in metrics and torch.isfinite(metrics["train/transfer_loss_epoch"])
    # The label-free selection criteria, over all 6 target images (tlx.domain_adaptation.selection).
    assert torch.isfinite(metrics["val/snd"]) and 0 <= metrics["val/entropy"] <= torch.log(torch.tensor(2.0)) + 1e-4
    # The objective's own state (discriminators, random maps) is the model's: optimised, checkpointed.
    own = {k for k in model.state_dict() if k.startswith("objective.")}
    assert own == {f"objective.{k}" for k in objective.state_dict()}


def test_discriminator_is_optimised_and_checkpoint_reloads(two_domains, tmp_path):
    source, target = two_domains
    cli = run_cli(da_fit_args(source, target, tmp_path / "runs", extra=["--trainer.max_epochs=2"]))
    model = cli.model
    optimised = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in model.objective.parameters())
    assert all(id(p) in optimised for p in model.bottleneck.parameters())
    assert 0 < model.progress <= 1
    ckpt = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    loaded = DomainAdaptationClassifier.load_from_checkpoint(ckpt, weights_only=True)
    assert isinstance(loaded.objective, DANN)
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["objective"]["init_args"]["gamma"] == 10.0
    assert any(k.startswith("objective.discriminator.") for k in saved)
    assert saved.keys() == loaded.state_dict().keys()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # Test from the checkpoint, on the target, through the CLI.
    args = da_fit_args(source, target, tmp_path / "runs")
    args[0] = "test"
    run_cli([*args[:-2], f"--ckpt_path={ckpt}"])


def test_with_frozen_backbone_only_head_side_trains(two_domains, tmp_path):
    source, target = two_domains
    cli = run_cli(da_fit_args(source, target, tmp_path / "runs",
                              extra=["--trainer.callbacks+=tlx.finetuning.FreezeBackbone"]))
    assert not any(p.requires_grad for p in cli.model.backbone.parameters())
    assert all(p.requires_grad for p in cli.model.objective.parameters())


def test_bf16_mixed_fit(two_domains, tmp_path):
    source, target = two_domains
    dm = DomainAdaptationDataModule(str(source), str(target), batch_size=4, num_workers=0)
    model = DomainAdaptationClassifier(**TINY_MODEL, bottleneck_dim=16, objective=DANN())
    trainer = tiny_trainer(tmp_path, precision="bf16-mixed")
    trainer.fit(model, dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])


def test_unlabelled_target_validates_on_held_out_source(tmp_path):
    source = make_domain(tmp_path / "source", 0, 10)
    target = make_domain(tmp_path / "target", 60, 3, labelled=False)
    dm = DomainAdaptationDataModule(str(source), str(target), batch_size=4, num_workers=0, val_split=0.2)
    model = DomainAdaptationClassifier(**TINY_MODEL, bottleneck_dim=16)
    tiny_trainer(tmp_path).fit(model, dm)
    assert not dm.target_labelled
    assert len(dm.samples("val")) == 4 and len(dm.samples("source")) == 16
    assert all(label == -1 for _, label in dm.samples("target"))


def test_target_with_other_classes_is_a_clear_error(tmp_path):
    source = make_domain(tmp_path / "source", 0, 2)
    write_image(tmp_path / "target" / "cat" / "a.png", COLOURS["cat"])
    write_image(tmp_path / "target" / "fox" / "a.png", COLOURS["fox"])  # two classes, not the source's two
    dm = DomainAdaptationDataModule(str(source), str(tmp_path / "target"))
    with pytest.raises(DataError, match="Class folders differ"):
        dm.samples("target")
    with pytest.raises(DataError, match="target_root"):
        DomainAdaptationDataModule(str(source), str(tmp_path / "nowhere")).samples("target")


@pytest.mark.e2e
@pytest.mark.skipif(not (OFFICE31 / "amazon").is_dir(), reason=f"Office-31 not found at {OFFICE31}")
def test_office31_config_runs_on_real_data_and_weights(tmp_path):
    small = {"input_size": 96, "resize_size": 110, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}
    cli = run_cli([
        "fit", "--config", str(DA_BASE), "--config", str(DA_TASKS[0]), "--config", str(DA_BASE.parent / "objectives/cdan.yaml"),
        f"--model.init_args.preprocessing={json.dumps(small)}",
        "--data.init_args.batch_size=8", "--data.init_args.num_workers=0", "--data.init_args.verify_images=false",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
    ])
    assert len(cli.model.class_names) == 31 and cli.trainer.global_step == 2
    assert cli.model.objective.discriminator[0].in_features == 1024  # 256 x 31 is randomized
    assert "val/acc" in cli.trainer.callback_metrics and "val/snd" in cli.trainer.callback_metrics
    # A fixed budget: the target's labels (val/acc, the CLI's default monitor) choose no checkpoint.
    assert cli.trainer.checkpoint_callback.monitor is None


def test_predict_runs_on_the_target_images(two_domains, tmp_path):
    source, target = two_domains
    dm = DomainAdaptationDataModule(str(source), str(target), batch_size=4, num_workers=0)
    model = DomainAdaptationClassifier(**TINY_MODEL, bottleneck_dim=16, class_names=["cat", "dog"])
    out = tiny_trainer(tmp_path).predict(model, dm)
    assert len(dm.predict_paths) == 6 and all(p.startswith(str(target)) for p in dm.predict_paths)
    probs = torch.cat([o["probs"] for o in out])
    assert probs.shape == (6, 2) and torch.allclose(probs.sum(1), torch.ones(6))


@pytest.mark.parametrize("fragment", STRATEGIES, ids=ids(STRATEGIES))
def test_every_finetuning_strategy_drives_the_da_model(fragment, two_domains, tmp_path):
    """Each strategy's callbacks (configs/finetuning/strategies/) on a DANN model: the bottleneck
    and the discriminator train with the head's group, the backbone as the strategy says."""
    callbacks = fragment_callbacks(fragment)
    source, target = two_domains
    cli = run_cli(da_fit_args(source, target, tmp_path / "runs",
                              extra=[f"--trainer.callbacks={json.dumps(callbacks)}"]))
    # the strategy's "head" group (split in "head" and "head.no_decay" where the optimizer decays)
    head = {id(p) for g in cli.trainer.optimizers[0].param_groups if g["group"] == "head" for p in g["params"]}
    model = cli.model
    assert all(id(p) in head for p in model.objective.parameters())
    assert all(id(p) in head for p in model.bottleneck.parameters())
    assert torch.isfinite(cli.trainer.callback_metrics["train/transfer_loss_epoch"])


def test_export_keeps_the_bottleneck(two_domains, tmp_path):
    """The exported model runs the DA model's own forward (backbone -> bottleneck -> head)."""
    from tlx.export import export_checkpoint

    source, target = two_domains
    cli = run_cli(da_fit_args(source, target, tmp_path / "runs"))
    ckpt = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    meta = export_checkpoint(cli.model, str(ckpt), output_dir=str(tmp_path / "export"),
                             verify_images=str(target / "cat"), num_verify=3)
    assert len(meta["verification"]["images"]) == 3
    assert max(meta["verification"]["max_abs_diff"].values()) <= 1e-4


def test_feature_dropout_acts_in_training_only_and_keeps_the_bottleneck_keys():
    model = DomainAdaptationClassifier(**TINY_MODEL, bottleneck_dim=16, feature_dropout=0.5,
                                       class_names=["cat", "dog"])
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model.features(x), model.bottleneck(model.backbone(x)))
    model.train()
    torch.manual_seed(0)
    dropped = model.feature_dropout(torch.ones(1000))
    assert 0.35 < (dropped == 0).float().mean().item() < 0.65
    # The checkpoint layout of models trained before the option existed.
    keys = set(model.state_dict())
    assert {"bottleneck.0.weight", "bottleneck.1.running_mean"} <= keys


def test_source_cross_entropy_honours_label_smoothing():
    """model.label_smoothing smooths the source cross-entropy (SHOT trains its source model with 0.1),
    exactly as F.cross_entropy's label_smoothing, and only that term: the objective's is unchanged."""
    torch.manual_seed(0)
    model = DomainAdaptationClassifier(**TINY_MODEL, bottleneck_dim=16, feature_dropout=0.0, label_smoothing=0.1,
                                       class_names=["cat", "dog", "fox"]).eval()
    xs, xt, ys = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    batch = {"source": (xs, ys), "target": (xt, torch.arange(4))}
    with torch.no_grad():
        logits = model.head(model.features(torch.cat([xs, xt])))[:4]
        smoothed = model.training_step(batch, 0)
        model.hparams.label_smoothing = 0.0
        plain = model.training_step(batch, 0)
    torch.testing.assert_close(smoothed, F.cross_entropy(logits, ys, label_smoothing=0.1))
    torch.testing.assert_close(plain, F.cross_entropy(logits, ys))
    assert not torch.isclose(smoothed, plain)
