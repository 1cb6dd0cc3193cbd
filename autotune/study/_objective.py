"""The objective: what the study does with one proposal.

A proposal passes through gates in order, and the first that stops it decides what is stored:
a configuration tried before reuses its stored result (a repeat); one that cannot run here, is
predicted not to fit in memory, trains numerics found over the accuracy budget, or whose profile
partition fails is skipped without a run (infeasible); the rest claims one of the study's runs,
under the storage lock the workers of a shared study take (`autotune.study._sharing`), or waits
for another worker's run of the same configuration and repeats it; then it runs
(`autotune.runner.run_trial`) and is scored against the reference, stopped early because it
cannot win, or recorded as failed. A probe of the probe-first strategy (`autotune.study.
_probing`) is never a repeat: it times the configuration briefly and stores its throughput.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna

from autotune._errors import UserError
from autotune._machine import Machine
from autotune._memory import (
    measure_footprint,
    memory_limit_bytes,
    memory_limit_source,
    why_over_memory,
)
from autotune._plan import TrialConfig, why_not_runnable
from autotune._records import (
    ACCURACY_REUSED_FROM,
    CANNOT_WIN,
    CANNOT_WIN_BELOW,
    CHOSEN_BECAUSE,
    CONFIG_KEY,
    FAILED,
    FAILURE_REASON,
    GLOBAL_BATCH_SIZE,
    INFEASIBLE,
    LEARNING_RATE,
    MEASURED,
    MEMORY_ESTIMATE_BYTES,
    MEMORY_PREDICTED_BYTES,
    NUMERICS_KEY,
    OK,
    PARTITION,
    PROBE,
    PROBED,
    RATE,
    REFERENCE,
    REPEAT,
    ROLE,
    SETTINGS,
    STATUS,
    THROUGHPUT,
    TIMES_REFERENCE,
    TOKENS_PER_SECOND,
    WALL_SECONDS,
    WORKER,
    TrialRecord,
)
from autotune._score import REFERENCE_SEEDS
from autotune._space import (
    SearchSpace,
    describe_settings,
    every_settings,
    record_reference,
    suggest,
)
from autotune._task import Task
from autotune.pipeline import (
    LayerProfile,
    PartitionError,
    profiled_partition,
)
from autotune.runner import ProfileCache, RunResult, WarmWorkers, run_trial
from autotune.study._claim import claim_run
from autotune.study._earlier import (
    cannot_win_below,
    memory_prediction,
    numerics_over_budget,
    same_numerics,
)
from autotune.study._goodput import Scoring, StudyScoring
from autotune.study._judging import judge_run, reference_of, store_reference, store_verdict
from autotune.study._live import LiveLine, live_text
from autotune.study._options import ADAPTIVE, SearchOptions
from autotune.study._outcomes import (
    store_no_run,
    store_probed,
    store_repeat,
    store_run,
    store_stopped,
)
from autotune.study._probing import PROBE_MAX_SECONDS, PROBE_SECONDS
from autotune.study._progress import Progress, duration, study_progress
from autotune.study._retry import (
    record_owner,
    retry_interrupted,
    wait_for_reference_metric,
)
from autotune.study._sharing import (
    StorageLock,
    Worker,
)

_COMPLETE = (optuna.trial.TrialState.COMPLETE,)
_RESULT_INDENT = " " * 10
_LISTED_AT_MOST = 20_000
"""A space with more configurations than this is not listed, so never found exhausted."""


@dataclasses.dataclass(frozen=True)
class _Proposal:
    """One trial's proposal, as the gates see it."""

    trial: optuna.Trial
    role: str
    config: TrialConfig
    label: str

    @property
    def is_reference(self) -> bool:
        return self.role == REFERENCE


@dataclasses.dataclass(frozen=True)
class _Stages:
    """A pipeline trial's layer profile and, for the "profile" method, its stage boundaries."""

    profile: LayerProfile | None = None
    bounds: tuple[int, ...] | None = None


