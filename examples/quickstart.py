"""tlx from Python: build, fit with a Lightning Trainer, load the best checkpoint, predict.

    python examples/quickstart.py                       # ants vs bees, EfficientNet-Lite0, 2 epochs
    python examples/quickstart.py --data /data/flowers  # your own class folders

The same run as ``python -m tlx fit --config configs/hymenoptera.yaml``, shorter; tests/test_examples.py
runs it on tiny generated images.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

import tlx
from tlx.finetuning import FreezeUnfreeze


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/hymenoptera", help="root/{train,val}/<class>/*.jpg")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="DEFAULT", help="'none' for random initialisation")
    parser.add_argument("--image-size", type=int, default=None, help="override the weights' input size")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default="quickstart_logs")
    args = parser.parse_args(argv)

    # Preprocessing follows the backbone's weights unless overridden (tiny images in the test).
    size = args.image_size
    preprocessing = size and {"input_size": size, "resize_size": size, "interpolation": "bilinear",
                              "mean": [0.5] * 3, "std": [0.5] * 3}
    model = tlx.ImageClassifier(
        backbone=args.backbone,
        weights=None if args.weights.lower() == "none" else args.weights,
        optimizer=partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.01),
        preprocessing=preprocessing or None,
    )
    data = tlx.ImageFolderDataModule(root=args.data, batch_size=args.batch_size, num_workers=0)

    checkpoint = ModelCheckpoint(monitor="val/acc", mode="max", filename="best")
    trainer = Trainer(
        max_epochs=args.epochs,
        default_root_dir=args.output,
        # The head alone for the first epoch, then everything, the backbone at 0.1 x the head's LR.
        callbacks=[FreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr_scale=0.1), checkpoint],
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=data)

    # The checkpoint carries its class names and preprocessing: nothing else is needed to predict.
    best = tlx.load(checkpoint.best_model_path)
    predictions = best.predict(Path(args.data) / "val")  # a folder, a path, a list of paths or a PIL image
    for p in predictions[:5]:
        print(f"{p.path}: {p.label} ({p.probability:.2f})")
    correct = sum(p.label == Path(p.path).parent.name for p in predictions)
    print(f"{best.class_names}; {correct}/{len(predictions)} validation images right; best: {checkpoint.best_model_path}")


if __name__ == "__main__":
    main()
