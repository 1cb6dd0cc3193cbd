"""One measured training run inside the ranks, in named steps: build the engine, open the
training loader, run the timed loop (warm-up, adaptive stop, stage clock), evaluate the
metric, lengthen the timed window when it was too short, and gather peak memory into the
result. ``train_and_measure`` is the flow over them."""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from autotune._batch import evaluate_with_loss, forward
from autotune._records import (
    BUDGET_STEPS,
    CANNOT_WIN,
    COMPILE_SECONDS,
    EVAL_LOSS,
    EVAL_SECONDS,
    EXTRA_STEPS,
    GRADIENT_NOISE,
    LOSS_SCALE,
    MEASURED_SECONDS,
    MEASURED_STEPS,
    METRIC,
    PADDING,
    PARTITION,
    PEAK_MEMORY_BYTES,
    PEAK_MEMORY_PER_RANK,
    SAMPLES_TRAINED,
    SKIPPED_STEPS,
    STABLE_AFTER_STEPS,
    STAGE_COMM_SECONDS,
    STAGE_COMPUTE_SECONDS,
    STEP_TIME_P50,
    STEP_TIME_P90,
    STEP_TIME_SPREAD,
    STEPS,
    THROUGHPUT,
    TOKENS_PER_SECOND,
    TRAIN_LOSS,
    TRAIN_SECONDS,
    WORLD_SIZE,
)
from autotune.runner._checkpointing import CheckpointedLayers, pipeline_checkpointing
from autotune.runner._data import (
    Batches,
    CachedItems,
    CastingBatches,
    cast_batch,
    torch_dtype,
    train_loader,
)
from autotune.runner._gradient_noise import gradient_norms, measurable
from autotune.runner._protocol import TrialPlan
from autotune.runner._rank import (
    DivergedError,
    agree,
    gather_peak_memory,
    log,
    loss_scale,
    reset_peak_memory,
    synchronize,
)
from autotune.runner._timing import (
    STABILITY_CHECK_EVERY,
    StageClock,
    step_time_is_stable,
    throughput_upper_bound,
)
from autotune.runner._token_batches import StepLearningRate, TokenBudgetSampler

EXTEND_ROUNDS = 10
"""Rounds of extra steps at most; each is estimated from the pace of the one before (the first
from the budget's window), so one or two do."""


@dataclasses.dataclass(frozen=True)
class Ranks:
    """A built engine and what the steps need to drive it on this rank.

    Attributes:
        budget_steps: Optimizer steps in the sample budget (under token batching, the steps
            whose items reach it: `with_loader`).
        step_lr: Under token batching, what sets each step's learning rate; else None.
        sampler: The training loader's sampler, once it is built (`with_loader`).
    """

    engine: Any
    accelerator: Any
    pipeline: bool
    dtype: torch.dtype
    device: torch.device
    dp_rank: int
    gas: int
    loss_fn: Any
    budget_steps: int = 0
    step_lr: StepLearningRate | None = None
    sampler: Any = None


@dataclasses.dataclass
class Timing:
    """What the timed loop measured; extra steps past the budget add to it."""

    step_times: list[float]
    loss_sum: torch.Tensor
    steps_run: int = 0
    elapsed: float = 0.0
    train_seconds: float = 0.0
    stable_after: int | None = None
    extra_steps: int = 0
    cannot_win: bool = False


