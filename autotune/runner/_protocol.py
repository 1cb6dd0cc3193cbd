"""The files the orchestrator and the ranks talk through: a trial's plan (``plan.json``, written
by ``run_trial``, read by the harness), the result and failure files the harness writes beside
it, and the request that ends a warm group. Both sides import this module and nothing of each
other."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autotune._plan import TrialConfig

PLAN_FILE = "plan.json"
RESULT_FILE = "result.json"
FAILURE_GLOB = "failure.rank*.json"
LOG_FILE = "log.txt"
STOP = "stop"
"""The request that ends a warm group."""


def failure_file(rank: int) -> str:
    """The file a failing rank writes its one-line reason to."""
    return f"failure.rank{rank}.json"


@dataclasses.dataclass(frozen=True)
class AdaptiveStop:
    """When the step-time estimate counts as stable, and how long throughput is timed.

    Attributes:
        rel_halfwidth: Stable once the 95% interval of the mean step time is within this
            fraction of the mean.
        min_steps: Measured steps before stability is first checked.
        min_seconds: Throughput is timed over at least this long (more steps are run when the
            budget's steps take less).
        cannot_win_below: Samples/s the run must be able to reach; once it has timed
            ``min_seconds`` and the 95% interval of its mean step time puts its throughput
            below this, it cannot win: it stops, unevaluated. None trains the whole budget.
        max_seconds: Without the metric, timing stops after this long even where the step
            time is not stable yet (a probe: its noise is judged by timing it again). None
            times until stable or the budget's end.
    """

    rel_halfwidth: float
    min_steps: int
    min_seconds: float = 0.0
    cannot_win_below: float | None = None
    max_seconds: float | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> AdaptiveStop | None:
        """From ``run_trial``'s ``adaptive`` argument (``{"rel_halfwidth": ..., ...}``)."""
        if not values:
            return None
        return cls(
            rel_halfwidth=float(values["rel_halfwidth"]),
            min_steps=int(values["min_steps"]),
            min_seconds=float(values.get("min_seconds", 0.0)),
            cannot_win_below=_float_or_none(values.get("cannot_win_below")),
            max_seconds=_float_or_none(values.get("max_seconds")),
        )


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """Everything the ranks need to run one trial; frozen, written once as ``plan.json``.

    Attributes:
        model_path: The user's model file.
        config: The trial's configuration (settings, learning rate, optimizer).
        ds_config: The DeepSpeed config it becomes.
        train_samples: The fixed sample budget.
        seeds: Training seeds; the first seed's run is measured.
        warmup_steps: Optimizer steps before timing starts.
        threads_per_rank: Compute threads for each rank (CPU), or None.
        partition_bounds: Pipeline stage boundaries to build, or None for DeepSpeed's method.
        need_metric: False when only throughput is wanted (the metric is known).
        adaptive: When to call the step time stable, or None to time the whole budget.
        measure_noise: Whether rank 0 measures the gradient noise after training (the
            reference's first seed).
    """

    model_path: str
    config: TrialConfig
    ds_config: dict[str, Any]
    train_samples: int
    seeds: tuple[int, ...]
    warmup_steps: int
    threads_per_rank: int | None
    partition_bounds: tuple[int, ...] | None
    need_metric: bool
    adaptive: AdaptiveStop | None
    measure_noise: bool = False

    @property
    def budget_steps(self) -> int:
        """Optimizer steps that fit the sample budget."""
        return self.train_samples // self.config.global_batch_size

    @property
    def pipeline(self) -> bool:
        return self.config.pipeline_stages > 1

    def for_later_seed(self) -> TrialPlan:
        """The plan for a seed after the first: it only gives the metric's noise, so its
        throughput is not kept and its window is not lengthened."""
        return dataclasses.replace(self, adaptive=None, measure_noise=False)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialPlan:
        bounds = data["partition_bounds"]
        return cls(
            model_path=str(data["model_path"]),
            config=TrialConfig(**data["config"]),
            ds_config=dict(data["ds_config"]),
            train_samples=int(data["train_samples"]),
            seeds=tuple(int(seed) for seed in data["seeds"]),
            warmup_steps=int(data["warmup_steps"]),
            threads_per_rank=data["threads_per_rank"],
            partition_bounds=tuple(int(b) for b in bounds) if bounds else None,
            need_metric=bool(data["need_metric"]),
            adaptive=AdaptiveStop.from_dict(data["adaptive"]),
            measure_noise=bool(data.get("measure_noise", False)),
        )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def read(cls, path: Path) -> TrialPlan:
        return cls.from_json(json.loads(path.read_text()))
