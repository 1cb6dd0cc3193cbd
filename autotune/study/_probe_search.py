"""The probe-first search (`--sampler probe`, the default): `ProbePlan` chooses each step from
the study's trials, and each step becomes a queued trial with all its settings fixed, which the
objective runs: a probe (throughput only, `PROBED`) or a search run (trained and scored, or
timed where its numerics were judged before). Plain Optuna reads the study as any other: every
step is a trial, its value the rate it measured."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna

from autotune._records import (
    CHOSEN_BECAUSE,
    CONFIG_KEY,
    FAILED,
    INFEASIBLE,
    NUMERICS_KEY,
    OK,
    PROBE,
    PROBED,
    ROLE,
    SEARCH,
    STOPPED,
    TIMES_REFERENCE,
    TrialRecord,
)
from autotune._score import is_feasible
from autotune._space import SearchSpace, expressible, fill_settings, sampled_params
from autotune.study import _probing as probing
from autotune.study._objective import Objective
from autotune.study._options import SearchOptions
from autotune.study._ranking import runs_of
from autotune.study._samplers import enqueue_reference

_POLL_SECONDS = 2.0
_STALLS = 5
_KINDS = {
    OK: probing.SCORED,
    PROBED: probing.PROBED,
    STOPPED: probing.STOPPED,
    FAILED: probing.FAILED,
    INFEASIBLE: probing.SKIPPED,
}
_PENDING = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


def probe_timings(trials: Sequence[optuna.trial.FrozenTrial]) -> list[probing.ProbeTiming]:
    """What the probe plan reads of a study's trials: the finished ones in order (repeats
    left out), then those queued or running (`BUSY`)."""
    found, busy = [], []
    for trial in sorted(trials, key=lambda t: t.number):
        record = TrialRecord.of(trial)
        key, numerics = record.config_key, record.get(NUMERICS_KEY)
        if key is None or numerics is None:
            continue
        if trial.state in _PENDING:
            busy.append(probing.ProbeTiming(key, numerics, probing.BUSY))
        elif trial.state == optuna.trial.TrialState.COMPLETE and record.status in _KINDS:
            kind = _KINDS[record.status]
            feasible = is_feasible(trial.constraints) if kind == probing.SCORED else None
            rate = record.rate if kind in (probing.SCORED, probing.PROBED) else None
            found.append(probing.ProbeTiming(key, numerics, kind, rate, feasible, record.settings))
    return found + busy


class _Options:
    """Builds the plan's options from settings, with the objective's rules."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.space: SearchSpace = objective.space
        self.reference_settings = dict(objective.reference_settings)

    def of(self, settings: Mapping[str, Any], check: bool = True) -> probing.ProbeOption | None:
        """The option of ``settings`` (inactive settings as the search fills them), or None
        when the space cannot express it or it cannot run here."""
        filled = fill_settings(self.space, self.reference_settings, lambda n, _d: settings[n])
        if check and not (expressible(self.space, filled) and self.objective.can_run(filled)):
            return None
        config = self.objective.config_of(filled)
        numerics = config.numerics_key(self.objective.task.items_vary)
        return probing.ProbeOption(config.key(), numerics, filled)

    def reference(self) -> probing.ProbeOption:
        option = self.of(self.reference_settings, check=False)
        assert option is not None
        return option

    def neighbours(self, settings: Mapping[str, Any], distance: int) -> list[probing.ProbeOption]:
        return probing.options_at_distance(self.space.grid(), settings, distance, self.of)


def probe_search(
    study: optuna.Study,
    objective: Objective,
    options: SearchOptions,
    print_line: Callable[[str], None],
) -> None:
    """Take the plan's steps until it is done, --timeout passes, or the study holds
    --n-trials runs (probes count)."""
    builder = _Options(objective)
    reference = builder.reference()
    plan = probing.ProbePlan(reference, builder.neighbours, everywhere=options.timeout is not None)
    stalled = 0
    while True:
        if options.timeout is not None and time.monotonic() - objective.started >= options.timeout:
            print_line(f"--timeout has passed: the search ends with {len(runs_of(study))} runs")
            return
        if len(runs_of(study)) >= options.run_limit:
            print_line(f"the study holds its {options.n_trials} runs")
            return
        with objective.lock:
            trials = study.get_trials(deepcopy=False)
            step = plan.next_step(probe_timings(trials))
            pending = [t for t in trials if t.state in _PENDING]
            running = any(t.state == optuna.trial.TrialState.RUNNING for t in pending)
            if step is None and not pending:
                print_line(_done(trials))
                return
            if step is not None and not _take(study, builder.space, step, reference, pending):
                step = None
        if step is None and running:
            time.sleep(_POLL_SECONDS)  # another worker's run may change the plan
            continue
        # A step queued, or (none left) a trial still queued: one an earlier search left
        # waiting when it was stopped, which nobody else would run.
        before = _finished(study)
        study.optimize(objective, n_trials=1, catch=())
        # A step that added no timing (another worker ran the trial queued for it, or it
        # repeated one) is taken again; one that keeps doing so would never end.
        stalled = 0 if _finished(study) > before else stalled + 1
        if stalled >= _STALLS:
            print_line(f"the search ends: its last {_STALLS} steps timed nothing new")
            return


def _take(
    study: optuna.Study,
    space: SearchSpace,
    step: probing.ProbeStep,
    reference: probing.ProbeOption,
    pending: Sequence[optuna.trial.FrozenTrial],
) -> bool:
    """Queue the step's trial; False when there is nothing this worker can run now (the
    reference runs on another worker)."""
    if step.kind == probing.RUN and step.option.key == reference.key:
        references = [t for t in pending if TrialRecord.of(t).is_reference]
        if not references:
            enqueue_reference(study, space, dict(step.option.settings))
        return not any(t.state == optuna.trial.TrialState.RUNNING for t in references)
    attrs: dict[str, Any] = {
        ROLE: PROBE if step.kind == probing.PROBE else SEARCH,
        CHOSEN_BECAUSE: step.why,
        CONFIG_KEY: step.option.key,
        NUMERICS_KEY: step.option.numerics,
    }
    if step.option.key == reference.key:
        # Its settings may lie outside the space: enqueued, those would be sampled afresh.
        attrs[TIMES_REFERENCE] = True
    study.enqueue_trial(sampled_params(space, dict(step.option.settings)), user_attrs=attrs)
    return True


def _finished(study: optuna.Study) -> int:
    """How many timings the study's finished trials give."""
    return sum(t.kind != probing.BUSY for t in probe_timings(study.get_trials(deepcopy=False)))


def _done(trials: Sequence[optuna.trial.FrozenTrial]) -> str:
    records = [TrialRecord.of(t) for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    probes = sum(r.status == PROBED for r in records)
    runs = sum(r.ran and r.status != PROBED for r in records)
    return (
        f"the probe search is done: no configuration left to time could beat the best feasible "
        f"one ({probes} probes, {runs} search runs)"
    )
