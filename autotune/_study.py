"""The study: an Optuna study in any storage whose trials are real DeepSpeed runs.

`search` is the top-level flow: check the inputs, open (or resume) the study, run the reference
as trial 0, let the sampler propose configurations until the study holds --n-trials runs, then
time the fastest again beside the reference (`_confirm`) and export the best.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from autotune import _score
from autotune._confirm import (
    CONFIRM_ROUNDS,
    DEFAULT_CONFIRM,
    confirm,
    reference_of,
)
from autotune._confirm import best_trial as _confirmed_best
from autotune._errors import UserError
from autotune._memory import (
    MemoryModel,
    estimate_rank_bytes,
    measure_footprint,
    memory_limit_bytes,
    memory_limit_source,
    why_over_memory,
)
from autotune._plan import LR_SCALINGS, Machine, TrialConfig, detect_machine, why_not_runnable
from autotune._space import (
    SearchSpace,
    default_space,
    describe_settings,
    load_space,
    random_runnable_settings,
    record_reference,
    sampled_params,
    suggest,
)
from autotune._task import Task, load_task
from autotune.pipeline import (
    LayerProfile,
    PartitionError,
    predicted_stage_seconds,
    profiled_partition,
)
from autotune.runner import ProfileCache, RunResult, WarmWorkers, prepare_deepspeed_ops, run_trial

DEFAULT_SPACE = default_space()
DEFAULT_STORAGE = "sqlite:///trials/autotune.db"
DEFAULT_TRAIN_SAMPLES = 8192
DEFAULT_TRIAL_TIMEOUT = 300.0
SAMPLERS = ("tpe", "gp", "random", "grid")
STARTUP_RUNS = 5
"""Runs (the reference included) before TPE or GP model what they have seen; until then they
try configurations drawn at random among those this machine can run, spread over each
setting's values (`enqueue_startup`). Optuna's default is 10, which in a 12-run search leaves
the model 2 runs. On the recorded digits landscape (40 configurations, 500 seeds each) TPE
needed a median of 9-10 runs to reach 95% of the best with 10 start-up runs, and 7 with these
5 (random search: 8); on a second one (80 configurations, the best one of a kind) neither
start-up beat random search (see the README)."""
_ASKS_PER_RUN = 25
"""Proposals that cost no run (repeats, configurations that cannot run) are cheap but not free;
a study stops after this many proposals per wanted run, which only a tiny space reaches."""
ADAPTIVE = {"rel_halfwidth": 0.02, "min_steps": 5}
"""Throughput is stable once the 95% interval of the mean step time is within +-2%; a trial
whose metric is reused from the same numerics stops training there (once it has measured
``min_measure_seconds``)."""
DEFAULT_MIN_MEASURE_SECONDS = 3.0
"""A trial's throughput is timed over at least this much training (steps past the sample
budget run after the metric is taken): windows of a second or less measured this machine's
noise more than the configuration's speed, and replays of the export missed them by 12-13%."""
_HEARTBEAT_SECONDS = 10
_GRACE_SECONDS = 60

