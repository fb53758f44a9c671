"""DDP (2 CPU processes, gloo) with frozen parameters and no find_unused_parameters; the
backbone unfrozen after DDP wrapped the model stays identical on both ranks (its gradients,
which DDP's reducer does not know, are averaged by the strategy)."""

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Callback

from tests.helpers import fit, tiny_data, tiny_model
from tlx.finetuning import FreezeUnfreeze

pytestmark = pytest.mark.multiprocess


class RanksAgree(Callback):
    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(trainer.world_size)]
        dist.all_gather(gathered, flat)
        assert torch.equal(gathered[0], gathered[1]), "ranks diverged"
        assert all(p.requires_grad for p in pl_module.backbone.parameters())


def test_ddp_unfreeze_keeps_ranks_in_sync(tiny_folder, tmp_path):
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    fit(tmp_path, model, tiny_data(tiny_folder, batch_size=2), [FreezeUnfreeze(unfreeze_at_epoch=1), RanksAgree()],
        epochs=2, strategy="ddp_spawn", devices=2, accelerator="cpu", num_sanity_val_steps=0, limit_val_batches=0)
    # ddp_spawn hands rank 0's weights back: the backbone did train after the unfreeze
    assert any(not torch.equal(p, before[n]) for n, p in model.backbone.named_parameters())
