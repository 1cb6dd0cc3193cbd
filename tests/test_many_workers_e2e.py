"""Many workers, one study: real `autotune search` processes on a real PostgreSQL server
(tests/_postgres.py), each in its own folder with its own copy of the model file, as on separate
nodes. Runs are real DeepSpeed trials on CPU, one process each, so 4 workers fit on 2 cores.

The issue's bar is 4 workers and 24 runs; on the 2-core machines the tests run on, 12 runs keep
this module near 2 minutes, and already make the workers propose the same configurations (the
space holds 24) and wait for each other's runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from _models import SMALL_CLASSIFIER
from _postgres import PostgresServer

from autotune import load_study
from autotune._records import (
    INFEASIBLE,
    REPEAT,
    RETRY_OF,
    STARTUP,
    STUDY_MACHINE,
    STUDY_REFERENCE_NUMBER,
    STUDY_WORKERS,
    TrialRecord,
)
from autotune.runner._owner import OWNER_VARIABLE, SHM_DIR, SHM_PREFIX
from autotune.study import STARTUP_RUNS, runs_of

pytestmark = [pytest.mark.e2e, pytest.mark.subprocess, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[1]
WORKERS = 4
N_TRIALS = 12
STUDY = "shared"
MODEL = SMALL_CLASSIFIER
SPACE = textwrap.dedent(
    """
    # 24 one-process configurations (22 with a global batch that leaves 8 steps in 1024 samples):
    # more than the runs, few enough that workers propose the same ones.
    micro_batch_size: [8, 16, 32, 64]
    gradient_accumulation_steps: [1, 2, 4]
    zero_stage: [0, 1]
    precision: [fp32]
    processes: [1]
    """
)


def _worker_folder(root: Path, name: str, model_text: str = MODEL) -> Path:
    """A worker's own folder (its node): a copy of the model file and the space."""
    folder = root / name
    folder.mkdir()
    (folder / "model.py").write_text(model_text)
    (folder / "space.yaml").write_text(SPACE)
    return folder


def _command(url: str, n_trials: int = N_TRIALS) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autotune.cli",
        "search",
        "model.py",
        "--space",
        "space.yaml",
        "--study",
        STUDY,
        "--storage",
        url,
        "--sampler",
        "tpe",  # these tests are about the claims of runs an Optuna sampler's workers share
        "--n-trials",
        str(n_trials),
        "--train-samples",
        "1024",
        "--min-measure-seconds",
        "0.3",
        "--trial-timeout",
        "120",
        "--confirm",
        "0",
    ]


def _environment() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return dict(
        os.environ,
        PYTHONPATH=str(REPO) + (os.pathsep + path if path else ""),
        DS_ACCELERATOR="cpu",
    )


def _start(folder: Path, url: str, n_trials: int = N_TRIALS) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _command(url, n_trials),
        cwd=folder,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(workers: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str, str]]:
    done = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=timeout)
            done.append((worker.returncode, out, err))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return done


@pytest.fixture(scope="module")
def server_and_url(postgres_server: PostgresServer) -> tuple[PostgresServer, str]:
    return postgres_server, postgres_server.create_database("many_workers")


