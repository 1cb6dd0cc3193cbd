"""Runs inside DeepSpeed ranks for ``partition_methods.py --interleaved``: several pipeline
engines of one model, one per partition method, trained in alternation in the same process
group, so that whatever else the machine does at a moment slows every method alike.

    deepspeed --num_gpus 2 benchmarks/interleaved_pipelines.py --model M.py \\
        --methods '{"parameters": null, "uniform": null, "profile": [0, 4, 9]}' --out R.json

Each engine trains from the same seeded weights on its own seeded DataLoader (as a trial does:
end to end, data loading included). After warm-up steps, rounds run every engine for
``--steps-per-round`` optimizer steps (or, with ``--round-seconds``, as many steps as take
about that long, from the warm-up's timing) in a fresh random order; rank 0 writes each
method's samples per second in every round to ``--out``. Methods whose boundaries come out the
same share one engine, so their figures are the same measurement and differ by nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import build_pipeline_module  # noqa: E402
from autotune._plan import TrialConfig  # noqa: E402
from autotune._task import load_model_file  # noqa: E402
from autotune.runner import Batches, CastingBatches, train_loader  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--methods", required=True, help="JSON: method -> bounds or null")
    parser.add_argument("--micro-batch-size", type=int, default=32)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps-per-round", type=int, default=4)
    parser.add_argument("--round-seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0, help="orders the building and the rounds")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    deepspeed.init_distributed()
    model_file = load_model_file(args.model)
    train, _ = model_file.datasets()
    methods: dict[str, list[int] | None] = json.loads(args.methods)
    mbs, gas = args.micro_batch_size, args.gradient_accumulation_steps
    ds_config = {
        "train_batch_size": mbs * gas,
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": gas,
        "optimizer": model_file.optimizer,
        "steps_per_print": 10**9,
    }
    # One data-parallel rank of two stages, no DataLoader workers: the loader a trial builds.
    config = TrialConfig(
        micro_batch_size=mbs,
        gradient_accumulation_steps=gas,
        precision="fp32",
        zero_stage=0,
        processes=2,
        pipeline_stages=2,
        partition_method="parameters",
        num_workers=0,
        pin_memory=False,
        prefetch_factor=2,
        learning_rate=float(model_file.optimizer["params"]["lr"]),
        optimizer=model_file.optimizer,
    )
    engines: dict[str, tuple[Any, Any, list[int]]] = {}
    same_as: dict[str, str] = {}
    # Two engines of the same pipeline in one process can differ by a few percent (where
    # their memory lands), so each launch builds them in its own order.
    build_order = list(methods)
    random.Random(args.seed).shuffle(build_order)
    for method in build_order:
        bounds = methods[method]
        torch.manual_seed(0)
        if bounds:
            module = build_pipeline_module(model_file.layers(), bounds, loss_fn=model_file.loss)
        else:
            from deepspeed.pipe import PipelineModule

            module = PipelineModule(
                layers=model_file.layers(),
                num_stages=2,
                partition_method=method,
                loss_fn=model_file.loss,
            )
        parts = [int(p) for p in module.parts]
        twin = next((name for name, e in engines.items() if e[2] == parts), None)
        if twin is not None:
            same_as[method] = twin  # the same pipeline: measured once, for both
            continue
        engine, _, _, _ = deepspeed.initialize(
            model=module, model_parameters=module.parameters(), config=ds_config
        )
        loader, sampler = train_loader(train, config, 0, 0)
        batches = CastingBatches(Batches(loader, sampler), torch.float32, engine.device)
        engines[method] = (engine, batches, parts)
    warm: list[float] = []
    for engine, batches, _ in engines.values():
        for _ in range(args.warmup_steps):
            engine.train_batch(batches)
        dist.barrier()
        start = time.perf_counter()
        engine.train_batch(batches)
        dist.barrier()
        warm.append(time.perf_counter() - start)
    steps = args.steps_per_round
    if args.round_seconds:
        # The same number of steps on every rank: rank 0's timing decides.
        decided = torch.tensor([max(1, round(args.round_seconds / max(warm)))])
        dist.broadcast(decided, src=0)
        steps = int(decided.item())
    rounds: dict[str, list[float]] = {method: [] for method in engines}
    order = random.Random(args.seed)
    for _ in range(args.rounds):
        names = list(engines)
        order.shuffle(names)
        for name in names:
            engine, batches, _ = engines[name]
            dist.barrier()
            start = time.perf_counter()
            for _ in range(steps):
                engine.train_batch(batches)
            dist.barrier()
            rounds[name].append(steps * mbs * gas / (time.perf_counter() - start))
    if dist.get_rank() == 0:
        out = {
            name: {"bounds": engines[name][2], "rounds": rounds[name], "same_as": None}
            for name in engines
        }
        for name, twin in same_as.items():
            out[name] = {**out[twin], "same_as": twin}
        out["steps_per_round"] = steps
        out["build_order"] = build_order
        args.out.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
