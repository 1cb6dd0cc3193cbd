"""Claiming one of the study's runs: what a proposal does, under the storage's lock, before
it runs (`claim_run`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import optuna

from autotune._records import REASON, RETRY_OF, RUN_SLOT
from autotune.study._options import SearchOptions
from autotune.study._ranking import runs_of
from autotune.study._retry import retry_orphaned_trials
from autotune.study._sharing import Worker, queued_retries, report_in, slots_taken, twin_of

_POLL_SECONDS = 2.0


def claim_run(
    study: optuna.Study,
    lock: AbstractContextManager[Any],
    worker: Worker,
    options: SearchOptions,
    trial: optuna.Trial,
    key: str | None,
    is_reference: bool,
    label: str,
    print_line: Callable[[str], None],
) -> optuna.trial.FrozenTrial | int:
    """The trial ``trial`` repeats, or the number of the study's run it claimed. ``key`` is its
    configuration's key (None for a probe or the reference: they time it anew).

    Under the storage lock: an earlier trial of the same configuration that finished is
    repeated; one that another worker runs now is waited for, then repeated (or, if it
    failed, the proposal tries again); otherwise the proposal takes the next of the
    study's --n-trials runs, if one is left. While all are handed out, it waits for one to
    finish or fail.

    Raises:
        optuna.TrialPruned: The study holds its runs: this worker stops.
    """
    waited_for, limit = None, options.run_limit
    while True:
        with lock:
            # A worker killed mid-run on this host: fail its trial and queue the retry now,
            # rather than wait on it until the heartbeats give up.
            for line in retry_orphaned_trials(study):
                print_line(line)
            trials = study.get_trials(deepcopy=False)
            twin = None if key is None else twin_of(trials, key, trial.number)
            taken = slots_taken(trials)
            # Runs left for queued retries are theirs: a run cut short runs again.
            kept = 0 if trial.user_attrs.get(RETRY_OF) else queued_retries(trials)
            # A reference always runs (a retried one too): every trial waits for it.
            if twin is None and (taken + kept < limit or is_reference):
                trial.set_user_attr(RUN_SLOT, taken + 1)
                report_in(study, worker)
                return taken + 1
        if twin is not None and twin.state == optuna.trial.TrialState.COMPLETE:
            return twin
        if twin is None and kept and taken < limit:
            reason = "the study's last runs are kept for the retries of runs cut short"
            trial.set_user_attr(REASON, reason)
            print_line(f"{label} not run: {reason}")
            raise optuna.TrialPruned(reason)  # this worker's next trial is such a retry
        if twin is None and len(runs_of(study)) >= limit:
            reason = f"the study holds its {options.n_trials} runs"
            trial.set_user_attr(REASON, reason)
            print_line(f"{label} not run: {reason}")
            study.stop()
            raise optuna.TrialPruned("the study holds its runs")
        if twin is not None and twin.number != waited_for:
            waited_for = twin.number
            print_line(
                f"{label} waiting for trial {twin.number}, the same configuration "
                "running on another worker"
            )
        time.sleep(_POLL_SECONDS)
        optuna.storages.fail_stale_trials(study)
