"""The bad-input catalogue: each case and the exact message the user sees (no traceback)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from PIL import Image

from tests.helpers import COLOURS, TINY_MODEL, TINY_PREPROCESSING, make_imagefolder, run_cli, tiny_fit_args, write_image
from tlx.cli import main
from tlx.data import ImageFolderDataModule
from tlx.data.images import check_image, load_rgb


def run_main(args, capsys) -> str:
    """``python -m tlx ARGS`` in-process: returns stderr's last line; the exit status must be 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    return err.strip().splitlines()[-1] if "tlx: error:" not in err else err[err.index("tlx: error:"):].strip()


# ---- paths ----------------------------------------------------------------------------------
def test_missing_data_root(tmp_path, capsys):
    msg = run_main(tiny_fit_args(tmp_path / "nope", tmp_path / "runs"), capsys)
    assert msg == f"tlx: error: data folder '{tmp_path / 'nope'}' does not exist: check the data root path."


def test_data_root_is_a_file(tmp_path, capsys):
    (tmp_path / "data.txt").write_text("not a folder")
    msg = run_main(tiny_fit_args(tmp_path / "data.txt", tmp_path / "runs"), capsys)
    assert msg == f"tlx: error: data path '{tmp_path / 'data.txt'}' is not a folder."


def test_empty_data_root(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    msg = run_main(tiny_fit_args(tmp_path / "empty", tmp_path / "runs"), capsys)
    root = tmp_path / "empty"
    assert msg == f"tlx: error: data folder '{root}' has no class folders: expected {root}/<class_name>/<image files>."


def test_class_folder_without_images(tiny_folder, tmp_path, capsys):
    (tiny_folder / "train" / "fox").mkdir()
    (tiny_folder / "train" / "fox" / "notes.txt").write_text("no images here")
    msg = run_main(tiny_fit_args(tiny_folder, tmp_path / "runs"), capsys)
    assert msg == (f"tlx: error: train folder '{tiny_folder / 'train'}': class folder(s) 'fox' hold no images "
                   "(.jpg, .png, ...). Add images or remove the folder.")


def test_only_unreadable_images(tmp_path, capsys):
    root = tmp_path / "data"
    for cls in ("cat", "dog"):
        for split in ("train", "val"):
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / "a.png").write_bytes(b"")
    msg = run_main(tiny_fit_args(root, tmp_path / "runs"), capsys)
    assert msg == f"tlx: error: No readable images in the train split of {root}."


def test_missing_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tmp_path / "nope.yaml")])
    assert f"""error: Parser key "config": File does not exist: '{tmp_path / 'nope.yaml'}'""" in capsys.readouterr().err


def test_missing_checkpoint(tiny_folder, tmp_path, capsys):
    msg = run_main(tiny_fit_args(tiny_folder, tmp_path / "runs", extra=[f"--ckpt_path={tmp_path / 'no.ckpt'}"]), capsys)
    assert msg == f"tlx: error: Checkpoint '{tmp_path / 'no.ckpt'}' does not exist or is not a file."


# ---- configuration --------------------------------------------------------------------------
def test_wrong_yaml_key_is_named(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  class_path: tlx.models.ImageClassifier\n  init_args:\n    backbon: timm:resnet18\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config)])
    err = capsys.readouterr().err
    assert "error: Parser key \"model\":" in err
    assert "'backbon'" in err  # jsonargparse names the unexpected key


def test_wrong_yaml_type_is_named(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("trainer:\n  max_epochs: three\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config)])
    err = capsys.readouterr().err
    assert 'error: Parser key "trainer.max_epochs":' in err and "Given value: three" in err


def test_unknown_backbone_suggests_close_names(tiny_folder, tmp_path, capsys):
    args = [a.replace(TINY_MODEL["backbone"], "timm:test_efficientnett") for a in tiny_fit_args(tiny_folder, tmp_path)]
    msg = run_main(args, capsys)
    assert msg.startswith("tlx: error: Unknown timm backbone 'test_efficientnett'. Did you mean: test_efficientnet,")
    assert msg.endswith("`python -m tlx.backbones 'timm:*'` lists them.")


def test_weights_file_for_another_architecture(tiny_folder, tmp_path, capsys):
    weights = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, weights)
    msg = run_main(tiny_fit_args(tiny_folder, tmp_path, extra=[f"--model.init_args.weights_path={weights}"]), capsys)
    assert msg.startswith(f"tlx: error: Weights file '{weights}' does not fit backbone ")
    assert "test_efficientnet" in msg and "tensors missing (e.g. conv_stem.weight" in msg
    assert msg.endswith("Check that the file was saved from the same architecture.")


def test_checkpoint_whose_classes_differ_from_the_data(tiny_folder, tmp_path, capsys):
    main(tiny_fit_args(tiny_folder, tmp_path / "runs"))
    ckpt = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt"
    other = make_imagefolder(tmp_path / "three", classes=("cat", "dog", "fox"), n_train=2, n_val=2)
    args = ["validate" if a == "fit" else a for a in tiny_fit_args(other, tmp_path / "runs2")]
    msg = run_main([*args, f"--ckpt_path={ckpt}"], capsys)
    assert msg == ("tlx: error: The model's classes ['cat', 'dog'] differ from the data's ['cat', 'dog', 'fox']: "
                   "a checkpoint only fits data with the same class folders.")


class Payload:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_checkpoint_with_a_pickle_payload_is_refused(tiny_folder, tmp_path, capsys):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, evil)
    msg = run_main([*tiny_fit_args(tiny_folder, tmp_path / "runs"), f"--ckpt_path={evil}"], capsys)
    assert msg.startswith(f"tlx: error: Refusing to load checkpoint '{evil}': it carries pickled Python objects, "
                          "which could run code when loaded.")
    assert "this would have run" not in capsys.readouterr().out


