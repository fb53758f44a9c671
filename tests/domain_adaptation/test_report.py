"""scripts/domain_adaptation_report.py on a tiny generated root of three domains: every task runs."""

import re

import pytest
import torch

from scripts.domain_adaptation_report import find_domains, main, task_names
from tests.helpers import REPO, TINY_MODEL, make_domain
from tlx.errors import DataError


def test_tasks_are_every_ordered_pair_of_the_domains_present(tmp_path):
    for i, name in enumerate(("amazon", "dslr", "webcam")):
        make_domain(tmp_path / name, 30 * i, 2, seed0=100 * i)
    (tmp_path / "notes").mkdir()  # no class folders: not a domain
    domains = find_domains(tmp_path)
    assert domains == ["amazon", "dslr", "webcam"]
    assert task_names(domains) == {"a2d": ("amazon", "dslr"), "a2w": ("amazon", "webcam"), "d2a": ("dslr", "amazon"),
                                   "d2w": ("dslr", "webcam"), "w2a": ("webcam", "amazon"), "w2d": ("webcam", "dslr")}
    assert task_names(["art", "amazon"]) == {"art2amazon": ("art", "amazon"), "amazon2art": ("amazon", "art")}
    make_domain(tmp_path / "one" / "webcam", 0, 2)
    with pytest.raises(DataError, match="holds 1 domain"):
        find_domains(tmp_path / "one")


