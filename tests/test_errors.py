"""The bad-input catalogue: each case and the exact message the user sees (no traceback)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import COLOURS, TINY_MODEL, TINY_PREPROCESSING, make_imagefolder, tiny_fit_args, write_image
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
