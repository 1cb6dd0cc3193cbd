"""Landscapes: every configuration of a small space measured once, so samplers can be compared
by replaying their searches without running anything.

A landscape is recorded from a finished grid study (`autotune search --sampler grid`), saved
as JSON, and replayed with each sampler exactly as `autotune search` would drive it: the same
sampler construction, the same `suggest`, the reference enqueued first, then the same random
start-up among runnable configurations (`enqueue_startup`), the same constraints, and the same
rule that a repeated configuration or one that cannot run costs no run. What a
replay measures is how many runs a sampler needs before its best feasible configuration
reaches a fraction (95%) of the best feasible throughput in the whole grid.

A benchmark helper, not part of the product: `benchmarks/sampler_efficiency.py` records and
replays landscapes with it, through the public names of `autotune.study` only.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math
import statistics
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import optuna

from autotune._errors import UserError
from autotune._plan import LR_SCALINGS, TrialConfig
from autotune._records import (
    ACCURACY_LOSS,
    CONFIG_KEY,
    FAILED,
    INFEASIBLE,
    OK,
    RAN,
    SETTINGS,
    STATUS,
    STUDY_LR_SCALING,
    STUDY_MACHINE,
    STUDY_MAX_ACCURACY_LOSS,
    STUDY_MODEL,
    STUDY_SPACE,
    THROUGHPUT,
    TrialRecord,
)
from autotune._score import (
    DEFAULT_MAX_ACCURACY_LOSS,
    constraints_for_no_run,
    constraints_for_run,
    is_feasible,
    validate_budget,
)
from autotune._space import (
    PARAMETERS,
    IntRange,
    SearchSpace,
    fill_settings,
    record_reference,
    suggest,
)
from autotune.study import ASKS_PER_RUN, enqueue_reference, enqueue_startup, make_sampler

STATUSES = (OK, INFEASIBLE, FAILED)
"""A point ran and was measured, could not run on the machine (no run), or ran and failed."""
RUNNABLE_STATUSES = RAN
"""Statuses that cost a run when the search first proposes the configuration."""
DEFAULT_OPTIMIZER: dict[str, Any] = {"type": "AdamW", "params": {"lr": 1e-3}}
TARGET_FRACTION = 0.95


@dataclasses.dataclass(frozen=True)
class LandscapePoint:
    """One configuration's recorded outcome.

    Attributes:
        key: The canonical configuration key (`TrialConfig.key()`).
        settings: The tuned settings, by parameter name.
        status: One of :data:`STATUSES`.
        throughput: Samples per second; set only when the status is "ok".
        accuracy_loss: Relative metric loss against the reference; set only when "ok".
    """

    key: str
    settings: dict[str, Any]
    status: str
    throughput: float | None = None
    accuracy_loss: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"point status must be one of {STATUSES}, got {self.status!r}")
        if self.status == OK and (self.throughput is None or self.accuracy_loss is None):
            raise ValueError(f"an 'ok' point needs a throughput and an accuracy loss: {self.key}")

    @property
    def runnable(self) -> bool:
        return self.status in RUNNABLE_STATUSES

    def constraints(self, max_accuracy_loss: float) -> dict[str, float]:
        """The Optuna constraints `autotune search` sets for this outcome."""
        if self.status != OK:
            return constraints_for_no_run()
        assert self.accuracy_loss is not None
        return constraints_for_run(self.accuracy_loss, max_accuracy_loss)

    def value(self) -> float:
        """The objective value `autotune search` returns for this outcome."""
        return float(self.throughput) if self.status == OK and self.throughput else 0.0

    def is_feasible(self, max_accuracy_loss: float) -> bool:
        return is_feasible(self.constraints(max_accuracy_loss))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LandscapePoint:
        return cls(
            key=raw["key"],
            settings=dict(raw["settings"]),
            status=raw["status"],
            throughput=raw.get("throughput"),
            accuracy_loss=raw.get("accuracy_loss"),
        )


def config_key(
    settings: dict[str, Any], optimizer: dict[str, Any], reference_batch: int, lr_scaling: str
) -> str:
    """The key `autotune search` gives these settings (learning rate scaled for the batch)."""
    return TrialConfig.from_settings(settings, optimizer, reference_batch, lr_scaling).key()


def reachable_settings(space: SearchSpace, reference: dict[str, Any]) -> list[dict[str, Any]]:
    """Every configuration a search over ``space`` can run: the reference, then each grid point
    as `suggest` would fill it in (inactive conditional settings take the reference value).
    Settings that differ only in an inactive setting appear once."""
    names = list(space.domains)
    grid = space.grid()
    found: dict[str, dict[str, Any]] = {json.dumps(reference, sort_keys=True): dict(reference)}
    for combination in itertools.product(*(grid[name] for name in names)):
        values = dict(zip(names, combination, strict=True))
        chosen = fill_settings(space, reference, functools.partial(_value_of, values))
        found.setdefault(json.dumps(chosen, sort_keys=True), chosen)
    return list(found.values())


def _value_of(values: dict[str, Any], name: str, _domain: Any) -> Any:
    return values[name]


def space_from_description(description: dict[str, Any], source: str) -> SearchSpace:
    """The inverse of `SearchSpace.describe()`."""
    domains: dict[str, tuple[Any, ...] | IntRange] = {}
    for name, domain in description.items():
        if isinstance(domain, dict):
            domains[name] = IntRange(domain["low"], domain["high"], domain.get("log", False))
        else:
            domains[name] = tuple(domain)
    return SearchSpace(domains, source)


@dataclasses.dataclass(frozen=True)
class Landscape:
    """A small space measured in full on one machine.

    Attributes:
        space: The space the grid covered.
        reference: The reference settings (what the model file runs today).
        points: One outcome per configuration key.
        max_accuracy_loss: The accuracy budget the study ran with.
        optimizer: The model file's optimizer; its learning rate enters the keys.
        lr_scaling: The study's learning-rate rule; it enters the keys too.
        machine: The machine the points were measured on, for the header of a benchmark.
        model: The model file's name.
    """

    space: SearchSpace
    reference: dict[str, Any]
    points: tuple[LandscapePoint, ...]
    max_accuracy_loss: float = DEFAULT_MAX_ACCURACY_LOSS
    optimizer: dict[str, Any] = dataclasses.field(
        default_factory=lambda: copy.deepcopy(DEFAULT_OPTIMIZER)
    )
    lr_scaling: str = "sqrt"
    machine: str = ""
    model: str = ""

    def __post_init__(self) -> None:
        problem = validate_budget(self.max_accuracy_loss)
        if problem:
            raise ValueError(problem)
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr_scaling must be one of {LR_SCALINGS}, got {self.lr_scaling!r}")
        missing = [name for name in PARAMETERS if name not in self.reference]
        if missing:
            raise ValueError(f"the reference lacks {', '.join(missing)}")
        keys: set[str] = set()
        for point in self.points:
            if point.key in keys:
                raise ValueError(f"two points share the key {point.key}")
            keys.add(point.key)
            if self.key_of(point.settings) != point.key:
                raise ValueError(
                    f"point {point.key} does not match its settings under this optimizer and "
                    f"lr_scaling (key {self.key_of(point.settings)})"
                )

    @classmethod
    def from_measure(
        cls,
        space: SearchSpace,
        reference: dict[str, Any],
        measure: Callable[[dict[str, Any]], tuple[str, float | None, float | None]],
        **fields: Any,
    ) -> Landscape:
        """A landscape of every reachable configuration, each measured by
        ``measure(settings) -> (status, throughput, accuracy_loss)``; for synthetic landscapes.
        ``fields`` are the other attributes (max_accuracy_loss, optimizer, ...)."""
        empty = cls(space, reference, (), **fields)
        points: dict[str, LandscapePoint] = {}
        for settings in reachable_settings(space, reference):
            key = empty.key_of(settings)
            if key not in points:
                normalised = _normalised(settings, empty)
                status, throughput, loss = measure(normalised)
                points[key] = LandscapePoint(key, normalised, status, throughput, loss)
        return dataclasses.replace(empty, points=tuple(points.values()))

    def key_of(self, settings: dict[str, Any]) -> str:
        return config_key(
            settings, self.optimizer, int(self.reference["micro_batch_size"]), self.lr_scaling
        )

    @functools.cached_property
    def _index(self) -> dict[str, LandscapePoint]:
        return {point.key: point for point in self.points}

    def lookup(self, settings: dict[str, Any]) -> LandscapePoint:
        """The recorded outcome of these settings.

        Raises:
            UserError: The landscape does not hold them.
        """
        key = self.key_of(settings)
        point = self._index.get(key)
        if point is None:
            raise UserError(
                f"The landscape holds no point for {key}; record the full grid of its space "
                "(autotune search --sampler grid) and convert it again."
            )
        return point

    def missing(self) -> list[dict[str, Any]]:
        """Reachable configurations the landscape does not hold; empty for a full grid."""
        return [
            settings
            for settings in reachable_settings(self.space, self.reference)
            if self.key_of(settings) not in self._index
        ]

    @property
    def runnable(self) -> int:
        """Points that cost a run when first proposed (ok or failed)."""
        return sum(point.runnable for point in self.points)

    def feasible_points(self) -> list[LandscapePoint]:
        return [p for p in self.points if p.is_feasible(self.max_accuracy_loss)]

    def best_feasible(self) -> LandscapePoint | None:
        """The fastest point that ran within the accuracy budget, or None."""
        return max(self.feasible_points(), key=lambda p: p.value(), default=None)

    def target_throughput(self, fraction: float = TARGET_FRACTION) -> float:
        """The throughput a replay must reach: ``fraction`` of the best feasible point's.

        Raises:
            UserError: No point is feasible, so there is nothing to reach.
        """
        best = self.best_feasible()
        if best is None:
            raise UserError(
                "The landscape has no feasible point (ok and within the accuracy budget); "
                "record it with a larger --max-accuracy-loss."
            )
        return fraction * best.value()

    def to_json(self) -> dict[str, Any]:
        return {
            "space": self.space.describe(),
            "reference": self.reference,
            "max_accuracy_loss": self.max_accuracy_loss,
            "optimizer": self.optimizer,
            "lr_scaling": self.lr_scaling,
            "machine": self.machine,
            "model": self.model,
            "points": [point.to_json() for point in self.points],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Landscape:
        """Read a landscape file.

        Raises:
            UserError: The file is missing or is not a landscape.
        """
        path = Path(path)
        if not path.is_file():
            raise UserError(
                f"Landscape file {path} does not exist; record one with "
                "`python benchmarks/sampler_efficiency.py --record`."
            )
        try:
            raw = json.loads(path.read_text())
            return cls(
                space=space_from_description(raw["space"], str(path)),
                reference=dict(raw["reference"]),
                points=tuple(LandscapePoint.from_json(p) for p in raw["points"]),
                max_accuracy_loss=float(raw["max_accuracy_loss"]),
                optimizer=raw.get("optimizer", copy.deepcopy(DEFAULT_OPTIMIZER)),
                lr_scaling=raw.get("lr_scaling", "sqrt"),
                machine=raw.get("machine", ""),
                model=raw.get("model", ""),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(
                f"{path} is not a landscape file ({exc}); record it again with "
                "`python benchmarks/sampler_efficiency.py --record`."
            ) from None


def _normalised(settings: dict[str, Any], landscape: Landscape) -> dict[str, Any]:
    return TrialConfig.from_settings(
        settings,
        landscape.optimizer,
        int(landscape.reference["micro_batch_size"]),
        landscape.lr_scaling,
    ).settings()


def landscape_from_study(
    study: optuna.Study,
    space: SearchSpace,
    reference: dict[str, Any],
    optimizer: dict[str, Any],
    *,
    model: str | None = None,
) -> Landscape:
    """A landscape from a finished grid study of ``space``.

    Each configuration's first trial that is not a repeat gives its point. The budget, the
    learning-rate rule and the machine come from the study.

    Args:
        study: A study `autotune search --sampler grid` ran to the end of its grid.
        space: The space it searched.
        reference: The model file's reference settings.
        optimizer: The model file's optimizer (its learning rate enters the keys).
        model: A name for the model; by default the study's model file name.

    Raises:
        UserError: The study ran another space or model, or does not cover the whole grid.
    """
    attrs = study.user_attrs
    if attrs.get(STUDY_SPACE) is not None and attrs[STUDY_SPACE] != space.describe():
        raise UserError(
            f"Study '{study.study_name}' searched {attrs[STUDY_SPACE]}, not the space in "
            f"{space.source}; pass the --space it was run with."
        )
    empty = Landscape(
        space,
        dict(reference),
        (),
        max_accuracy_loss=float(attrs.get(STUDY_MAX_ACCURACY_LOSS, DEFAULT_MAX_ACCURACY_LOSS)),
        optimizer=copy.deepcopy(optimizer),
        lr_scaling=str(attrs.get(STUDY_LR_SCALING, "sqrt")),
        machine=str(attrs.get(STUDY_MACHINE, "")),
        model=model if model is not None else Path(str(attrs.get(STUDY_MODEL, ""))).name,
    )
    points: dict[str, LandscapePoint] = {}
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        point = _point_of(study, TrialRecord.of(trial), empty)
        # A repeat has none (its configuration has a trial of its own); of two workers that
        # ran the same configuration, the first is kept.
        if point is not None and point.key not in points:
            points[point.key] = point
    landscape = dataclasses.replace(empty, points=tuple(points.values()))
    missing = landscape.missing()
    if missing:
        raise UserError(
            f"Study '{study.study_name}' covers {len(points)} of the space's "
            f"{len(points) + len(missing)} configurations; run `autotune search --sampler grid` "
            f"on it again with --n-trials {len(points) + len(missing)} or more."
        )
    return landscape


def _point_of(study: optuna.Study, record: TrialRecord, empty: Landscape) -> LandscapePoint | None:
    """The point a trial of a grid study measured; None for a repeat.

    Raises:
        UserError: The trial ran another model file's reference or learning rate.
    """
    status = record.get(STATUS)
    if status not in STATUSES:
        return None
    settings = dict(record.get(SETTINGS))
    key = empty.key_of(settings)
    if record.is_reference and key != empty.key_of(empty.reference):
        raise UserError(
            f"Study '{study.study_name}' ran the reference {record.get(SETTINGS)}, "
            "not this model file's; pass the --model it was run with."
        )
    if key != record.get(CONFIG_KEY, key):
        raise UserError(
            f"Study '{study.study_name}' trial {record.number} has another learning rate than "
            "this model file's optimizer gives; pass the --model it was run with."
        )
    ok = status == OK
    return LandscapePoint(
        key,
        settings,
        status,
        float(record.get(THROUGHPUT)) if ok else None,
        float(record.get(ACCURACY_LOSS)) if ok else None,
    )


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

    @property
    def fraction(self) -> float | None:
        """Runs to the target as a fraction of the runnable points."""
        if self.runs_to_target is None:
            return None
        return self.runs_to_target / self.runnable


class _ReplayObjective:
    """`autotune search`'s objective with the landscape in place of the runs."""

    def __init__(self, landscape: Landscape, target: float) -> None:
        self.landscape, self.target = landscape, target
        self.seen: set[str] = set()
        self.runs = 0
        self.proposals = 0
        self.repeats = 0
        self.best_found = 0.0
        self.runs_to_target: int | None = None
        self.proposals_to_target: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        landscape = self.landscape
        if TrialRecord.of(trial).is_reference:
            settings = record_reference(trial, landscape.space, landscape.reference)
        else:
            settings = suggest(trial, landscape.space, landscape.reference)
        point = landscape.lookup(settings)
        self.proposals += 1
        for name, value in point.constraints(landscape.max_accuracy_loss).items():
            trial.set_constraint(name, value)
        if point.key in self.seen:
            self.repeats += 1
            return point.value()  # a repeat: the tool reuses the stored result, no run
        self.seen.add(point.key)
        if point.runnable:  # an infeasible point is recorded without launching anything
            self.runs += 1
        if point.is_feasible(landscape.max_accuracy_loss):
            self.best_found = max(self.best_found, point.value())
            if self.runs_to_target is None and self.best_found >= self.target:
                self.runs_to_target, self.proposals_to_target = self.runs, self.proposals
        return point.value()

    def stop_when_done(self, study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if self.runs_to_target is not None or self.runs >= self.landscape.runnable:
            study.stop()


def replay(
    landscape: Landscape,
    sampler_name: str,
    seed: int,
    max_proposals: int | None = None,
    target_fraction: float = TARGET_FRACTION,
) -> ReplayResult:
    """Search the landscape as `autotune search --sampler NAME --seed SEED` would.

    Stops once the best feasible throughput found reaches ``target_fraction`` of the
    landscape's best, once every runnable point has run, or after ``max_proposals``
    proposals (by default the tool's own cap: 25 per runnable point).

    Raises:
        UserError: The landscape misses configurations of its space or has no feasible point.
    """
    missing = landscape.missing()
    if missing:
        raise UserError(
            f"The landscape misses {len(missing)} configurations of its space (e.g. "
            f"{missing[0]}); record the full grid."
        )
    target = landscape.target_throughput(target_fraction)
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
        )
        objective = _ReplayObjective(landscape, target)
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
    )


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
        summary[sampler] = stats
    return summary
