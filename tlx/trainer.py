"""Lightning's Trainer plus the extra ``python -m tlx`` subcommands (LightningCLI runs trainer methods)."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule, Trainer


class TLXTrainer(Trainer):
    """A :class:`~lightning.pytorch.Trainer` with ``lr_find``, ``export`` and ``fuse`` methods, so that
    LightningCLI can offer them as subcommands beside fit/validate/test/predict."""

    def lr_find(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        min_lr: float = 1e-7,
        max_lr: float = 1.0,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        output_dir: str | None = None,
    ) -> dict:
        """Learning-rate range test: plots loss versus learning rate and suggests a rate.

        Args:
            model: the model to tune.
            datamodule: the training data.
            min_lr: the first learning rate tried.
            max_lr: the last learning rate tried.
            num_training: how many batches (learning rates) to try.
            mode: ``exponential`` or ``linear`` increase.
            early_stop_threshold: stop once the loss exceeds this many times its best (null: never).
            output_dir: where ``lr_find.png`` and ``lr_find.json`` go (default: the run's log dir).
        """
        from tlx.tuning import find_lr

        return find_lr(self, model, datamodule, min_lr, max_lr, num_training, mode, early_stop_threshold, output_dir)

    def export(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        format: str = "torchscript,onnx",
        output_dir: str | None = None,
        verify_images: str | None = None,
        num_verify: int = 8,
        tolerance: float = 1e-4,
    ) -> dict:
        """Export a checkpoint to TorchScript and/or ONNX, with its class names and preprocessing.

        Args:
            model: the model (built from the checkpoint's hyperparameters).
            datamodule: used only to find images to verify on (its validation split).
            ckpt_path: the checkpoint to export (required).
            format: comma-separated: ``torchscript``, ``onnx``.
            output_dir: where the files go (default: ``export/`` beside the run's ``checkpoints/``).
            verify_images: a folder, an image, or a text file of image paths, to compare the
                exported models' outputs with the checkpoint's (default: the data's validation images).
            num_verify: how many images to compare on.
            tolerance: largest allowed difference between probabilities.
        """
        from tlx.export import export_checkpoint

        return export_checkpoint(model, ckpt_path, format, output_dir, verify_images, num_verify, tolerance,
                                 datamodule=datamodule)

    def fuse(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_paths: list[str] | None = None,
        method: str = "greedy_soup",
        alphas: list[float] | None = None,
        bn_recalibration_batches: int = 20,
        output_dir: str | None = None,
    ) -> dict:
        """Fuse checkpoints of one architecture: model soups, WiSE-FT, or a logit ensemble.

        Args:
            model: the network the checkpoints fit (built from the first checkpoint's hyperparameters).
            datamodule: the data: choices are made on its validation split, BatchNorm statistics
                re-estimated on its training split; a test split of its own is reported too.
            ckpt_paths: the checkpoints (for ``wise_ft``: the linear probe, then the fine-tuned model).
            method: ``uniform_soup``, ``greedy_soup``, ``ensemble`` or ``wise_ft``.
            alphas: WiSE-FT's interpolation weights to try, in [0, 1] (default 0, 0.1, ..., 1).
            bn_recalibration_batches: training batches to re-estimate BatchNorm statistics on
                after averaging weights (0: keep the averaged statistics).
            output_dir: where ``fused.ckpt`` and ``fusion.json`` go (default ``<default_root_dir>/fused``).
        """
        import os

        from tlx.fusion.fuse import fuse

        return fuse(ckpt_paths or [], method, datamodule, alphas, bn_recalibration_batches,
                    output_dir or os.path.join(self.default_root_dir, "fused"), self.strategy.root_device, model=model)