# Names the study records so a resumed search can check it is the same experiment.
_STUDY_FIXED = ("model", "train_samples", "max_accuracy_loss", "lr_scaling", "seed")


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """Everything `search` needs; validated on construction.

    Attributes mirror the `autotune search` flags.
    """

    model: Path
    space: Path = DEFAULT_SPACE
    n_trials: int = 12
    timeout: float | None = None
    trial_timeout: float = DEFAULT_TRIAL_TIMEOUT
    train_samples: int = DEFAULT_TRAIN_SAMPLES
    max_accuracy_loss: float = _score.DEFAULT_MAX_ACCURACY_LOSS
    lr_scaling: str = "sqrt"
    sampler: str = "tpe"
    study: str | None = None
    storage: str = DEFAULT_STORAGE
    seed: int = 0
    trials_dir: Path = Path("trials")
    reports_dir: Path = Path("reports")
    warm_workers: bool = True
    reuse_accuracy: bool = True
    max_memory: float | None = None
    min_measure_seconds: float = DEFAULT_MIN_MEASURE_SECONDS
    confirm: int = DEFAULT_CONFIRM

    def __post_init__(self) -> None:
        problem = _score.validate_budget(self.max_accuracy_loss)
        if problem:
            raise UserError(problem + ".")
        if self.n_trials < 1:
            raise UserError(f"--n-trials must be at least 1, got {self.n_trials}.")
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            raise UserError(f"--timeout must be a positive number of seconds, got {self.timeout}.")
        if not (math.isfinite(self.trial_timeout) and self.trial_timeout > 0):
            raise UserError(f"--trial-timeout must be positive, got {self.trial_timeout}.")
        if self.train_samples < 1:
            raise UserError(f"--train-samples must be at least 1, got {self.train_samples}.")
        if self.lr_scaling not in LR_SCALINGS:
            raise UserError(f"--lr-scaling must be one of {', '.join(LR_SCALINGS)}.")
        if self.sampler not in SAMPLERS:
            raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}.")
        if self.max_memory is not None and not (
            math.isfinite(self.max_memory) and self.max_memory > 0
        ):
            raise UserError(f"--max-memory must be a positive size, got {self.max_memory}.")
        if not (math.isfinite(self.min_measure_seconds) and self.min_measure_seconds >= 0):
            raise UserError(
                "--min-measure-seconds must be a number of seconds, 0 or more, "
                f"got {self.min_measure_seconds}."
            )
        if self.confirm < 0:
            raise UserError(f"--confirm must be 0 or more configurations, got {self.confirm}.")

    @property
    def study_name(self) -> str:
        return self.study or Path(self.model).stem


def redact(url: str) -> str:
    """A storage URL safe to print: a password in the user part or the query becomes ***.

    Works on the text rather than through sqlalchemy, which would re-encode the URL.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        rest = f"{credentials.split(':', 1)[0]}:***@{host}"
    return scheme + sep + re.sub(r"(?i)(password=)[^&]*", r"\1***", rest)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage with heartbeats, so trials of a dead process are failed, not lost.

    Raises:
        UserError: The URL is malformed or the database cannot be reached.
    """
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if path.parent and str(path) != ":memory:":
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(
                    f"Cannot create the folder for {redact(url)}: {exc.strerror}."
                ) from None
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=_HEARTBEAT_SECONDS,
            grace_period=_GRACE_SECONDS,
        )
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        detail = detail.replace(url, redact(url)).rstrip(".")
        raise UserError(
            f"Cannot open the study storage {redact(url)}: {detail[:300]}. Check --storage "
            "(e.g. sqlite:///trials/autotune.db or postgresql://user:pass@host/db)."
        ) from None


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler that tolerates the enqueued reference trial.

    Optuna 5.0's GridSampler.after_trial reads the trial's grid_id, which an enqueued trial
    never gets, and raises KeyError when one grid point is left.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Any,
    ) -> None:
        if "grid_id" in study._storage.get_trial_system_attrs(trial._trial_id):
            super().after_trial(study, trial, state, values)
        elif not self._get_unvisited_grid_ids(study):
            study.stop()


def _make_sampler(
    name: str, seed: int, space_grid: dict[str, list[Any]]
) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, n_startup_trials=STARTUP_RUNS
        )
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=STARTUP_RUNS)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return _GridSampler(space_grid, seed=seed)


def enqueue_startup(
    study: optuna.Study,
    space: SearchSpace,
    reference: dict[str, Any],
    runnable: Callable[[dict[str, Any]], bool],
    sampler: str,
    seed: int,
    n_trials: int,
) -> int:
    """Queue the random start-up of a TPE or GP study after its reference: STARTUP_RUNS - 1
    distinct configurations drawn from those this machine can run (at most n_trials - 1; see
    `random_runnable_settings`). Returns how many were queued.

    The samplers' own start-up draws from the whole space, and a draw skipped without a run
    still counts towards it, as an infeasible point (the README tells what that cost once).
    """
    if sampler not in ("tpe", "gp"):
        return 0
    count = min(STARTUP_RUNS - 1, n_trials - 1)
    drawn = random_runnable_settings(space, reference, runnable, count, seed) if count > 0 else []
    for settings in drawn:
        study.enqueue_trial(sampled_params(space, settings), user_attrs={"role": "start-up"})
    return len(drawn)


