"""Many workers on one study, the pure logic (autotune.study._sharing and the resume checks in
autotune.study._loop): the register of workers, claiming a run, the SQLite file lock, a study
tied to its model file's content and its machine. In-memory studies, no runs; the real workers
on a real PostgreSQL server are in test_many_workers_e2e.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autotune._records import (
    CONFIG_KEY,
    FAILED,
    OK,
    REPEAT,
    RUN_SLOT,
    STATUS,
    STUDY_LR_SCALING,
    STUDY_MAX_ACCURACY_LOSS,
    STUDY_MODEL,
    STUDY_MODEL_SHA256,
    STUDY_OBJECTIVE,
    STUDY_SCORING,
    STUDY_SEED,
    STUDY_TRAIN_SAMPLES,
    STUDY_WORKERS,
)
from autotune.study import make_sampler, sampler_seed
from autotune.study._loop import model_sha256, resume_problem, same_machine
from autotune.study._sharing import (
    STALE_WORKER_SECONDS,
    StorageLock,
    join,
    leave,
    live_workers,
    lowest_free_number,
    slots_taken,
    twin_of,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
RUNNING, COMPLETE = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE
HOST = socket.gethostname()


# --- the register of workers ---------------------------------------------------------------


def test_a_worker_on_this_host_is_live_while_its_process_is() -> None:
    entries = {"0": {"host": HOST, "pid": 11, "seen": 0.0}, "1": {"host": HOST, "pid": 12}}
    kept = live_workers(entries, [], HOST, now=1e9, alive=lambda pid: pid == 12)
    assert list(kept) == ["1"]


def test_a_worker_on_another_host_is_live_while_it_runs_a_trial_or_reported_lately() -> None:
    now = 10_000.0
    entries = {
        "0": {"host": "node-a", "pid": 1, "seen": now - STALE_WORKER_SECONDS - 1},  # running
        "1": {"host": "node-b", "pid": 1, "seen": now - 5},  # reported lately
        "2": {"host": "node-c", "pid": 1, "seen": now - STALE_WORKER_SECONDS - 1},  # gone
    }
    kept = live_workers(entries, [0], HOST, now, alive=lambda pid: False)
    assert sorted(kept) == ["0", "1"]


def test_a_new_worker_takes_the_lowest_free_number() -> None:
    assert lowest_free_number([]) == 0
    assert lowest_free_number(["0", "1", "3"]) == 2
    assert lowest_free_number([1, 2]) == 0


def test_join_and_leave_an_in_memory_study() -> None:
    study = optuna.create_study()
    first = join(study)
    assert first.number == 0 and first.pid == os.getpid()
    # Another worker on this host (this test's parent process is alive), and a dead one.
    entries = dict(study.user_attrs[STUDY_WORKERS])
    entries["1"] = {"host": HOST, "pid": os.getppid(), "seen": time.time()}
    entries["2"] = {"host": HOST, "pid": _dead_pid(), "seen": time.time()}
    study.set_user_attr(STUDY_WORKERS, entries)
    assert not leave(study, first)  # worker 1 is still searching
    assert sorted(study.user_attrs[STUDY_WORKERS]) == ["1"]
    again = join(study)
    assert again.number == 0  # freed by the worker that left
    entries = dict(study.user_attrs[STUDY_WORKERS])
    del entries["1"]
    study.set_user_attr(STUDY_WORKERS, entries)
    assert leave(study, again)  # the last one


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- seeds ---------------------------------------------------------------------------------------


def test_the_first_worker_keeps_the_seed_and_the_others_draw_differently() -> None:
    assert sampler_seed(7, 0) == 7
    assert len({sampler_seed(7, n) for n in range(4)}) == 4
    draws = []
    for worker in range(4):
        study = optuna.create_study(sampler=make_sampler("random", sampler_seed(0, worker), {}))
        draws.append(tuple(study.ask().suggest_int("x", 0, 10**6) for _ in range(3)))
    assert len(set(draws)) == 4


def test_tpe_keeps_its_constant_liar() -> None:
    sampler = make_sampler("tpe", 0, {})
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._constant_liar


# --- claiming a run ---------------------------------------------------------------------------------


def _trial(
    number: int, state: optuna.trial.TrialState, **attrs: object
) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(
        state=state, value=1.0 if state == COMPLETE else None, user_attrs=dict(attrs)
    )
    trial.number = number
    return trial


def test_a_proposal_repeats_a_finished_trial_first_else_a_claimed_running_one() -> None:
    trials = [
        _trial(0, COMPLETE, **{CONFIG_KEY: "a", STATUS: OK}),
        _trial(1, COMPLETE, **{CONFIG_KEY: "b", STATUS: REPEAT}),
        _trial(2, RUNNING, **{CONFIG_KEY: "b", RUN_SLOT: 2}),
        _trial(3, RUNNING, **{CONFIG_KEY: "c"}),  # proposed, not yet claimed
        _trial(4, COMPLETE, **{CONFIG_KEY: "b", STATUS: FAILED}),
    ]
    assert twin_of(trials, "a", 9).number == 0
    assert twin_of(trials, "b", 9).number == 4  # a finished run, not the repeat, beats one running
    assert twin_of(trials[:3], "b", 9).number == 2
    assert twin_of(trials, "c", 9) is None  # nobody claimed a run of it yet
    assert twin_of(trials, "a", 0) is None  # not itself


def test_slots_count_finished_runs_and_claimed_running_trials() -> None:
    trials = [
        _trial(0, COMPLETE, **{STATUS: OK, RUN_SLOT: 1}),
        _trial(1, COMPLETE, **{STATUS: FAILED, RUN_SLOT: 2}),
        _trial(2, COMPLETE, **{STATUS: REPEAT}),
        _trial(3, RUNNING, **{RUN_SLOT: 3}),
        _trial(4, RUNNING),
        _trial(5, COMPLETE, **{STATUS: "infeasible"}),
    ]
    assert slots_taken(trials) == 3


# --- the lock ---------------------------------------------------------------------------------------------


def test_the_sqlite_lock_is_a_file_lock_other_processes_wait_for(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/deep/study.db"
    probe = (
        "import fcntl, sys\n"
        "f = open(sys.argv[1], 'a')\n"
        "try:\n"
        "    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n"
        "    sys.exit(3)\n"
    )
    lock_file = tmp_path / "deep" / "study.db.lock"
    with StorageLock(url):
        held = subprocess.run([sys.executable, "-c", probe, str(lock_file)])
    free = subprocess.run([sys.executable, "-c", probe, str(lock_file)])
    assert (held.returncode, free.returncode) == (3, 0)


def test_other_storages_take_no_lock() -> None:
    with StorageLock("sqlite:///:memory:"), StorageLock("mysql://u:p@host/db"):
        pass


# --- resume checks ------------------------------------------------------------------------------------------


def _fixed(sha: str = "abc123def4567890") -> dict[str, object]:
    return {
        STUDY_MODEL_SHA256: sha,
        STUDY_TRAIN_SAMPLES: 512,
        STUDY_MAX_ACCURACY_LOSS: 0.005,
        STUDY_LR_SCALING: "sqrt",
        STUDY_SEED: 0,
        STUDY_OBJECTIVE: "samples",
        STUDY_SCORING: "throughput",
    }


def test_a_study_is_tied_to_the_model_files_content_not_its_path() -> None:
    stored = {STUDY_MODEL: "/node1/w1/model.py", **_fixed()}
    assert resume_problem("s", stored, _fixed(), "/node2/w2/model.py") is None
    problem = resume_problem("s", stored, _fixed("fff000"), "/node1/w1/model.py")
    assert problem is not None
    assert "content differs from /node1/w1/model.py (sha256 abc123def456, this file fff000)" in (
        problem
    )


def test_a_study_written_before_the_hash_is_still_tied_to_its_path() -> None:
    old = {k: v for k, v in _fixed().items() if k != STUDY_MODEL_SHA256}
    old[STUDY_MODEL] = "/work/model.py"
    del old[STUDY_OBJECTIVE], old[STUDY_SCORING]  # older still: it maximised samples/s
    assert resume_problem("s", old, _fixed(), "/work/model.py") is None
    problem = resume_problem("s", old, _fixed(), "/elsewhere/model.py")
    assert problem == (
        "Study 's' was run with model file /work/model.py, not /elsewhere/model.py; its trials "
        "are only comparable under the same setting. Use the same model file to resume, or a "
        "new --study name."
    )


def test_other_fixed_settings_are_still_checked() -> None:
    stored = {STUDY_MODEL: "/m.py", **_fixed()}
    problem = resume_problem("s", stored, {**_fixed(), STUDY_TRAIN_SAMPLES: 1024}, "/m.py")
    assert problem is not None and problem.startswith(
        "Study 's' was run with --train-samples 512, not 1024"
    )


def test_model_sha256_reads_the_content(tmp_path: Path) -> None:
    one, two = tmp_path / "a.py", tmp_path / "b.py"
    one.write_text("x = 1\n")
    two.write_text("x = 1\n")
    assert model_sha256(one) == model_sha256(two)
    two.write_text("x = 2\n")
    assert model_sha256(one) != model_sha256(two)


def test_machines_compare_by_cpu_model_and_cores_or_by_accelerators() -> None:
    cpu = "cpu, 2 cores (AMD EPYC 7B13)"
    assert same_machine(cpu, cpu)
    assert not same_machine(cpu, "cpu, 4 cores (AMD EPYC 7B13)")
    assert not same_machine(cpu, "cpu, 2 cores (Intel(R) Xeon(R) Processor)")
    h100 = "8 x cuda (NVIDIA H100 80GB HBM3), 96 cpu cores"
    assert same_machine(h100, "8 x cuda (NVIDIA H100 80GB HBM3), 192 cpu cores")
    assert not same_machine(h100, "4 x cuda (NVIDIA H100 80GB HBM3), 96 cpu cores")
    assert not same_machine(h100, "8 x cuda (NVIDIA A100-SXM4-80GB), 96 cpu cores")
    assert not same_machine(cpu, h100)
