"""Sampler replays: a search over a landscape (`benchmarks/landscape.py`) driven exactly as
`autotune search` drives one, with the landscape's recorded outcomes in place of the runs, and
the statistics of how many runs each sampler needed to reach the target.

Only the public names of `autotune.study` are used, so a replay follows the product: the same
sampler construction, the reference enqueued first, the same random start-up, no run for a
configuration whose numerics a run found over the budget, and a run slower than the best
feasible one less `CANNOT_WIN_MARGIN` stopped early (its throughput, no accuracy). Unlike a
real run, the replay stops one whatever its length (a real run must first time
--min-measure-seconds).
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import optuna
from landscape import TARGET_FRACTION, Landscape, LandscapePoint

from autotune._errors import UserError
from autotune._records import OK, TrialRecord
from autotune._score import constraints_for_no_run
from autotune._space import record_reference, suggest
from autotune.runner import KEEP_GROUPS
from autotune.study import (
    ASKS_PER_RUN,
    CANNOT_WIN_MARGIN,
    PROBE_SECONDS,
    ProbeOption,
    ProbePlan,
    ProbeStep,
    ProbeTiming,
    enqueue_reference,
    enqueue_startup,
    make_sampler,
    options_at_distance,
)

SWITCH_SECONDS = 8.5
"""What a run costs on top of its recorded time when it launches a warm group: when no group of
its processes is alive (the search keeps the last `KEEP_GROUPS` layouts' groups). 8.5-9 s
measured on the 2-core CPU machine, 2026-12-01; the landscapes were recorded in grid order, one
group per layout, so their runs hardly paid it."""


class _WarmGroups:
    """Which layouts have a live warm group, as `WarmWorkers` keeps them: the search's first
    group is in the first run's recorded time, each later launch costs `SWITCH_SECONDS`."""

    def __init__(self) -> None:
        self.alive: list[int] = []  # processes, the one used last at the end

    def cost(self, processes: int) -> float:
        """What a run of ``processes`` ranks costs on top of its recorded time."""
        launched = processes not in self.alive
        first = not self.alive
        if not launched:
            self.alive.remove(processes)
        self.alive = [*self.alive, processes][-KEEP_GROUPS:]
        return SWITCH_SECONDS if launched and not first else 0.0


@dataclasses.dataclass(frozen=True)
class ReplayResult:
    """One replayed search.

    Attributes:
        sampler: The sampler's name.
        seed: The sampler's seed.
        runs_to_target: Runs spent when the best feasible throughput found first reached the
            target, or None if it never did.
        proposals_to_target: Proposals (trials, repeats included) made by then, or None.
        runs: Runs spent when the replay stopped.
        proposals: Proposals made when the replay stopped.
        repeats: Of those, proposals of a configuration proposed before.
        runnable: The landscape's runnable points: what an exhaustive search spends.
        best_found: The best feasible throughput found (0 when none).
        target: The throughput to reach.
        seconds_to_target: Wall time spent by then (a timed landscape), or None.
        seconds: Wall time spent when the replay stopped (0 for an untimed landscape).
        grid_seconds: What an exhaustive grid of full runs takes on the landscape.
    """

    sampler: str
    seed: int
    runs_to_target: int | None
    proposals_to_target: int | None
    runs: int
    proposals: int
    repeats: int
    runnable: int
    best_found: float
    target: float
    seconds_to_target: float | None = None
    seconds: float = 0.0
    grid_seconds: float = 0.0

    @property
    def fraction(self) -> float | None:
        """Runs to the target as a fraction of the runnable points."""
        if self.runs_to_target is None:
            return None
        return self.runs_to_target / self.runnable


class _ReplayObjective:
    """`autotune search`'s objective with the landscape in place of the runs."""

    def __init__(
        self, landscape: Landscape, target: float, noise: float = 0.0, seed: int = 0
    ) -> None:
        self.landscape, self.target, self.noise = landscape, target, noise
        self.rng = random.Random(seed)
        self.seen: dict[str, tuple[float, dict[str, float]]] = {}
        self.over_budget: set[str] = set()
        self.judged: set[str] = set()
        self.runs = 0
        self.proposals = 0
        self.repeats = 0
        self.seconds = 0.0
        self.groups = _WarmGroups()
        self.best_seen = 0.0
        self.best_found = 0.0
        self.runs_to_target: int | None = None
        self.proposals_to_target: int | None = None
        self.seconds_to_target: float | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        landscape = self.landscape
        reference = TrialRecord.of(trial).is_reference
        if reference:
            settings = record_reference(trial, landscape.space, landscape.reference)
        else:
            settings = suggest(trial, landscape.space, landscape.reference)
        point = landscape.lookup(settings)
        self.proposals += 1
        if point.key in self.seen:
            self.repeats += 1  # a repeat: the tool reuses the stored result, no run
            value, constraints = self.seen[point.key]
        else:
            value, constraints = self._first(point, landscape.numerics_key_of(settings), reference)
            self.seen[point.key] = (value, constraints)
        for name, number in constraints.items():
            trial.set_constraint(name, number)
        return value

    def _first(
        self, point: LandscapePoint, numerics: str, reference: bool
    ) -> tuple[float, dict[str, float]]:
        """What the tool records the first time it meets ``point``, and what it costs: no run
        where it cannot run or its numerics were found over the budget; a throughput-only run
        where its numerics were judged before, or where it is slower than the best feasible
        run less the tool's margin (stopped early: its throughput, not feasible); else a full
        run and the point's recorded outcome. The tool sees each run's throughput through one
        window's noise (``noise``, the log's standard deviation): what TPE learns from and
        what a later run must beat not to stop early. A feasible configuration that trained in
        full counts as found at its true throughput (the confirmation rounds at the end of a
        search time the leaders side by side; the replay does not model them)."""
        budget, minimum = self.landscape.max_accuracy_loss, self.landscape.min_measure_seconds
        if not point.runnable or (numerics in self.over_budget and not reference):
            return 0.0, constraints_for_no_run()
        self.runs += 1
        self.seconds += self._switch(point)
        seen = point.value() * math.exp(self.rng.gauss(0.0, self.noise)) if self.noise else None
        observed = point.value() if seen is None else seen
        if (
            point.status == OK
            and not reference
            and self.best_seen
            and observed < self.best_seen * (1 - CANNOT_WIN_MARGIN)
        ):
            self.seconds += point.timed_seconds(minimum)
            return observed, constraints_for_no_run()  # stopped early: no accuracy
        reused = numerics in self.judged and not reference
        self.seconds += point.timed_seconds(minimum) if reused else point.full_seconds()
        if point.status == OK:
            self.judged.add(numerics)
            if not point.is_feasible(budget):
                self.over_budget.add(numerics)
        if point.is_feasible(budget):
            self.best_seen = max(self.best_seen, observed)
            self.best_found = max(self.best_found, point.value())
            if self.runs_to_target is None and self.best_found >= self.target:
                self.runs_to_target, self.proposals_to_target = self.runs, self.proposals
                self.seconds_to_target = self.seconds
        return observed if point.status == OK else point.value(), point.constraints(budget)

    def _switch(self, point: LandscapePoint) -> float:
        """`SWITCH_SECONDS` when this run launches a warm group (`_WarmGroups`)."""
        cost = self.groups.cost(point.settings.get("processes", 1))
        return cost if self.landscape.timed else 0.0

    def stop_when_done(self, study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if self.runs_to_target is not None or self.runs >= self.landscape.runnable:
            study.stop()


def _target(landscape: Landscape, target_fraction: float) -> float:
    """The throughput a replay must reach, once the landscape is known to hold its whole grid.

    Raises:
        UserError: The landscape misses configurations of its space or has no feasible point.
    """
    missing = landscape.missing()
    if missing:
        raise UserError(
            f"The landscape misses {len(missing)} configurations of its space (e.g. "
            f"{missing[0]}); record the full grid."
        )
    return landscape.target_throughput(target_fraction)


def replay(
    landscape: Landscape,
    sampler_name: str,
    seed: int,
    max_proposals: int | None = None,
    target_fraction: float = TARGET_FRACTION,
    native_half: tuple[str, ...] = (),
    noise: float | None = None,
) -> ReplayResult:
    """Search the landscape as `autotune search --sampler NAME --seed SEED` would.

    Stops once the best feasible throughput found reaches ``target_fraction`` of the
    landscape's best, once every runnable point has run, or after ``max_proposals``
    proposals (by default the tool's own cap: 25 per runnable point). Each run's throughput
    is seen through one window's noise, ``noise`` (the landscape's `window_noise` unless
    given); on a timed landscape the wall time spent is counted too.

    Raises:
        UserError: The landscape misses configurations of its space or has no feasible point.
    """
    target = _target(landscape, target_fraction)
    space = landscape.space
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            sampler=make_sampler(sampler_name, seed, space.grid()), direction="maximize"
        )
        enqueue_reference(study, space, landscape.reference)
        wanted = max_proposals or ASKS_PER_RUN * max(1, landscape.runnable)
        enqueue_startup(
            study,
            space,
            landscape.reference,
            lambda settings: landscape.lookup(settings).runnable,
            sampler_name,
            seed,
            wanted,
            native_half,
        )
        noise = landscape.window_noise if noise is None else noise
        objective = _ReplayObjective(landscape, target, noise, seed)
        study.optimize(
            objective,
            n_trials=wanted,
            callbacks=[objective.stop_when_done],
            catch=(),
        )
    return ReplayResult(
        sampler=sampler_name,
        seed=seed,
        runs_to_target=objective.runs_to_target,
        proposals_to_target=objective.proposals_to_target,
        runs=objective.runs,
        proposals=objective.proposals,
        repeats=objective.repeats,
        runnable=landscape.runnable,
        best_found=objective.best_found,
        target=target,
        seconds_to_target=objective.seconds_to_target if landscape.timed else None,
        seconds=objective.seconds,
        grid_seconds=landscape.grid_seconds(),
    )


def replay_probe(
    landscape: Landscape,
    seed: int,
    target_fraction: float = TARGET_FRACTION,
    noise: float | None = None,
    everywhere: bool = True,
) -> ReplayResult:
    """Search the landscape as `autotune search` (the probe-first strategy) would: each step of
    `ProbePlan` meets the landscape's recorded outcome instead of a run. A probe costs the
    point's setup and `PROBE_SECONDS` (`LandscapePoint.probe_seconds`); a run of numerics not
    judged before costs its recorded full run (or, stopped early because it cannot win, its
    setup and --min-measure-seconds), one of judged numerics its setup and --min-measure-
    seconds. Every window (the reference's too) is seen through ``noise``, drawn with
    ``seed``. A configuration counts as found once a run of it is scored within the budget,
    at its true throughput.

    Raises:
        UserError: The landscape misses configurations of its space or has no feasible point.
    """
    target = _target(landscape, target_fraction)
    noise = landscape.window_noise if noise is None else noise
    rng = random.Random(seed)
    budget, minimum = landscape.max_accuracy_loss, landscape.min_measure_seconds
    grid = landscape.space.grid()

    def option_of(settings: dict[str, Any]) -> ProbeOption | None:
        try:
            point = landscape.lookup(settings)
        except UserError:
            return None  # settings the space cannot express (an inactive setting changed)
        if not point.runnable:
            return None  # the tool's rules skip it without a run, and the planner never asks
        return ProbeOption(point.key, landscape.numerics_key_of(settings), point.settings)

    def neighbours(settings: Any, distance: int) -> list[ProbeOption]:
        return options_at_distance(grid, settings, distance, option_of)

    reference = option_of(landscape.reference)
    assert reference is not None
    # The reference's recorded run was the search's first: a cold launch, and two seeds. Its
    # probes cost what a probe of its layout costs on a warm group.
    layout = landscape.reference.get("processes", 1)
    reference_probe = statistics.median(
        p.probe_seconds(PROBE_SECONDS, minimum)
        for p in landscape.points
        if p.status == OK and p.key != reference.key and p.settings.get("processes", 1) == layout
    )
    plan = ProbePlan(reference, neighbours, everywhere)
    groups = _WarmGroups()
    timings: list[ProbeTiming] = []
    judged: set[str] = set()
    seconds, best_found, best_seen = 0.0, 0.0, 0.0
    runs_to_target: int | None = None
    seconds_to_target: float | None = None
    while runs_to_target is None:
        step = plan.next_step(timings)
        if step is None:
            break
        point = landscape.lookup(dict(step.option.settings))
        timing, cost = _replayed(point, step, judged, budget, minimum)
        if step.kind == "probe" and step.option.key == reference.key:
            cost = reference_probe
        cost += groups.cost(step.option.settings.get("processes", 1))
        seen = timing.rate * math.exp(rng.gauss(0.0, noise)) if timing.rate else None
        if timing.kind == "scored" and step.option.key != reference.key:
            if seen is not None and best_seen and seen < best_seen * (1 - CANNOT_WIN_MARGIN):
                timing = dataclasses.replace(timing, kind="stopped", feasible=None)
                cost = point.timed_seconds(minimum)
        seconds += cost
        timings.append(dataclasses.replace(timing, rate=seen))
        if timing.kind == "scored":
            judged.add(step.option.numerics)
            if timing.feasible:
                best_seen = max(best_seen, seen or 0.0)
                best_found = max(best_found, float(timing.rate or 0.0))
                if best_found >= target:
                    runs_to_target, seconds_to_target = len(timings), seconds
    return ReplayResult(
        sampler="probe",
        seed=seed,
        runs_to_target=runs_to_target,
        proposals_to_target=runs_to_target,
        runs=len(timings),
        proposals=len(timings),
        repeats=0,
        runnable=landscape.runnable,
        best_found=best_found,
        target=target,
        seconds_to_target=seconds_to_target if landscape.timed else None,
        seconds=seconds,
        grid_seconds=landscape.grid_seconds(),
    )


def _replayed(
    point: LandscapePoint, step: ProbeStep, judged: set[str], budget: float, minimum: float
) -> tuple[ProbeTiming, float]:
    """What the tool records for one step on ``point``, and its wall time (before noise)."""
    option = step.option
    probe_cost = point.probe_seconds(PROBE_SECONDS, minimum)
    if point.status != OK:
        cost = point.full_seconds() if step.kind == "run" else probe_cost
        return ProbeTiming(option.key, option.numerics, "failed", settings=option.settings), cost
    if step.kind == "probe":
        timing = ProbeTiming(
            option.key, option.numerics, "probed", point.value(), settings=option.settings
        )
        return timing, probe_cost
    cost = point.timed_seconds(minimum) if option.numerics in judged else point.full_seconds()
    feasible = point.is_feasible(budget)
    timing = ProbeTiming(
        option.key, option.numerics, "scored", point.value(), feasible, option.settings
    )
    return timing, cost


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation, as numpy's default."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(results: Iterable[ReplayResult]) -> dict[str, dict[str, Any]]:
    """Runs-to-target statistics per sampler, in the order samplers first appear.

    For each sampler: ``seeds`` replayed, ``reached`` (how many got to the target),
    ``runnable``, and over the seeds that reached it ``median``, ``p25``, ``p75``, ``p90``,
    ``mean``, ``min``, ``max`` runs and ``median_fraction`` of the runnable points (None where
    none reached it). The median alone hides the tail: a sampler that models the results and
    random search can share a median while random's worst quarter needs twice the runs.
    """
    by_sampler: dict[str, list[ReplayResult]] = {}
    for result in results:
        by_sampler.setdefault(result.sampler, []).append(result)
    summary: dict[str, dict[str, Any]] = {}
    for sampler, replays in by_sampler.items():
        runs = [float(r.runs_to_target) for r in replays if r.runs_to_target is not None]
        runnable = replays[0].runnable
        stats: dict[str, Any] = {"seeds": len(replays), "reached": len(runs), "runnable": runnable}
        if runs:
            median = statistics.median(runs)
            stats.update(
                median=median,
                p25=percentile(runs, 25),
                p75=percentile(runs, 75),
                p90=percentile(runs, 90),
                mean=statistics.mean(runs),
                min=min(runs),
                max=max(runs),
                median_fraction=median / runnable,
            )
        else:
            stats.update(
                dict.fromkeys(("median", "p25", "p75", "p90", "mean", "min", "max")),
                median_fraction=None,
            )
        # A seed that never reached the target counts as slower than every seed that did.
        seconds = [
            math.inf if r.seconds_to_target is None else r.seconds_to_target for r in replays
        ]
        timed = replays[0].seconds_to_target is not None or any(
            r.seconds_to_target is not None for r in replays
        )
        median = statistics.median(seconds) if timed else math.inf
        p90 = percentile(seconds, 90) if timed else math.inf
        grid = replays[0].grid_seconds
        stats.update(
            median_seconds=median if math.isfinite(median) else None,
            p90_seconds=p90 if math.isfinite(p90) else None,
            grid_seconds=grid,
            median_seconds_fraction=median / grid if math.isfinite(median) and grid else None,
        )
        summary[sampler] = stats
    return summary
