"""Landscapes: every configuration of a small space measured once, so samplers can be compared
by replaying their searches without running anything.

A landscape is recorded from a finished grid study (`autotune search --sampler grid`), saved
as JSON, and replayed with each sampler exactly as `autotune search` would drive it: the same
sampler construction, the same `suggest`, the reference enqueued first, then the same random
start-up among runnable configurations (`enqueue_startup`), the same constraints, and the same
rule that a repeated configuration or one that cannot run costs no run
(`benchmarks/sampler_replay.py`). What a replay measures is how many runs a sampler needs
before its best feasible configuration reaches a fraction (95%) of the best feasible
throughput in the whole grid.

A benchmark helper, not part of the product: `benchmarks/sampler_efficiency.py` records
landscapes with it and replays them.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from autotune._errors import UserError
from autotune._plan import LR_SCALINGS, TrialConfig
from autotune._records import (
    EVAL_SECONDS,
    FAILED,
    INFEASIBLE,
    OK,
    RAN,
    STUDY_LR_SCALING,
    STUDY_MACHINE,
    STUDY_MAX_ACCURACY_LOSS,
    STUDY_MODEL,
    STUDY_SPACE,
    TRAIN_SECONDS,
    WALL_SECONDS,
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
)
from autotune.study import reference_trial, stored_confirmations, throughput_runs

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
        wall_seconds: The whole run's wall time, when it ran (recorded with
            --no-accuracy-reuse and --no-early-stop, so it trained and evaluated in full).
        setup_seconds: Of that, what came before training: the launch or the warm group's
            hand-over, the engine and the loaders (the wall time less training and eval).
        train_seconds: Of that, the training loop over the sample budget.
    """

    key: str
    settings: dict[str, Any]
    status: str
    throughput: float | None = None
    accuracy_loss: float | None = None
    wall_seconds: float | None = None
    setup_seconds: float | None = None
    train_seconds: float | None = None

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

    @property
    def timed(self) -> bool:
        """Whether the point knows what its run cost (a landscape recorded with times)."""
        return self.wall_seconds is not None

    def full_seconds(self) -> float:
        """What a run that trains the budget and evaluates costs: its recorded wall time."""
        return float(self.wall_seconds or 0.0)

    def timed_seconds(self, min_seconds: float) -> float:
        """What a throughput-only run costs (a reused metric, or a run stopped because it
        cannot win): the setup, then training until ``min_seconds`` are timed (or the budget
        ends), no eval."""
        setup, train = self.setup_seconds or 0.0, self.train_seconds or 0.0
        return min(self.full_seconds(), setup + min(train, min_seconds))

    def probe_seconds(self, window: float, min_seconds: float) -> float:
        """What a probe costs: the run's own setup (the recorded setup less the timing past
        the budget that ``min_seconds`` added), then ``window`` of training, no eval."""
        setup, train = self.setup_seconds or 0.0, self.train_seconds or 0.0
        return max(0.0, setup - max(0.0, min_seconds - train)) + window

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
            wall_seconds=raw.get("wall_seconds"),
            setup_seconds=raw.get("setup_seconds"),
            train_seconds=raw.get("train_seconds"),
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
        min_measure_seconds: The search's --min-measure-seconds: how long a throughput-only
            run times (`LandscapePoint.timed_seconds`).
        window_noise: The spread of one timed window: the standard deviation of the log of
            the reference's windows timed again and again (0 when not recorded).
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
    min_measure_seconds: float = 3.0
    window_noise: float = 0.0

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

    def numerics_key_of(self, settings: dict[str, Any]) -> str:
        """The numerics key `autotune search` gives these settings (items of one length, as
        in the recorded models)."""
        return TrialConfig.from_settings(
            settings, self.optimizer, int(self.reference["micro_batch_size"]), self.lr_scaling
        ).numerics_key()

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

    @property
    def timed(self) -> bool:
        """Whether every point that runs knows its cost, so replays can count wall time."""
        return all(point.timed for point in self.points if point.runnable)

    def grid_seconds(self) -> float:
        """What an exhaustive grid of full runs takes: every runnable point's wall time."""
        return sum(point.full_seconds() for point in self.points if point.runnable)

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
            "min_measure_seconds": self.min_measure_seconds,
            "window_noise": self.window_noise,
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
                min_measure_seconds=float(raw.get("min_measure_seconds", 3.0)),
                window_noise=float(raw.get("window_noise", 0.0)),
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
    min_measure_seconds: float = 3.0,
) -> Landscape:
    """A landscape from a finished grid study of ``space``.

    Each configuration's first trial that is not a repeat gives its point. The budget, the
    learning-rate rule and the machine come from the study; the window noise from the
    reference's windows when the study timed it again (its confirmation runs, `window_noise`).

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
        min_measure_seconds=min_measure_seconds,
        window_noise=window_noise(study),
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
            f"{len(points) + len(missing)} configurations; run `autotune search --sampler grid "
            f"--no-early-stop` on it again with --n-trials {len(points) + len(missing)} or more "
            "(a run stopped early has no accuracy to record)."
        )
    return landscape


def window_noise(study: optuna.Study) -> float:
    """The standard deviation of the log of the reference's timed windows (its own and its
    confirmation runs): how much one window of the same configuration moves on this machine;
    0 with fewer than 3 windows."""
    reference = reference_trial(study)
    if reference is None:
        return 0.0
    windows = throughput_runs(reference.user_attrs, reference.number, stored_confirmations(study))
    logs = [math.log(w) for w in windows if w > 0]
    return statistics.stdev(logs) if len(logs) >= 3 else 0.0


def _point_of(study: optuna.Study, record: TrialRecord, empty: Landscape) -> LandscapePoint | None:
    """The point a trial of a grid study measured; None for a repeat.

    Raises:
        UserError: The trial ran another model file's reference or learning rate.
    """
    if record.status not in STATUSES:
        return None
    key = empty.key_of(record.settings)
    if record.is_reference and key != empty.key_of(empty.reference):
        raise UserError(
            f"Study '{study.study_name}' ran the reference {record.settings}, "
            "not this model file's; pass the --model it was run with."
        )
    if key != (record.config_key or key):
        raise UserError(
            f"Study '{study.study_name}' trial {record.number} has another learning rate than "
            "this model file's optimizer gives; pass the --model it was run with."
        )
    ok = record.is_ok
    wall, train, evaluation = (
        record.get(WALL_SECONDS),
        record.get(TRAIN_SECONDS),
        record.get(EVAL_SECONDS),
    )
    setup = None
    if wall is not None and train is not None and evaluation is not None:
        setup = max(0.0, float(wall) - float(train) - float(evaluation))
    return LandscapePoint(
        key,
        record.settings,
        str(record.status),
        record.throughput if ok else None,
        record.accuracy_loss if ok else None,
        wall_seconds=None if wall is None else float(wall),
        setup_seconds=setup,
        train_seconds=None if train is None else float(train),
    )
