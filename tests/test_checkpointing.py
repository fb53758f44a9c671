"""Checkpoint writes are atomic; reads are weights_only."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from tlx.checkpointing import PARTIAL_PREFIX, CheckpointError, SafeCheckpointIO, atomic_torch_save, atomic_write, safe_torch_load


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")  # fails half-way through the write


def test_a_failed_write_leaves_the_previous_file_whole_and_no_partial_file(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"w": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"w": torch.zeros(100_000), "bad": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_partial_files_of_a_killed_writer_are_removed_and_never_look_like_last(tmp_path):
    stale = tmp_path / f"{PARTIAL_PREFIX}abc.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert "last" not in stale.name  # Lightning's own `last` search must not pick it up
    io = SafeCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.equal(io.load_checkpoint(tmp_path / "last.ckpt")["state_dict"]["w"], torch.ones(2))


def test_loading_refuses_pickled_objects(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}, "callbacks": {"x": torch.nn.ReLU()}}, path)  # a module is a pickled object
    with pytest.raises(CheckpointError, match="Refusing to load checkpoint .* carries pickled Python objects"):
        SafeCheckpointIO().load_checkpoint(path, weights_only=False)  # the caller cannot turn the check off
    with pytest.raises(CheckpointError, match="does not exist or is not a file"):
        safe_torch_load(tmp_path / "missing.ckpt")


def test_atomic_write_fsyncs_and_gives_the_mode_a_plain_open_would(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "cache" / "x.bin", lambda f: f.write(b"abc"))
    finally:
        os.umask(old)
    path = tmp_path / "cache" / "x.bin"
    assert path.read_bytes() == b"abc"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's owner-only 0600
    assert len(synced) >= 2  # the file and the folder holding the rename
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.bin"]
