"""The PyTorch transfer-learning tutorial's loop, kept as the baseline tlx is measured against.

A faithful copy of https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html:
torchvision ``ImageFolder`` with the tutorial's transforms (RandomResizedCrop 224 + flip / Resize
256 + CenterCrop 224, ImageNet mean/std), batch 4, 4 workers, shuffled train *and* val loaders,
cross-entropy, SGD lr 1e-3 momentum 0.9, StepLR(7, 0.1), the best weights kept by val accuracy.
"Finetuning" trains everything; "fixed feature extractor" sets ``requires_grad = False`` on the
backbone and optimises the new ``fc`` only (the tutorial leaves the model in train mode, so
BatchNorm statistics still move). The one change: the tutorial's ResNet-18 (a download) is
replaced by tlx's packaged offline EfficientNet-Lite0 weights. Timing is added around the phases.

    python scripts/tutorial_baseline.py --mode frozen --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from tempfile import TemporaryDirectory

import torch
import torch.nn as nn
import torch.optim as optim
from torch.optim import lr_scheduler
from torchvision import datasets, transforms

from tlx.backbones import create_backbone

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "hymenoptera")


class TutorialNet(nn.Module):
    """The tutorial's ``model.fc = nn.Linear(num_ftrs, 2)`` on a pooled-feature backbone."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.features = create_backbone("efficientnet_lite0")
        self.fc = nn.Linear(self.features.num_features, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def make_data(data_dir: str, batch_size: int = 4, num_workers: int = 4):
    data_transforms = {
        "train": transforms.Compose([
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]),
        "val": transforms.Compose([
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]),
    }
    image_datasets = {x: datasets.ImageFolder(os.path.join(data_dir, x), data_transforms[x]) for x in ["train", "val"]}
    dataloaders = {
        x: torch.utils.data.DataLoader(image_datasets[x], batch_size=batch_size, shuffle=True, num_workers=num_workers)
        for x in ["train", "val"]
    }
    dataset_sizes = {x: len(image_datasets[x]) for x in ["train", "val"]}
    return dataloaders, dataset_sizes, image_datasets["train"].classes


def train_model(model, criterion, optimizer, scheduler, dataloaders, dataset_sizes, device, num_epochs=25):
    """The tutorial's ``train_model``, plus a timing record per epoch and phase."""
    since = time.time()
    history = []
    with TemporaryDirectory() as tempdir:
        best_model_params_path = os.path.join(tempdir, "best_model_params.pt")
        torch.save(model.state_dict(), best_model_params_path)
        best_acc = 0.0
        for epoch in range(num_epochs):
            print(f"Epoch {epoch}/{num_epochs - 1}")
            print("-" * 10)
            record = {"epoch": epoch}
            epoch_start = time.perf_counter()
            for phase in ["train", "val"]:
                phase_start = time.perf_counter()
                if phase == "train":
                    model.train()
                else:
                    model.eval()
                running_loss = 0.0
                running_corrects = 0
                for inputs, labels in dataloaders[phase]:
                    inputs = inputs.to(device)
                    labels = labels.to(device)
                    optimizer.zero_grad()
                    with torch.set_grad_enabled(phase == "train"):
                        outputs = model(inputs)
                        _, preds = torch.max(outputs, 1)
                        loss = criterion(outputs, labels)
                        if phase == "train":
                            loss.backward()
                            optimizer.step()
                    running_loss += loss.item() * inputs.size(0)
                    running_corrects += torch.sum(preds == labels.data)
                if phase == "train":
                    scheduler.step()
                epoch_loss = running_loss / dataset_sizes[phase]
                epoch_acc = running_corrects.double() / dataset_sizes[phase]
                print(f"{phase} Loss: {epoch_loss:.4f} Acc: {epoch_acc:.4f}")
                record[f"{phase}_s"] = time.perf_counter() - phase_start
                record[f"{phase}_images"] = dataset_sizes[phase]
                record[f"{phase}_acc"] = float(epoch_acc)
                if phase == "val" and epoch_acc > best_acc:
                    best_acc = epoch_acc
                    torch.save(model.state_dict(), best_model_params_path)
            record["epoch_s"] = time.perf_counter() - epoch_start
            history.append(record)
            print()
        time_elapsed = time.time() - since
        print(f"Training complete in {time_elapsed // 60:.0f}m {time_elapsed % 60:.0f}s")
        print(f"Best val Acc: {best_acc:4f}")
        model.load_state_dict(torch.load(best_model_params_path, weights_only=True))
    return model, history


def run(mode: str, data_dir: str = DEFAULT_DATA, epochs: int = 25, batch_size: int = 4, num_workers: int = 4):
    """``mode``: ``finetune`` (the whole network) or ``frozen`` (fixed feature extractor)."""
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    dataloaders, dataset_sizes, class_names = make_data(data_dir, batch_size, num_workers)
    model = TutorialNet(len(class_names))
    if mode == "frozen":
        for param in model.features.parameters():
            param.requires_grad = False
        params = model.fc.parameters()  # only the new layer is optimised
    else:
        params = model.parameters()
    model = model.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(params, lr=0.001, momentum=0.9)
    scheduler = lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    _, history = train_model(model, criterion, optimizer, scheduler, dataloaders, dataset_sizes, device, epochs)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["finetune", "frozen"], default="finetune")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    history = run(args.mode, args.data, args.epochs, args.batch_size, args.workers)
    print(json.dumps(history, indent=1))


if __name__ == "__main__":
    main()
