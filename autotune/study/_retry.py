"""Trials whose run was cut short: each is retried once, as a new trial of the same
configuration.

A trial records the process that runs it (`OWNER`). A search stopped by Ctrl-C or SIGTERM
queues the retry of its running trial itself (Optuna then fails that trial); a search killed
outright (SIGKILL, a crash) leaves its trial RUNNING, and the next search on the same host
fails it at once and queues its retry (`retry_orphaned_trials`), without waiting for the
heartbeat's grace period; so does every live worker of the study on that host after each of its
trials. A RUNNING trial owned by a process on another host is left to the heartbeats, and
retried once they have failed it. A retry carries the role of the trial it retries; a reference queued behind other
trials runs before them (`run_queued_reference`), since every trial is scored against it, and a
worker waiting for the reference's result takes its retry and runs it (`take_queued_reference`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

from autotune._errors import UserError
from autotune._records import (
    OWNER,
    REASON,
    RETRY_OF,
    ROLE,
    STUDY_REFERENCE_METRIC,
    TrialRecord,
)
from autotune.runner import Owner

_FAILED_TRIAL = "failed_trial"
_RETRY_HISTORY = "retry_history"
"""The system attributes Optuna's RetryHeartbeatStaleTrialCallback gives a retry; a retry
made here carries them too, so either kind reads the same."""


_POLL_SECONDS = 2.0
"""How often a worker waiting for another's reference looks again."""


def record_owner(trial: optuna.Trial) -> None:
    """Record this process as the one running ``trial``."""
    trial.set_user_attr(OWNER, Owner.current().to_json())


def owner_of(trial: FrozenTrial) -> Owner | None:
    """The process that ran (or runs) ``trial``, when it recorded one."""
    return Owner.from_json(trial.user_attrs.get(OWNER))


def retry_trial(study: optuna.Study, cut_short: FrozenTrial) -> None:
    """Queue a new trial of ``cut_short``'s configuration and role, marked as its retry."""
    history = list(cut_short.system_attrs.get(_RETRY_HISTORY, []))
    system_attrs = {
        **cut_short.system_attrs,
        _FAILED_TRIAL: cut_short.system_attrs.get(_FAILED_TRIAL, cut_short.number),
        _RETRY_HISTORY: [*history, cut_short.number],
    }
    user_attrs: dict[str, Any] = {RETRY_OF: cut_short.number}
    if ROLE in cut_short.user_attrs:
        user_attrs[ROLE] = cut_short.user_attrs[ROLE]
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=cut_short.params,
            distributions=cut_short.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )


def retry_interrupted(trial: optuna.Trial) -> None:
    """Queue the retry of ``trial``, which Ctrl-C or SIGTERM cut short (Optuna fails it)."""
    study = trial.study
    retry_trial(study, study._storage.get_trial(trial._trial_id))


def _retried(trials: list[FrozenTrial]) -> set[int]:
    """The numbers of trials that a retry (made here or by Optuna's callback) follows."""
    numbers: set[int] = set()
    for trial in trials:
        numbers.update(int(n) for n in trial.system_attrs.get(_RETRY_HISTORY, []))
        if trial.user_attrs.get(RETRY_OF) is not None:
            numbers.add(int(trial.user_attrs[RETRY_OF]))
    return numbers


def _cut_short(trial: FrozenTrial, retried: set[int]) -> str | None:
    """Why ``trial`` was left unfinished, if it was and is not retried yet: RUNNING while its
    process on this host is gone, or failed by the heartbeats (no record of its end), on any
    host."""
    owner = owner_of(trial)
    if owner is None or trial.number in retried:
        return None
    if trial.state == TrialState.RUNNING and owner.is_alive() is False:
        return f"its process (pid {owner.pid}) ended while it ran"
    finished = TrialRecord.of(trial).status is not None
    if trial.state == TrialState.FAIL and not finished and owner.is_alive() is not True:
        return f"its worker (pid {owner.pid} on {owner.host}) stopped sending heartbeats"
    return None


