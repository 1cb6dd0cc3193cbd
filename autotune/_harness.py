"""The training harness that runs inside every DeepSpeed rank of a trial.

Launched by DeepSpeed's launcher, either for one trial (``_harness.py --plan PLAN.json``) or as
a warm group that serves trial after trial (``_harness.py --serve INBOX``: rank 0 waits for a
``*.request`` file naming a plan and broadcasts it; every rank then runs it and goes back to
waiting). For each plan it builds the engine and the DataLoader, trains from seeded weights on
the fixed sample budget, measures end-to-end throughput (data loading included, warm-up
excluded), evaluates the metric, and rank 0 writes ``result.json`` beside the plan. A rank that
fails writes ``failure.rank<R>.json`` with a one-line reason and exits, which ends its group.
It talks to the orchestrator only through these files.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

EVAL_BATCH_SIZE = 256
_STARTED = time.perf_counter()
STABILITY_CHECK_EVERY = 8
"""Steps between checks of whether the step-time estimate is stable (a collective on >1 rank)."""
_T_975 = (
    12.71,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
"""Student's t 97.5% quantiles for 1..30 degrees of freedom (1.96 beyond)."""


def _log(message: str) -> None:
    """A progress line in the trial's log, with seconds since this rank started."""
    rank = os.environ.get("RANK", "0")
    print(f"[autotune rank {rank} +{time.perf_counter() - _STARTED:.1f}s] {message}", flush=True)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception means the run ran out of (accelerator or host) memory."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, DivergedError):
        return f"diverged: {exc}"
    if is_out_of_memory(exc):
        return "oom: " + (str(exc).strip().splitlines() or [""])[0][:200]
    lines = str(exc).strip().splitlines()
    return f"error: {type(exc).__name__}: {lines[0][:300] if lines else ''}"


def _dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _cast(
    batch: Any, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = batch
    inputs = inputs.to(device, non_blocking=True)
    if inputs.is_floating_point():
        inputs = inputs.to(dtype)
    return inputs, targets.to(device, non_blocking=True)


def _synchronize(accelerator: Any) -> None:
    if accelerator.device_name() != "cpu":
        accelerator.synchronize()


def _reset_peak_memory(accelerator: Any) -> None:
    """Start a new peak: a warm rank runs many trials, and each reports its own peak."""
    if accelerator.device_name() != "cpu":
        accelerator.reset_peak_memory_stats()
        return
    try:
        # Linux: writing 5 resets the process's peak resident set size (VmHWM).
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def _loss_scale(engine: Any) -> float | None:
    """fp16's current loss scale (every DeepSpeed fp16 and ZeRO optimizer has ``loss_scale``)."""
    scale = getattr(engine.optimizer, "loss_scale", None)
    return float(scale) if isinstance(scale, (int, float, torch.Tensor)) else None


def _peak_memory_bytes(accelerator: Any) -> int:
    if accelerator.device_name() != "cpu":
        return int(accelerator.max_memory_allocated())
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux: the rank's peak resident memory over its whole life.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def step_time_is_stable(times: list[float], rel_halfwidth: float, min_steps: int) -> bool:
    """Whether the 95% confidence interval of the mean step time is within +-``rel_halfwidth``
    of the mean (so the throughput estimate is within about the same)."""
    n = len(times)
    if n < max(2, min_steps):
        return False
    mean = statistics.fmean(times)
    if mean <= 0:
        return False
    t = _T_975[n - 2] if n - 1 <= len(_T_975) else 1.96
    return t * statistics.stdev(times) / math.sqrt(n) <= rel_halfwidth * mean


def _agree(flag: bool, world_size: int) -> bool:
    """Rank 0's decision, on every rank (ranks must stop training at the same step)."""
    if world_size == 1:
        return flag
    import torch.distributed as dist

    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


class WholeBatchSampler(Sampler[int]):
    """One rank's share of each epoch, where every epoch is a whole number of global batches.

    Each epoch is a seeded permutation of the data (``seed + epoch``, as DistributedSampler),
    cut to a whole number of global batches, then dealt to the data-parallel ranks in turn.
    So the items of every optimizer step, and where each epoch ends, depend only on the
    global batch: one process at micro-batch 256, two at 128, or one at 128 accumulating 2
    train on the same items in the same steps. (DistributedSampler with a DataLoader's
    drop_last cuts each rank's share to whole micro-batches instead, so those splits used
    different items after the first epoch, and their accuracies were not interchangeable.)
    """

    def __init__(self, size: int, global_batch: int, replicas: int, rank: int, seed: int) -> None:
        if not 0 < global_batch <= size:
            raise ValueError(f"a global batch of {global_batch} does not fit {size} items")
        self.size, self.replicas, self.rank, self.seed = size, replicas, rank, seed
        self.per_epoch = size // global_batch * global_batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_epoch // self.replicas

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator)[: self.per_epoch]
        return iter(order[self.rank :: self.replicas].tolist())