@pytest.fixture(scope="module")
def shared_search(
    server_and_url: tuple[PostgresServer, str], tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """Four workers started at the same moment on an empty database (no schema yet)."""
    server, url = server_and_url
    root = tmp_path_factory.mktemp("nodes")
    folders = [_worker_folder(root, f"node{n}") for n in range(WORKERS)]
    workers = [_start(folder, url) for folder in folders]
    outcomes = finish(workers, timeout=600)
    return {"root": root, "url": url, "outcomes": outcomes, "password": server.password}


def _explain(outcomes: list[tuple[int, str, str]]) -> str:
    return "\n".join(f"--- exit {rc}\n{out[-3000:]}\n{err[-3000:]}" for rc, out, err in outcomes)


def test_every_worker_ran_and_ended_well(shared_search: dict) -> None:
    outcomes = shared_search["outcomes"]
    assert [rc for rc, _, _ in outcomes] == [0] * WORKERS, _explain(outcomes)
    for _, out, err in outcomes:
        assert "Traceback" not in err and "UniqueViolation" not in err
        assert " running (run " in out or " repeat of trial " in out, out
    study = load_study(STUDY, shared_search["url"])
    workers = {TrialRecord.of(t).worker for t in study.get_trials(deepcopy=False)}
    assert workers == set(range(WORKERS))  # each its own number, hence its own sampler seed
    assert study.user_attrs[STUDY_WORKERS] == {}  # all left


def test_the_reference_and_the_start_up_were_queued_once(shared_search: dict) -> None:
    study = load_study(STUDY, shared_search["url"])
    roles = Counter(TrialRecord.of(t).role for t in study.get_trials(deepcopy=False))
    assert roles["reference"] == 1
    assert roles[STARTUP] == STARTUP_RUNS - 1
    printed = [out for _, out, _ in shared_search["outcomes"] if "start-up: the reference" in out]
    assert len(printed) == 1


def test_the_study_holds_exactly_its_runs_none_launched_twice(shared_search: dict) -> None:
    study = load_study(STUDY, shared_search["url"])
    runs = runs_of(study)
    assert len(runs) == N_TRIALS
    keys = [TrialRecord.of(t).config_key for t in runs]
    assert len(set(keys)) == len(keys), Counter(keys).most_common(3)
    assert sorted(TrialRecord.of(t).run_slot for t in runs) == list(range(1, N_TRIALS + 1))
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for trial in study.get_trials(deepcopy=False):
        record = TrialRecord.of(trial)
        if record.status == REPEAT:
            # It copies a run, or a proposal skipped without one (the same verdict, no run).
            earlier = TrialRecord.of(by_number[record.repeat_of])
            assert earlier.config_key == record.config_key
            assert earlier.ran or earlier.status == INFEASIBLE, earlier
    # Every other state is a proposal that found the runs all taken and ended its worker.
    states = Counter(t.state for t in study.get_trials(deepcopy=False))
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert states[optuna.trial.TrialState.PRUNED] <= WORKERS - 1


def test_the_last_worker_exports_and_reports_the_others_leave_it(shared_search: dict) -> None:
    outs = [out for _, out, _ in shared_search["outcomes"]]
    finishers = [out for out in outs if "\nreport: " in out]
    assert len(finishers) == 1, _explain(shared_search["outcomes"])
    assert sum("other workers are still searching" in out for out in outs) == WORKERS - 1
    (finisher,) = finishers
    assert "exported: " in finisher or "no feasible configuration" in finisher


def test_the_password_never_appears(shared_search: dict) -> None:
    password = shared_search["password"]
    assert password in shared_search["url"]
    for _, out, err in shared_search["outcomes"]:
        assert password not in out and password not in err
        assert "autotune:***@127.0.0.1" in out
    for path in shared_search["root"].rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_a_worker_with_other_model_content_or_machine_is_refused(
    shared_search: dict, tmp_path: Path
) -> None:
    url = shared_search["url"]
    edited = _worker_folder(tmp_path, "edited", MODEL.replace("64", "48"))
    rc, out, err = finish([_start(edited, url)], timeout=300)[0]
    assert _one_error_line(rc, err).startswith(
        f"autotune: error: Study '{STUDY}' was run with a model file whose content differs"
    )
    study = load_study(STUDY, url)
    stored = study.user_attrs[STUDY_MACHINE]
    study.set_user_attr(STUDY_MACHINE, "cpu, 64 cores (Another CPU)")
    try:
        rc, out, err = finish([_start(_worker_folder(tmp_path, "other"), url)], timeout=300)[0]
    finally:
        study.set_user_attr(STUDY_MACHINE, stored)
    assert "runs on cpu, 64 cores (Another CPU), and this machine is" in _one_error_line(rc, err)


def _one_error_line(rc: int, err: str) -> str:
    """The one line a refused worker prints, exit status 2, no traceback."""
    assert rc == 2 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("autotune: error:")]
    return line


def test_a_new_worker_on_the_finished_study_finishes_it_again(
    shared_search: dict, tmp_path: Path
) -> None:
    """What `autotune confirm` would do: the same command, from any node with a copy of the
    model file, once the others are gone, runs nothing and confirms, exports and reports."""
    folder = _worker_folder(tmp_path, "later")
    rc, out, err = finish([_start(folder, shared_search["url"])], timeout=300)[0]
    assert rc == 0, out + err
    assert f"already holds {N_TRIALS} runs" in out
    assert "\nreport: " in out and (folder / "reports" / f"{STUDY}.html").exists()
    shutil.rmtree(folder / "trials", ignore_errors=True)


# --- a worker killed mid-run -------------------------------------------------------------------

KILLED_TRIALS = 8
_RUNNING_LINE = re.compile(r"trial\s+(\d+) \[.*\] running \(run \d+ of \d+([,;].*)?\)$")


