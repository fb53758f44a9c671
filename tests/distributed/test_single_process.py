"""Fast checks of the multi-GPU pieces in one process: trainer configs compose, evaluation shards
are unpadded, and the learning rate scales with the global batch size."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import yaml

from tests.helpers import REPO, TINY_MODEL, make_imagefolder, printed_config, tiny_trainer
from tlx.callbacks import ScaleLearningRate
from tlx.data import ImageFolderDataModule
from tlx.data.sampling import eval_sampler
from tlx.errors import TLXError
from tlx.models import ImageClassifier


def test_trainer_configs_compose_after_an_experiment_config(capsys):
    cfg = printed_config(capsys, "configs/tutorial_finetune.yaml", "configs/trainer/ddp.yaml", "configs/trainer/scale_lr.yaml")
    trainer = cfg["trainer"]
    assert (trainer["strategy"], trainer["devices"], trainer["sync_batchnorm"]) == ("ddp", -1, True)
    experiment = yaml.safe_load(open(REPO / "configs/tutorial_finetune.yaml"))["trainer"]
    assert trainer["max_epochs"] == experiment["max_epochs"]  # the experiment's keys stay
    # callbacks+ appended ScaleLearningRate to the experiment's own callbacks.
    assert [c["class_path"] for c in trainer["callbacks"]] == [
        c["class_path"] for c in experiment["callbacks"]] + ["tlx.callbacks.ScaleLearningRate"]
    cpu = printed_config(capsys, "configs/tutorial_finetune.yaml", "configs/trainer/cpu.yaml")["trainer"]
    assert (cpu["accelerator"], cpu["devices"]) == ("cpu", 1)


@pytest.mark.parametrize("n", [9, 10])
def test_eval_shards_are_disjoint_and_unpadded(n):
    dataset = list(range(n))
    shards = []
    for rank in range(2):
        trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": rank})
        shards.append(list(eval_sampler(dataset, trainer)))
    assert sorted(shards[0] + shards[1]) == dataset
    assert abs(len(shards[0]) - len(shards[1])) <= 1


def test_eval_sampler_only_when_distributed():
    assert eval_sampler(list(range(5)), None) is None
    assert eval_sampler(list(range(5)), SimpleNamespace(distributed_sampler_kwargs=None)) is None
    # Fewer images than processes: an empty shard would hang DDP, so Lightning's padding is kept.
    assert eval_sampler([0], SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": 1})) is None


@pytest.mark.parametrize("rule, factor", [("linear", 2.0), ("sqrt", 2.0 ** 0.5)])
def test_scale_learning_rate_with_global_batch(tmp_path, rule, factor):
    data = make_imagefolder(tmp_path / "data", n_train=8, n_val=2)
    model = ImageClassifier(**TINY_MODEL, lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 100))
    dm = ImageFolderDataModule(root=str(data), batch_size=4, num_workers=0)
    scale = ScaleLearningRate(reference_batch_size=4, rule=rule)
    # global batch = 4 per process x 1 process x 2 accumulated = 8, twice the reference
    trainer = tiny_trainer(tmp_path, accumulate_grad_batches=2, callbacks=[scale])
    trainer.fit(model, dm)
    assert scale.factor == pytest.approx(factor)
    groups = trainer.optimizers[0].param_groups  # "all" and "all.no_decay" (AdamW decays)
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3 * factor)] * len(groups)
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs == [pytest.approx(1e-3 * factor)] * len(groups)


def test_scale_learning_rate_rejects_bad_options():
    with pytest.raises(TLXError, match="reference_batch_size"):
        ScaleLearningRate(reference_batch_size=0)
    with pytest.raises(TLXError, match="rule"):
        ScaleLearningRate(reference_batch_size=32, rule="cubic")