class _Batches:
    """An endless iterator over a DataLoader, one epoch after another, each reshuffled."""

    def __init__(self, loader: DataLoader[Any], sampler: WholeBatchSampler) -> None:
        self.loader, self.sampler, self.epoch = loader, sampler, 0
        self._it: Iterator[Any] = iter(loader)

    def __iter__(self) -> _Batches:
        return self

    def close(self) -> None:
        """Stop the DataLoader's worker processes now (a warm rank goes on to other trials)."""
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __next__(self) -> Any:
        try:
            return next(self._it)
        except StopIteration:
            self.epoch += 1
            self.sampler.set_epoch(self.epoch)
            self._it = iter(self.loader)
            return next(self._it)


class _Casting:
    """Wraps a batch iterator so inputs arrive in the engine's dtype (for PipelineEngine)."""

    def __init__(self, batches: Iterator[Any], dtype: torch.dtype, device: torch.device) -> None:
        self.batches, self.dtype, self.device = batches, dtype, device

    def __iter__(self) -> _Casting:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _cast(next(self.batches), self.dtype, self.device)


class _StageClock:
    """Times what each pipeline rank spends computing (forward, backward, optimizer step) and
    communicating (sending and receiving activations and gradients), per instruction of
    DeepSpeed's pipeline schedule, so a trial shows how balanced its stages were."""

    _COMPUTE = ("ForwardPass", "BackwardPass", "OptimizerStep")
    _COMM = ("SendActivation", "RecvActivation", "SendGrad", "RecvGrad")

    def __init__(self, engine: Any, accelerator: Any) -> None:
        self.engine = engine
        self.busy = {"compute": 0.0, "comm": 0.0}
        timed = dict(type(engine)._INSTRUCTION_MAP)
        for instruction, method in list(timed.items()):
            kind = (
                "compute"
                if instruction.__name__ in self._COMPUTE
                else "comm"
                if instruction.__name__ in self._COMM
                else None
            )
            if kind is not None:
                timed[instruction] = self._timed(method, kind, accelerator)
        # The engine looks the map up on itself, so an instance attribute takes precedence.
        engine._INSTRUCTION_MAP = timed

    def _timed(self, method: Any, kind: str, accelerator: Any) -> Any:
        def run(engine: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = method(engine, *args, **kwargs)
            _synchronize(accelerator)
            self.busy[kind] += time.perf_counter() - start
            return out

        return run

    def reset(self) -> None:
        self.busy = {"compute": 0.0, "comm": 0.0}

    def gather(self, measured_steps: int) -> dict[str, list[float]]:
        """Seconds per optimizer step for each stage, averaged over its data-parallel ranks."""
        import torch.distributed as dist

        mine = (self.engine.stage_id, self.busy["compute"], self.busy["comm"])
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        stages = self.engine.num_stages
        out: dict[str, list[float]] = {"compute": [0.0] * stages, "comm": [0.0] * stages}
        counts = [0] * stages
        for stage, compute, comm in everyone:
            out["compute"][stage] += compute / max(1, measured_steps)
            out["comm"][stage] += comm / max(1, measured_steps)
            counts[stage] += 1
        for kind in out:
            out[kind] = [value / max(1, n) for value, n in zip(out[kind], counts, strict=True)]
        return out


def _train_loader(
    data: Dataset[Any], settings: dict[str, Any], dp_size: int, dp_rank: int, seed: int
) -> tuple[DataLoader[Any], WholeBatchSampler]:
    global_batch = settings["micro_batch_size"] * settings["gradient_accumulation_steps"] * dp_size
    sampler = WholeBatchSampler(len(data), global_batch, dp_size, dp_rank, seed)  # type: ignore[arg-type]
    workers = settings["num_workers"]
    loader = DataLoader(
        data,
        batch_size=settings["micro_batch_size"],
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=settings["pin_memory"],
        prefetch_factor=settings["prefetch_factor"] if workers else None,
        persistent_workers=workers > 0,
    )
    return loader, sampler


def _evaluate(
    forward: Any, data: Dataset[Any], dtype: torch.dtype, device: torch.device, model_file: Any
) -> float:
    outputs, targets = [], []
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=EVAL_BATCH_SIZE, shuffle=False):
            inputs, target = _cast(batch, dtype, device)
            outputs.append(forward(inputs).float().cpu())
            targets.append(target.cpu())
    return float(model_file.metric(torch.cat(outputs), torch.cat(targets)))


