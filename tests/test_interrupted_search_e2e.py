"""A search stopped in the middle of a 2-rank trial (SIGKILL, SIGTERM, Ctrl-C): no rank
outlives it, none of its DeepSpeed /dev/shm segments stays, and the same command run again runs
the cut-short configuration once more and ends with the runs asked for. And a warm group asleep
on a build lock dies with its owner. Real `autotune search` processes and real DeepSpeed ranks
on the CPU; the model holds its 2-rank trial until the test lets it go."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from autotune import load_study
from autotune._records import RETRY_OF
from autotune.runner import remove_orphaned_buffers
from autotune.runner._owner import SHM_DIR, SHM_PREFIX, registry_directory
from autotune.study import runs_of

pytestmark = [pytest.mark.e2e, pytest.mark.subprocess]

REPO = Path(__file__).resolve().parents[1]
HOLD_VARIABLE = "AUTOTUNE_TEST_HOLD"
HOLD_MODEL = textwrap.dedent(
    f"""
    import os
    import time
    from pathlib import Path

    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    BATCH_SIZE = 32

    class Hold(nn.Module):
        # In a 2-rank trial: say so, then wait while the test's hold file exists.
        def forward(self, x):
            hold = os.environ.get("{HOLD_VARIABLE}")
            if hold and os.environ.get("WORLD_SIZE") == "2" and os.path.exists(hold):
                Path(hold + ".rank" + os.environ["RANK"]).touch()
                while os.path.exists(hold):
                    time.sleep(0.05)
            return x

    def layers():
        return [nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4), Hold()]

    def model():
        return nn.Sequential(*layers())

    def train_data():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1200, 16, generator=g)
        return TensorDataset(x, x[:, :4].argmax(1))
    """
)
STARTED_SECONDS = 240
"""The search's start, its reference and the 2-rank group's launch, on 2 busy cores."""


def _search_command(folder: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autotune.cli",
        "search",
        str(folder / "hold.py"),
        "--space",
        str(folder / "space.yaml"),
        "--sampler",
        "grid",
        "--n-trials",
        "2",
        "--train-samples",
        "512",
        "--min-measure-seconds",
        "0.2",
        "--confirm",
        "0",
        "--study",
        "hold",
        "--storage",
        f"sqlite:///{folder}/study.db",
        *extra,
    ]


def _environment(folder: Path) -> dict[str, str]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, HOLD_VARIABLE: str(folder / "hold")}


def _alive_in(folder: Path) -> list[str]:
    """The command lines of live processes working in ``folder`` (the search, its launchers,
    ranks and their DataLoader workers all do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) != folder:
                continue
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(f"{entry.name}: {command}")
    return found


