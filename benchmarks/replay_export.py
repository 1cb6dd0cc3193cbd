"""Train a model file with an exported configuration, as a plain DeepSpeed script, and print
its throughput: the check that an exported config delivers what its trial measured.

It uses only the model file, ds_config.json and launch.json, and autotune's helpers where
launch.json asks for them (what a user's own training script would call; docs/levers.md):
``build_pipeline_module`` to rebuild a pipeline's stages from ``partition_bounds``,
``CheckpointedLayers`` or ``pipeline_checkpointing()`` for ``activation_checkpointing``, and
``CachedItems`` for ``cache_data``, ``TokenBudgetSampler`` for ``batching: tokens`` (its
``lr_factor`` sets each step's learning rate); ``compile`` calls ``engine.compile()``.

    autotune export --study digits_mlp -o /tmp/best
    deepspeed --num_gpus $(python -c "import json;print(json.load(open('/tmp/best/launch.json'))['processes'])") \\
        benchmarks/replay_export.py --model examples/digits_mlp.py --export /tmp/best

Throughput is counted like a trial's: samples per second over the steps after three warm-up
steps, data loading included, over at least ``--min-seconds`` (as ``autotune search
--min-measure-seconds``: more steps past ``--train-samples`` when the budget trains for less). The line it prints ends with the trial's figure from launch.json
and the ratio of the two.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

WARMUP_STEPS = 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--export", type=Path, required=True, help="folder from autotune export")
    parser.add_argument("--train-samples", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-seconds", type=float, default=0.0)
    parser.add_argument("--local_rank", type=int, default=0)
    parser.add_argument(
        "--eval",
        action="store_true",
        help="train exactly --train-samples (no --min-seconds), then print the wall time of the "
        "whole training and the model file's metric on its eval data",
    )
    args = parser.parse_args()

    ds_config = json.loads((args.export / "ds_config.json").read_text())
    launch = json.loads((args.export / "launch.json").read_text())
    # What launch.json's command sets on its command line, for a launch without that prefix.
    os.environ.update(launch.get("environment") or {})
    if launch.get("threads_per_process"):
        torch.set_num_threads(launch["threads_per_process"])

    spec = importlib.util.spec_from_file_location("user_model", args.model)
    assert spec is not None and spec.loader is not None
    user = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(user)
    train = user.train_data()
    if not hasattr(user, "eval_data"):  # autotune holds out the same seeded 20% for evaluation
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
        train = Subset(train, order[max(1, int(len(train) * 0.2)) :])
    user_loss = getattr(user, "loss", None)

    def loss_fn(out, target):
        # The model file's contract: loss(output, target) for pairs, loss(output, batch) for
        # dict items; without loss(), cross-entropy for pairs and the model's own output.loss
        # for dict items.
        if user_loss is not None:
            return user_loss(out, target)
        if isinstance(target, dict):
            return out["loss"] if isinstance(out, dict) else out.loss
        return nn.functional.cross_entropy(out.float(), target)

    deepspeed.init_distributed()
    torch.manual_seed(args.seed)
    pipeline = launch["pipeline_stages"] > 1
    # A collate() that pads each batch to its longest item changes the stages' shapes.
    dynamic_shape = hasattr(user, "collate")
    checkpointing = bool(launch.get("activation_checkpointing"))
    options = {"loss_fn": loss_fn, "dynamic_shape": dynamic_shape}
    if pipeline and checkpointing:
        from autotune import pipeline_checkpointing

        options.update(pipeline_checkpointing())
    if pipeline and launch.get("partition_bounds"):
        # The trial's own stage boundaries (whatever method found them), rebuilt exactly.
        from autotune import build_pipeline_module

        module = build_pipeline_module(user.layers(), launch["partition_bounds"], **options)
    elif pipeline:
        from deepspeed.pipe import PipelineModule

        module = PipelineModule(
            layers=user.layers(),
            num_stages=launch["pipeline_stages"],
            partition_method=launch["partition_method"],
            **options,
        )
    elif checkpointing:
        from autotune import CheckpointedLayers

        module = CheckpointedLayers(user.layers())
    else:
        module = user.model()
    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=module.parameters(), config=ds_config
    )
    if launch.get("compile"):
        engine.compile(backend="inductor")  # compiles in the first (warm-up) step
    if launch.get("cache_data"):
        from autotune import CachedItems

        train = CachedItems(train)
    if pipeline and int(os.environ.get("RANK", "0")) == 0:
        print(f"pipeline bounds: {[int(b) for b in engine.module.parts]}", flush=True)
    dp = launch["data_parallel"]
    dp_rank = (
        engine.grid.data_parallel_id if pipeline else dist.get_rank() // launch["pipeline_stages"]
    )
    workers = launch["num_workers"]
    loading = {
        "collate_fn": getattr(user, "collate", None),  # None: torch's default_collate
        "num_workers": workers,
        "pin_memory": launch["pin_memory"],
        "prefetch_factor": launch["prefetch_factor"] if workers else None,
        "persistent_workers": workers > 0,
    }
    gas = ds_config["gradient_accumulation_steps"]
    tokens = launch.get("batching") == "tokens"
    if tokens:
        from autotune import TokenBudgetSampler, item_lengths

        sampler = TokenBudgetSampler(
            item_lengths(train),
            ds_config["train_micro_batch_size_per_gpu"],
            gas,
            dp,
            dp_rank,
            args.seed,
        )
        loader = DataLoader(train, batch_sampler=sampler, **loading)
        base_lrs = [group["lr"] for group in engine.optimizer.param_groups]
    else:
        sampler = DistributedSampler(
            train, num_replicas=dp, rank=dp_rank, seed=args.seed, drop_last=True
        )
        loader = DataLoader(
            train,
            batch_size=ds_config["train_micro_batch_size_per_gpu"],
            sampler=sampler,
            drop_last=True,
            **loading,
        )
    dtype = (
        torch.bfloat16
        if ds_config.get("bf16", {}).get("enabled")
        else (torch.float16 if ds_config.get("fp16", {}).get("enabled") else torch.float32)
    )

    def cast(value):  # only floating tensors take the engine's dtype: ids and masks stay
        if not isinstance(value, torch.Tensor):
            return value
        value = value.to(engine.device)
        return value.to(dtype) if value.is_floating_point() else value

    position = [0, 0]  # the epoch and index of the last micro-batch drawn

    def batches():
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            for index, batch in enumerate(loader):
                position[:] = [epoch, index]
                if isinstance(batch, dict):
                    yield {key: cast(value) for key, value in batch.items()}
                else:
                    x, y = batch
                    yield cast(x), y.to(engine.device)
            epoch += 1

    def step_loss(batch):
        if isinstance(batch, dict):  # dict items: model(**batch)
            return loss_fn(engine(**batch), batch)
        x, y = batch
        return loss_fn(engine(x), y)

    stream = batches()
    steps = args.train_samples // ds_config["train_batch_size"]
    if tokens:  # the sample budget in items, whatever each step holds
        steps = sampler.steps_for(args.train_samples)

    def train_steps(count: int) -> None:
        for _ in range(count):
            if pipeline:
                engine.train_batch(stream)
                continue
            for micro in range(gas):
                batch = next(stream)
                if tokens and micro == 0:  # each step's learning rate by its items
                    factor = sampler.lr_factor(position[0], position[1] // gas)
                    for group, lr in zip(engine.optimizer.param_groups, base_lrs, strict=True):
                        group["lr"] = lr * factor
                engine.backward(step_loss(batch))
                engine.step()

    dist.barrier()
    first = time.perf_counter()
    train_steps(WARMUP_STEPS)
    dist.barrier()
    start = time.perf_counter()
    measured = steps - WARMUP_STEPS
    train_steps(measured)
    dist.barrier()
    elapsed = time.perf_counter() - start
    if args.eval:
        assert not pipeline, "--eval evaluates a plain engine, not pipeline stages"
        trained = sampler.items_in_steps(steps) if tokens else steps * ds_config["train_batch_size"]
        _evaluate(args.model, engine, dtype, trained, first)
    elif elapsed < args.min_seconds:
        more = torch.tensor(
            [math.ceil((args.min_seconds - elapsed) * measured / elapsed)], device=engine.device
        )
        dist.broadcast(more, src=0)
        resume = time.perf_counter()
        train_steps(int(more.item()))
        dist.barrier()
        elapsed += time.perf_counter() - resume
        measured += int(more.item())
    throughput = measured * ds_config["train_batch_size"] / elapsed
    if tokens:
        counted = sampler.items_in_steps
        throughput = (counted(WARMUP_STEPS + measured) - counted(WARMUP_STEPS)) / elapsed
    if int(os.environ.get("RANK", "0")) == 0:
        trial = launch.get("measured", {}).get("throughput_samples_per_s")
        ratio = f", ratio {throughput / trial:.3f}" if trial else ""
        print(
            f"replay: {throughput:.1f} samples/s over {measured} steps ({elapsed:.1f} s); "
            f"trial {launch.get('trial')} measured {trial:.1f} samples/s{ratio}"
            if trial
            else f"replay: {throughput:.1f} samples/s",
            flush=True,
        )


def _evaluate(model: Path, engine, dtype, samples: int, first: float) -> None:
    """Print the wall time since ``first`` (the whole training), the metric and the eval loss
    on the model file's eval data, computed as autotune computes them (the same held-out split,
    metric and loss)."""
    from autotune._batch import cast_batch, evaluate_with_loss
    from autotune._task import load_model_file

    seconds = time.perf_counter() - first
    model_file = load_model_file(model)
    _, eval_data = model_file.datasets()
    loader = DataLoader(
        eval_data, batch_size=model_file.eval_batch_size, collate_fn=model_file.collate
    )
    engine.eval()
    with torch.no_grad():
        batches = (cast_batch(batch, dtype, engine.device) for batch in loader)
        metric, loss = evaluate_with_loss(engine, batches, model_file.metric, model_file.loss)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"eval: trained {samples} samples in {seconds:.3f} s; metric {metric:.6f}"
            + ("" if loss is None else f"; eval loss {loss:.6f}"),
            flush=True,
        )


if __name__ == "__main__":
    main()
