"""Times point-to-point messages between two ranks: what a pipeline stage boundary costs.

Run by path as two processes (``_link.py --rank R --port P --backend B --out F [--device D]``),
like the harness, so it imports nothing of the caller's. Rank 0 writes the one-way seconds of
each message size in ``SIZES`` to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

SIZES = tuple(4**k for k in range(3, 12))
"""Message bytes timed, 64 B to 4 MiB by powers of 4: the smallest gives the latency, the
largest the bandwidth, and those between where the cost steps up."""
ROUNDS = 50


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", type=int, default=None, help="CUDA index (default: rank)")
    args = parser.parse_args()
    rank, peer = args.rank, 1 - args.rank
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    dist.init_process_group(args.backend, rank=rank, world_size=2)
    index = rank if args.device is None else args.device
    device = torch.device(f"cuda:{index}") if args.backend == "nccl" else torch.device("cpu")
    tensors = [torch.zeros(max(1, nbytes // 4), device=device) for nbytes in SIZES]
    for tensor in tensors:
        for _ in range(3):  # connect and warm up
            (dist.send if rank == 0 else dist.recv)(tensor, peer)
    dist.barrier()
    # Rounds visit every size in turn, so a slow spell spreads over all sizes; each size's
    # figure is the median of its round trips, so one spell does not make a size look dear.
    samples: list[list[float]] = [[] for _ in SIZES]
    for _ in range(ROUNDS):
        for index, tensor in enumerate(tensors):
            start = time.perf_counter()
            if rank == 0:  # ping-pong: two one-way messages
                dist.send(tensor, peer)
                dist.recv(tensor, peer)
            else:
                dist.recv(tensor, peer)
                dist.send(tensor, peer)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            samples[index].append((time.perf_counter() - start) / 2)
    timings = [statistics.median(values) for values in samples]
    if rank == 0:
        args.out.write_text(json.dumps(timings))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
