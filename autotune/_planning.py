"""`autotune plan`: what a search of a space would do on this machine, before any study is
written. The space after this machine's rules (the values that cannot run here whatever else is
chosen, and why; the configurations left and the reasons the rest are refused, each reason
once), the memory each layout is predicted to need, and from one real run of the reference an
estimate of a run's time and so of the search's.

The rules are the search's own (`why_not_runnable`, the memory pre-screen's `why_over_memory`
without what finished trials teach it), so a search refuses what the plan says it will.
"""

from __future__ import annotations

import dataclasses
import random
import re
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autotune._machine import Machine, detect_machine, with_devices
from autotune._memory import (
    MemoryModel,
    ModelFootprint,
    estimate_rank_bytes,
    format_bytes,
    measure_footprint,
    memory_limit_bytes,
    memory_limit_source,
    why_over_memory,
)
from autotune._plan import TrialConfig, why_not_runnable
from autotune._records import EVAL_SECONDS, TRAIN_SECONDS
from autotune._score import REFERENCE_SEEDS
from autotune._space import (
    Choices,
    IntRange,
    SearchSpace,
    every_settings,
    fill_settings,
    load_space,
)
from autotune._task import Task, load_task
from autotune.study import CONFIRM_ROUNDS, SearchOptions, duration

LISTED_AT_MOST = 200_000
"""A space with more configurations than this is judged on a seeded random sample of them."""
SAMPLED = 20_000
"""Configurations drawn from a space too large to list."""
PROBES = 500
"""Configurations tried to see whether a value refused beside the reference runs elsewhere."""
PLANNED_RUNS = 12
"""The runs a search is estimated for when --n-trials does not say (an Optuna sampler's
default)."""


@dataclasses.dataclass(frozen=True)
class RefusedValue:
    """A value of one setting that cannot run here whatever else is chosen: the reference
    with it alone changed is refused, and so is every configuration of the space holding it."""

    setting: str
    value: Any
    reason: str
    others: tuple[str, ...] = ()
    """Other reasons the configurations holding it met (`reason_kind`): the search records
    whichever rule a configuration breaks first."""


@dataclasses.dataclass(frozen=True)
class LayoutMemory:
    """The predicted peak memory per rank of one layout's runnable configurations."""

    processes: int
    pipeline_stages: int
    zero_stage: int
    configurations: int
    low: float
    high: float
    over_limit: int


@dataclasses.dataclass(frozen=True)
class RunTime:
    """One real run of the reference (one seed, the whole sample budget): its wall time and
    the parts a search repeats."""

    wall_seconds: float
    train_seconds: float
    eval_seconds: float

    @property
    def launch_seconds(self) -> float:
        """What is neither training nor evaluation: starting the ranks, building the engine."""
        return max(0.0, self.wall_seconds - self.train_seconds - self.eval_seconds)


@dataclasses.dataclass(frozen=True)
class SpacePlan:
    """What a search of ``space`` would meet here (`plan`).

    Attributes:
        size: Configurations in the space, conditions applied; None when more than
            ``LISTED_AT_MOST``.
        remaining: Those left without the ``refused_values``; None when more than
            ``LISTED_AT_MOST`` (then ``checked`` is a random sample of them).
        checked: Configurations judged (of the remaining ones).
        runnable: Of those, how many pass every rule and the memory pre-screen.
        refused_values: Values that cannot run here whatever else is chosen.
        reasons: Why the others are refused: (the reason with its numbers as ``N``, how many
            of the checked configurations, one of them in full), most frequent first.
        layouts: Predicted memory per layout of the runnable configurations.
        limit_source: Where the memory limit comes from.
        run: The reference's run, when one was timed.
        runs: The runs the time estimate is for.
    """

    size: int | None
    remaining: int | None
    checked: int
    runnable: int
    refused_values: tuple[RefusedValue, ...]
    reasons: tuple[tuple[str, int, str], ...]
    layouts: tuple[LayoutMemory, ...]
    limit_source: str
    run: RunTime | None = None
    runs: int = PLANNED_RUNS

    def search_seconds(self, confirm: int, warm_workers: bool) -> float | None:
        """About how long a search of ``runs`` runs takes, from the reference's run: the
        reference trains ``REFERENCE_SEEDS`` seeds in one launch; every other run trains once
        (a fresh launch each, or with warm workers a launch per layout and an engine per run);
        the confirmation rounds time the reference and ``confirm`` configurations again,
        throughput only (about half a training each, as the adaptive stop ends them once the
        step time is steady). Every run is taken to be as fast as the reference: a search's
        faster configurations make it an over-estimate, its refused ones cost nothing."""
        if self.run is None:
            return None
        run, others = self.run, max(0, self.runs - 1)
        training = run.train_seconds + run.eval_seconds
        launches = others if not warm_workers else min(others, len(self.layouts))
        engine = run.launch_seconds / 2  # a warm rank still builds each run's engine
        searching = others * (training + (0 if not warm_workers else engine))
        reference = run.launch_seconds + REFERENCE_SEEDS * training
        relaunch = engine if warm_workers else run.launch_seconds
        confirming = CONFIRM_ROUNDS * (1 + confirm) * (relaunch + run.train_seconds / 2)
        return reference + searching + launches * run.launch_seconds + confirming


