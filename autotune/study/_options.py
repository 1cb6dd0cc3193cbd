"""What a search is asked to do: `SearchOptions` (the `autotune search` flags, validated on
construction) and the defaults they start from."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from autotune._cluster import LAUNCHERS
from autotune._errors import UserError
from autotune._plan import LR_SCALINGS
from autotune._score import DEFAULT_MAX_ACCURACY_LOSS, validate_budget
from autotune._space_files import default_space
from autotune.study._confirm import DEFAULT_CONFIRM

DEFAULT_SPACE = default_space()
DEFAULT_STORAGE = "sqlite:///trials/autotune.db"
DEFAULT_TRAIN_SAMPLES = 8192
DEFAULT_TRIAL_TIMEOUT = 300.0
SAMPLERS = ("probe", "tpe", "gp", "random", "grid")
"""The probe-first strategy (`autotune.study._probing`), then the Optuna samplers."""
ADAPTIVE = {"rel_halfwidth": 0.02, "min_steps": 5}
"""Throughput is stable once the 95% interval of the mean step time is within +-2%; a trial
whose metric is reused from the same numerics stops training there (once it has measured
``min_measure_seconds``)."""
UNLIMITED_RUNS = 1_000_000
"""The run limit of a search given --timeout and no --n-trials: the time ends it."""
DEFAULT_MIN_MEASURE_SECONDS = 3.0
"""A trial's throughput is timed over at least this much training (steps past the sample
budget run after the metric is taken): windows of a second or less measured this machine's
noise more than the configuration's speed, and replays of the export missed them by 12-13%."""


OBJECTIVES = ("samples", "tokens")
"""What a search maximises: samples/s, or real tokens/s (batches with ``input_ids``)."""
SCORINGS = ("goodput", "throughput")
"""How a run's rate is scored: times its batch's statistical efficiency, or plainly
(`autotune.study._goodput`)."""


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """Everything `search` needs; validated on construction.

    Attributes mirror the `autotune search` flags.
    """

    model: Path
    space: Path = DEFAULT_SPACE
    n_trials: int | None = None
    timeout: float | None = None
    trial_timeout: float = DEFAULT_TRIAL_TIMEOUT
    train_samples: int = DEFAULT_TRAIN_SAMPLES
    max_accuracy_loss: float = DEFAULT_MAX_ACCURACY_LOSS
    lr_scaling: str = "auto"
    lr_noise_scale: float | None = None
    sampler: str = "probe"
    study: str | None = None
    storage: str = DEFAULT_STORAGE
    seed: int = 0
    verdict_seeds: int = 1
    trials_dir: Path = Path("trials")
    reports_dir: Path = Path("reports")
    warm_workers: bool = True
    reuse_accuracy: bool = True
    early_stop: bool = True
    max_memory: float | None = None
    min_measure_seconds: float = DEFAULT_MIN_MEASURE_SECONDS
    confirm: int = DEFAULT_CONFIRM
    objective: str = "samples"
    scoring: str = "throughput"
    hostfile: Path | None = None
    launcher: str = "ssh"
    devices: tuple[int, ...] | None = None
    live: bool = False
    """Show the live line on stdout while a run is in progress, when stdout is a terminal
    (`autotune.study._live`); `autotune search` sets it unless given --no-live."""

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise UserError(problem)

    def _problem(self) -> str | None:
        """The first flag out of its range, as a sentence with the fix; None when all fit."""
        budget = validate_budget(self.max_accuracy_loss)
        if budget:
            return budget + "."
        if self.n_trials is None and self.timeout is None and self.sampler != "probe":
            return (
                f"Give --n-trials or --timeout with --sampler {self.sampler}: without either "
                "the search would not end."
            )
        if self.n_trials is not None and self.n_trials < 1:
            return f"--n-trials must be at least 1, got {self.n_trials}."
        if self.timeout is not None and not _positive(self.timeout):
            return f"--timeout must be a positive number of seconds, got {self.timeout}."
        if not _positive(self.trial_timeout):
            return f"--trial-timeout must be positive, got {self.trial_timeout}."
        if self.train_samples < 1:
            return f"--train-samples must be at least 1, got {self.train_samples}."
        if self.lr_scaling not in (*LR_SCALINGS, "auto"):
            return f"--lr-scaling must be one of auto, {', '.join(LR_SCALINGS)}."
        if self.lr_noise_scale is not None and not _positive(self.lr_noise_scale):
            return f"lr_noise_scale must be a positive batch size, got {self.lr_noise_scale}."
        if self.sampler not in SAMPLERS:
            return f"--sampler must be one of {', '.join(SAMPLERS)}."
        if self.max_memory is not None and not _positive(self.max_memory):
            return f"--max-memory must be a positive size, got {self.max_memory}."
        if not (math.isfinite(self.min_measure_seconds) and self.min_measure_seconds >= 0):
            return (
                "--min-measure-seconds must be a number of seconds, 0 or more, "
                f"got {self.min_measure_seconds}."
            )
        if self.objective not in OBJECTIVES:
            return f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective}."
        if self.scoring not in SCORINGS:
            return f"--scoring must be one of {', '.join(SCORINGS)}, got {self.scoring}."
        if self.verdict_seeds < 1:
            return f"--verdict-seeds must be at least 1 training seed, got {self.verdict_seeds}."
        if self.confirm < 0:
            return f"--confirm must be 0 or more configurations, got {self.confirm}."
        if self.devices is not None and not self.devices:
            return "--devices must name at least one device."
        if self.launcher not in LAUNCHERS:
            return f"--launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher}."
        return None

    @property
    def lr_rule(self) -> str:
        """The learning-rate rule the study runs with: ``--lr-scaling``, where ``auto`` is
        ``noise`` under goodput scoring (the rate its samples prediction assumes) and ``sqrt``
        otherwise. ``lr_noise_scale`` (Python API only) pins the B_noise of the ``noise`` rule
        instead of the reference's measured one, so that two studies train the same
        configurations (the verdicts benchmark)."""
        if self.lr_scaling != "auto":
            return self.lr_scaling
        return "noise" if self.scoring == "goodput" else "sqrt"

    @property
    def run_limit(self) -> int:
        """The runs the study may hold (probes count): --n-trials, or without it as many as
        the time allows or the probe-first strategy wants, `UNLIMITED_RUNS`."""
        return UNLIMITED_RUNS if self.n_trials is None else self.n_trials

    def budget(self) -> str:
        """The search's budget in words: ``12 runs``, ``600 s (--timeout)``, both, or
        ``until it is done`` (the probe-first strategy without either)."""
        if self.n_trials is None and self.timeout is None:
            return "until it is done"
        runs = None if self.n_trials is None else f"{self.n_trials} runs"
        time = None if self.timeout is None else f"{self.timeout:g} s (--timeout)"
        return " or ".join(part for part in (runs, time) if part) + (
            ", whichever comes first" if runs and time else ""
        )

    @property
    def study_name(self) -> str:
        return self.study or Path(self.model).stem


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0
