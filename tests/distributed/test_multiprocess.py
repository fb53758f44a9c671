"""Real multi-process runs on CPU (gloo): 2-process DDP, and two "nodes" joined by torchrun.

Each test starts real ``python -m tlx`` processes on a tiny model and tiny data (3 classes,
24 training and 9 validation images: 9 is odd, so evaluation shards are uneven). Marked
``multiprocess``: ``-m "not multiprocess"`` skips them (about 60-90 s each on 2 shared cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    REPO,
    TIMEOUT,
    TINY_MODEL,
    da_fit_args,
    free_port,
    loopback_env,
    make_domain,
    make_imagefolder,
    run_cli,
)

pytestmark = pytest.mark.multiprocess

def experiment(tmp_path: Path, data: Path, root_dir: str, probe_dir: Path, epochs: int = 2) -> Path:
    """An experiment config: tiny model, frozen backbone, SGD lr 1e-3, the shard probe."""
    config = {
        "seed_everything": 42,
        "trainer": {
            "max_epochs": epochs,
            "default_root_dir": root_dir,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "callbacks": [
                {"class_path": "tlx.finetuning.FreezeBackbone"},
                {"class_path": "tests.helpers.ShardProbe", "init_args": {"out_dir": str(probe_dir)}},
            ],
        },
        "model": {"class_path": "tlx.models.ImageClassifier",
                  "init_args": {**TINY_MODEL, "optimizer": {"class_path": "torch.optim.SGD",
                                                            "init_args": {"lr": 0.001, "momentum": 0.9}}}},
        "data": {"class_path": "tlx.data.ImageFolderDataModule",
                 "init_args": {"root": str(data), "batch_size": 4, "num_workers": 0}},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def tiny3(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "data", classes=("cat", "dog", "fox"), n_train=8, n_val=3)


def read_probes(probe_dir: Path, world_size: int) -> list[dict]:
    probes = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in range(world_size)]
    assert [p["global_rank"] for p in probes] == list(range(world_size))
    assert all(p["world_size"] == world_size for p in probes)
    return probes


def assert_disjoint_shards(shards: list[list[int]], n: int) -> None:
    """Every index exactly once over the ranks."""
    assert sorted(i for shard in shards for i in shard) == list(range(n))


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}"
    return result


def test_caches_are_built_once_across_ranks(tiny3, tmp_path):
    """Feature cache and decoded-image cache under 2-process DDP: each rank builds half, rank 0
    writes the files once, and a second run reads them instead of building."""
    out, probe_dir = tmp_path / "runs", tmp_path / "probe"
    exp = experiment(tmp_path, tiny3, str(out), probe_dir)
    cache = tmp_path / "cache"
    args = [sys.executable, "-m", "tlx", "fit", "--config", str(exp), "--config", "configs/trainer/ddp_cpu.yaml",
            "--trainer.callbacks+=tlx.speed.FeatureCache", f"--trainer.callbacks.cache_dir={cache / 'features'}",
            "--data.init_args.cache_images=true", f"--data.init_args.image_cache_dir={cache / 'images'}"]
    run(args, cwd=REPO, env=loopback_env(free_port()))
    probes = read_probes(probe_dir, 2)
    # 24 train + 9 val images: every image through the backbone once over both ranks.
    assert sorted(p["features_extracted_here"] for p in probes) == [16, 17]
    assert all(p["feature_status"] == {"train": "computed", "val": "computed"} for p in probes)
    assert len(list((cache / "features").glob("features-*.pt"))) == 2  # train, val
    assert not list(cache.rglob("*.tmp*"))
    # The decoded-image cache (which the extraction reads) is also built by halves.
    for split, n in (("train", 24), ("val", 9)):
        assert sum(p["images_decoded_here"][split] for p in probes) == n
    assert len(list((cache / "images").glob("images-*.index.npy"))) == 2  # train, val
    m0, m1 = probes[0]["metrics"], probes[1]["metrics"]
    assert m0["val/acc"] == m1["val/acc"]
    for p in probes:
        # 2 epochs x 24 images / (batch 4 x 2 ranks); eval shards unpadded (5 + 4 of 9).
        assert p["global_step"] == 2 * 3
    assert sorted(len(v) for p in probes for v in p["val_indices"]) == [4, 4, 5, 5]

    # Second run: both caches come from disk, nothing is built.
    run(args, cwd=REPO, env=loopback_env(free_port()))
    probes = read_probes(probe_dir, 2)
    assert all(p["features_extracted_here"] == 0 for p in probes)
    assert all(p["images_decoded_here"] == {} for p in probes)  # features on disk: no image needed
    assert all(p["feature_status"] == {"train": "disk", "val": "disk"} for p in probes)


def test_two_process_ddp_on_cpu(tiny3, tmp_path):
    """``--config configs/trainer/ddp_cpu.yaml``: 2 processes, gloo; shards, metric sync, rank-0 writes."""
    out, probe_dir = tmp_path / "runs", tmp_path / "probe"
    exp = experiment(tmp_path, tiny3, str(out), probe_dir)
    cmd = [sys.executable, "-m", "tlx", "fit", "--config", str(exp),
           "--config", "configs/trainer/ddp_cpu.yaml", "--config", "configs/trainer/scale_lr.yaml"]
    run(cmd, cwd=REPO, env=loopback_env(free_port()))

    probes = read_probes(probe_dir, 2)
    for p in probes:
        # A frozen backbone under plain DDP (find_unused_parameters off) trained without error.
        assert p["wrapper"] == "DistributedDataParallel" and p["find_unused_parameters"] is False
        assert p["frozen_backbone"] and p["global_step"] == 2 * 3  # 2 epochs x 12 images / batch 4
        # scale_lr.yaml appended to the experiment's callbacks: global batch 4 x 2 vs reference 32.
        assert p["lrs"] == [pytest.approx(0.001 * 8 / 32)]
        # Lightning shards tlx's seeded, resumable order (tlx.data.resumable) across the ranks.
        assert p["train_sampler"] == "DistributedSamplerWrapper"
    assert probes[0]["train_indices"][0] != probes[0]["train_indices"][1]  # reshuffled every epoch
    for epoch in range(2):
        assert_disjoint_shards([p["train_indices"][epoch] for p in probes], 24)
        assert_disjoint_shards([p["val_indices"][epoch] for p in probes], 9)  # 5 + 4, no padding
    # Synchronised metrics: both ranks report the same figures.
    m0, m1 = probes[0]["metrics"], probes[1]["metrics"]
    for key in ("val/acc", "val/f1", "val/loss", "val/acc_class/cat"):
        assert m0[key] == m1[key], key

    # Only rank 0 wrote: one log version with one TensorBoard file, the config and checkpoints.
    versions = sorted(p.name for p in (out / "lightning_logs").iterdir())
    assert versions == ["version_0"]
    log_dir = out / "lightning_logs" / "version_0"
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1
    assert (log_dir / "config.yaml").is_file() and (log_dir / "run.json").is_file()
    assert sorted(p.name for p in (log_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    # report.html: the confusion matrix counts both ranks' shards (5 + 4 validation images)
    assert " of 9 images right" in (log_dir / "report.html").read_text()

    # The same checkpoint validated by one process gives the same figures as the 2 processes did.
    single = run_cli(["validate", "--config", str(exp), "--config", str(REPO / "configs/trainer/cpu.yaml"),
                      f"--trainer.default_root_dir={tmp_path / 'single'}", "--trainer.callbacks=[]",
                      "--ckpt_path", str(log_dir / "checkpoints" / "last.ckpt")])
    s = {k: float(v) for k, v in single.trainer.callback_metrics.items()}
    assert s["val/acc"] == m0["val/acc"]
    assert s["val/f1"] == m0["val/f1"]
    assert s["val/acc_class/cat"] == m0["val/acc_class/cat"]
    # Loss: per-batch float32 means over other batch compositions: equal up to rounding.
    assert s["val/loss"] == pytest.approx(m0["val/loss"], rel=1e-4)


def test_two_nodes_with_torchrun_on_loopback(tiny3, tmp_path):
    """scripts/torchrun.sh twice (--nnodes 2, node_rank 0/1, 127.0.0.1): trains; node 0 alone writes."""
    probe_dir = tmp_path / "probe"
    exp = experiment(tmp_path, tiny3, "runs", probe_dir, epochs=1)  # relative: each node its own cwd
    port = free_port()
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    procs = []
    for rank, cwd in enumerate(nodes):
        cwd.mkdir()
        env = loopback_env(port)
        env.update(NNODES="2", NODE_RANK=str(rank), NPROC_PER_NODE="1", PYTHON=sys.executable)
        cmd = ["bash", str(REPO / "scripts" / "torchrun.sh"), "fit", "--config", str(exp),
               "--config", str(REPO / "configs" / "trainer" / "ddp_cpu.yaml")]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-6000:]

    probes = read_probes(probe_dir, 2)
    assert [p["node_rank"] for p in probes] == [0, 1]
    assert [Path(p["cwd"]).name for p in probes] == ["node0", "node1"]
    assert all(p["global_step"] == 3 for p in probes)  # 1 epoch x 12 images per rank / batch 4
    assert_disjoint_shards([p["train_indices"][0] for p in probes], 24)
    assert_disjoint_shards([p["val_indices"][0] for p in probes], 9)
    assert probes[0]["metrics"]["val/acc"] == probes[1]["metrics"]["val/acc"]
    # Node 0 wrote logs, config and checkpoints; node 1's working directory stayed empty.
    log_dir = nodes[0] / "runs" / "lightning_logs" / "version_0"
    assert (log_dir / "config.yaml").is_file() and (log_dir / "run.json").is_file()
    assert (log_dir / "checkpoints" / "last.ckpt").is_file()
    assert list(nodes[1].iterdir()) == []


def test_domain_adaptation_under_ddp(tmp_path):
    """DANN with a source and a target loader on 2 processes: synchronised target metrics, and the
    same figures as one process validating the same checkpoint."""

    source, target = make_domain(tmp_path / "source", 0, 8), make_domain(tmp_path / "target", 60, 5, seed0=100)
    (target / "dog" / "dog_4.png").unlink()  # 9 target images: uneven evaluation shards
    out, probe_dir = tmp_path / "runs", tmp_path / "probe"
    probe = json.dumps([{"class_path": "tests.helpers.ShardProbe", "init_args": {"out_dir": str(probe_dir)}}])
    args = da_fit_args(source, target, out, extra=["--trainer.max_epochs=2", f"--trainer.callbacks={probe}"])
    run([sys.executable, "-m", "tlx", *args, "--config", "configs/trainer/ddp_cpu.yaml"],
        cwd=REPO, env=loopback_env(free_port()))
    probes = read_probes(probe_dir, 2)
    assert probes[0]["metrics"]["val/acc"] == probes[1]["metrics"]["val/acc"]
    assert all(p["global_step"] == 2 * 2 for p in probes)  # 16 source images / (4 x 2 ranks) per epoch
    # Source and target loaders are both sharded by Lightning's DistributedSampler.
    assert all(p["train_samplers"] == {"source": "DistributedSampler", "target": "DistributedSampler"} for p in probes)
    for epoch in range(2):
        assert_disjoint_shards([p["train_indices"][epoch] for p in probes], 16)
    assert sorted(len(v) for p in probes for v in p["val_indices"]) == [4, 4, 5, 5]  # 9, no padding
    ckpt = out / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    validate = da_fit_args(source, target, tmp_path / "single")
    validate[0] = "validate"
    single = run_cli([*validate[:-2], "--trainer.callbacks=[]", f"--ckpt_path={ckpt}"])
    assert float(single.trainer.callback_metrics["val/acc"]) == probes[0]["metrics"]["val/acc"]


def test_domain_adaptation_on_the_partial_cache_under_ddp(tmp_path):
    """DANN training the top stages on both domains' cached bottom activations on 2 processes: the
    ranks share the extraction, agree on the target metrics (the label-free ones too), and one
    process validating the checkpoint on images gets the same accuracy."""
    source, target = make_domain(tmp_path / "source", 0, 8), make_domain(tmp_path / "target", 60, 5, seed0=100)
    (target / "dog" / "dog_4.png").unlink()  # 9 target images: uneven evaluation shards
    out, probe_dir = tmp_path / "runs", tmp_path / "probe"
    callbacks = json.dumps([
        {"class_path": "tlx.speed.FeatureCache", "init_args": {"cut": "blocks.2", "augmented_views": 1}},
        {"class_path": "tests.helpers.ShardProbe", "init_args": {"out_dir": str(probe_dir)}},
    ])
    args = da_fit_args(source, target, out, extra=["--trainer.max_epochs=2", f"--trainer.callbacks={callbacks}"])
    run([sys.executable, "-m", "tlx", *args, "--config", "configs/trainer/ddp_cpu.yaml"],
        cwd=REPO, env=loopback_env(free_port()))
    probes = read_probes(probe_dir, 2)
    # val's eval view is the target's (the same files), extracted once for both
    assert all(p["feature_status"] == {"source": "computed", "target": "computed", "val": "memory"} for p in probes)
    # Each rank ran a share of the images: 16 source and 9 target images x 2 views.
    assert all(p["features_extracted_here"] > 0 for p in probes)
    assert sum(p["features_extracted_here"] for p in probes) == 16 * 2 + 9 * 2
    assert all(p["global_step"] == 2 * 2 for p in probes)  # 16 source images / (4 x 2 ranks) per epoch
    assert all(p["train_samplers"] == {"source": "DistributedSampler", "target": "DistributedSampler"} for p in probes)
    for key in ("val/acc", "val/snd", "val/entropy"):
        assert probes[0]["metrics"][key] == probes[1]["metrics"][key], key
    ckpt = out / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    validate = da_fit_args(source, target, tmp_path / "single")
    validate[0] = "validate"
    single = run_cli([*validate[:-2], "--trainer.callbacks=[]", f"--ckpt_path={ckpt}"])
    assert float(single.trainer.callback_metrics["val/acc"]) == probes[0]["metrics"]["val/acc"]