def plan(
    options: SearchOptions,
    time_a_run: bool = True,
    print_line: Callable[[str], None] = print,
) -> SpacePlan:
    """What a search with ``options`` would meet on this machine; writes no study. With
    ``time_a_run``, one real run of the reference (a fresh launch, one seed, the sample
    budget) is timed for the estimate.

    Raises:
        UserError: Bad input (model file, space), as ``search`` raises it (``options``
            checked its flags when it was made).
    """
    task = load_task(options.model)
    space = load_space(options.space)
    machine = detect_machine()
    if options.devices is not None:
        machine = with_devices(machine, options.devices)
    print_line(f"machine: {machine.describe()}; model {task.model_file.path.name}")
    footprint = measure_footprint(task.model_file)
    judge = _Judge(task, machine, options, footprint)
    reference = task.reference_settings()
    rng = random.Random(options.seed)
    full = every_settings(space, reference, LISTED_AT_MOST)
    refused = _refused_values(judge, space, reference, rng)
    left = _without(space, refused)
    listed = every_settings(left, reference, LISTED_AT_MOST)
    remaining = None if listed is None else len(listed)
    if listed is None:
        listed = [fill_settings(left, reference, _pick(rng)) for _ in range(SAMPLED)]
    result = dataclasses.replace(
        _judge_all(judge, listed),
        size=None if full is None else len(full),
        remaining=remaining,
        refused_values=refused,
        runs=options.n_trials or PLANNED_RUNS,
    )
    if time_a_run:
        print_line("timing one run of the reference (one seed, the whole sample budget)")
        result = dataclasses.replace(result, run=_time_reference(task, machine, options, judge))
    return result


def _pick(rng: random.Random) -> Callable[[str, Choices | IntRange], Any]:
    def pick(name: str, domain: Choices | IntRange) -> Any:
        if isinstance(domain, IntRange):
            return rng.randint(domain.low, domain.high)
        return rng.choice(list(domain))

    return pick


class _Judge:
    """The search's rules for one configuration, without a study."""

    def __init__(
        self, task: Task, machine: Machine, options: SearchOptions, footprint: ModelFootprint
    ) -> None:
        self.task, self.machine, self.options, self.footprint = task, machine, options, footprint
        self.source = memory_limit_source(machine, options.max_memory)

    def config(self, settings: dict[str, Any]) -> TrialConfig:
        model_file = self.task.model_file
        return TrialConfig.from_settings(
            settings,
            model_file.optimizer,
            model_file.batch_size,
            self.options.lr_rule,
            None,
            self.footprint.parameters,
        )

    def rules(self, config: TrialConfig) -> str | None:
        """Why the rules checked before a launch refuse it, or None."""
        task = self.task
        return why_not_runnable(
            config,
            self.machine,
            self.options.train_samples,
            task.train_size,
            task.layer_types,
            task.items_repeat,
            task.lengths_vary,
        )

    def memory(self, config: TrialConfig) -> tuple[float, str | None]:
        """The predicted peak per rank (nothing learned from runs yet), and why it is over
        the limit, or None."""
        estimate = estimate_rank_bytes(self.footprint, config, self.machine.accelerator)
        prediction = MemoryModel().predict(estimate)
        limit = memory_limit_bytes(self.machine, config.processes, self.options.max_memory)
        return prediction, why_over_memory(prediction, limit, estimate, self.source)