def _gather_pipeline_model(engine: Any, model_file: Any, dtype: torch.dtype) -> nn.Module:
    """Reassemble the trained stages into one nn.Sequential for evaluation on every rank."""
    import torch.distributed as dist

    local = {key: value.detach().float().cpu() for key, value in engine.module.state_dict().items()}
    parts: list[dict[str, torch.Tensor]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, local)
    merged: dict[str, torch.Tensor] = {}
    for part in parts:
        merged.update(part)
    model = nn.Sequential(*model_file.layers())
    model.load_state_dict(merged)
    return model.to(dtype=dtype).eval()


def _train_step(
    engine: Any, batches: Iterator[Any], pipeline: bool, gas: int, loss_fn: Any
) -> torch.Tensor:
    """One optimizer step over ``gas`` micro-batches; returns the sum of their losses (the
    pipeline engine's mean over them, for a pipeline)."""
    if pipeline:
        return engine.train_batch(batches).detach().float()
    total = torch.zeros((), device=engine.device)
    for _ in range(gas):
        inputs, targets = next(batches)
        loss = loss_fn(engine(inputs), targets)
        engine.backward(loss)
        engine.step()
        total += loss.detach().float()
    return total


def train_and_measure(plan: dict[str, Any], seed: int, model_file: Any) -> dict[str, Any]:
    """One training run from seeded weights on the fixed sample budget, measured on rank 0."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator
    from deepspeed.utils import groups

    accelerator = get_accelerator()
    settings, ds_config = plan["settings"], plan["ds_config"]
    # A pipeline engine built earlier in this (warm) process left its topology as DeepSpeed's
    # global model-parallel unit, which an engine without a pipeline takes for model
    # parallelism and fails on; each engine sets its own (a pipeline's) or none.
    groups.mpu = None
    dtype = _dtype(settings["precision"])
    train_data, eval_data = model_file.datasets()

    _reset_peak_memory(accelerator)
    torch.manual_seed(seed)
    pipeline = settings["pipeline_stages"] > 1
    if pipeline:
        from deepspeed.pipe import PipelineModule

        from autotune._pipeline import build_pipeline_module

        module: nn.Module
        if plan.get("partition_bounds"):
            module = build_pipeline_module(
                model_file.layers(), plan["partition_bounds"], loss_fn=model_file.loss
            )
        else:
            module = PipelineModule(
                layers=model_file.layers(),
                num_stages=settings["pipeline_stages"],
                partition_method=settings["partition_method"],
                loss_fn=model_file.loss,
            )
    else:
        module = model_file.model()
    _log(f"seed {seed}: model and data ready")
    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=module.parameters(), config=ds_config
    )
    _log(f"seed {seed}: engine ready, training {plan['train_samples']} samples")
    device = engine.device
    if pipeline:
        dp_size, dp_rank = engine.grid.data_parallel_size, engine.grid.data_parallel_id
    else:
        dp_size, dp_rank = engine.dp_world_size, dist.get_rank(group=engine.data_parallel_group)
    loader, sampler = _train_loader(train_data, settings, dp_size, dp_rank, seed)
    batches = _Batches(loader, sampler)
    steps = plan["train_samples"] // ds_config["train_batch_size"]
    warmup = plan["warmup_steps"]
    gas = settings["gradient_accumulation_steps"]

    casting = _Casting(batches, dtype, device)
    adaptive = plan.get("adaptive")
    need_metric = plan.get("need_metric", True)
    stable_after: int | None = None
    stage_clock = _StageClock(engine, accelerator) if pipeline else None
    min_seconds = float((adaptive or {}).get("min_seconds", 0.0))
    loss_sum = torch.zeros((), device=device)
    step_times: list[float] = []

    engine.train()
    dist.barrier()
    start = train_start = time.perf_counter()
    for step in range(steps):
        if step == warmup:
            _synchronize(accelerator)
            dist.barrier()
            if stage_clock is not None:
                stage_clock.reset()
            start = time.perf_counter()
        step_start = time.perf_counter()
        loss_sum += _train_step(engine, casting, pipeline, gas, model_file.loss)
        if step == warmup - 1 and not torch.isfinite(loss_sum):
            raise DivergedError(f"loss is {loss_sum.item()} after {warmup} warm-up steps")
        _synchronize(accelerator)
        step_times.append(time.perf_counter() - step_start)
        measured_so_far = len(step_times) - warmup
        if (
            adaptive
            and measured_so_far >= adaptive["min_steps"]
            and measured_so_far % STABILITY_CHECK_EVERY == 0
        ):
            world = dist.get_world_size()
            if stable_after is None:
                stable = step_time_is_stable(
                    step_times[warmup:], adaptive["rel_halfwidth"], adaptive["min_steps"]
                )
                if _agree(stable, world):
                    stable_after = measured_so_far
            if (
                not need_metric
                and stable_after is not None
                and _agree(time.perf_counter() - start >= min_seconds, world)
            ):
                # The accuracy for these numerics is known; only throughput was wanted.
                break
    dist.barrier()
    elapsed = time.perf_counter() - start
    train_seconds = time.perf_counter() - train_start
    if not torch.isfinite(loss_sum):
        raise DivergedError(f"training loss became {loss_sum.item()}")
    steps_run = len(step_times)
    budget_measured_steps = steps_run - warmup

    eval_start = time.perf_counter()
    metric: float | None = None
    if need_metric:
        _log(f"seed {seed}: trained {steps_run} steps, evaluating")
        engine.eval()
        if pipeline:
            evaluator = _gather_pipeline_model(engine, model_file, dtype).to(device)
            metric = _evaluate(evaluator, eval_data, dtype, device, model_file)
        else:
            metric = _evaluate(engine, eval_data, dtype, device, model_file)
        if not math.isfinite(metric):
            raise DivergedError(f"metric on eval data is {metric}")
    else:
        stability = (
            f"step time stable after {stable_after} measured steps"
            if stable_after is not None
            else f"step time not stable within the budget ({budget_measured_steps} measured steps)"
        )
        _log(f"seed {seed}: {stability}; metric reused, no eval")
    eval_seconds = time.perf_counter() - eval_start

    # A short window measures noise more than speed: throughput is measured over at least
    # min_seconds of training. Steps past the sample budget come after the metric was taken
    # (on the budget's model), are timed the same way and leave the metric alone.
    extra_steps = 0
    if elapsed < min_seconds and budget_measured_steps > 0:
        _log(f"seed {seed}: timing more steps, for at least {min_seconds:g} s in all")
        engine.train()
        for _ in range(10):  # steps are estimated from the mean so far: one or two rounds do
            per_step = elapsed / (budget_measured_steps + extra_steps)
            wanted = torch.tensor([0], device=device)  # NCCL broadcasts device tensors
            if elapsed < min_seconds:
                wanted[0] = math.ceil((min_seconds - elapsed) / max(per_step, 1e-9))
            dist.broadcast(wanted, src=0)  # every rank runs the same number of steps
            if int(wanted.item()) == 0:
                break
            dist.barrier()
            resume = time.perf_counter()
            for _ in range(int(wanted.item())):
                step_start = time.perf_counter()
                _train_step(engine, casting, pipeline, gas, model_file.loss)
                _synchronize(accelerator)
                step_times.append(time.perf_counter() - step_start)
            dist.barrier()
            elapsed += time.perf_counter() - resume
            extra_steps += int(wanted.item())
    measured_steps = budget_measured_steps + extra_steps

    peaks: list[int] = [0] * dist.get_world_size()
    dist.all_gather_object(peaks, _peak_memory_bytes(accelerator))
    timed = sorted(step_times[warmup:])
    partition = getattr(engine.module, "parts", None)
    stages = stage_clock.gather(measured_steps) if stage_clock is not None else None
    loss_scale = _loss_scale(engine) if settings["precision"] == "fp16" else None
    result = {
        "throughput": measured_steps * ds_config["train_batch_size"] / elapsed,
        "metric": metric,
        "train_loss": float(loss_sum.item()) / max(1, steps_run * (1 if pipeline else gas)),
        "steps": steps_run,
        "extra_steps": extra_steps,
        "budget_steps": steps,
        "measured_steps": measured_steps,
        "stable_after_steps": stable_after,
        "samples_trained": steps_run * ds_config["train_batch_size"],
        "step_time_p50": statistics.median(timed),
        "step_time_p90": timed[min(len(timed) - 1, int(0.9 * len(timed)))],
        "step_time_spread": (timed[-1] - timed[0]) / statistics.median(timed),
        "measured_seconds": elapsed + eval_seconds,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "peak_memory_bytes": max(peaks),
        "peak_memory_per_rank": peaks,
        "partition": [int(p) for p in partition] if partition is not None else None,
        "world_size": dist.get_world_size(),
        "stage_compute_seconds": stages["compute"] if stages else None,
        "stage_comm_seconds": stages["comm"] if stages else None,
        # fp16's dynamic loss scaling skips the optimizer step on every overflow: on a short
        # budget those lost steps show up as accuracy loss, so the trial says how many.
        "skipped_steps": int(getattr(engine, "skipped_steps", 0)),
        "loss_scale": loss_scale,
    }
    engine.destroy()
    batches.close()
    del engine, loader, batches
    return result


def run(plan_path: Path) -> dict[str, Any]:
    """Train every seed of the plan; the first seed's run is the trial's measurement."""
    import deepspeed

    plan = json.loads(plan_path.read_text())
    threads = plan.get("threads_per_rank")
    if threads:
        torch.set_num_threads(threads)
    if plan["package_root"] not in sys.path:
        sys.path.insert(0, plan["package_root"])
    from autotune._task import load_model_file

    _log("imports done")
    deepspeed.init_distributed()
    model_file = load_model_file(plan["model_path"])
    runs = []
    for index, seed in enumerate(plan["seeds"]):
        # Later seeds only give the metric's noise: their throughput is not kept, so their
        # window is not lengthened.
        seed_plan = plan if index == 0 else {**plan, "adaptive": None}
        runs.append(train_and_measure(seed_plan, seed, model_file))
        metric = runs[-1]["metric"]
        _log(
            f"seed {seed}: {runs[-1]['throughput']:.1f} samples/s, metric "
            + ("not measured" if metric is None else f"{metric:.4f}")
        )
    result = dict(runs[0])
    result["seed_metrics"] = [r["metric"] for r in runs]
    return result


def _run_and_report(plan_path: Path, rank: int) -> int:
    """Run one plan; rank 0 writes result.json, a failing rank its failure file."""
    try:
        result = run(plan_path)
    except BaseException as exc:
        traceback.print_exc()
        failure = {"rank": rank, "reason": failure_reason(exc)}
        (plan_path.parent / f"failure.rank{rank}.json").write_text(json.dumps(failure))
        return 1
    if rank == 0:
        tmp = plan_path.parent / "result.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(plan_path.parent / "result.json")
    return 0


def _write_output_to(log: Path) -> None:
    """Send this rank's stdout and stderr (DeepSpeed's lines included) to a trial's log."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