def load_study(study: str | None, storage: str) -> optuna.Study:
    """Open an existing study for reading (export, report, trials).

    Args:
        study: Its name; may be None when the storage holds exactly one study.
        storage: An Optuna storage URL.

    Raises:
        UserError: The storage cannot be opened or holds no such study.
    """
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///") :]).exists():
        raise UserError(
            f"No study storage at {storage}; run `autotune search` first or pass --storage."
        )
    opened = open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(opened, include_best_trial=False)]
    if study is None and len(names) == 1:
        study = names[0]
    if study is None or study not in names:
        known = ", ".join(names) if names else "none"
        raise UserError(
            f"No study named '{study}' in {redact(storage)} (studies there: {known}). "
            "Pass --study and --storage as given to `autotune search`."
        )
    return optuna.load_study(study_name=study, storage=opened)


def runs_of(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that launched a real run (ok or failed), in order."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get("status") in ("ok", "failed")
    ]


def reference_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    return reference_of(
        study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    )


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The feasible trial with the highest speed-up over the reference (side by side in
    confirmation rounds where it has them; see `autotune._confirm`), or None."""
    return _confirmed_best(study)


class _Objective:
    """Runs one proposal: the reference, a repeat, a configuration that cannot run, or a run."""

    def __init__(
        self,
        options: SearchOptions,
        task: Task,
        machine: Machine,
        space: Any,
        study: optuna.Study,
        print_line: Callable[[str], None],
    ) -> None:
        self.options, self.task, self.machine, self.space = options, task, machine, space
        self.study, self.print_line = study, print_line
        self.reference_settings = task.reference_settings()
        self.trial_root = options.trials_dir / options.study_name
        self.profiles = ProfileCache(options.trials_dir / "profiles", machine)
        self.workers: WarmWorkers | None = None
        self.footprint = measure_footprint(task.model_file)
        self.adaptive = {**ADAPTIVE, "min_seconds": options.min_measure_seconds}

    def _config(self, trial: optuna.Trial) -> TrialConfig:
        if trial.user_attrs.get("role") == "reference":
            # The reference runs as the user runs it today, whatever the space allows.
            settings = record_reference(trial, self.space, self.reference_settings)
        else:
            settings = suggest(trial, self.space, self.reference_settings)
        return self._config_of(settings)

    def _config_of(self, settings: dict[str, Any]) -> TrialConfig:
        return TrialConfig.from_settings(
            settings,
            self.task.model_file.optimizer,
            self.task.model_file.batch_size,
            self.options.lr_scaling,
        )

    def can_run(self, settings: dict[str, Any]) -> bool:
        """Whether these settings pass the rules checked before a launch (not the memory
        pre-screen, which needs the configuration's footprint)."""
        return self._why_not_runnable(self._config_of(settings)) is None

    def _why_not_runnable(self, config: TrialConfig) -> str | None:
        return why_not_runnable(
            config,
            self.machine,
            self.options.train_samples,
            self.task.train_size,
            self.task.layer_types,
        )

    def _find_repeat(self, key: str) -> optuna.trial.FrozenTrial | None:
        for done in self.study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
        ):
            if (
                done.user_attrs.get("config_key") == key
                and done.user_attrs.get("status") != "repeat"
            ):
                return done
        return None

    def __call__(self, trial: optuna.Trial) -> float:
        role = trial.user_attrs.get("role", "search")
        config = self._config(trial)
        key = config.key()
        trial.set_user_attr("role", role)
        trial.set_user_attr("config_key", key)
        trial.set_user_attr("settings", config.settings())
        trial.set_user_attr("global_batch_size", config.global_batch_size)
        trial.set_user_attr("learning_rate", config.learning_rate)
        label = f"trial {trial.number:>3} [{describe_settings(config.settings())}]"

        earlier = self._find_repeat(key) if role != "reference" else None
        if earlier is not None:
            return self._copy(trial, earlier, label)

        reason = self._why_not_runnable(config)
        if reason is not None:
            return self._infeasible(trial, label, reason)
        over = self._over_memory(trial, config)
        # The reference runs whatever the prediction: it is what the user runs today.
        if over is not None and role != "reference":
            return self._infeasible(trial, label, over)
        profile = self._layer_profile(config, label) if config.pipeline_stages > 1 else None
        bounds: tuple[int, ...] | None = None
        if profile is not None and config.partition_method == "profile":
            try:
                partition = profiled_partition(
                    profile,
                    config,
                    memory_limit_bytes(self.machine, config.processes, self.options.max_memory),
                )
            except PartitionError as exc:
                return self._infeasible(trial, label, f"profile partition: {exc}")
            bounds = partition.bounds

        reused = self._same_numerics(config) if role != "reference" else None
        done_runs = len(runs_of(self.study))
        self.print_line(f"{label} running (run {done_runs + 1} of {self.options.n_trials})")
        directory = self.trial_root / f"trial_{trial.number:04d}"
        seeds = (
            [self.options.seed, self.options.seed + 1]
            if role == "reference"
            else [self.options.seed]
        )
        result = run_trial(
            config,
            self.machine,
            self.task.model_file.path,
            self.options.train_samples,
            seeds,
            directory,
            self.options.trial_timeout,
            partition_bounds=bounds,
            workers=self.workers,
            need_metric=reused is None,
            adaptive=self.adaptive,
        )
        trial.set_user_attr("numerics_key", config.numerics_key())
        trial.set_user_attr("launched", result.launched)
        if result.ok and reused is not None:
            # Only throughput was measured; the metric is the earlier trial's, same numerics.
            assert result.measurements is not None
            result.measurements["metric"] = reused.user_attrs["metric"]
            result.measurements["seed_metrics"] = [reused.user_attrs["metric"]]
            trial.set_user_attr("accuracy_reused_from", reused.number)
        trial.set_user_attr("trial_dir", str(directory))
        trial.set_user_attr("wall_seconds", result.wall_seconds)
        trial.set_user_attr("ds_config", config.ds_config())
        launch = config.launch_recipe(self.machine)
        if not result.ok:
            trial.set_user_attr("launch", launch)
            return self._failed(trial, result, label, role)
        used = (result.measurements or {}).get("partition")
        if used:
            # Whatever the method, the boundaries it produced rebuild the same pipeline
            # (autotune.build_pipeline_module), and the profile says how balanced they are.
            launch["partition_bounds"] = used
            if profile is not None:
                trial.set_user_attr(
                    "stage_predicted_seconds", list(predicted_stage_seconds(profile, config, used))
                )
        trial.set_user_attr("launch", launch)
        return self._scored(trial, result, label, role)

    def remeasure(
        self, trial: optuna.trial.FrozenTrial, name: str
    ) -> tuple[float | None, str | None]:
        """Time a finished trial's configuration again, throughput only, on the same pipeline
        boundaries: (samples/s, None), or (None, why the run failed)."""
        config = self._config_of(trial.user_attrs["settings"])
        result = run_trial(
            config,
            self.machine,
            self.task.model_file.path,
            self.options.train_samples,
            [self.options.seed],
            self.trial_root / name,
            self.options.trial_timeout,
            partition_bounds=trial.user_attrs.get("partition"),
            workers=self.workers,
            need_metric=False,
            adaptive=self.adaptive,
        )
        if not result.ok or result.measurements is None:
            return None, result.failure_reason
        return float(result.measurements["throughput"]), None

    def _over_memory(self, trial: optuna.Trial, config: TrialConfig) -> str | None:
        """Why ``config`` is predicted not to fit in memory, or None: the estimate (parameters,
        gradients, optimizer state by ZeRO stage, measured activations) plus what finished
        trials showed it misses."""
        estimate = estimate_rank_bytes(self.footprint, config, self.machine.accelerator)
        pairs = [
            (t.user_attrs["memory_estimate_bytes"], t.user_attrs["peak_memory_bytes"])
            for t in self.study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
            )
            if t.user_attrs.get("status") == "ok"
            and t.user_attrs.get("memory_estimate_bytes") is not None
            and t.user_attrs.get("peak_memory_bytes") is not None
        ]
        prediction = MemoryModel.from_pairs(pairs).predict(estimate)
        trial.set_user_attr("memory_estimate_bytes", estimate.total)
        trial.set_user_attr("memory_predicted_bytes", prediction)
        limit = memory_limit_bytes(self.machine, config.processes, self.options.max_memory)
        source = memory_limit_source(self.machine, self.options.max_memory)
        return why_over_memory(prediction, limit, estimate, source)

    def _same_numerics(self, config: TrialConfig) -> optuna.trial.FrozenTrial | None:
        """An earlier trial that measured the metric of the same numerics, if any."""
        if not self.options.reuse_accuracy:
            return None
        key = config.numerics_key()
        for done in self.study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
        ):
            attrs = done.user_attrs
            if (
                attrs.get("status") == "ok"
                and attrs.get("numerics_key") == key
                and attrs.get("accuracy_reused_from") is None
                and attrs.get("metric") is not None
            ):
                return done
        return None

    def _infeasible(self, trial: optuna.Trial, label: str, reason: str) -> float:
        trial.set_user_attr("status", "infeasible")
        trial.set_user_attr("reason", reason)
        for name, value in _score.constraints_for_no_run().items():
            trial.set_constraint(name, value)
        self.print_line(f"{label} skipped: {reason}")
        return 0.0

    def _layer_profile(self, config: TrialConfig, label: str) -> LayerProfile:
        """The layer profile for a pipeline trial's micro-batch and precision (measured once
        per study storage folder, then read from the cache)."""
        if not self.profiles.is_cached(self.task.model_file, config):
            self.print_line(
                f"{label} profiling each layer (micro-batch {config.micro_batch_size}, "
                f"{config.precision}); cached for later trials"
            )
        return self.profiles.profile(self.task.model_file, config)

    def _failed(self, trial: optuna.Trial, result: RunResult, label: str, role: str) -> float:
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("failure_reason", result.failure_reason)
        trial.set_user_attr("reason", result.failure_reason)
        for name, value in _score.constraints_for_no_run().items():
            trial.set_constraint(name, value)
        self.print_line(f"{' ' * 10}-> failed: {result.failure_reason}")
        if role == "reference":
            raise UserError(
                f"The reference configuration (what the model file runs today) failed: "
                f"{result.failure_reason}. Every trial is scored against it; fix the model file "
                f"or raise --trial-timeout. Its log: {result.directory / 'log.txt'}"
            )
        return 0.0

    def _scored(self, trial: optuna.Trial, result: RunResult, label: str, role: str) -> float:
        measured = result.measurements or {}
        for name in (
            "throughput",
            "metric",
            "seed_metrics",
            "peak_memory_bytes",
            "peak_memory_per_rank",
            "step_time_p50",
            "step_time_p90",
            "step_time_spread",
            "measured_seconds",
            "train_seconds",
            "eval_seconds",
            "samples_trained",
            "steps",
            "budget_steps",
            "measured_steps",
            "extra_steps",
            "stable_after_steps",
            "partition",
            "stage_compute_seconds",
            "stage_comm_seconds",
            "skipped_steps",
            "loss_scale",
        ):
            trial.set_user_attr(name, measured.get(name))
        if role == "reference":
            noise = _score.reference_noise(measured["seed_metrics"])
            self.study.set_user_attr("reference_metric", measured["metric"])
            self.study.set_user_attr("reference_noise", noise)
            self.study.set_user_attr("reference_number", trial.number)
        reference_metric = self._reference_metric()
        loss = _score.accuracy_loss(reference_metric, measured["metric"])
        constraints = _score.constraints_for_run(loss, self.options.max_accuracy_loss)
        for name, value in constraints.items():
            trial.set_constraint(name, value)
        trial.set_user_attr("accuracy_loss", loss)
        trial.set_user_attr("status", "ok")
        verdict = "feasible" if _score.is_feasible(constraints) else "over the accuracy budget"
        self.print_line(
            f"{' ' * 10}-> {measured['throughput']:.1f} samples/s, accuracy loss "
            f"{loss * 100:+.2f}%, {verdict} ({result.wall_seconds:.0f} s)"
        )
        return float(measured["throughput"])

    def _reference_metric(self) -> float:
        # Another worker of a shared study may still be running the reference.
        deadline = time.monotonic() + self.options.trial_timeout * 3
        while True:
            value = self.study.user_attrs.get("reference_metric")
            if value is not None:
                return float(value)
            if time.monotonic() > deadline:
                raise UserError("The study has no reference result yet; run the search again.")
            time.sleep(2)

    def _copy(self, trial: optuna.Trial, earlier: optuna.trial.FrozenTrial, label: str) -> float:
        for name, value in earlier.user_attrs.items():
            if name not in ("role", "settings", "config_key"):
                trial.set_user_attr(name, value)
        trial.set_user_attr("status", "repeat")
        trial.set_user_attr("repeat_of", earlier.number)
        for name, value in earlier.constraints.items():
            trial.set_constraint(name, value)
        self.print_line(f"{label} repeat of trial {earlier.number}: stored result reused")
        return float(earlier.value or 0.0)