def _ranks_of(pid: int) -> list[int]:
    """Processes that a worker launched and that watch it (their group's owner is ``pid``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(OWNER_VARIABLE.encode() + b"="):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    if json.loads(item.split(b"=", 1)[1])["pid"] == pid:
                        found.append(int(entry.name))
    return found


def _is_reference(url: str, number: int) -> bool:
    trials = load_study(STUDY, url).get_trials(deepcopy=False)
    return any(t.number == number and TrialRecord.of(t).is_reference for t in trials)


def _segments() -> set[str]:
    return {p.name for p in SHM_DIR.glob(f"{SHM_PREFIX}_*")}


@pytest.fixture(scope="module")
def killed_search(
    server_and_url: tuple[PostgresServer, str], tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """Four workers on a fresh database; the one running the reference is killed with SIGKILL
    in the middle of its run (its ranks up), the other three finish the study, then the killed
    one's command is run again in its folder."""
    server, _ = server_and_url
    url = server.create_database("killed_worker")
    segments_before = _segments()
    root = tmp_path_factory.mktemp("killed")
    folders = [_worker_folder(root, f"node{n}") for n in range(WORKERS)]
    logs = [folder / "out.txt" for folder in folders]
    workers = []
    for folder, log in zip(folders, logs, strict=True):
        with log.open("w") as out:
            workers.append(
                subprocess.Popen(
                    _command(url, KILLED_TRIALS),
                    cwd=folder,
                    env=_environment(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
    victim = None
    try:
        # The worker that runs the reference, once its ranks are up: every other worker's
        # trial is scored against the reference, so they wait for its retry.
        deadline = time.monotonic() + 300
        while victim is None:
            for worker, log in zip(workers, logs, strict=True):
                lines = log.read_text().splitlines()
                running = _RUNNING_LINE.search(lines[-1]) if lines else None
                if running and _ranks_of(worker.pid) and _is_reference(url, int(running[1])):
                    victim, victim_log = worker, log
                    break
            assert time.monotonic() < deadline, [log.read_text() for log in logs]
            time.sleep(0.02)
        killed = int(running.group(1))
        ranks = _ranks_of(victim.pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        time.sleep(5)
        ranks_left = [pid for pid in ranks if Path(f"/proc/{pid}").exists()]
        ranks_left += _ranks_of(victim.pid)
    finally:
        others = finish([w for w in workers if w is not victim], timeout=600)
    folder = folders[workers.index(victim)] if victim is not None else folders[0]
    again = finish([_start(folder, url, KILLED_TRIALS)], timeout=300)[0]
    return {
        "url": url,
        "killed": killed,
        "ranks": ranks,
        "ranks_left": ranks_left,
        "others": [
            (rc, log.read_text(), "")
            for (rc, _, _), log in zip(others, [g for g in logs if g != victim_log], strict=True)
        ],
        "again": again,
        "new_segments": _segments() - segments_before,
    }


def test_a_killed_workers_ranks_die_and_leave_no_shared_memory(killed_search: dict) -> None:
    assert killed_search["ranks"], "the worker had launched no ranks when it was killed"
    assert killed_search["ranks_left"] == []
    assert killed_search["new_segments"] == set()


def test_a_killed_workers_run_is_failed_and_run_again_once(killed_search: dict) -> None:
    outcomes = killed_search["others"]
    assert [rc for rc, _, _ in outcomes] == [0] * (WORKERS - 1), _explain(outcomes)
    killed = killed_search["killed"]
    noticed = [out for _, out, _ in outcomes if f"trial {killed}: its process (pid " in out]
    assert len(noticed) == 1, _explain(outcomes)
    study = load_study(STUDY, killed_search["url"])
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[killed].state == optuna.trial.TrialState.FAIL
    (retry,) = [t for t in trials.values() if t.user_attrs.get(RETRY_OF) == killed]
    # The reference's retry ran, and every trial was scored against it.
    assert TrialRecord.of(retry).is_reference and retry.state == optuna.trial.TrialState.COMPLETE
    assert study.user_attrs[STUDY_REFERENCE_NUMBER] == retry.number
    runs = runs_of(study)
    assert len(runs) == KILLED_TRIALS
    keys = [TrialRecord.of(t).config_key for t in runs]
    assert len(set(keys)) == len(keys), Counter(keys).most_common(3)
    # Its configuration ran once more: by the retry, or by a proposal the retry then repeated.
    killed_key = TrialRecord.of(retry).config_key or TrialRecord.of(trials[killed]).config_key
    assert keys.count(killed_key) == 1


def test_the_killed_workers_command_resumes(killed_search: dict) -> None:
    rc, out, err = killed_search["again"]
    assert rc == 0, out + err
    assert f"already holds {KILLED_TRIALS} runs" in out


def test_two_workers_on_one_machine_each_with_its_own_core(
    server_and_url: tuple[PostgresServer, str], tmp_path: Path
) -> None:
    """`--devices 0` and `--devices 1`: one search of 4 runs, each worker's ranks bound to its
    own core, no warning about shared devices, and both count as the same machine."""
    server, _ = server_and_url
    url = server.create_database("own_devices")
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        pytest.skip("needs 2 cores")
    folders = [_worker_folder(tmp_path, f"core{core}") for core in cores]
    workers = [
        subprocess.Popen(
            [*_command(url, 4), "--devices", str(core)],
            cwd=folder,
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for folder, core in zip(folders, cores, strict=True)
    ]
    outcomes = finish(workers, timeout=600)
    assert [rc for rc, _, _ in outcomes] == [0, 0], _explain(outcomes)
    for (_, out, _), folder, core in zip(outcomes, folders, cores, strict=True):
        assert "machine: cpu, 1 cores" in out and "warning: worker" not in out
        logs = [p.read_text() for p in (folder / "trials").rglob("log.txt")]
        places = [line for text in logs for line in text.splitlines() if "local rank" in line]
        assert places and all(f"(cpus {core};" in line for line in places), places
    assert len(runs_of(load_study(STUDY, url))) == 4