def test_truncated_checkpoint(tiny_folder, tmp_path, capsys):
    bad = tmp_path / "cut.ckpt"
    torch.save({"w": torch.zeros(1000)}, bad)
    bad.write_bytes(bad.read_bytes()[:300])  # what a non-atomic write leaves when killed
    msg = run_main([*tiny_fit_args(tiny_folder, tmp_path / "runs"), f"--ckpt_path={bad}"], capsys)
    assert msg.startswith(f"tlx: error: Could not read checkpoint '{bad}' (")
    assert msg.endswith("The file may be truncated or not a checkpoint; use another one (e.g. best.ckpt or last.ckpt).")


# ---- image files ----------------------------------------------------------------------------
@pytest.fixture
def odd_images(tmp_path):
    """One class of normal images, one holding every kind of odd file."""
    root = make_imagefolder(tmp_path / "data", split=False, n_train=6, n_val=2)
    odd = root / "cat"
    (odd / "empty.png").write_bytes(b"")
    good = write_image(odd / "whole.jpg", COLOURS["cat"], size=64)
    (odd / "truncated.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    Image.fromarray((np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)).save(odd / "grey16.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(odd / "cmyk.jpg")
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(odd / "animated.gif", save_all=True, append_images=frames[1:])
    frames[0].save(odd / "animated.png", save_all=True, append_images=frames[1:])
    write_image(odd / "café 猫 ñ.png", COLOURS["cat"])
    Image.new("1", (300, 300)).save(odd / "huge.png")
    return root


def test_odd_image_files_are_named_and_skipped_or_decoded(odd_images, caplog, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # the decompression-bomb limit, scaled down
    dm = ImageFolderDataModule(root=str(odd_images), val_split=0.2, preprocessing=TINY_PREPROCESSING)
    with caplog.at_level(logging.WARNING, logger="tlx"):
        kept = {p.rsplit("/", 1)[-1] for p, _ in dm.samples("train") + dm.samples("val")}
    odd = odd_images / "cat"
    assert f"skipped 1 file(s) that are not images by extension (e.g. {odd / 'animated.gif'})" in caplog.text
    skipped = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    reasons = "; ".join(skipped)
    assert f"{odd / 'empty.png'} (empty file (0 bytes))" in reasons
    assert f"{odd / 'truncated.jpg'} (image file is truncated" in reasons
    assert (f"{odd / 'huge.png'} (too large: Image size (90000 pixels) exceeds limit of 40000 pixels, could be "
            "decompression bomb DOS attack. Downscale the file.)") in reasons
    assert {"grey16.png", "cmyk.jpg", "animated.png", "café 猫 ñ.png", "whole.jpg"} <= kept
    assert not kept & {"empty.png", "truncated.jpg", "huge.png", "animated.gif"}


def test_odd_but_valid_images_decode_to_the_right_rgb(odd_images):
    odd = odd_images / "cat"
    grey = load_rgb(odd / "grey16.png")  # 16-bit: scaled to 8 bits, not clipped to white
    assert grey.mode == "RGB" and grey.getextrema()[0] == (0, 248)
    assert load_rgb(odd / "cmyk.jpg").getpixel((5, 5)) == (255, 0, 0)
    assert load_rgb(odd / "animated.png").getpixel((5, 5)) == (255, 0, 0)  # first frame
    assert load_rgb(odd / "café 猫 ñ.png").size == (40, 40)
    assert check_image(odd / "café 猫 ñ.png") is None


def test_non_ascii_class_names_survive(tmp_path):
    root = tmp_path / "données"
    write_image(root / "chat noir" / "a.png", COLOURS["cat"])
    write_image(root / "chat noir" / "b.png", COLOURS["cat"])
    write_image(root / "犬" / "a.png", COLOURS["dog"])
    write_image(root / "犬" / "b.png", COLOURS["dog"])
    dm = ImageFolderDataModule(root=str(root), val_split=0.5)
    assert dm.class_names == ["chat noir", "犬"]
    assert len(dm.samples("train")) == 2


# ---- issue 19: data folders -------------------------------------------------------------------
def test_symlink_loop_in_a_class_folder_is_skipped_and_named(tiny_folder, caplog):
    cat = tiny_folder / "train" / "cat"
    (cat / "loop").symlink_to(cat)  # a folder link back to its parent
    (cat / "self.png").symlink_to(cat / "self.png")  # a link to itself
    (cat / "gone.png").symlink_to(cat / "deleted.png")  # dangling
    dm = ImageFolderDataModule(root=str(tiny_folder), preprocessing=TINY_MODEL["preprocessing"])
    with caplog.at_level(logging.WARNING, logger="tlx"):
        assert len(dm.samples("train")) == 16
    assert (f"{tiny_folder / 'train'}: skipped 3 entr(ies) that are not usable files: {cat / 'gone.png'} "
            f"(dangling symlink); {cat / 'loop'} (symlink loop: a folder already visited); "
            f"{cat / 'self.png'} (symlink loop)") in caplog.text


def test_symlink_loop_as_a_class_folder(tiny_folder, tmp_path, capsys):
    (tiny_folder / "train" / "knot").symlink_to(tiny_folder / "train" / "knot")
    msg = run_main(tiny_fit_args(tiny_folder, tmp_path / "runs"), capsys)
    assert msg == (f"tlx: error: train folder '{tiny_folder / 'train'}': entr(ies) 'knot' (symlink loop) cannot be "
                   "read: fix or remove them.")


def test_symlinked_sub_folder_inside_a_class_is_followed(tiny_folder):
    extra = make_imagefolder(tiny_folder.parent / "extra", classes=("cat",), n_train=3, n_val=0)
    (tiny_folder / "train" / "cat" / "more").symlink_to(extra / "train" / "cat")
    dm = ImageFolderDataModule(root=str(tiny_folder), preprocessing=TINY_MODEL["preprocessing"])
    assert sum(label == 0 for _, label in dm.samples("train")) == 8 + 3


def _unreadable(monkeypatch, folder):
    """Root bypasses permissions: make os.scandir refuse ``folder`` as chmod 000 would."""
    import os as _os

    real = _os.scandir

    def scandir(path="."):
        if str(path) == str(folder):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(_os, "scandir", scandir)


def test_unreadable_train_folder(tiny_folder, tmp_path, capsys, monkeypatch):
    _unreadable(monkeypatch, tiny_folder / "train")
    msg = run_main(tiny_fit_args(tiny_folder, tmp_path / "runs"), capsys)
    assert msg == (f"tlx: error: train folder '{tiny_folder / 'train'}' is unreadable (permission denied): "
                   "check its permissions.")


def test_unreadable_class_folder_is_called_unreadable(tiny_folder, tmp_path, capsys, monkeypatch):
    _unreadable(monkeypatch, tiny_folder / "train" / "dog")
    msg = run_main(tiny_fit_args(tiny_folder, tmp_path / "runs"), capsys)
    assert msg == (f"tlx: error: train folder '{tiny_folder / 'train'}': 1 folder(s) unreadable: "
                   f"'{tiny_folder / 'train' / 'dog'}' (permission denied). Fix their permissions or remove them.")


def test_one_class_folder(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "data", classes=("cat",))
    msg = run_main(tiny_fit_args(root, tmp_path / "runs"), capsys)
    assert msg == (f"tlx: error: train folder '{root / 'train'}' holds one class folder ('cat'): classification "
                   "needs at least two classes (one folder per class).")


# ---- issue 19: visualisations -----------------------------------------------------------------
def test_dollar_in_a_class_name_is_drawn_as_text_and_training_saves(tmp_path):
    root = tmp_path / "data"
    for i in range(6):
        write_image(root / "price_$5" / f"a{i}.png", COLOURS["cat"], seed=i)
        write_image(root / "$x^2$ {bad" / f"b{i}.png", COLOURS["dog"], seed=10 + i)
    gallery = "--trainer.callbacks+=tlx.callbacks.PredictionGallery"
    from tests.helpers import run_cli

    run_cli(tiny_fit_args(root, tmp_path / "runs", extra=[gallery]))
    assert (tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    from tlx.metrics import confusion_figure
    from tlx.visuals import figure_to_array, image_grid_figure

    figure_to_array(confusion_figure(torch.eye(2), ["price_$5", "$x^2$ {bad"]))  # drawn, not parsed
    figure_to_array(image_grid_figure(torch.zeros(1, 3, 8, 8), ["price_$5 $\\frac{"]))


def test_a_failing_figure_is_a_warning_not_a_lost_run(tiny_folder, tmp_path, monkeypatch, caplog):
    import tlx.models.classifier as classifier

    def broken(*a, **k):
        raise ValueError("mathtext: Expected end of text")

    monkeypatch.setattr(classifier, "confusion_figure", broken)
    from tests.helpers import run_cli

    with caplog.at_level(logging.WARNING, logger="tlx"):
        run_cli(tiny_fit_args(tiny_folder, tmp_path / "runs"))
    assert ("Could not draw val/confusion_matrix (ValueError: mathtext: Expected end of text); training goes on "
            "without it.") in caplog.text
    assert (tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt").is_file()


# ---- issue 19: checkpoints --------------------------------------------------------------------
def test_random_bytes_as_a_checkpoint(tiny_folder, tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(np.random.default_rng(0).bytes(2000))
    msg = run_main([*tiny_fit_args(tiny_folder, tmp_path / "runs"), f"--ckpt_path={junk}"], capsys)
    assert msg == (f"tlx: error: '{junk}' is not a checkpoint (not a file written by torch.save); give a .ckpt file "
                   "written by tlx (e.g. best.ckpt or last.ckpt).")


def test_pickle_payload_message_never_suggests_weights_only_false(tiny_folder, tmp_path, capsys):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, evil)
    msg = run_main([*tiny_fit_args(tiny_folder, tmp_path / "runs"), f"--ckpt_path={evil}"], capsys)
    assert msg.endswith("re-save them as plain state. The file names 'print'.")
    assert "weights_only" not in msg and "allowlist" not in msg


def test_disk_full_while_writing_a_checkpoint(tiny_folder, tmp_path, capsys, monkeypatch):
    import errno

    import tlx.checkpointing as checkpointing

    def full(obj, f):
        f.write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointing.torch, "save", full)
    msg = run_main(tiny_fit_args(tiny_folder, tmp_path / "runs"), capsys)
    ckpt_dir = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints"
    assert msg == (f"tlx: error: no space left on device while writing {ckpt_dir / 'best.ckpt'}; the previous "
                   "checkpoint is intact; free space and resume with --ckpt_path last")
    assert list(ckpt_dir.iterdir()) == []  # no partial file left behind


def test_checkpoints_keep_the_umask_mode(tmp_path):
    import os

    from tlx.checkpointing import atomic_torch_save

    old = os.umask(0o022)
    try:
        atomic_torch_save({"w": torch.ones(1)}, tmp_path / "last.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o644


def test_cleanup_removes_only_dead_writers_temp_files(tmp_path):
    import socket
    import subprocess

    from tlx.checkpointing import PARTIAL_PREFIX, SafeCheckpointIO

    host = socket.gethostname().replace("-", "_")
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = tmp_path / f"{PARTIAL_PREFIX}{host}-{os.getppid()}-abc.tmp"  # another run, writing now
    gone = tmp_path / f"{PARTIAL_PREFIX}{host}-{dead.pid}-abc.tmp"  # a run killed mid-write
    for p in (live, gone):
        p.write_bytes(b"PK")
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1)}}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "last.ckpt"])


