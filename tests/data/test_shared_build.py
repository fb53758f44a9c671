"""tlx.data.shared_build across 2 real processes (gloo): each rank builds its share, all get the whole."""

from __future__ import annotations

import os
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from tlx.data.shared_build import all_ranks, build_shared

pytestmark = pytest.mark.multiprocess


def _worker(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        built: list[int] = []

        def square(items):
            built.extend(items)
            return [i * i for i in items]

        result = build_shared(list(range(7)), square)
        out.put((rank, built, result, all_ranks(True), all_ranks(rank == 0)))
    finally:
        dist.destroy_process_group()


def test_each_rank_builds_a_share_and_all_get_the_whole():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (_, built0, res0, yes0, mixed0), (_, built1, res1, yes1, mixed1) = results
    assert built0 == [0, 2, 4, 6] and built1 == [1, 3, 5]  # disjoint shares, every item once
    assert res0 == res1 == [i * i for i in range(7)]  # in the original order on every rank
    assert yes0 and yes1 and not mixed0 and not mixed1  # all_ranks: true only where every rank agrees


def test_outside_ddp_it_is_a_plain_call():
    assert build_shared([1, 2], lambda xs: [x + 1 for x in xs]) == [2, 3]
    assert all_ranks(True) and not all_ranks(False)