def test_report_runs_every_task_of_a_three_domain_root(tmp_path, capsys):
    for i, name in enumerate(("amazon", "dslr", "webcam")):
        make_domain(tmp_path / "data" / name, 30 * i, 4, seed0=100 * i)
    main([
        "--data-root", str(tmp_path / "data"), "--backbone", TINY_MODEL["backbone"], "--weights", "none",
        "--image-size", "32", "--steps", "4", "--val-every", "2", "--batch-size", "2",
        "--methods", "logistic_probe", "source_only", "information_maximization", "--cache", str(tmp_path / "cache"),
    ])
    out = capsys.readouterr().out
    tasks = ["a2d", "a2w", "d2a", "d2w", "w2a", "w2d"]
    for method in ("logistic_probe", "source_only", "information_maximization"):
        assert len(re.findall(rf"^  \w2\w {method} ", out, flags=re.M)) == 6
    # two tables (last step, chosen by SND), a column per task, gains against source-only
    assert out.count("| method | " + " | ".join(tasks) + " |") == 2
    rows = re.findall(r"^\| information_maximization \|(.*)\|$", out, flags=re.M)
    assert len(rows) == 2 and all(re.fullmatch(r"[+-]\d+\.\d", c.strip()) for c in rows[0].split("|")[6:])
    # the features are cached by content: per domain, the centre crop's and the 4 training views' (the
    # default) in one file each, reused by the second call
    assert "centre + 4 random views" in out
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 6
    main(["--data-root", str(tmp_path / "data"), "--backbone", TINY_MODEL["backbone"], "--weights", "none",
          "--image-size", "32", "--tasks", "d2w", "--methods", "logistic_probe", "source_only", "--steps", "2",
          "--batch-size", "2", "--cache", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert "features of" not in out and "training views of" not in out
    assert re.search(r"^  d2w logistic_probe ", out, flags=re.M) and re.search(r"^  d2w source_only ", out, flags=re.M)


def test_the_top_strategy_and_further_config_fragments_must_exist_and_are_for_the_pipeline_modes(tmp_path, capsys):
    for i, name in enumerate(("amazon", "webcam")):
        make_domain(tmp_path / "data" / name, 30 * i, 2, seed0=100 * i)
    common = ["--data-root", str(tmp_path / "data"), "--tasks", "a2w", "--methods", "source_only"]
    with pytest.raises(SystemExit):
        main([*common, "--mode", "top_stages", "--config", str(tmp_path / "nowhere.yaml")])
    assert "--config " in (err := capsys.readouterr().err) and "nowhere.yaml: no such file" in err
    with pytest.raises(SystemExit):
        main([*common, "--mode", "top_stages", "--top-strategy", str(tmp_path / "nowhere.yaml")])
    assert "--top-strategy " in (err := capsys.readouterr().err) and "nowhere.yaml: no such file" in err
    fragment = tmp_path / "strategy.yaml"
    fragment.write_text("trainer: {}\n")
    with pytest.raises(SystemExit):
        main([*common, "--config", str(fragment)])  # features mode: no pipeline to stack it on
    assert "top_stages/finetune modes only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*common, "--cut", "blocks.5"])  # features mode caches the whole backbone's output
    assert "--cut blocks.5: top_stages mode only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*common, "--extract-precision", "bf16"])  # features mode extracts in fp32 (its own cache)
    assert "--extract-precision bf16: top_stages mode only" in capsys.readouterr().err


def test_the_top_stages_fragment_takes_the_cut_and_keeps_the_cache_on_disk(tmp_path):
    import yaml

    from scripts.domain_adaptation_report import top_stages_fragment

    for cut, expected in ((None, "blocks.4"), ("blocks.5", "blocks.5")):
        fragment = yaml.safe_load(top_stages_fragment(tmp_path / "cache", tmp_path / "runs", cut).read_text())
        [cache] = fragment["trainer"]["callbacks+"]
        assert cache["init_args"]["cut"] == expected and cache["init_args"]["cache_dir"] == str((tmp_path / "cache").resolve())
        assert "extract_precision" not in cache["init_args"]  # FeatureCache's default: the trainer's precision
    fragment = yaml.safe_load(top_stages_fragment(tmp_path / "cache", tmp_path / "runs", "blocks.5", "auto").read_text())
    assert fragment["trainer"]["callbacks+"][0]["init_args"]["extract_precision"] == "auto"


def test_the_last_block_fragment_is_what_the_report_runs_in_top_stages_mode(tmp_path, monkeypatch):
    """configs/domain_adaptation/last_block.yaml, the CLI user's fragment, equals the report's top_stages
    composition with its defaults (the partial cache with its cut and extraction precision, then the
    top strategy), cache folder aside; and its cut is one of EfficientNet-Lite0's."""
    import yaml

    import scripts.domain_adaptation_report as report
    from tlx.backbones import create_backbone, cut_points

    for i, name in enumerate(("amazon", "webcam")):
        make_domain(tmp_path / "data" / name, 30 * i, 2, seed0=100 * i)

    class Resolved(Exception):  # stops main() at its first run, with the options it resolved
        pass

    def first_run(task, method, seed, args):
        raise Resolved(args)

    monkeypatch.setattr(report, "run_finetune", first_run)
    with pytest.raises(Resolved) as resolved:
        report.main(["--mode", "top_stages", "--data-root", str(tmp_path / "data"), "--tasks", "a2w",
                     "--methods", "source_only", "--seeds", "0", "--runs", str(tmp_path / "runs")])
    args = resolved.value.args[0]
    cache = yaml.safe_load(report.top_stages_fragment(tmp_path / "cache", tmp_path / "runs", args.cut,
                                                      args.extract_precision).read_text())
    composed = cache["trainer"]["callbacks+"] + yaml.safe_load(args.top_strategy.read_text())["trainer"]["callbacks+"]
    composed[0]["init_args"]["cache_dir"] = None
    fragment = yaml.safe_load((REPO / "configs" / "domain_adaptation" / "last_block.yaml").read_text())
    assert fragment["trainer"]["callbacks+"] == composed
    assert (args.cut, args.extract_precision) == ("blocks.5", "auto")
    assert args.cut in cut_points(create_backbone("efficientnet_lite0", weights=None).model)


def test_label_smoothing_reaches_the_features_mode_model_and_defaults_to_office31s(tmp_path, capsys, monkeypatch):
    import scripts.domain_adaptation_report as report

    seen = []

    class Recording(report.DomainAdaptationClassifier):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.hparams.label_smoothing)

    monkeypatch.setattr(report, "DomainAdaptationClassifier", Recording)
    for i, name in enumerate(("amazon", "webcam")):
        make_domain(tmp_path / "data" / name, 30 * i, 2, seed0=100 * i)
    common = ["--data-root", str(tmp_path / "data"), "--backbone", TINY_MODEL["backbone"], "--weights", "none",
              "--image-size", "32", "--steps", "2", "--batch-size", "2", "--tasks", "a2w", "--methods", "source_only",
              "--cache", str(tmp_path / "cache")]
    main([*common, "--label-smoothing", "0.1", "--seeds", "0", "1"])
    out = capsys.readouterr().out
    assert "label smoothing 0.1" in out
    # with several seeds, each run's accuracy as it ends, and every seed's beside the mean
    seeds = [re.search(rf"^    a2w source_only seed {s}: last (\d+\.\d), chosen by SND \d+\.\d \(\d+ s\)$", out, re.M)
             for s in (0, 1)]
    assert all(seeds) and f"({seeds[0][1]}, {seeds[1][1]})" in re.search(r"^  a2w source_only .*$", out, re.M)[0]
    main(common)  # office31.yaml sets none (0.1 was tried and costs MCC 5-7 points: README)
    assert "label smoothing 0.0" in capsys.readouterr().out
    recipe = tmp_path / "office31.yaml"
    recipe.write_text("model:\n  init_args:\n    label_smoothing: 0.2\n")
    monkeypatch.setattr(report, "BASE", recipe)
    main(common)  # the default is read from the recipe, not written into the script
    assert seen == [0.1, 0.1, 0.0, 0.2]
    with pytest.raises(SystemExit):
        main([*common, "--label-smoothing", "1"])
    assert "--label-smoothing must be a number in [0, 1), got 1.0" in capsys.readouterr().err


def test_the_pipeline_mode_reports_the_fits_own_validations(tmp_path, capsys, monkeypatch):
    """finetune mode through `python -m tlx fit`: the last validation's accuracy and the SND-chosen one come
    from the fit's own validations (no second pass over the target); a budget that ends mid-epoch
    validates the last model once more."""
    import json

    for i, name in enumerate(("amazon", "webcam")):
        make_domain(tmp_path / "data" / name, 30 * i, 4, seed0=100 * i)
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(json.dumps({
        "model": {"init_args": {"backbone": TINY_MODEL["backbone"], "weights": None, "bottleneck_dim": 8,
                                "preprocessing": TINY_MODEL["preprocessing"]}},
        "data": {"init_args": {"batch_size": 2, "num_workers": 0}},
        "trainer": {"accelerator": "cpu", "logger": False}}))
    common = ["--data-root", str(tmp_path / "data"), "--tasks", "a2w", "--methods", "source_only", "--mode", "finetune",
              "--config", str(tiny), "--runs", str(tmp_path / "runs")]
    from lightning.pytorch import Trainer

    calls, validate = [], Trainer.validate
    monkeypatch.setattr(Trainer, "validate", lambda self, *a, **k: calls.append(k) or validate(self, *a, **k))
    # 3 steps end before an epoch's end, so before the fit validates: the last model is validated once more; 1000 steps: office31.yaml's 20 whole epochs, each validated by the fit itself, so no extra pass
    for steps, extra in ((3, 1), (1000, 0)):
        calls.clear()
        main([*common, "--steps", str(steps)])
        assert len(calls) == extra and all("ckpt_path" not in k for k in calls)
        out = capsys.readouterr().out
        line = re.search(r"^  a2w source_only +last +(\d+\.\d) +chosen by SND +(\d+\.\d) +\(steps \[(\d+)\]\)",
                         out, flags=re.M)
        assert line, out
        acc, chosen, step = float(line[1]), float(line[2]), int(line[3])
        assert 0 <= acc <= 100 and 0 <= chosen <= 100 and 0 < step <= steps


def test_views_train_on_cached_random_views_of_both_domains_and_evaluate_on_the_centre_crop(tmp_path, capsys,
                                                                                            monkeypatch):
    import scripts.domain_adaptation_report as report

    for i, name in enumerate(("amazon", "webcam")):
        make_domain(tmp_path / "data" / name, 30 * i, 2, seed0=100 * i)
    drawn = []

    class Recording(report.FeatureDomains):
        def train_dataloader(self):
            drawn.append(self.views)
            return super().train_dataloader()

    monkeypatch.setattr(report, "FeatureDomains", Recording)
    common = ["--data-root", str(tmp_path / "data"), "--backbone", TINY_MODEL["backbone"], "--weights", "none",
              "--image-size", "32", "--steps", "3", "--batch-size", "2", "--tasks", "a2w", "--methods",
              "information_maximization", "--cache", str(tmp_path / "cache")]
    main([*common, "--views", "0"])  # the centre crop alone: no views extracted, none drawn
    assert "random views" not in (out := capsys.readouterr().out) and "training views of" not in out
    assert drawn == [None]
    drawn.clear()
    main([*common, "--views", "3"])
    out = capsys.readouterr().out
    assert "centre + 3 random views" in out and "3 training views of amazon" in out and "of webcam" in out
    (vs, vt), = drawn
    args = type("A", (), dict(data_root=tmp_path / "data", backbone=TINY_MODEL["backbone"], weights=None,
                              image_size=32, cache=tmp_path / "cache", views=3))
    centre_s, _, _ = report.cached_features("amazon", args)
    centre_t, _, _ = report.cached_features("webcam", args)
    assert vs.shape[:2] == (len(centre_s), 4) and vt.shape[:2] == (len(centre_t), 4)
    # view 0 is the centre crop the model is validated on; the random views differ from it and each other
    assert torch.equal(vs[:, 0], centre_s) and torch.equal(vt[:, 0], centre_t)
    assert not torch.allclose(vs[:, 1], vs[:, 2]) and not torch.allclose(vs[:, 1], centre_s)
    # a training batch holds one view per image, drawn from the pool
    labels = torch.arange(len(centre_s))
    batch, _, _ = next(iter(Recording((centre_s, labels), (centre_t, labels), 2, (vs, vt)).train_dataloader()))
    (xs, ys), (xt, it) = batch["source"], batch["target"]
    assert all(any(torch.equal(x, v) for v in vs[y]) for x, y in zip(xs, ys))  # one of its own image's views
    assert all(any(torch.equal(x, v) for v in vt[i]) for x, i in zip(xt, it))
    # the views are cached on disk by content: a second run extracts nothing
    main([*common, "--views", "3"])
    assert "training views of" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*common, "--views", "2", "--mode", "top_stages"])
    assert "--views 2: features mode only" in capsys.readouterr().err


def test_building_or_loading_the_cached_features_leaves_the_callers_random_stream_alone(tmp_path):
    """Otherwise the first run of a process (the one that builds or loads the cache) trains on another
    random stream than the same seed later in the process."""
    import scripts.domain_adaptation_report as report

    make_domain(tmp_path / "data" / "amazon", 0, 2)
    args = type("A", (), dict(data_root=tmp_path / "data", backbone=TINY_MODEL["backbone"], weights=None,
                              image_size=32, cache=tmp_path / "cache", views=2))
    for _ in ("computed", "from disk"):
        report._features.cache_clear(), report._views.cache_clear()
        torch.manual_seed(7)
        state = torch.get_rng_state()
        views = report.training_views("amazon", args)
        assert views.shape[1] == 3 and torch.equal(torch.get_rng_state(), state)