class Objective:
    """Runs one proposal: the reference, a repeat, a configuration that cannot run, or a run.

    Attributes:
        workers: The warm process groups trials run in, or None to launch each afresh.
        live: The live line while a run is in progress (off unless the search sets one).
        lock: The storage's lock, taken to claim a run.
        worker: This worker of the study.
    """

    def __init__(
        self,
        options: SearchOptions,
        task: Task,
        machine: Machine,
        space: SearchSpace,
        study: optuna.Study,
        print_line: Callable[[str], None],
        worker: Worker,
    ) -> None:
        self.options, self.task, self.machine, self.space = options, task, machine, space
        self.study, self.print_line = study, print_line
        self.lock, self.worker = StorageLock(options.storage, study._storage), worker
        self.reference_settings = task.reference_settings()
        self.trial_root = options.trials_dir / options.study_name
        self.profiles = ProfileCache(options.trials_dir / "profiles", machine)
        self.workers: WarmWorkers | None = None
        self.live = LiveLine(None)
        self.footprint = measure_footprint(task.model_file)
        self.adaptive = {**ADAPTIVE, "min_seconds": options.min_measure_seconds}
        self._space_keys: frozenset[str] | None = None
        self._runnable_keys: frozenset[str] = frozenset()
        self.scoring = StudyScoring(study, options, self._reference_metric)
        self.started = time.monotonic()

    def __call__(self, trial: optuna.Trial) -> float:
        record_owner(trial)
        try:
            return self._evaluate(trial)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the run is lost, resuming runs it again
            retry_interrupted(trial)
            raise

    def _evaluate(self, trial: optuna.Trial) -> float:
        proposal = self._propose(trial)
        earlier = self._find_repeat(proposal)
        if earlier is not None:
            return self._copy(proposal, earlier)
        reason = self._why_not_runnable(proposal.config)
        if reason is None:
            reason = self._over_memory(proposal)
        if reason is None:
            reason = self._numerics_over_budget(proposal.config, proposal.is_reference)
        if reason is not None:
            return self._infeasible(proposal, reason)
        try:
            stages = self._stages(proposal)
        except PartitionError as exc:
            return self._infeasible(proposal, f"profile partition: {exc}")
        claimed = self._claim(proposal)
        if isinstance(claimed, optuna.trial.FrozenTrial):
            return self._copy(proposal, claimed)
        result = self._run(proposal, stages, claimed)
        if not result.ok:
            return self._failed(proposal, result)
        if proposal.role == PROBE:
            return self._probed(proposal, result)
        if (result.measurements or {}).get(CANNOT_WIN):
            return self._stopped(proposal, result)
        return self._scored(proposal, result, stages)

    def untried(self, runnable_only: bool = False) -> tuple[int, int] | None:
        """(how many of the space's configurations no trial has tried yet, how many it holds):
        a configuration is tried once a trial ran it, failed on it or found it cannot run here;
        ``runnable_only`` counts those that pass this machine's rules (what may still cost a
        run). None when the space holds more than can be listed."""
        space_keys, runnable_keys = self._space_keys, self._runnable_keys
        if space_keys is None:
            every = every_settings(self.space, self.reference_settings, _LISTED_AT_MOST) or []
            configs = [self.config_of(settings) for settings in every]
            space_keys = frozenset(c.key() for c in configs)
            runnable_keys = frozenset(c.key() for c in configs if self._why_not_runnable(c) is None)
            if not self.scoring.lr_waits():  # the keys hold learning rates: final once they are
                self._space_keys, self._runnable_keys = space_keys, runnable_keys
        if not space_keys:
            return None
        keys = runnable_keys if runnable_only else space_keys
        done = self.study.get_trials(deepcopy=False, states=_COMPLETE)
        tried = {TrialRecord.of(t).config_key for t in done if TrialRecord.of(t).status != REPEAT}
        return len(keys - tried), len(keys)

    def can_run(self, settings: dict[str, Any]) -> bool:
        """Whether these settings pass the rules checked before a launch (not the memory
        pre-screen, which needs the configuration's footprint)."""
        return self._why_not_runnable(self.config_of(settings)) is None

    def remeasure(
        self, trial: optuna.trial.FrozenTrial, name: str
    ) -> tuple[float | None, str | None]:
        """Time a finished trial's configuration again, throughput only, on the same pipeline
        boundaries: (its rate, None), or (None, why the run failed)."""
        record = TrialRecord.of(trial)
        result = self._launch(
            self.config_of(record.settings),
            self.options.train_samples,
            [self.options.seed],
            name,
            record.get(PARTITION),
            self.adaptive,
            lambda seconds: f"confirmation, trial {trial.number}: this run {duration(seconds)}",
        )
        if not result.ok or result.measurements is None:
            return None, result.failure_reason
        return self._rate(result.measurements, record.get(GLOBAL_BATCH_SIZE)), None

    def _rate(self, measured: dict[str, Any], batch: int | None) -> float:
        """What the study maximises, from a run's measurements (`RATE`): its samples/s (or
        tokens/s), times its global batch's efficiency under goodput scoring."""
        name = TOKENS_PER_SECOND if self.options.objective == "tokens" else THROUGHPUT
        return float(measured[name]) * self.scoring.get().efficiency(batch or 0)

    # --- the proposal ----------------------------------------------------------------------

    def _propose(self, trial: optuna.Trial) -> _Proposal:
        """The proposal's configuration, recorded with its role before any gate."""
        role = TrialRecord.of(trial).role
        if role == REFERENCE or trial.user_attrs.get(TIMES_REFERENCE):
            # The reference (and a probe of it) runs as the user runs it today, whatever the
            # space allows.
            settings = record_reference(trial, self.space, self.reference_settings)
        else:
            settings = suggest(trial, self.space, self.reference_settings)
            if self.scoring.lr_waits():
                self.scoring.wait_for_reference()
        config = self.config_of(settings)
        trial.set_user_attr(ROLE, role)
        trial.set_user_attr(WORKER, self.worker.number)
        trial.set_user_attr(CONFIG_KEY, config.key())
        trial.set_user_attr(NUMERICS_KEY, config.numerics_key(self.task.items_vary))
        trial.set_user_attr(SETTINGS, config.settings())
        trial.set_user_attr(GLOBAL_BATCH_SIZE, config.global_batch_size)
        trial.set_user_attr(LEARNING_RATE, config.learning_rate)
        label = f"trial {trial.number:>3} [{describe_settings(config.settings())}]"
        return _Proposal(trial, role, config, label)

    def config_of(self, settings: dict[str, Any]) -> TrialConfig:
        """The configuration these settings give with the model file and the study's rules
        (the ``noise`` learning-rate rule reads the reference's noise scale once stored; ZeRO's
        bucket is fitted to the model's measured parameter count)."""
        return TrialConfig.from_settings(
            settings,
            self.task.model_file.optimizer,
            self.task.model_file.batch_size,
            self.options.lr_rule,
            self.scoring.lr_noise_scale(),
            self.footprint.parameters,
        )

    # --- the gates, in order ---------------------------------------------------------------

    def _find_repeat(self, proposal: _Proposal) -> optuna.trial.FrozenTrial | None:
        """An earlier trial of the same configuration (not itself a repeat or a probe); the
        reference and probes always run."""
        if proposal.is_reference or proposal.role == PROBE:
            return None
        key = proposal.config.key()
        for done in self.study.get_trials(deepcopy=False, states=_COMPLETE):
            record = TrialRecord.of(done)
            if record.config_key == key and record.status not in (REPEAT, PROBED):
                return done
        return None

    def _why_not_runnable(self, config: TrialConfig) -> str | None:
        scoring, batch = self.scoring.get(), config.global_batch_size
        return scoring.too_large(batch) or why_not_runnable(
            config,
            self.machine,
            scoring.samples_for(batch),
            self.task.train_size,
            self.task.layer_types,
            self.task.items_repeat,
            self.task.lengths_vary,
        )

    def _over_memory(self, proposal: _Proposal) -> str | None:
        """Why the configuration is predicted not to fit in memory (`memory_prediction`), or
        None. The reference runs whatever the prediction: it is what the user runs today."""
        config, machine = proposal.config, self.machine
        estimate, prediction = memory_prediction(self.study, self.footprint, config, machine)
        proposal.trial.set_user_attr(MEMORY_ESTIMATE_BYTES, estimate.total)
        proposal.trial.set_user_attr(MEMORY_PREDICTED_BYTES, prediction)
        limit = memory_limit_bytes(machine, config.processes, self.options.max_memory)
        source = memory_limit_source(machine, self.options.max_memory)
        over = why_over_memory(prediction, limit, estimate, source)
        return None if proposal.is_reference else over

    def _numerics_over_budget(self, config: TrialConfig, reference: bool) -> str | None:
        if reference or not self.options.reuse_accuracy:
            return None
        budget, items_vary = self.options.max_accuracy_loss, self.task.items_vary
        return numerics_over_budget(self.study, config, items_vary, budget)

    def _same_numerics(self, config: TrialConfig) -> TrialRecord | None:
        reuse = self.options.reuse_accuracy
        return same_numerics(self.study, config, self.task.items_vary) if reuse else None

    def _stages(self, proposal: _Proposal) -> _Stages:
        """A pipeline trial's layer profile and, for the "profile" method, the boundaries it
        gives.

        Raises:
            PartitionError: No partition of the profile fits the memory limit.
        """
        config = proposal.config
        if config.pipeline_stages <= 1:
            return _Stages()
        profile = self._layer_profile(config, proposal.label)
        if config.partition_method != "profile":
            return _Stages(profile)
        limit = memory_limit_bytes(self.machine, config.processes, self.options.max_memory)
        return _Stages(profile, profiled_partition(profile, config, limit).bounds)

    def _layer_profile(self, config: TrialConfig, label: str) -> LayerProfile:
        """The layer profile for a pipeline trial's micro-batch and precision (measured once
        per study storage folder, then read from the cache)."""
        if not self.profiles.is_cached(self.task.model_file, config):
            self.print_line(
                f"{label} profiling each layer (micro-batch {config.micro_batch_size}, "
                f"{config.precision}); cached for later trials"
            )
        return self.profiles.profile(self.task.model_file, config)

    def _claim(self, proposal: _Proposal) -> optuna.trial.FrozenTrial | int:
        """The trial this proposal repeats, or the number of the study's run it claimed
        (`claim_run`; a probe or the reference times its configuration anew)."""
        probe = proposal.is_reference or proposal.role == PROBE
        return claim_run(
            self.study,
            self.lock,
            self.worker,
            self.options,
            proposal.trial,
            None if probe else proposal.config.key(),
            proposal.is_reference,
            proposal.label,
            self.print_line,
        )

    def _run(self, proposal: _Proposal, stages: _Stages, run: int) -> RunResult:
        """Launch the trial's run (run number ``run`` of the study's; throughput only where an
        earlier trial measured the metric of the same numerics) and record what it
        launched."""
        trial, config = proposal.trial, proposal.config
        probe = proposal.role == PROBE
        reused = None if proposal.is_reference or probe else self._same_numerics(config)
        why = trial.user_attrs.get(CHOSEN_BECAUSE)
        doing = f"probing ({why}; " if probe else f"running ({'' if why is None else why + '; '}"
        progress = self._progress(proposal, run)
        self.print_line(f"{proposal.label} {doing}{progress.note()})")
        directory = self.trial_root / f"trial_{trial.number:04d}"
        # The reference's seeds measure the metric's own noise; --verdict-seeds trains every
        # run that measures its metric on as many.
        count = 1 if probe or reused is not None else self.options.verdict_seeds
        count = max(count, REFERENCE_SEEDS) if proposal.is_reference else count
        seeds = [self.options.seed + k for k in range(count)]
        adaptive = dict(self.adaptive)
        if probe:
            adaptive["min_seconds"] = min(PROBE_SECONDS, self.options.min_measure_seconds)
            adaptive["max_seconds"] = max(PROBE_MAX_SECONDS, adaptive["min_seconds"])
        scoring = self.scoring.get(wait=not proposal.is_reference)
        to_beat = None if reused is not None or probe else self._to_beat(proposal, scoring)
        if to_beat is not None:
            trial.set_user_attr(CANNOT_WIN_BELOW, to_beat)
            adaptive["cannot_win_below"] = to_beat
        samples = (
            self.options.train_samples if probe else scoring.samples_for(config.global_batch_size)
        )
        with self.live.showing(lambda seconds: live_text(progress, seconds)):
            result = run_trial(
                config,
                self.machine,
                self.task.model_file.path,
                samples,
                seeds,
                directory,
                self.options.trial_timeout,
                partition_bounds=stages.bounds,
                workers=self.workers,
                need_metric=reused is None and not probe,
                adaptive=adaptive,
                measure_noise=proposal.is_reference,
            )
        store_run(trial, config, self.machine, stages.profile, result, reused, directory)
        return result

    def _progress(self, proposal: _Proposal, run: int) -> Progress:
        """Where this run stands (`study_progress`); no more runs are left than untried
        configurations this machine can run."""
        untried = self.untried(runnable_only=True)
        at_most = None if untried is None else untried[0]
        return study_progress(self.study, self.options, proposal.role, run, self.started, at_most)

    def _to_beat(self, proposal: _Proposal, scoring: Scoring) -> float | None:
        """The samples/s this run must be able to reach to train on (`cannot_win_below`, over
        its efficiency); None trains the whole budget: the reference, --no-early-stop,
        --objective tokens (the ranks time samples)."""
        stops = self.options.early_stop and self.options.objective == "samples"
        best = cannot_win_below(self.study) if stops and not proposal.is_reference else None
        return (
            None if best is None else best / scoring.efficiency(proposal.config.global_batch_size)
        )

    # --- what is stored -------------------------------------------------------------------

    def _copy(self, proposal: _Proposal, earlier: optuna.trial.FrozenTrial) -> float:
        store_repeat(proposal.trial, earlier)
        self.print_line(f"{proposal.label} repeat of trial {earlier.number}: stored result reused")
        return float(earlier.value or 0.0)

    def _infeasible(self, proposal: _Proposal, reason: str) -> float:
        store_no_run(proposal.trial, INFEASIBLE, reason)
        self.print_line(f"{proposal.label} skipped: {reason}")
        return 0.0

    def _failed(self, proposal: _Proposal, result: RunResult) -> float:
        store_no_run(proposal.trial, FAILED, str(result.failure_reason))
        proposal.trial.set_user_attr(FAILURE_REASON, result.failure_reason)
        self.print_line(f"{_RESULT_INDENT}-> failed: {result.failure_reason}")
        if proposal.is_reference:
            raise UserError(
                f"The reference configuration (what the model file runs today) failed: "
                f"{result.failure_reason}. Every trial is scored against it; fix the model file "
                f"or raise --trial-timeout. Its log: {result.directory / 'log.txt'}"
            )
        return 0.0

    def _stopped(self, proposal: _Proposal, result: RunResult) -> float:
        """A run stopped early, slower than the best feasible run (`store_stopped`)."""
        measured = result.measurements or {}
        rate = self._rate(measured, proposal.config.global_batch_size)
        reason = store_stopped(proposal.trial, measured, rate)
        self.print_line(f"{_RESULT_INDENT}-> {reason} ({result.wall_seconds:.0f} s)")
        return rate

    def _probed(self, proposal: _Proposal, result: RunResult) -> float:
        """A probe: its throughput only (`store_probed`)."""
        measured = result.measurements or {}
        rate = self._rate(measured, proposal.config.global_batch_size)
        store_probed(proposal.trial, measured, rate)
        wall = result.wall_seconds
        self.print_line(f"{_RESULT_INDENT}-> {measured[THROUGHPUT]:.1f} samples/s ({wall:.0f} s)")
        return rate

    def _scored(self, proposal: _Proposal, result: RunResult, stages: _Stages) -> float:
        trial = proposal.trial
        measured = result.measurements or {}
        for name in MEASURED:
            trial.set_user_attr(name, measured.get(name))
        if proposal.is_reference:
            # The noise scale first: other workers wait for the reference's metric, and their
            # scoring and learning rates read the noise scale as soon as it is there.
            self.scoring.record(trial.user_attrs, self.print_line)
            store_reference(self.study, trial, measured)
        rate = self._rate(measured, proposal.config.global_batch_size)
        trial.set_user_attr(RATE, rate)
        self._reference_metric()  # waits for the reference of a shared study
        budget = self.options.max_accuracy_loss
        reused = trial.user_attrs.get(ACCURACY_REUSED_FROM) is not None
        verdict, metrics, losses = judge_run(
            reference_of(self.study.user_attrs),
            measured,
            budget,
            None if reused else lambda offsets: self._more_seeds(proposal, stages, offsets),
            lambda line: self.print_line(_RESULT_INDENT + line),
            proposal.is_reference,
        )
        store_verdict(trial, verdict, metrics, losses, budget)
        trial.set_user_attr(STATUS, OK)
        tokens = measured.get(TOKENS_PER_SECOND)
        self.print_line(
            f"{_RESULT_INDENT}-> {measured[THROUGHPUT]:.1f} samples/s"
            + ("" if tokens is None else f" ({tokens:,.0f} tokens/s)")
            + self.scoring.get().describe(proposal.config.global_batch_size, rate)
            + f", accuracy loss {verdict.loss * 100:+.2f}%, {verdict.describe()}"
            + f" ({trial.user_attrs.get(WALL_SECONDS, result.wall_seconds):.0f} s)"
        )
        return rate

    def _more_seeds(
        self, proposal: _Proposal, stages: _Stages, offsets: range
    ) -> dict[str, Any] | None:
        """Train the trial's configuration again on more seeds (--seed plus ``offsets``), for
        the metric only: their measurements, or None when the run failed (the verdict then
        stays with the seeds it has)."""
        config, trial = proposal.config, proposal.trial
        result = self._launch(
            config,
            self.scoring.get().samples_for(config.global_batch_size),
            [self.options.seed + offset for offset in offsets],
            f"trial_{trial.number:04d}/more_seeds",
            stages.bounds,
            None,
            lambda seconds: f"trial {trial.number}, more seeds: this run {duration(seconds)}",
        )
        trial.set_user_attr(WALL_SECONDS, trial.user_attrs[WALL_SECONDS] + result.wall_seconds)
        if not result.ok or result.measurements is None:
            self.print_line(f"{_RESULT_INDENT}   more seeds failed: {result.failure_reason}")
            return None
        return result.measurements

    def _launch(
        self,
        config: TrialConfig,
        samples: int,
        seeds: list[int],
        name: str,
        bounds: Sequence[int] | None,
        adaptive: dict[str, Any] | None,
        live: Callable[[float], str],
    ) -> RunResult:
        """Run ``config`` again, outside a trial's own run: its metric on ``seeds``, or with
        ``adaptive`` its throughput only. Files under the study's trial folder ``name``;
        ``live`` gives the live line from the seconds it has run."""
        with self.live.showing(live):
            return run_trial(
                config,
                self.machine,
                self.task.model_file.path,
                samples,
                seeds,
                self.trial_root / name,
                self.options.trial_timeout,
                partition_bounds=bounds,
                workers=self.workers,
                need_metric=adaptive is None,
                adaptive=adaptive,
            )

    def _reference_metric(self) -> float:
        """The study's reference metric, once some worker has measured it
        (`wait_for_reference_metric`, which may run a cut-short reference's retry here)."""
        return wait_for_reference_metric(
            self.study, self, self.lock, self.print_line, self.options.trial_timeout * 3
        )
