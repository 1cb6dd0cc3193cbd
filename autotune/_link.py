"""Times point-to-point messages between two ranks: what a pipeline stage boundary costs.

Run by path as two processes (``_link.py --rank R --port P --backend B --out F``), like the
harness, so it imports nothing of the caller's. Rank 0 writes the one-way seconds of each
message size in ``SIZES`` to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

SIZES = (64, 4 * 1024 * 1024)
"""Message bytes timed: a tiny one gives the latency, a large one the bandwidth."""
ROUNDS = 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rank, peer = args.rank, 1 - args.rank
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    dist.init_process_group(args.backend, rank=rank, world_size=2)
    device = torch.device(f"cuda:{rank}") if args.backend == "nccl" else torch.device("cpu")
    timings = []
    for nbytes in SIZES:
        tensor = torch.zeros(max(1, nbytes // 4), device=device)
        for _ in range(3):  # connect and warm up
            (dist.send if rank == 0 else dist.recv)(tensor, peer)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(ROUNDS):  # ping-pong: each round is two one-way messages
            if rank == 0:
                dist.send(tensor, peer)
                dist.recv(tensor, peer)
            else:
                dist.recv(tensor, peer)
                dist.send(tensor, peer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append((time.perf_counter() - start) / (2 * ROUNDS))
    if rank == 0:
        args.out.write_text(json.dumps(timings))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