def build_engine(plan: TrialPlan, seed: int, model_file: Any, accelerator: Any) -> Ranks:
    """The engine step: the model (or pipeline) from seeded weights, under DeepSpeed."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.utils import groups

    # A pipeline engine built earlier in this (warm) process left its topology as DeepSpeed's
    # global model-parallel unit, which an engine without a pipeline takes for model
    # parallelism and fails on; each engine sets its own (a pipeline's) or none.
    groups.mpu = None
    torch.manual_seed(seed)
    module = _build_module(plan, model_file)
    log(f"seed {seed}: model and data ready")
    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=module.parameters(), config=plan.ds_config
    )
    if plan.config.compile:
        # A warm rank compiled earlier trials' models: start afresh, so no cache of theirs
        # counts against torch's limit on recompilations (past it, torch runs eagerly).
        torch._dynamo.reset()
        engine.compile(backend="inductor")
        log(f"seed {seed}: compiling the model with inductor in the first step")
    log(
        f"seed {seed}: engine ready ({_kernel(engine.basic_optimizer)}), training "
        f"{plan.train_samples} samples"
    )
    if plan.pipeline:
        dp_rank = engine.grid.data_parallel_id
    else:
        dp_rank = dist.get_rank(group=engine.data_parallel_group)
    return Ranks(
        engine=engine,
        accelerator=accelerator,
        pipeline=plan.pipeline,
        dtype=torch_dtype(plan.config.precision),
        device=engine.device,
        dp_rank=dp_rank,
        gas=plan.config.gradient_accumulation_steps,
        loss_fn=model_file.loss,
        budget_steps=plan.budget_steps,
    )


def with_loader(plan: TrialPlan, ranks: Ranks, sampler: Any, batches: Batches) -> Ranks:
    """The loader step's part in the ranks: under token batching the sample budget in the
    sampler's steps and each step's learning rate by its items."""
    if not isinstance(sampler, TokenBudgetSampler):
        return dataclasses.replace(ranks, sampler=sampler)
    log(
        f"token batching: micro-batches of at most {sampler.budget:,} padded tokens, "
        f"{sampler.padding():.1%} of an epoch's positions padding"
    )
    return dataclasses.replace(
        ranks,
        sampler=sampler,
        budget_steps=sampler.steps_for(plan.train_samples),
        step_lr=StepLearningRate(ranks.engine.basic_optimizer, sampler, batches),
    )


def _kernel(optimizer: Any) -> str:
    """``FusedAdam``, ``AdamW (fused)``, ``AdamW (foreach)``: the optimizer kernel that runs."""
    defaults = getattr(optimizer, "defaults", {})
    kinds = [kind for kind in ("fused", "foreach") if defaults.get(kind)]
    return type(optimizer).__name__ + (f" ({kinds[0]})" if kinds else "")


def _build_module(plan: TrialPlan, model_file: Any) -> nn.Module:
    checkpointing = plan.config.activation_checkpointing
    if not plan.pipeline:
        if checkpointing:
            module = CheckpointedLayers(model_file.layers())
            log(module.describe())
            return module
        return model_file.model()
    from deepspeed.pipe import PipelineModule

    from autotune.pipeline import build_pipeline_module

    # A collate() may pad each batch to its own longest item: the stages then exchange
    # activations of another shape every micro-batch, which DeepSpeed sends only when told.
    options = {"loss_fn": model_file.loss, "dynamic_shape": model_file.has_collate}
    if checkpointing:
        options.update(pipeline_checkpointing())
        log("activation checkpointing: every layer with parameters, on each stage")
    if plan.partition_bounds:
        return build_pipeline_module(model_file.layers(), plan.partition_bounds, **options)
    return PipelineModule(
        layers=model_file.layers(),
        num_stages=plan.config.pipeline_stages,
        partition_method=plan.config.partition_method,
        **options,
    )


def train_step(ranks: Ranks, batches: Iterator[Any]) -> torch.Tensor:
    """One optimizer step over ``gas`` micro-batches; returns the sum of their losses (the
    pipeline engine's mean over them, for a pipeline)."""
    engine = ranks.engine
    if ranks.pipeline:
        return engine.train_batch(batches).detach().float()
    total = torch.zeros((), device=engine.device)
    for micro in range(ranks.gas):
        batch = next(batches)
        if micro == 0 and ranks.step_lr is not None:
            ranks.step_lr.before_step()
        output, target = forward(engine, batch)
        loss = ranks.loss_fn(output, target)
        engine.backward(loss)
        engine.step()
        total += loss.detach().float()
    return total


def _timed_step(ranks: Ranks, batches: Iterator[Any], step_times: list[float]) -> torch.Tensor:
    step_start = time.perf_counter()
    loss = train_step(ranks, batches)
    synchronize(ranks.accelerator)
    step_times.append(time.perf_counter() - step_start)
    return loss


def _min_seconds(plan: TrialPlan) -> float:
    return plan.adaptive.min_seconds if plan.adaptive else 0.0


def _stops_early(plan: TrialPlan, timing: Timing, window_start: float) -> bool:
    """The adaptive stop, every STABILITY_CHECK_EVERY measured steps: note when the step time
    became stable, and stop there when only throughput is wanted (after ``min_seconds``)."""
    import torch.distributed as dist

    adaptive, warmup = plan.adaptive, plan.warmup_steps
    measured_so_far = len(timing.step_times) - warmup
    if (
        adaptive is None
        or measured_so_far < adaptive.min_steps
        or measured_so_far % STABILITY_CHECK_EVERY
    ):
        return False
    world = dist.get_world_size()
    if timing.stable_after is None:
        stable = step_time_is_stable(
            timing.step_times[warmup:], adaptive.rel_halfwidth, adaptive.min_steps
        )
        if agree(stable, world):
            timing.stable_after = measured_so_far
    timed_enough = time.perf_counter() - window_start >= adaptive.min_seconds
    if plan.need_metric and adaptive.cannot_win_below is not None:
        # Slower than the best feasible run, whatever its accuracy: not worth the budget.
        most = throughput_upper_bound(timing.step_times[warmup:], plan.config.global_batch_size)
        slower = timed_enough and most is not None and most < adaptive.cannot_win_below
        if agree(slower, world):
            timing.cannot_win = True
            log(
                f"at most {most or 0.0:.1f} samples/s (95%) after {measured_so_far} measured steps, "
                f"below the {adaptive.cannot_win_below:.1f} needed to win: stopping, no eval"
            )
            return True
    if plan.need_metric:
        return False
    # The accuracy for these numerics is known; only throughput was wanted.
    if timing.stable_after is not None:
        return agree(timed_enough, world)
    if adaptive.max_seconds is None:
        return False
    return agree(time.perf_counter() - window_start >= adaptive.max_seconds, world)


def timed_loop(
    plan: TrialPlan, ranks: Ranks, batches: CastingBatches, clock: StageClock | None
) -> Timing:
    """The timed loop: warm-up steps, then timed steps over the sample budget (or until the
    adaptive stop); the window excludes warm-up and includes data loading."""
    import torch.distributed as dist

    warmup = plan.warmup_steps
    timing = Timing(step_times=[], loss_sum=torch.zeros((), device=ranks.device))
    ranks.engine.train()
    dist.barrier()
    start = train_start = time.perf_counter()
    for step in range(ranks.budget_steps):
        if step == warmup:
            synchronize(ranks.accelerator)
            dist.barrier()
            if clock is not None:
                clock.reset()
            batches.start_count()
            start = time.perf_counter()
        step_start = time.perf_counter()
        timing.loss_sum += train_step(ranks, batches)
        if step == warmup - 1 and not torch.isfinite(timing.loss_sum):
            raise DivergedError(f"loss is {timing.loss_sum.item()} after {warmup} warm-up steps")
        synchronize(ranks.accelerator)
        timing.step_times.append(time.perf_counter() - step_start)
        if _stops_early(plan, timing, start):
            break
    dist.barrier()
    timing.elapsed = time.perf_counter() - start
    timing.train_seconds = time.perf_counter() - train_start
    if not torch.isfinite(timing.loss_sum):
        raise DivergedError(f"training loss became {timing.loss_sum.item()}")
    timing.steps_run = len(timing.step_times)
    return timing


def _evaluate(
    model: Any, data: Dataset[Any], dtype: torch.dtype, device: torch.device, model_file: Any
) -> tuple[float, float | None]:
    """The metric and the eval loss on the eval data, in batches of the file's
    EVAL_BATCH_SIZE (dict batches stream: one batch's outputs at a time)."""
    loader = DataLoader(
        data, batch_size=model_file.eval_batch_size, shuffle=False, collate_fn=model_file.collate
    )
    with torch.no_grad():
        batches = (cast_batch(batch, dtype, device) for batch in loader)
        return evaluate_with_loss(model, batches, model_file.metric, model_file.loss)


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


def evaluate_metric(
    plan: TrialPlan,
    ranks: Ranks,
    eval_data: Dataset[Any],
    model_file: Any,
    timing: Timing,
    seed: int,
) -> tuple[float | None, float | None, float]:
    """The eval step: the metric and the eval loss on the eval data (None when not needed)
    and the seconds it took."""
    eval_start = time.perf_counter()
    metric: float | None = None
    eval_loss: float | None = None
    if timing.cannot_win:
        pass  # it stopped early: slower than the best feasible run, its metric cannot matter
    elif plan.need_metric:
        log(f"seed {seed}: trained {timing.steps_run} steps, evaluating")
        ranks.engine.eval()
        evaluator = ranks.engine
        if ranks.pipeline:
            evaluator = _gather_pipeline_model(ranks.engine, model_file, ranks.dtype)
            evaluator = evaluator.to(ranks.device)
        metric, eval_loss = _evaluate(evaluator, eval_data, ranks.dtype, ranks.device, model_file)
        if not math.isfinite(metric):
            raise DivergedError(f"metric on eval data is {metric}")
    else:
        budget_measured = timing.steps_run - plan.warmup_steps
        stability = (
            f"step time stable after {timing.stable_after} measured steps"
            if timing.stable_after is not None
            else f"step time not stable within the budget ({budget_measured} measured steps)"
        )
        log(f"seed {seed}: {stability}; metric reused, no eval")
    return metric, eval_loss, time.perf_counter() - eval_start


def lengthen_window(
    plan: TrialPlan, ranks: Ranks, batches: CastingBatches, timing: Timing, seed: int
) -> None:
    """Time more steps until the window reaches ``min_seconds``.

    A short window measures noise more than speed. Steps past the sample budget come after
    the metric was taken (on the budget's model), are timed the same way and leave the metric
    alone.
    """
    import torch.distributed as dist

    min_seconds = _min_seconds(plan)
    budget_measured = timing.steps_run - plan.warmup_steps
    if timing.elapsed >= min_seconds or budget_measured <= 0 or timing.cannot_win:
        return
    log(f"seed {seed}: timing more steps, for at least {min_seconds:g} s in all")
    ranks.engine.train()
    per_step = timing.elapsed / budget_measured
    for _ in range(EXTEND_ROUNDS):
        wanted = torch.tensor([0], device=ranks.device)  # NCCL broadcasts device tensors
        if timing.elapsed < min_seconds:
            wanted[0] = math.ceil((min_seconds - timing.elapsed) / max(per_step, 1e-9))
        dist.broadcast(wanted, src=0)  # every rank runs the same number of steps
        count = int(wanted.item())
        if count == 0:
            break
        dist.barrier()
        resume = time.perf_counter()
        for _ in range(count):
            _timed_step(ranks, batches, timing.step_times)
        dist.barrier()
        taken = time.perf_counter() - resume
        timing.elapsed += taken
        timing.extra_steps += count
        # The next round from this round's pace: the mean over the whole window, slower early
        # steps included, left a fast model's window short of min_seconds after every round.
        per_step = taken / count


def window_tokens(ranks: Ranks, batches: CastingBatches) -> tuple[float | None, float | None]:
    """Real tokens per item over the timed window and the share of its padded positions that
    are padding, from every rank that loaded batches (a pipeline's first and last stages load
    the same ones); None for both when batches carry no token ids (a collective: every rank
    calls it)."""
    import torch.distributed as dist

    counted = batches.tokens is not None
    totals = torch.tensor(
        [batches.tokens or 0, batches.items if counted else 0, batches.positions],
        dtype=torch.float64,
        device=ranks.device,
    )
    dist.all_reduce(totals)
    tokens, items, positions = (float(value) for value in totals.tolist())
    if items <= 0:
        return None, None
    return tokens / items, 1 - tokens / positions if positions > 0 else None


def measurements(
    plan: TrialPlan,
    ranks: Ranks,
    timing: Timing,
    metric: float | None,
    eval_seconds: float,
    clock: StageClock | None,
    tokens: tuple[float | None, float | None] = (None, None),
    peaks: list[int] | None = None,
) -> dict[str, Any]:
    """The memory step and the result: every rank's peak memory (``peaks`` where read
    before), the stage clock's figures, and the run's measurements under their record names
    (collectives: every rank calls it). ``tokens``: `window_tokens`."""
    import torch.distributed as dist

    engine, warmup = ranks.engine, plan.warmup_steps
    measured_steps = timing.steps_run - warmup + timing.extra_steps
    peaks = gather_peak_memory(ranks.accelerator) if peaks is None else peaks
    timed = sorted(timing.step_times[warmup:])
    partition = getattr(engine.module, "parts", None)
    stages = clock.gather(measured_steps) if clock is not None else None
    gas = 1 if ranks.pipeline else ranks.gas
    trained, window = _items(plan, ranks, timing)
    throughput = window / timing.elapsed
    tokens_per_item, padding = tokens
    return {
        THROUGHPUT: throughput,
        TOKENS_PER_SECOND: None if tokens_per_item is None else throughput * tokens_per_item,
        PADDING: padding,
        METRIC: metric,
        TRAIN_LOSS: float(timing.loss_sum.item()) / max(1, timing.steps_run * gas),
        STEPS: timing.steps_run,
        EXTRA_STEPS: timing.extra_steps,
        BUDGET_STEPS: ranks.budget_steps,
        MEASURED_STEPS: measured_steps,
        STABLE_AFTER_STEPS: timing.stable_after,
        SAMPLES_TRAINED: trained,
        STEP_TIME_P50: statistics.median(timed),
        STEP_TIME_P90: timed[min(len(timed) - 1, int(0.9 * len(timed)))],
        STEP_TIME_SPREAD: (timed[-1] - timed[0]) / statistics.median(timed),
        MEASURED_SECONDS: timing.elapsed + eval_seconds,
        TRAIN_SECONDS: timing.train_seconds,
        EVAL_SECONDS: eval_seconds,
        COMPILE_SECONDS: _compile_seconds(plan, timing) if plan.config.compile else None,
        PEAK_MEMORY_BYTES: max(peaks),
        PEAK_MEMORY_PER_RANK: peaks,
        PARTITION: [int(p) for p in partition] if partition is not None else None,
        WORLD_SIZE: dist.get_world_size(),
        STAGE_COMPUTE_SECONDS: stages["compute"] if stages else None,
        STAGE_COMM_SECONDS: stages["comm"] if stages else None,
        # fp16's dynamic loss scaling skips the optimizer step on every overflow: on a short
        # budget those lost steps show up as accuracy loss, so the trial says how many.
        SKIPPED_STEPS: int(getattr(engine, "skipped_steps", 0)),
        LOSS_SCALE: loss_scale(engine) if plan.config.precision == "fp16" else None,
        CANNOT_WIN: timing.cannot_win,
    }


def _items(plan: TrialPlan, ranks: Ranks, timing: Timing) -> tuple[int, int]:
    """Items trained in the sample budget's steps, and items in the timed window: a global
    batch a step, or under token batching what the sampler put in each step (every rank
    knows them all)."""
    steps, warmup = timing.steps_run, plan.warmup_steps
    window_end = steps + timing.extra_steps
    if isinstance(ranks.sampler, TokenBudgetSampler):
        counted = ranks.sampler.items_in_steps
        return counted(steps), counted(window_end) - counted(warmup)
    batch = plan.config.global_batch_size
    return steps * batch, (window_end - warmup) * batch


def _compile_seconds(plan: TrialPlan, timing: Timing) -> float:
    """The warm-up steps' time beyond as many timed steps (their median): compiling."""
    warmup = plan.warmup_steps
    usual = statistics.median(timing.step_times[warmup:])
    return max(0.0, sum(timing.step_times[:warmup]) - warmup * usual)


def _gradient_noise(
    plan: TrialPlan, ranks: Ranks, batches: Iterator[Any], model_file: Any
) -> dict[str, Any] | None:
    """Rank 0's gradient norms for the noise scale, where the plan asks and they can be
    measured (`autotune.runner._gradient_noise`); None elsewhere."""
    import torch.distributed as dist

    zero_stage = int(plan.ds_config.get("zero_optimization", {}).get("stage", 0))
    if not plan.measure_noise or dist.get_rank() != 0 or measurable(ranks.pipeline, zero_stage):
        return None
    if ranks.step_lr is not None:
        return None  # its micro-batches vary in size; the noise wants batches of a known one
    norms = gradient_norms(
        ranks.engine.module, model_file, batches, plan.config.micro_batch_size, ranks.device
    )
    log(f"gradient norms measured at batches of {norms['small']} and {norms['big']}")
    return norms


def train_and_measure(plan: TrialPlan, seed: int, model_file: Any) -> dict[str, Any]:
    """One training run from seeded weights on the fixed sample budget, measured on rank 0."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    os.environ.update(plan.config.loader_environment())  # before the data is made
    train_data, eval_data = model_file.datasets()
    reset_peak_memory(accelerator)
    ranks = build_engine(plan, seed, model_file, accelerator)
    loader = train_loader(train_data, plan.config, ranks.dp_rank, seed, model_file.collate)
    batches = Batches(*loader)
    ranks = with_loader(plan, ranks, loader[1], batches)
    casting = CastingBatches(batches, ranks.dtype, ranks.device)
    clock = StageClock(ranks.engine, accelerator) if ranks.pipeline else None
    timing = timed_loop(plan, ranks, casting, clock)
    metric, eval_loss, eval_seconds = evaluate_metric(
        plan, ranks, eval_data, model_file, timing, seed
    )
    # The noise on the budget's model (the extra timing steps below train on, so their count,
    # which depends on the machine's speed, would move it), after the peak memory was read:
    # the fp32 copy it trains is not the run's, and the extra steps add no new peak.
    peaks = gather_peak_memory(ranks.accelerator)
    noise = _gradient_noise(plan, ranks, batches, model_file)
    lengthen_window(plan, ranks, casting, timing, seed)
    result = measurements(
        plan, ranks, timing, metric, eval_seconds, clock, window_tokens(ranks, casting), peaks
    )
    result[GRADIENT_NOISE] = noise
    result[EVAL_LOSS] = eval_loss
    ranks.engine.destroy()
    batches.close()
    if isinstance(loader[0].dataset, CachedItems):
        log(f"seed {seed}: {loader[0].dataset.describe()}")
    if ranks.step_lr is not None:
        log(f"seed {seed}: {ranks.step_lr.describe()}")
    return result
