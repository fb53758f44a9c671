#!/usr/bin/env bash
# Multi-node DDP without SLURM: run this on every node, with the same MASTER_ADDR/MASTER_PORT
# (an address of node 0 that the others can reach) and NODE_RANK 0..NNODES-1. One process per GPU.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/torchrun.sh fit \
#       --config configs/hymenoptera.yaml --config configs/trainer/ddp.yaml     # on node 0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 scripts/torchrun.sh fit ...       # on node 1
#
# The trainer's devices and num_nodes are set from NPROC_PER_NODE and NNODES (Lightning checks
# that they match the world size torchrun sets up). Only global rank 0 (on node 0) writes logs,
# configs and checkpoints, under trainer.default_root_dir as seen from node 0.
set -euo pipefail
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
PYTHON=${PYTHON:-python}
NPROC_PER_NODE=${NPROC_PER_NODE:-$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
if [ "$#" -eq 0 ]; then
    echo "usage: [NNODES=M NODE_RANK=i MASTER_ADDR=host MASTER_PORT=p NPROC_PER_NODE=n] $0 fit --config ..." >&2
    exit 2
fi
exec "$PYTHON" -m torch.distributed.run \
    --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m tlx "$@" --trainer.devices="$NPROC_PER_NODE" --trainer.num_nodes="$NNODES"