def test_a_checkpoint_with_non_finite_buffers_is_never_written(tmp_path, capsys):
    from tlx.checkpointing import SafeCheckpointIO

    io = SafeCheckpointIO()
    io.save_checkpoint({"state_dict": {"bn.running_var": torch.ones(2)}}, tmp_path / "last.ckpt")
    state = {"conv.weight": torch.ones(2), "bn.running_var": torch.tensor([1.0, float("inf")])}
    with pytest.raises(Exception) as info:
        io.save_checkpoint({"state_dict": state}, tmp_path / "last.ckpt")
    assert str(info.value) == (
        f"Refusing to write checkpoint '{tmp_path / 'last.ckpt'}': 1 tensor(s) of the model are not finite "
        "(e.g. bn.running_var): training diverged. The previous checkpoint is kept. Common fixes: a lower learning "
        "rate (model.init_args.optimizer.init_args.lr), gradient clipping (trainer.gradient_clip_val).")
    assert torch.equal(io.load_checkpoint(tmp_path / "last.ckpt")["state_dict"]["bn.running_var"], torch.ones(2))


class PoisonBuffer(Callback):
    """What lr=1e6 does to BatchNorm: the running variance overflows while the loss stays finite."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1:
            bn = next(m for m in pl_module.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))


def test_non_finite_buffers_stop_the_run_and_keep_the_last_good_checkpoint(tiny_folder, tmp_path, capsys):
    poison = "--trainer.callbacks+=tests.test_errors.PoisonBuffer"
    msg = run_main(tiny_fit_args(tiny_folder, tmp_path / "runs", epochs=2, extra=[poison]), capsys)
    ckpts = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints"
    assert msg.startswith("tlx: error: 1 tensor(s) of the model became non-finite at epoch 1, global step 5 (e.g. ")
    assert "running_var), although the loss was finite: training stopped and no checkpoint holding them is " in msg
    assert f"The last good checkpoint, {ckpts / 'last.ckpt'}, is kept" in msg
    for name in ("best.ckpt", "last.ckpt"):
        state = torch.load(ckpts / name, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ---- issue 19: lr_find --------------------------------------------------------------------------
def test_lr_find_suggests_from_before_the_divergence():
    from tlx.tuning import suggest_lr

    lrs = list(np.geomspace(1e-5, 100, 40))
    falling = list(np.linspace(0.36, 0.2, 20))
    exploded = [15, 30, 9, 40, 8, 60, 5, 70, 4, 90, 3, 80, 2.5, 85, 2, 95, 1.5, 99, 1.2, 100]  # big falls in here
    suggestion, _ = suggest_lr(lrs, falling + exploded)
    assert suggestion is not None and suggestion <= lrs[19]  # never past the lowest loss
    suggestion, why = suggest_lr(lrs, [0.36, 0.35, 15.0] + exploded + [1] * 17)
    assert suggestion is None and why == "the loss did not fall over 40 batches before diverging at lr 1.5e-05; try a lower min_lr"


# ---- issue 19: the CLI's boundary -----------------------------------------------------------------
def test_empty_yaml_names_the_file(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n\n")
    msg = run_main(["fit", "--config", str(empty)], capsys)
    assert msg == f"tlx: error: config file '{empty}' is empty: put the run's settings in it (see configs/) or drop --config."


def test_default_root_dir_is_a_file(tiny_folder, tmp_path, capsys):
    (tmp_path / "runs").write_text("a file")
    msg = run_main(tiny_fit_args(tiny_folder, tmp_path / "runs"), capsys)
    assert msg == f"tlx: error: trainer.default_root_dir '{tmp_path / 'runs'}' is a file, not a folder: choose a folder."
    msg = run_main(tiny_fit_args(tiny_folder, tmp_path / "runs" / "sub"), capsys)
    assert msg == (f"tlx: error: trainer.default_root_dir '{tmp_path / 'runs' / 'sub'}' is a file, not a folder: "
                   f"'{tmp_path / 'runs'}' is a file: choose a folder.")


def test_default_root_dir_not_writable(tiny_folder, tmp_path, capsys, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path / "ro") else real(p, mode))
    (tmp_path / "ro").mkdir()
    msg = run_main(tiny_fit_args(tiny_folder, tmp_path / "ro" / "runs"), capsys)
    assert msg == (f"tlx: error: trainer.default_root_dir '{tmp_path / 'ro' / 'runs'}' is not writable: choose a folder "
                   "you can write to (or fix its permissions).")


def test_ckpt_path_is_a_folder(tiny_folder, tmp_path, capsys):
    from tests.helpers import run_cli

    run_cli(tiny_fit_args(tiny_folder, tmp_path / "runs"))
    folder = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints"
    args = ["predict" if a == "fit" else a for a in tiny_fit_args(tiny_folder, tmp_path / "runs")]
    msg = run_main([*args, f"--ckpt_path={folder}"], capsys)
    assert msg == f"tlx: error: --ckpt_path '{folder}' is a folder: give a checkpoint file, e.g. {folder / 'last.ckpt'}."


def test_ckpt_path_last_with_another_backbone_is_refused(tiny_folder, tmp_path, capsys):
    from tests.helpers import run_cli

    run_cli(tiny_fit_args(tiny_folder, tmp_path / "runs"))
    last = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    args = [a.replace("timm:test_efficientnet", "timm:test_resnet") for a in tiny_fit_args(tiny_folder, tmp_path / "runs", epochs=2)]
    msg = run_main([*args, "--ckpt_path=last"], capsys)
    assert msg == (f"tlx: error: --ckpt_path {last}: the checkpoint was trained with backbone 'timm:test_efficientnet' "
                   "(the command asks for 'timm:test_resnet'). Use the checkpoint's settings, or start a new run "
                   "(another trainer.default_root_dir) for the new ones.")
    size = json.dumps({**TINY_MODEL["preprocessing"], "input_size": 48})
    msg = run_main([*tiny_fit_args(tiny_folder, tmp_path / "runs", epochs=2),
                    f"--model.init_args.preprocessing={size}", "--ckpt_path=last"], capsys)
    assert msg.endswith("trained with input_size 32 (the command asks for 48). Use the checkpoint's settings, or start "
                        "a new run (another trainer.default_root_dir) for the new ones.")
    assert last.read_bytes() == before


def test_two_fits_started_together_get_their_own_version_folders(tiny_folder, tmp_path):
    from tlx.cli_checks import claim_version

    logs = tmp_path / "runs" / "lightning_logs"
    (logs / "version_0").mkdir(parents=True)  # what the other run created a moment ago
    assert claim_version(logs) == 1 and claim_version(logs) == 2
    from tests.helpers import run_cli

    run_cli(tiny_fit_args(tiny_folder, tmp_path / "runs"))
    assert (logs / "version_3" / "checkpoints" / "last.ckpt").is_file()
    assert not any(any((logs / f"version_{i}").iterdir()) for i in (1, 2))


@pytest.mark.multiprocess  # starts python processes
def test_two_fits_run_at_once_into_one_folder_both_finish(tiny_folder, tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO

    args = tiny_fit_args(tiny_folder, tmp_path / "runs", epochs=2, extra=["--trainer.enable_model_summary=false"])
    procs = [subprocess.Popen([sys.executable, "-m", "tlx", *args], cwd=REPO, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    logs = tmp_path / "runs" / "lightning_logs"
    assert sorted(p.name for p in logs.iterdir()) == ["version_0", "version_1"]
    for v in logs.iterdir():
        assert {p.name for p in (v / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
        assert (v / "config.yaml").is_file()


def test_an_unforeseen_error_is_one_line_with_the_traceback_in_a_file(tiny_folder, tmp_path, capsys, monkeypatch):
    import tlx.models.classifier as classifier

    def boom(*a, **k):
        raise RuntimeError("something nobody planned for\nsecond line")

    monkeypatch.setattr(classifier.ImageClassifier, "configure_optimizers", boom)
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_fit_args(tiny_folder, tmp_path / "runs"))
    assert exit_info.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("tlx: error: RuntimeError: something nobody planned for (an error tlx does not explain "
                           "yet; the full traceback is in ")
    trace = line.split("the full traceback is in ")[1].split(";")[0]
    assert "in configure_optimizers" not in line and "boom" in open(trace).read()
    os.remove(trace)


@pytest.mark.multiprocess  # starts python processes
def test_sigint_saves_like_sigterm(tiny_folder, tmp_path):
    import signal

    from tests.helpers import signal_once_saved

    runs = tmp_path / "runs"
    last = runs / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    args = tiny_fit_args(tiny_folder, runs, epochs=1000, extra=["--trainer.enable_model_summary=false"])
    returncode, err = signal_once_saved(args, last, signal.SIGINT)
    assert returncode == 130
    assert f"SIGINT received: saved {last}; resume with --ckpt_path last." in err
    assert err.strip().splitlines()[-1] == "tlx: stopped by SIGINT after saving a checkpoint; resume with --ckpt_path last."
    assert torch.load(last, weights_only=True)["global_step"] > 4  # newer than the first validation's save


# ---- issue 19: predict, export and files that change ------------------------------------------------
def predict_args(ckpt, *extra):
    return ["predict", f"--ckpt_path={ckpt}", "--data.init_args.num_workers=0", "--trainer.enable_progress_bar=false",
            *extra]


def test_predict_skips_and_names_a_corrupt_image(tiny_ckpt, tmp_path, caplog):
    from tests.helpers import run_cli

    _, ckpt = tiny_ckpt
    folder = tmp_path / "todo"
    write_image(folder / "good.png", COLOURS["cat"])
    (folder / "empty.png").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "p.csv"
    with caplog.at_level(logging.WARNING, logger="tlx"):
        run_cli(predict_args(ckpt, f"--data.init_args.predict_dir={folder}", f"--prediction_writer.output={out}"))
    assert f"predict: skipped 2 unreadable image(s): {folder / 'corrupt.jpg'} (cannot identify image file" in caplog.text
    assert f"{folder / 'empty.png'} (empty file (0 bytes))" in caplog.text
    rows = out.read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"{folder / 'good.png'},")


def test_predict_output_that_is_a_folder_is_refused_before_predicting(tiny_ckpt, tmp_path, capsys):
    root, ckpt = tiny_ckpt
    msg = run_main(predict_args(ckpt, f"--data.init_args.predict_dir={root / 'val'}",
                                f"--prediction_writer.output={tmp_path}"), capsys)
    assert msg == f"tlx: error: prediction_writer.output '{tmp_path}' is a folder: give a file path, e.g. {tmp_path / 'predictions.csv'}."


def test_predict_files_naming_a_binary_file(tiny_ckpt, tmp_path, capsys):
    _, ckpt = tiny_ckpt
    archive = tmp_path / "images.zip"
    archive.write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xb7\xac\xce\x8c\xff\xfe")
    msg = run_main(predict_args(ckpt, f"--data.init_args.predict_files={archive}"), capsys)
    assert msg == (f"tlx: error: predict_files '{archive}' is not a text file of image paths (it is binary: a zip or "
                   "an image with an unknown extension?); give one path per line.")


def test_export_verify_images_with_a_bad_image(tiny_ckpt, tmp_path, caplog):
    from tests.helpers import run_cli

    root, ckpt = tiny_ckpt
    folder = tmp_path / "verify"
    write_image(folder / "a.png", COLOURS["cat"])
    (folder / "b.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING, logger="tlx"):
        run_cli(["export", f"--ckpt_path={ckpt}", "--format=torchscript", f"--output_dir={tmp_path / 'out'}",
                 f"--verify_images={folder}", "--trainer.enable_progress_bar=false"])
    assert f"verify_images '{folder}': skipped 1 unreadable image(s): {folder / 'b.png'} (cannot identify" in caplog.text
    info = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert info["verification"]["images"] == [str(folder / "a.png")]


def test_images_deleted_during_a_fit_are_skipped_and_counted(tiny_folder, caplog):
    from tlx.data.datasets import LabelledImages
    from tlx.data.transforms import eval_transform
    from tlx.preprocessing import Preprocessing

    dm = ImageFolderDataModule(root=str(tiny_folder), preprocessing=TINY_MODEL["preprocessing"])
    samples = dm.samples("train")
    data = LabelledImages(samples, eval_transform(Preprocessing.from_dict(TINY_MODEL["preprocessing"])))
    os.remove(samples[3][0])  # a sync removed it after the check
    with caplog.at_level(logging.WARNING, logger="tlx"):
        images = [data[i] for i in range(len(data))]
    assert len(images) == len(samples) and images[3][1] == samples[4][1]
    assert (f"{samples[3][0]} cannot be read any more (FileNotFoundError: [Errno 2] No such file or directory: "
            f"'{samples[3][0]}'); skipped, the next image takes its place (1 file(s) skipped so far in this process)."
            ) in caplog.text


class DeleteAfterCheck(Callback):
    """A sync removing files after tlx checked them, while the run goes on."""

    def on_train_epoch_start(self, trainer, pl_module):
        for path, _ in trainer.datamodule.samples("train")[:3]:
            if os.path.exists(path):
                os.remove(path)


def test_images_deleted_during_a_fit_do_not_end_it(tiny_folder, tmp_path):
    from tests.helpers import run_cli

    run_cli(tiny_fit_args(tiny_folder, tmp_path / "runs", epochs=2,
                          extra=["--trainer.callbacks+=tests.test_errors.DeleteAfterCheck"]))
    assert (tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_a_one_pixel_high_strip_is_cropped_not_blown_up(tmp_path, caplog):
    from tlx.data.images import load_rgb

    Image.new("RGB", (12000, 1), (200, 40, 40)).save(tmp_path / "strip.png")
    with caplog.at_level(logging.WARNING, logger="tlx"):
        img = load_rgb(tmp_path / "strip.png")
    assert img.size == (20, 1)
    assert (f"{tmp_path / 'strip.png'} is 12000x1 px (more than 20:1): centre-cropped to 20:1 so that resizing it "
            "stays bounded.") in caplog.text


# ---- issue 19: numeric options ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "option, value, message",
    [
        ("data.init_args.batch_size", "0", "data.batch_size must be a positive integer, got 0."),
        ("data.init_args.batch_size", "-4", "data.batch_size must be a positive integer, got -4."),
        ("data.init_args.num_workers", "-1", "data.num_workers must be an integer >= 0 (0: load in the main process), got -1."),
        ("data.init_args.crop_scale", "[2, 1]", "data.crop_scale must be two area fractions [min, max] with 0 < min <= max <= 1, got [2.0, 1.0]."),
        ("data.init_args.hflip", "2", "data.hflip must be a probability in [0, 1], got 2.0."),
        ("data.init_args.mixup_alpha", "-1", "data.mixup_alpha must be a number >= 0 (0: off), got -1.0."),
        ("data.init_args.val_split", "1.5", "data.val_split must be a fraction between 0 and 1 (exclusive), got 1.5."),
        ("model.init_args.label_smoothing", "2", "model.label_smoothing must be a number in [0, 1), got 2.0."),
        ("model.init_args.preprocessing", json.dumps({**TINY_MODEL["preprocessing"], "input_size": 0}),
         "model.preprocessing.input_size must be a positive number of pixels, got 0."),
        ("data.init_args.preprocessing", json.dumps({**TINY_MODEL["preprocessing"], "std": [0.5, 0, 0.5]}),
         "data.preprocessing.std must be three positive numbers (R, G, B), got [0.5, 0, 0.5]."),
    ],
)
def test_numeric_options_out_of_range_are_named(tiny_folder, tmp_path, capsys, option, value, message):
    msg = run_main(tiny_fit_args(tiny_folder, tmp_path / "runs", extra=[f"--{option}={value}"]), capsys)
    assert msg == f"tlx: error: {message}"


# ---- issue 19: backbone weights ----------------------------------------------------------------------
def test_torchvision_corrupt_cache_file_is_named(tmp_path, monkeypatch):
    from tlx.backbones import create_backbone
    from tlx.errors import WeightsUnavailableError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(WeightsUnavailableError) as err:
        create_backbone("torchvision:resnet18", weights="IMAGENET1K_V1")
    assert str(err.value) == (f"The cached torchvision weights {cached} are corrupt or incomplete (UnpicklingError): "
                              "delete the file and run again (it is downloaded anew), or put a good copy there.")


def test_torchvision_download_that_cannot_start_fails_fast(tmp_path, monkeypatch):
    import socket

    from tlx.backbones import create_backbone
    from tlx.backbones.torchvision_models import DOWNLOAD_TIMEOUT_S
    from tlx.errors import WeightsUnavailableError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    seen = []

    def dropped(request, *a, **k):  # what a silently dropping network does once a timeout is set
        seen.append(socket.getdefaulttimeout())
        raise TimeoutError("timed out")

    monkeypatch.setattr(torch.hub, "urlopen", dropped)
    with pytest.raises(WeightsUnavailableError) as err:
        create_backbone("torchvision:resnet18", weights="IMAGENET1K_V1")
    assert seen == [DOWNLOAD_TIMEOUT_S] and socket.getdefaulttimeout() is None
    assert str(err.value).startswith("Could not download torchvision weights ResNet18_Weights.IMAGENET1K_V1 for "
                                     "'resnet18' (timed out). Offline, put the file at ")


def test_timm_weights_with_pickled_objects_via_backbone_kwargs(tiny_folder, tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": Payload()}, evil)
    overlay = json.dumps({"pretrained_cfg_overlay": {"file": str(evil)}})
    args = [a for a in tiny_fit_args(tiny_folder, tmp_path / "runs") if "weights=null" not in a]
    msg = run_main([*args, f"--model.init_args.backbone_kwargs={overlay}"], capsys)
    assert msg == ("tlx: error: Refusing the weights file for timm:test_efficientnet: it carries pickled Python objects "
                   "(builtins.print), which could run code when loaded. Save plain weights with "
                   "torch.save(model.state_dict(), path) and give them as model.weights_path.")
    assert "this would have run" not in capsys.readouterr().out


# ---- own adversarial pass -------------------------------------------------------------------------------
def test_a_fifo_in_a_class_folder_is_skipped_not_opened(tiny_folder, caplog):
    fifo = tiny_folder / "train" / "cat" / "pipe.png"
    os.mkfifo(fifo)  # opening it would block forever
    dm = ImageFolderDataModule(root=str(tiny_folder), preprocessing=TINY_MODEL["preprocessing"])
    with caplog.at_level(logging.WARNING, logger="tlx"):
        assert len(dm.samples("train")) == 16
    assert f"skipped 1 entr(ies) that are not usable files: {fifo} (not a regular file)" in caplog.text


def test_empty_checkpoint_file(tiny_folder, tmp_path, capsys):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    msg = run_main([*tiny_fit_args(tiny_folder, tmp_path / "runs"), f"--ckpt_path={tmp_path / 'empty.ckpt'}"], capsys)
    assert msg == f"tlx: error: Checkpoint '{tmp_path / 'empty.ckpt'}' is empty (0 bytes): use another one (e.g. best.ckpt or last.ckpt)."


def test_plain_weights_file_given_as_ckpt_path(tiny_folder, tmp_path, capsys):
    weights = tmp_path / "weights.pth"
    torch.save({"conv_stem.weight": torch.zeros(1)}, weights)
    msg = run_main([*tiny_fit_args(tiny_folder, tmp_path / "runs"), f"--ckpt_path={weights}"], capsys)
    assert msg == (f"tlx: error: '{weights}' is not a training checkpoint (it has no 'state_dict': a plain weights "
                   "file?). To start from such weights, give them as model.init_args.weights_path instead of --ckpt_path.")


def test_disk_full_outside_a_checkpoint_write(tiny_folder, tmp_path, capsys, monkeypatch):
    import errno

    from tlx.cli import SaveRunInfo

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "run.json")

    monkeypatch.setattr(SaveRunInfo, "save_config", full)
    msg = run_main(tiny_fit_args(tiny_folder, tmp_path / "runs"), capsys)
    assert msg == ("tlx: error: no space left on device while writing run.json; free space and run again "
                   "(checkpoints already written are intact).")


def test_garbage_exif_is_checked_like_loading_handles_it(tmp_path):
    from tlx.data.images import check_image, load_rgb

    path = write_image(tmp_path / "a.jpg", COLOURS["cat"])
    data = path.read_bytes()
    # an APP1 "Exif" segment whose TIFF header is garbage, right after the SOI marker
    bad = data[:2] + b"\xff\xe1\x00\x10Exif\x00\x00XXXXXXXX" + data[2:]
    (tmp_path / "b.jpg").write_bytes(bad)
    # the check parses the EXIF as loading does (exif_transpose): both accept this file, so it trains
    assert check_image(tmp_path / "b.jpg") is None
    assert load_rgb(tmp_path / "b.jpg").size == (40, 40)
