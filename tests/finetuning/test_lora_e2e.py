"""LoRA on the real packaged EfficientNet-Lite0 and hymenoptera: learns, and its merged export
(TF-'same' padded convolutions included) computes what the adapted model computes."""

import pytest
import torch

from tests.helpers import HYMENOPTERA, fit
from tlx.data import ImageFolderDataModule
from tlx.finetuning import LoRA
from tlx.finetuning.lora import LoRALayer
from tlx.models import ImageClassifier


def adamw(params):
    return torch.optim.AdamW(params, lr=3e-3)


@pytest.mark.e2e
def test_lora_lite0_hymenoptera(tmp_path):
    torch.manual_seed(0)
    model = ImageClassifier(backbone="efficientnet_lite0", optimizer=adamw)
    data = ImageFolderDataModule(str(HYMENOPTERA), batch_size=16, eval_batch_size=51, num_workers=0, verify_images=False)
    trainer = fit(tmp_path, model, data, [LoRA(rank=4)], epochs=1, logger=True,
                  limit_train_batches=5, limit_val_batches=3, num_sanity_val_steps=0)
    assert sum(isinstance(m, LoRALayer) for m in model.modules()) > 20
    assert trainer.callback_metrics["val/acc"].item() > 0.75  # all 153 validation images (3 batches of 51)
    merged = ImageClassifier(backbone="efficientnet_lite0", weights=None, class_names=model.class_names)
    merged.load_state_dict(torch.load(f"{trainer.log_dir}/lora_merged.pt", weights_only=True))
    x = next(iter(data.val_dataloader()))[0][:4]
    model.eval(), merged.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), rtol=1e-3, atol=1e-4)
