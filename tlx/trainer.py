"""Lightning's Trainer plus the extra ``python -m tlx`` subcommands (LightningCLI runs trainer methods)."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule, Trainer


class TLXTrainer(Trainer):
    """A :class:`~lightning.pytorch.Trainer` with ``lr_find``, ``export``, ``rank`` and ``fuse`` methods, so that
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
        quantize: str | None = None,
        calibration_images: int = 300,
        calibration_seed: int = 0,
        calibration_method: str = "percentile",
        threads: int = 1,
        head_weights: str = "int8",
        bias_correction: bool = True,
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
            tolerance: largest allowed difference between probabilities (fp32 files).
            quantize: also write quantized ONNX files: ``int8`` (static, calibrated, per-channel
                QDQ), ``dynamic``, ``fp16``; comma-separated for several. Each is compared with fp32
                on the validation split (accuracy, agreement, latency, size) in the sidecar JSON.
            calibration_images: how many training images calibrate int8 (seeded, class-balanced).
            calibration_seed: the seed of that draw.
            calibration_method: how int8 activation ranges are set from the calibration images:
                ``percentile`` (99.999th percentile of |x|, the default: with bias correction the
                least worst-case loss on the README's checkpoints), ``entropy`` (the range whose 8-bit
                histogram loses least information), ``minmax`` (the full observed range).
            threads: onnxruntime threads for the timings.
            head_weights: the int8 file's head (computed in float either way): ``int8`` stores its
                weights in int8 per output channel (weight-only, a quarter of the bytes), ``float``
                keeps them float32.
            bias_correction: after int8 quantization, shift each convolution's bias so that its
                mean output per channel on the calibration images matches fp32's (empirical bias
                correction, :mod:`tlx.quantization.bias_correction`).
        """
        from tlx.export import export_checkpoint

        return export_checkpoint(model, ckpt_path, format, output_dir, verify_images, num_verify, tolerance,
                                 datamodule=datamodule, quantize=quantize, calibration_images=calibration_images,
                                 calibration_seed=calibration_seed, calibration_method=calibration_method,
                                 threads=threads, head_weights=head_weights,
                                 bias_correction=bias_correction)

    def rank(
        self,
        model: LightningModule,
        datamodule: LightningDataModule,
        backbones: list[str],
        metrics: list[str] = ["logme", "leep", "nce", "hscore", "knn"],  # noqa: B006 (a CLI default, never mutated)
        weights: str | None = "DEFAULT",
        layer: str | None = None,
        split: str = "train",
        max_images_per_class: int | None = None,
        batch_size: int = 64,
        precision: str = "auto",
        cache_dir: str | None = None,
        output_dir: str | None = None,
        threads: int | None = None,
    ) -> list:
        """Rank backbones by transferability to the data before any training (LogME, LEEP, ...).

        Args:
            model: unused (LightningCLI builds one; its backbone is not loaded for ``rank``).
            datamodule: the target data (``--data.root``).
            backbones: backbone specs, each with its own preprocessing; ``NAME@WEIGHTS`` pins weights
                (``torchvision:mobilenet_v2@IMAGENET1K_V1``).
            metrics: any of ``logme``, ``leep``, ``nce``, ``hscore``, ``knn``; the table is sorted
                by the first.
            weights: weights of the backbones without ``@`` (``null``: random init, a baseline).
            layer: score this intermediate module's output (pooled) instead of the final features.
            split: which split's labelled images to score.
            max_images_per_class: a seeded draw of at most this many images per class.
            batch_size: extraction batch size.
            precision: of the extraction: ``auto`` (bf16 where the CPU or GPU has it natively, else
                fp32: about 1.7x faster on a CPU with AVX512-BF16; the metrics run in float64 and
                agree with fp32 features to 3 digits), or ``32-true`` / ``bf16-mixed``.
            cache_dir: keep the extracted features here, so re-ranking skips extraction.
            output_dir: where ``ranking.json`` and ``ranking.csv`` go (default: ``rank/`` under
                the trainer's ``default_root_dir``).
            threads: torch intra-op threads for the extraction (null: unchanged). On a busy
                machine 1 can be several times faster than competing for every core.
        """
        import os

        import torch

        if threads:
            torch.set_num_threads(threads)
        from tlx.transferability.ranking import rank_backbones

        return rank_backbones(
            datamodule, backbones, metrics, weights=weights, layer=layer, split=split,
            max_images_per_class=max_images_per_class, batch_size=batch_size,
            num_workers=int(getattr(datamodule, "hparams", {}).get("num_workers", 0)),
            precision=precision, device=self.strategy.root_device, cache_dir=cache_dir,
            output_dir=output_dir or os.path.join(self.default_root_dir, "rank"),
        )

    def fuse(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_paths: list[str] | None = None,
        method: str = "greedy_soup",
        alphas: list[float] | None = None,
        bn_recalibration_batches: int | None = None,
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
                after averaging weights; by default (null) 20, and only when the checkpoints'
                running statistics differ (identical ones, frozen while fine-tuning, are kept);
                0 keeps the averaged statistics, N > 0 re-estimates on N batches either way.
            output_dir: where ``fused.ckpt`` and ``fusion.json`` go (default ``<default_root_dir>/fused``).
        """
        import os

        from tlx.fusion.fuse import fuse

        return fuse(ckpt_paths or [], method, datamodule, alphas, bn_recalibration_batches,
                    output_dir or os.path.join(self.default_root_dir, "fused"), self.strategy.root_device, model=model)
