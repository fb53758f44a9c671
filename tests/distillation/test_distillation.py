"""Distillation losses against values computed by hand, and a tiny distillation fit."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from tests.helpers import make_imagefolder, run_cli, tiny_fit_args
from tlx.cli import main
from tlx.distillation import KD, RKD, SP, Attention, Hint, Outputs
from tlx.models import ImageClassifier
from tlx.models.from_checkpoint import model_from_checkpoint


def _out(logits=None, embedding=None, feature_map=None) -> Outputs:
    return Outputs(logits, embedding, feature_map)


def test_kd_is_t_squared_kl_of_softened_distributions():
    # teacher probabilities at T = 2: softmax([2 ln 3, 0] / 2) = [3/4, 1/4]; student uniform
    student, teacher = torch.zeros(1, 2), torch.tensor([[2 * math.log(3), 0.0]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    loss = KD(temperature=2.0, weight=1.0)(_out(student), _out(teacher))
    assert float(loss) == pytest.approx(4 * kl, rel=1e-6)


def test_hint_regresses_the_teacher_map_through_the_projection():
    hint = Hint(weight=1.0)
    hint.build(1, 1)
    hint.eval()  # BatchNorm with its initial statistics: x / sqrt(1 + eps)
    with torch.no_grad():
        hint.projection[0].weight.fill_(2.0)
    student, teacher = torch.tensor([[[[1.0, 2.0]]]]), torch.zeros(1, 1, 1, 2)
    loss = hint(_out(feature_map=student), _out(feature_map=teacher))
    assert float(loss.detach()) == pytest.approx((4 + 16) / 2 / (1 + 1e-5), rel=1e-6)


def test_attention_compares_unit_norm_spatial_maps():
    # student map |A|^2 = [1, 0] -> [1, 0]; teacher [0, 4] -> [0, 1]; mean squared difference 1
    student, teacher = torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0, 2.0]]], ])
    teacher = torch.cat([teacher, teacher], dim=1)  # channel counts may differ: maps are channel means
    loss = Attention(weight=1.0)(_out(feature_map=student), _out(feature_map=teacher))
    assert float(loss) == pytest.approx(1.0)


def test_sp_compares_row_normalised_similarity_matrices():
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # G_s = I
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # G_t = ones -> rows [1, 1] / sqrt 2
    loss = SP(weight=1.0)(_out(feature_map=student), _out(feature_map=teacher))
    assert float(loss) == pytest.approx((2 - math.sqrt(2)) / 2, rel=1e-6)


def test_rkd_distance_term_normalises_by_the_mean_distance():
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # distances 1, 1, sqrt 2
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # distances 1, 2, 1
    ms, mt = (2 + math.sqrt(2)) / 3, 4 / 3
    diffs = [1 / ms - 1 / mt, 1 / ms - 2 / mt, math.sqrt(2) / ms - 1 / mt]
    expected = 2 * sum(0.5 * d * d for d in diffs) / 9  # smooth L1 (all |d| < 1) over the 3x3 matrix
    loss = RKD(distance_weight=1.0, angle_weight=0.0)(_out(embedding=student), _out(embedding=teacher))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # scale and width do not matter: a teacher twice as large in 3-D gives zero
    teacher_3d = torch.cat([2 * student, torch.zeros(3, 1)], dim=1)
    assert float(RKD()(_out(embedding=student), _out(embedding=teacher_3d))) == pytest.approx(0.0, abs=1e-6)


def test_rkd_angle_term_matches_a_loop_over_triplets():
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.5]])

    def cosines(e):
        out = []
        for i, j, k in itertools.product(range(3), repeat=3):  # the angle at i between j and k
            u, v = e[j] - e[i], e[k] - e[i]
            nu, nv = float(u.norm()), float(v.norm())
            out.append(float(u @ v) / (nu * nv) if nu and nv else 0.0)
        return out

    diffs = [a - b for a, b in zip(cosines(student), cosines(teacher))]
    expected = sum(0.5 * d * d if abs(d) < 1 else abs(d) - 0.5 for d in diffs) / 27
    loss = RKD(distance_weight=0.0, angle_weight=1.0)(_out(embedding=student), _out(embedding=teacher))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("distil")
    data = make_imagefolder(root / "data")
    run_cli(tiny_fit_args(data, root / "teacher", extra=["--trainer.logger=false"]))
    return data, root / "teacher" / "checkpoints" / "best.ckpt"


def _student_args(data, teacher, out, losses, *extra):
    student_pre = {"input_size": 24, "resize_size": 28, "interpolation": "bilinear", "mean": [0.4] * 3, "std": [0.3] * 3}
    args = tiny_fit_args(data, out, epochs=2, extra=["--trainer.logger=false", *extra])
    args = [a.replace("tlx.models.ImageClassifier", "tlx.models.DistillationClassifier") for a in args]
    return [a for a in args if "backbone=" not in a and "preprocessing=" not in a] + [
        "--model.init_args.backbone=timm:test_resnet",  # another backbone and input size than the teacher's
        f"--model.init_args.preprocessing={json.dumps(student_pre)}",
        f"--model.init_args.teacher_ckpt={teacher}",
        f"--model.init_args.losses={json.dumps([{'class_path': f'tlx.distillation.{n}'} for n in losses])}",
    ]


def test_tiny_distillation_fit_gives_an_ordinary_student_checkpoint(teacher_run, tmp_path):
    data, teacher = teacher_run
    cli = run_cli(_student_args(data, teacher, tmp_path, ["KD", "Hint", "Attention", "RKD", "SP"],
                                "--model.init_args.teacher_cache_size=64", "--data.init_args.crop_scale=[1.0, 1.0]",
                                "--data.init_args.hflip=0"))
    metrics = cli.trainer.callback_metrics
    for name in ("ce", "kd", "hint", "attention", "rkd", "sp"):
        assert torch.isfinite(metrics[f"train/{name}_loss"])
    # no random augmentation: every view recurs in epoch 2, so the teacher ran once per image
    assert cli.model.teacher.misses == 16 and cli.model.teacher.hits == 16
    ckpt = torch.load(tmp_path / "checkpoints" / "student.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["_class_path"] == "tlx.models.ImageClassifier"
    assert not any(k.startswith(("teacher.", "losses.")) for k in ckpt["state_dict"])
    student = model_from_checkpoint(ckpt).eval()
    assert type(student) is ImageClassifier and student.preprocessing.input_size == 24
    best = model_from_checkpoint(str(tmp_path / "checkpoints" / "best.ckpt")).eval()
    x = torch.randn(2, 3, 24, 24)
    torch.testing.assert_close(student(x), best(x))


def test_teacher_with_other_classes_is_one_clear_line(teacher_run, tmp_path, capsys):
    _, teacher = teacher_run
    other = make_imagefolder(tmp_path / "other", classes=("cat", "fox"))
    with pytest.raises(SystemExit):
        main(_student_args(other, teacher, tmp_path, ["KD"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "distil from a teacher trained on the same class folders" in err[0]
