"""scripts/slurm/train.sbatch with a stand-in ``srun`` and ``scontrol``: preemption, requeue, resume.

The job runs the script as SLURM would (same SLURM_JOB_ID across the requeue), on CPU and one
task. Run 1 is preempted mid-epoch by SIGUSR1: Lightning's SLURM environment saves an HPC checkpoint
and calls ``scontrol requeue <job id>``. Run 2 (the requeued job) resumes from that checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from tests.helpers import REPO, TIMEOUT, TINY_MODEL, free_port, loopback_env

pytestmark = pytest.mark.multiprocess


def test_sbatch_script_requeues_on_sigusr1_and_resumes(tiny_folder, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # srun: drop its options, run the command (one task). scontrol: record the call.
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path}/scontrol.log\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    # SLURM's trainer settings, but on CPU (slurm.yaml asks for GPUs).
    trainer_config = tmp_path / "slurm_cpu.yaml"
    slurm = yaml.safe_load((REPO / "configs/trainer/slurm.yaml").read_text())
    slurm["trainer"].update(accelerator="cpu", sync_batchnorm=False, precision="32-true")
    trainer_config.write_text(yaml.safe_dump(slurm))
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(yaml.safe_dump({
        "trainer": {"max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False,
                    "callbacks": [{"class_path": "tests.helpers.Preempt", "init_args": {"at_step": 2}}]},
        "model": {"class_path": "tlx.models.ImageClassifier", "init_args": TINY_MODEL},
        "data": {"class_path": "tlx.data.ImageFolderDataModule",
                 "init_args": {"root": str(tiny_folder), "batch_size": 4, "num_workers": 0}},
    }))

    env = loopback_env(free_port())
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", PYTHON=sys.executable, TRAINER_CONFIG=str(trainer_config),
               SLURM_JOB_ID="4242", SLURM_JOB_NAME="tlx", SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1",
               SLURM_JOB_NUM_NODES="1", SLURM_NNODES="1", SLURM_PROCID="0", SLURM_LOCALID="0",
               SLURM_NODEID="0", SLURM_NODELIST="localhost", SLURM_SUBMIT_DIR=str(REPO),
               RUN_DIR=str(tmp_path / "run"))
    cmd = ["bash", str(REPO / "scripts/slurm/train.sbatch"), "--config", str(experiment)]

    first = subprocess.run(cmd, env={**env, "TLX_TEST_PREEMPT": "1"}, cwd=tmp_path,
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert first.returncode == 143, first.stdout[-3000:] + first.stderr[-6000:]
    assert "resume from: nothing" in first.stdout
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = tmp_path / "run" / "hpc_ckpt_1.ckpt"
    assert hpc.is_file() and torch.load(hpc, weights_only=False)["global_step"] == 2

    second = subprocess.run(cmd, env={**env, "SLURM_RESTART_COUNT": "1"}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-6000:]
    assert f"resume from: {hpc}" in second.stdout
    assert "Restoring states from the checkpoint path at" in second.stderr and "hpc_ckpt_1.ckpt" in second.stderr
    assert "Restored all states from the checkpoint" in second.stderr
    assert "`max_epochs=2` reached" in second.stderr