STOP = "stop"
"""The request that ends a warm group."""


def _next_request(inbox: Path, owner: int) -> str:
    """Rank 0: wait for the orchestrator's next request (a plan path, or STOP).

    Gives up (STOP) when the orchestrator process is gone, so no group outlives its search.
    """
    last_check = time.monotonic()
    while True:
        requests = sorted(inbox.glob("*.request"))
        if requests:
            text = requests[0].read_text().strip()
            requests[0].unlink()
            return text
        if time.monotonic() - last_check > 1.0:
            last_check = time.monotonic()
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                return STOP
        time.sleep(0.002)


def serve(inbox: Path, owner: int, rank: int) -> int:
    """A warm group: run plan after plan in this process group until told to stop."""
    import deepspeed
    import torch.distributed as dist

    global _STARTED
    deepspeed.init_distributed()
    while True:
        box = [_next_request(inbox, owner) if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        request = str(box[0])
        if request == STOP:
            return 0
        plan_path = Path(request)
        _write_output_to(plan_path.parent / "log.txt")
        _STARTED = time.perf_counter()
        code = _run_and_report(plan_path, rank)
        sys.stdout.flush()
        sys.stderr.flush()
        if code != 0:
            return code  # other ranks may be stuck in a collective: the group ends here
        gc.collect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="autotune's in-rank training harness")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plan", type=Path, help="run this one plan and exit")
    mode.add_argument("--serve", type=Path, help="a warm group: run plans requested in this folder")
    parser.add_argument("--owner", type=int, default=0, help="the orchestrator's process id")
    parser.add_argument("--local_rank", type=int, default=0)  # passed by DeepSpeed's launcher
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", args.local_rank))
    if args.serve is not None:
        return serve(args.serve, args.owner or os.getppid(), rank)
    return _run_and_report(args.plan, rank)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The result is on disk. Skip interpreter teardown: native threads of the communication
    # backend sometimes abort there ("terminate called without an active exception", exit 250),
    # which would throw away a finished measurement. The orchestrator kills the process group.
    os._exit(code)