def retry_orphaned_trials(study: optuna.Study) -> list[str]:
    """Fail every RUNNING trial whose process on this host is gone, and queue one retry of it
    and of every trial the heartbeats failed; returns one line per trial.

    Call under the storage's lock (`StorageLock`): every search does at its start, and each
    worker after each of its trials and while it waits, so a worker killed mid-trial has its
    configuration run again once, by whichever worker looks first. Failing is atomic in the
    storage: of two searches that find the same RUNNING trial, one retries it.
    """
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    lines = []
    for trial in trials:
        reason = _cut_short(trial, retried)
        if reason is None:
            continue
        if trial.state == TrialState.RUNNING:
            try:
                study._storage.set_trial_user_attr(trial._trial_id, REASON, reason)
                if not study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another search got there first
        retry_trial(study, trial)
        lines.append(f"trial {trial.number}: {reason}; its configuration is queued again")
    return lines


def take_queued_reference(study: optuna.Study, *, first_too: bool = False) -> FrozenTrial | None:
    """Take a queued reference (a retry of one cut short) for this worker to run: the trial,
    now RUNNING, or None when there is none or another worker took it first. Unless
    ``first_too``, only one queued behind other trials is taken (Optuna hands out the first)."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    reference = next((t for t in waiting if TrialRecord.of(t).is_reference), None)
    if reference is None or (reference.number == waiting[0].number and not first_too):
        return None
    try:
        if not study._storage.set_trial_state_values(reference._trial_id, TrialState.RUNNING):
            return None  # another worker took it
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return reference


def run_taken_trial(
    study: optuna.Study, taken: FrozenTrial, objective: Callable[[optuna.Trial], float]
) -> None:
    """Run ``taken`` (a trial this worker set RUNNING) outside Optuna's loop, with heartbeats,
    and tell the study its end."""
    trial = optuna.Trial(study, taken._trial_id)
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            value = objective(trial)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
    study.tell(trial, value)


def run_queued_reference(study: optuna.Study, objective: Callable[[optuna.Trial], float]) -> None:
    """Run a queued reference now when other trials are queued before it (a retried
    reference joins the end of the queue, and Optuna takes queued trials in order)."""
    reference = take_queued_reference(study)
    if reference is not None:
        run_taken_trial(study, reference, objective)


def wait_for_reference_metric(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    lock: AbstractContextManager[Any],
    print_line: Callable[[str], None],
    patience: float,
) -> float:
    """The study's reference metric. Another worker of a shared study may still be running
    the reference: wait for it; if its run was cut short (its worker killed), run the queued
    retry here with ``objective``. ``lock`` is the storage's lock.

    Raises:
        UserError: The reference failed on its worker, or ran past ``patience`` seconds.
    """
    running, deadline = None, 0.0
    while True:
        value = study.user_attrs.get(STUDY_REFERENCE_METRIC)
        if value is not None:
            return float(value)
        optuna.storages.fail_stale_trials(study)
        with lock:
            for line in retry_orphaned_trials(study):
                print_line(line)
            retry = take_queued_reference(study, first_too=True)
        if retry is not None:
            print_line(
                f"trial {retry.number:>3} runs here: the reference's run was cut short "
                "and every trial is scored against it"
            )
            run_taken_trial(study, retry, objective)
            continue
        references = [
            t
            for t in study.get_trials(deepcopy=False)
            if TrialRecord.of(t).is_reference
            and t.state in (TrialState.RUNNING, TrialState.WAITING)
        ]
        if not references:
            raise UserError(
                "The reference configuration failed on another worker of this study, so "
                "no trial can be scored; see its reason with `autotune trials`, fix it and "
                "run the search again."
            )
        if references[0].number != running:
            running = references[0].number
            deadline = time.monotonic() + patience
        if time.monotonic() > deadline:
            raise UserError(
                f"The reference (trial {running}) has run on another worker for more than "
                f"three trial timeouts ({patience:.0f} s) without a result; run the search again."
            )
        time.sleep(_POLL_SECONDS)