def reason_kind(reason: str) -> str:
    """A reason with its numbers (and their units) as ``N``: one line for every configuration
    refused the same way (``4 processes but this machine has 2 cores`` and ``8 processes ...``
    are ``N processes but this machine has N cores``)."""
    return _NUMBER.sub("N", reason)


_NUMBER = re.compile(r"\d[\d,.]*(?:e[+-]?\d+)?(?:\s?(?:[KMGT]i?B|B)\b)?")


def _judge_all(judge: _Judge, listed: list[dict[str, Any]]) -> SpacePlan:
    """Every configuration of ``listed`` judged: how many pass, the reasons of the others,
    and the predicted memory of those the rules let run, by layout."""
    kinds: Counter[str] = Counter()
    examples: dict[str, str] = {}
    memory: dict[tuple[int, int, int], list[tuple[float, bool]]] = {}
    runnable = 0
    for settings in listed:
        config = judge.config(settings)
        reason = judge.rules(config)
        if reason is None:
            prediction, reason = judge.memory(config)
            layout = (config.processes, config.pipeline_stages, config.zero_stage)
            memory.setdefault(layout, []).append((prediction, reason is not None))
        if reason is None:
            runnable += 1
            continue
        kind = reason_kind(reason)
        kinds[kind] += 1
        examples.setdefault(kind, reason)
    layouts = tuple(
        LayoutMemory(
            *layout,
            configurations=len(found),
            low=min(p for p, _ in found),
            high=max(p for p, _ in found),
            over_limit=sum(over for _, over in found),
        )
        for layout, found in sorted(memory.items())
    )
    return SpacePlan(
        size=None,
        remaining=None,
        checked=len(listed),
        runnable=runnable,
        refused_values=(),
        reasons=tuple((kind, count, examples[kind]) for kind, count in kinds.most_common()),
        layouts=layouts,
        limit_source=judge.source,
    )


def _refused_values(
    judge: _Judge, space: SearchSpace, reference: dict[str, Any], rng: random.Random
) -> tuple[RefusedValue, ...]:
    """The values that cannot run here whatever else is chosen: refused in the reference with
    that value alone, and in every configuration tried (up to ``PROBES``) that holds it and
    none of the other such values (``pipeline_stages 2`` is refused beside one process but
    runs with two, so it is not one)."""
    candidates = []
    for name, domain in space.domains.items():
        for value in _values(domain):
            reason = judge.rules(judge.config({**reference, name: value}))
            if reason is not None:
                candidates.append(RefusedValue(name, value, reason))
    others = _without(space, tuple(candidates))
    refused = []
    for candidate in candidates:
        domains = {**others.domains, candidate.setting: (candidate.value,)}
        holding = SearchSpace(domains, space.source)
        tried = every_settings(holding, reference, PROBES) or [
            fill_settings(holding, reference, _pick(rng)) for _ in range(PROBES)
        ]
        reasons = [judge.rules(judge.config(settings)) for settings in tried]
        if None not in reasons:
            own = reason_kind(candidate.reason)
            met = sorted({reason_kind(str(r)) for r in reasons} - {own})
            refused.append(dataclasses.replace(candidate, others=tuple(met)))
    return tuple(refused)


def _values(domain: Choices | IntRange) -> list[Any]:
    return (
        list(range(domain.low, domain.high + 1)) if isinstance(domain, IntRange) else list(domain)
    )


def _without(space: SearchSpace, refused: tuple[RefusedValue, ...]) -> SearchSpace:
    """The space without the refused values; a setting left with none takes the reference's
    value (as a setting the space leaves out does)."""
    domains: dict[str, Choices | IntRange] = {}
    for name, domain in space.domains.items():
        gone = {v.value for v in refused if v.setting == name}
        kept = tuple(value for value in _values(domain) if value not in gone)
        if kept:
            domains[name] = domain if not gone else kept
    return SearchSpace(domains, space.source)