def _check_resume(study: optuna.Study, options: SearchOptions, task: Task) -> None:
    wanted = {
        "model": str(task.model_file.path),
        "train_samples": options.train_samples,
        "max_accuracy_loss": options.max_accuracy_loss,
        "lr_scaling": options.lr_scaling,
        "seed": options.seed,
    }
    stored = study.user_attrs
    if not stored.get("model"):
        for name, value in wanted.items():
            study.set_user_attr(name, value)
        study.set_user_attr("metric_name", task.model_file.metric_name)
        study.set_user_attr("eval_source", task.model_file.eval_source)
        return
    for name in _STUDY_FIXED:
        if stored.get(name) != wanted[name]:
            flag = "model file" if name == "model" else "--" + name.replace("_", "-")
            raise UserError(
                f"Study '{options.study_name}' was run with {flag} {stored.get(name)}, not "
                f"{wanted[name]}; its trials are only comparable under the same setting. Use "
                f"the same {flag} to resume, or a new --study name."
            )


def run_study(options: SearchOptions, print_line: Callable[[str], None] = print) -> optuna.Study:
    """Run or resume a study and its confirmation rounds; see the module docstring.

    Raises:
        UserError: Bad input (model file, space, storage, flags), caught before any trial runs,
            or a reference configuration that does not train.
    """
    task = load_task(options.model)
    space = load_space(options.space)
    storage = open_storage(options.storage)
    print_line(
        f"model {task.model_file.path.name}: {task.train_size} training items, "
        f"{task.eval_size} eval items ({task.model_file.eval_source}), metric: "
        f"{task.model_file.metric_name}"
    )
    machine = detect_machine()
    print_line(f"machine: {machine.describe()}; checking DeepSpeed's ops (built once per machine)")
    built = prepare_deepspeed_ops(machine, task.model_file.optimizer)
    if built:
        print_line(f"built {', '.join(built)}")

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines report each trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(
        study_name=options.study_name,
        storage=storage,
        sampler=_make_sampler(options.sampler, options.seed, space.grid()),
        direction="maximize",
        load_if_exists=True,
    )
    _check_resume(study, options, task)
    study.set_user_attr("machine", machine.describe())
    study.set_user_attr("space", space.describe())
    optuna.storages.fail_stale_trials(study)
    objective = _Objective(options, task, machine, space, study, print_line)
    new_study = not study.get_trials(deepcopy=False)
    if reference_trial(study) is None:
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if not any(t.user_attrs.get("role") == "reference" for t in waiting):
            study.enqueue_trial(
                sampled_params(space, task.reference_settings()),
                user_attrs={"role": "reference"},
            )
    if new_study:
        queued = enqueue_startup(
            study,
            space,
            task.reference_settings(),
            objective.can_run,
            options.sampler,
            options.seed,
            options.n_trials,
        )
        if queued:
            print_line(
                f"start-up: the reference, then {queued} configurations drawn at random among "
                f"those this machine can run; {options.sampler.upper()} proposes from then on"
            )

    already = len(runs_of(study))

    def stop_when_enough(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if len(runs_of(study)) >= options.n_trials:
            study.stop()

    with contextlib.ExitStack() as stack:
        if options.warm_workers:
            objective.workers = stack.enter_context(
                WarmWorkers(options.trials_dir / options.study_name / "workers")
            )
        if already >= options.n_trials:
            print_line(
                f"study '{options.study_name}' already holds {already} runs "
                f"(--n-trials {options.n_trials})."
            )
        else:
            print_line(
                f"study '{options.study_name}' in {redact(options.storage)}: {already} runs so "
                f"far, searching until {options.n_trials}; budget "
                f"{options.max_accuracy_loss:.2%} accuracy loss"
            )
            study.optimize(
                objective,
                n_trials=(options.n_trials - already) * _ASKS_PER_RUN,
                timeout=options.timeout,
                callbacks=[stop_when_enough],
                catch=(),
            )
        # Stored confirmation runs count: a finished study confirmed before runs nothing here.
        confirm(
            study, objective.remeasure, options.confirm, CONFIRM_ROUNDS, options.seed, print_line
        )
    return study
