"""Trials cut short (autotune/study/_retry.py): a RUNNING trial whose process on this host is
gone is failed at once and retried once; one of a live process, or of another host, is left
alone; a retried reference runs before the trials queued ahead of it. A real SQLite study and
real (ended) processes; no DeepSpeed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from _owners import dead_owner
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from autotune._records import OWNER, REFERENCE, RETRY_OF, ROLE, STARTUP, STATUS
from autotune.runner import Owner
from autotune.study import open_storage
from autotune.study._retry import retry_orphaned_trials, run_queued_reference

MBS = CategoricalDistribution([16, 32, 64])


# Trials made here by hand, as a killed search leaves them, not through Study.optimize.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def _study(tmp_path: Path) -> optuna.Study:
    """A study in the storage a search opens (SQLite, heartbeats on)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    return optuna.create_study(study_name="s", storage=storage, direction="maximize")


def _running(study: optuna.Study, owner: Owner, mbs: int, role: str = STARTUP) -> int:
    """A trial of micro-batch ``mbs`` left RUNNING by ``owner``, as a killed search leaves it."""
    study.enqueue_trial({"micro_batch_size": mbs}, user_attrs={ROLE: role})
    trial = study.ask({"micro_batch_size": MBS})
    trial.set_user_attr(OWNER, owner.to_json())
    return trial.number


def _by_number(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    return {t.number: t for t in study.get_trials()}


def test_a_trial_of_a_dead_process_is_failed_and_retried_once(tmp_path: Path) -> None:
    study = _study(tmp_path)
    killed = _running(study, dead_owner(), 32)
    lines = retry_orphaned_trials(study)
    assert len(lines) == 1 and f"trial {killed}:" in lines[0] and "queued again" in lines[0]
    trials = _by_number(study)
    assert trials[killed].state == TrialState.FAIL
    (retry,) = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert retry.params == {"micro_batch_size": 32}
    assert retry.user_attrs == {ROLE: STARTUP, RETRY_OF: killed}
    assert retry.system_attrs["failed_trial"] == killed
    assert retry_orphaned_trials(study) == []  # retried once, not at every start
    assert len(study.get_trials()) == 2


def test_the_retry_runs_the_same_configuration(tmp_path: Path) -> None:
    study = _study(tmp_path)
    _running(study, dead_owner(), 64)
    retry_orphaned_trials(study)
    trial = study.ask()
    assert trial.suggest_categorical("micro_batch_size", [16, 32, 64]) == 64
    assert trial.user_attrs[RETRY_OF] == 0


def test_a_trial_of_a_live_process_or_of_another_host_is_left_alone(tmp_path: Path) -> None:
    study = _study(tmp_path)
    live = _running(study, Owner.current(), 16)
    elsewhere = _running(study, dataclasses.replace(dead_owner(), host="node-7"), 32)
    unowned = study.ask().number  # a trial of an older version: no owner recorded
    assert retry_orphaned_trials(study) == []
    trials = _by_number(study)
    assert all(trials[n].state == TrialState.RUNNING for n in (live, elsewhere, unowned))


def test_a_trial_the_heartbeats_failed_without_a_retry_is_retried(tmp_path: Path) -> None:
    """A search resumed after the grace period: the heartbeats failed its trial first."""
    study = _study(tmp_path)
    killed = _running(study, dead_owner(), 32)
    study._storage.set_trial_state_values(study.get_trials()[killed]._trial_id, TrialState.FAIL)
    assert len(retry_orphaned_trials(study)) == 1
    assert retry_orphaned_trials(study) == []


def test_a_trial_that_ended_its_evaluation_is_not_retried(tmp_path: Path) -> None:
    study = _study(tmp_path)
    killed = _running(study, dead_owner(), 32)
    frozen = study.get_trials()[killed]
    study._storage.set_trial_user_attr(frozen._trial_id, STATUS, "failed")
    study._storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
    assert retry_orphaned_trials(study) == []


def test_a_retried_reference_runs_before_the_trials_queued_ahead_of_it(tmp_path: Path) -> None:
    study = _study(tmp_path)
    _running(study, dead_owner(), 32, role=REFERENCE)
    study.enqueue_trial({"micro_batch_size": 16}, user_attrs={ROLE: STARTUP})
    retry_orphaned_trials(study)  # the reference's retry queues behind the start-up
    ran: list[tuple[str, int]] = []

    def objective(trial: optuna.Trial) -> float:
        ran.append(
            (trial.user_attrs[ROLE], trial.suggest_categorical("micro_batch_size", [16, 32, 64]))
        )
        return 1.0

    run_queued_reference(study, objective)
    assert ran == [(REFERENCE, 32)]
    study.optimize(objective, n_trials=1)
    assert ran == [(REFERENCE, 32), (STARTUP, 16)]
    run_queued_reference(study, objective)  # nothing queued: nothing runs
    assert len(ran) == 2