def _time_reference(task: Task, machine: Machine, options: SearchOptions, judge: _Judge) -> RunTime:
    """One real run of the reference configuration, timed (a fresh launch)."""
    from autotune._errors import UserError
    from autotune.runner import run_trial

    config = judge.config(task.reference_settings())
    with tempfile.TemporaryDirectory(prefix="autotune-plan-") as folder:
        result = run_trial(
            config,
            machine,
            Path(task.model_file.path),
            options.train_samples,
            [options.seed],
            Path(folder) / "reference",
            options.trial_timeout,
        )
    if not result.ok or result.measurements is None:
        raise UserError(
            f"The reference configuration did not train: {result.failure_reason}. "
            "Fix the model file first (autotune search would stop on it too)."
        )
    measured = result.measurements
    return RunTime(
        wall_seconds=result.wall_seconds,
        train_seconds=float(measured[TRAIN_SECONDS]),
        eval_seconds=float(measured[EVAL_SECONDS]),
    )


REASONS_SHOWN = 12
"""Reasons listed at most (the most frequent; the rest are counted in one line)."""


def describe_plan(found: SpacePlan, confirm: int, warm_workers: bool) -> list[str]:
    """The plan as lines for a terminal: the space, the values that cannot run here, the
    reasons the other refused configurations are refused, memory per layout, and the time."""
    judged = f"{found.checked:,}"
    more = f"more than {LISTED_AT_MOST:,}"
    lines = [f"space: {more if found.size is None else f'{found.size:,}'} configurations"]
    if found.refused_values:
        lines.append("cannot run here, whatever else is chosen:")
        # A reason the search may record for these values beside their own, said once where
        # no other line says it.
        said = {kind for kind, _, _ in found.reasons}
        said |= {reason_kind(refused.reason) for refused in found.refused_values}
        for refused in found.refused_values:
            lines.append(f"  {refused.setting} {_value(refused.value)}: {refused.reason}")
            also = [other for other in refused.others if other not in said]
            lines.extend(f"      or: {other}" for other in also)
            said |= set(also)
        left = more if found.remaining is None else f"{found.remaining:,}"
        lines.append(f"left without those values: {left} configurations")
    if found.remaining is None:
        lines.append(f"judged a random sample of {judged} of them")
    if found.reasons:
        lines.append("refused among them, by reason:")
        for kind, count, example in found.reasons[:REASONS_SHOWN]:
            lines.append(f"  {count:>8,}  {example if kind == example else 'e.g. ' + example}")
        rest = sum(count for _, count, _ in found.reasons[REASONS_SHOWN:])
        if rest:
            lines.append(f"  {rest:>8,}  for {len(found.reasons) - REASONS_SHOWN} other reasons")
    share = found.runnable / max(1, found.checked)
    lines.append(f"can run here: {found.runnable:,} of the {judged} judged ({share:.1%})")
    if found.layouts:
        lines.append(
            f"predicted peak memory per rank, by layout (limit: {found.limit_source}; "
            "before any run teaches the estimate):"
        )
        for layout in found.layouts:
            over = f", {layout.over_limit:,} over the limit" if layout.over_limit else ""
            lines.append(
                f"  procs {layout.processes} pp {layout.pipeline_stages} zero {layout.zero_stage}"
                f": {format_bytes(layout.low)} to {format_bytes(layout.high)} over "
                f"{layout.configurations:,} configurations{over}"
            )
    lines.extend(_time_lines(found, confirm, warm_workers))
    return lines


def _value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _time_lines(found: SpacePlan, confirm: int, warm_workers: bool) -> list[str]:
    run, total = found.run, found.search_seconds(confirm, warm_workers)
    if run is None or total is None:
        return []
    return [
        f"one run of the reference: {duration(run.wall_seconds)} ({duration(run.launch_seconds)} "
        f"launch, {duration(run.train_seconds)} training, {duration(run.eval_seconds)} "
        "evaluation)",
        f"a search of {found.runs} runs: about {duration(total)} (the reference's "
        f"{REFERENCE_SEEDS} seeds, {found.runs - 1} runs as long as one of the reference's, "
        f"{CONFIRM_ROUNDS} confirmation rounds of {1 + confirm} configurations)",
    ]