def _wait_for(
    condition: Callable[[], bool], seconds: float, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the search ended first ({process.returncode})"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _ports_of(pid: int) -> set[int]:
    """The ports of the groups process ``pid`` has launched and not yet ended."""
    ports = set()
    for record in registry_directory().glob("group-*.json"):
        data = json.loads(record.read_text())
        if data["owner"]["pid"] == pid:
            ports.add(int(data["port"]))
    return ports


def _segments(ports: set[int]) -> list[Path]:
    return [
        segment
        for port in ports
        for segment in SHM_DIR.glob(f"{SHM_PREFIX}_{os.getuid()}_*_{port}_*")
    ]


def _stop_mid_trial(folder: Path, how: signal.Signals, *extra: str) -> set[int]:
    """Start a search, stop it with ``how`` while both ranks of its 2-rank trial run, and check
    that nothing of it is left alive 5 s later; returns the ports of its groups."""
    folder = folder.resolve()
    (folder / "hold.py").write_text(HOLD_MODEL)
    (folder / "space.yaml").write_text("processes: [1, 2]\n")
    (folder / "hold").touch()
    with (folder / "first.log").open("wb") as log:
        search = subprocess.Popen(
            _search_command(folder, *extra),
            cwd=folder,
            env=_environment(folder),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            ranks_hold = [folder / "hold.rank0", folder / "hold.rank1"]
            _wait_for(lambda: all(p.exists() for p in ranks_hold), STARTED_SECONDS, search)
            ports = _ports_of(search.pid)
            # DeepSpeed's shm op: one segment per rank of every live group: the 2-rank trial's,
            # and with warm groups the reference's 1-rank group, kept for the next 1-rank trial.
            live_ranks = 2 if "--fresh-launches" in extra else 3
            assert len(_segments(ports)) == live_ranks
            search.send_signal(how)
            search.wait(timeout=30)
        finally:
            search.kill()
            search.wait()
    time.sleep(5)
    output = (folder / "first.log").read_text()
    assert _alive_in(folder) == [], output[-3000:]
    assert _segments(ports) == []
    if how != signal.SIGKILL:
        assert search.returncode == 128 + how
        assert "interrupted; run the same command again to resume" in output
    (folder / "hold").unlink()
    return ports


def _resume(folder: Path, ports: set[int], *extra: str) -> tuple[optuna.Study, str]:
    """Run the same command again to its end: the study and what it printed."""
    folder = folder.resolve()
    done = subprocess.run(
        _search_command(folder, *extra),
        cwd=folder,
        env=_environment(folder),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _segments(ports) == [] and _alive_in(folder) == []
    return load_study("hold", f"sqlite:///{folder}/study.db"), done.stdout


def _check_retried_once(study: optuna.Study, output: str) -> optuna.trial.FrozenTrial:
    """The 2-rank trial was cut short, ran again exactly once, and the study holds 2 runs."""
    two_ranks = [t for t in study.get_trials() if t.params.get("processes") == 2]
    (cut,) = [t for t in two_ranks if t.state == optuna.trial.TrialState.FAIL]
    (ran,) = [t for t in two_ranks if t.user_attrs.get("status") == "ok"]
    assert ran.user_attrs[RETRY_OF] == cut.number
    assert len(runs_of(study)) == 2
    assert sum(" running (run " in line for line in output.splitlines()) == 1
    return cut


def test_a_search_killed_mid_trial_leaves_nothing_and_resumes(tmp_path: Path) -> None:
    """SIGKILL, warm group: the launcher dies with the search, the ranks see it gone and free
    their segments; the resumed search fails the trial left RUNNING and runs it again."""
    ports = _stop_mid_trial(tmp_path, signal.SIGKILL)
    study, output = _resume(tmp_path, ports)
    cut = _check_retried_once(study, output)
    assert f"trial {cut.number}: its process" in output and "queued again" in output


@pytest.mark.parametrize(
    ("how", "launch"),
    [(signal.SIGTERM, ("--fresh-launches",)), (signal.SIGINT, ())],
    ids=["SIGTERM, fresh launches", "Ctrl-C, warm group"],
)
def test_a_search_interrupted_mid_trial_leaves_nothing_and_resumes(
    tmp_path: Path, how: signal.Signals, launch: tuple[str, ...]
) -> None:
    """SIGTERM or Ctrl-C (SIGINT to the search alone, as a terminal's reaches only its own
    process group): the search kills its group at once, queues the trial's retry and says how
    to resume."""
    ports = _stop_mid_trial(tmp_path, how, *launch)
    study, output = _resume(tmp_path, ports, *launch)
    _check_retried_once(study, output)


LOCKED_GROUP = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from autotune.runner import WarmWorkers, free_port

    folder = Path(sys.argv[1])
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(folder / "ext"), "DS_ACCELERATOR": "cpu"}
    with WarmWorkers(folder / "workers") as workers:
        workers.run(folder / "plan.json", 1, free_port(), 600, env)
    """
)


def _cpu_ticks(pid: str) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def test_a_group_asleep_on_a_build_lock_dies_with_its_owner(tmp_path: Path) -> None:
    """torch waits forever on an op's build lock left behind; a warm group's rank asleep there
    must still notice that its search was killed."""
    folder = tmp_path.resolve()
    lock = folder / "ext" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    owner = subprocess.Popen(
        [sys.executable, "-c", LOCKED_GROUP, str(folder)],
        cwd=folder,
        env=_environment(folder),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def rank_asleep() -> bool:
            ranks = [
                line.split(":")[0]
                for line in _alive_in(folder)
                if "_harness.py" in line and "deepspeed.launcher" not in line
            ]
            if not ranks:
                return False
            before = _cpu_ticks(ranks[0])
            time.sleep(2.0)
            return _cpu_ticks(ranks[0]) - before <= 4  # imports done, asleep on the lock

        _wait_for(rank_asleep, 120, owner)
        owner.kill()
        owner.wait()
    finally:
        owner.kill()
        owner.wait()
    time.sleep(5)
    assert _alive_in(folder) == []
    remove_orphaned_buffers()  # what the next search does: the dead owner's record goes
    assert _ports_of(owner.pid) == set()
