"""Trials across nodes, on two nodes made on this machine (tests/_nodes.py): node 0 is this
network namespace, node 1 another one reached by real ssh, or by srun through a real Slurm
cluster of the two (slurmctld, a slurmd on each node), in a mount namespace where the test's
folder (model file, trials/) is hidden, so the plan and the model must travel with the launch.
Each node has one slot and one core's share, so a 2-rank trial spans both.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _models import SMALL_CLASSIFIER
from _nodes import IFNAME, NODE0, NODE1, Slurm, TwoNodes, missing, missing_slurm

from autotune import TrialConfig, detect_machine, load_study
from autotune._cluster import read_hostfile
from autotune._records import TrialRecord
from autotune._task import load_model_file, reference_settings
from autotune.runner import RunResult, run_trial

pytestmark = [pytest.mark.e2e, pytest.mark.nodes]

REPO = Path(__file__).resolve().parents[1]
MODEL = SMALL_CLASSIFIER
SAMPLES = 1024


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's folder: the model file; trials go under it. Node 1 never sees it."""
    folder = tmp_path_factory.mktemp("project")
    (folder / "model.py").write_text(MODEL)
    return folder


def _need(what: str, lacking: str | None) -> None:
    """Skip when this machine lacks what the tests need, except under CI=true: fail there."""
    if lacking is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}: {lacking}; under CI=true this fails instead of skipping")
    pytest.skip(f"{what}: {lacking}")


@pytest.fixture(scope="module")
def nodes(project: Path) -> Iterator[TwoNodes]:
    """The two nodes, for the module. Without root, iproute2 or sshd the tests skip, except
    under CI=true, where they fail (.ci/run installs openssh-server)."""
    _need("two nodes", missing())
    two = TwoNodes(project)
    try:
        yield two
    finally:
        two.close()


@pytest.fixture(scope="module")
def slurm(nodes: TwoNodes) -> Iterator[tuple[Slurm, str]]:
    """The two nodes as a Slurm cluster, and a job allocation of both (as inside `salloc`).
    Without Slurm's tools the tests skip, except under CI=true (.ci/run installs slurm-wlm)."""
    _need("Slurm", missing_slurm())
    cluster = Slurm(nodes)
    try:
        job = cluster.allocate()
        yield cluster, job
        cluster.cancel(job)
    finally:
        cluster.close()


@pytest.fixture(params=["ssh", "slurm"])
def launcher(
    request: pytest.FixtureRequest, nodes: TwoNodes, monkeypatch: pytest.MonkeyPatch
) -> str:
    """How node 1 is reached, with the environment a user has on a cluster: the ssh options,
    or the Slurm allocation srun joins; and which network interface the ranks talk on (the
    same name on both nodes here)."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", IFNAME)
    if request.param == "ssh":
        monkeypatch.setenv("AUTOTUNE_SSH_OPTIONS", nodes.ssh_options)
    else:
        cluster, job = request.getfixturevalue("slurm")
        for name, value in cluster.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("SLURM_JOB_ID", job)
    return str(request.param)


def _trial_processes() -> list[str]:
    """This machine's processes of a trial (launchers, ranks, node agents, their ssh)."""
    names = ("deepspeed.launcher.launch", "_harness.py", "_node.py", "ssh ", "srun ")
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if any(name in line for name in names)]


def test_a_trial_across_two_nodes_trains_as_on_one(
    nodes: TwoNodes, launcher: str, project: Path
) -> None:
    """The bar: a 2-rank trial across the nodes gives the same metric, and the same training
    loss to 1e-6, as 2 ranks on one node; its log shows 1 local rank of a world of 2; node 1
    got the model file with the plan; nothing is left running on either node."""
    model = project / "model.py"
    optimizer = load_model_file(model).optimizer
    config = TrialConfig.from_settings(
        {**reference_settings(32), "processes": 2}, optimizer, 32, "sqrt"
    )
    machine = detect_machine()
    # Each simulated node: one slot and one of this machine's cores (one thread per rank, as
    # 2 ranks on one 2-core node get).
    two_nodes = dataclasses.replace(
        machine, cores=1, devices=1, nodes=read_hostfile(nodes.hostfile), launcher=launcher
    )
    assert two_nodes.spans_nodes(2) and not machine.spans_nodes(2)
    across_folder = project / "trials" / f"across_{launcher}"
    across = run_trial(config, two_nodes, model, SAMPLES, [0], across_folder, 180)
    assert across.ok, across.failure_reason
    one = run_trial(
        config, machine, model, SAMPLES, [0], project / "trials" / f"one_{launcher}", 180
    )
    assert one.ok, one.failure_reason
    assert across.measurements is not None and one.measurements is not None
    assert across.measurements["world_size"] == one.measurements["world_size"] == 2
    assert across.measurements["metric"] == pytest.approx(one.measurements["metric"], abs=1e-6)
    assert across.measurements["train_loss"] == pytest.approx(
        one.measurements["train_loss"], abs=1e-6
    )
    log = (across.directory / "log.txt").read_text()
    assert "rank 0 of a world of 2: local rank 0 of 1" in log
    assert "rank 1 of a world of 2: local rank 0 of 1" in log
    assert f"WORLD INFO DICT: {{'{NODE0}': [0], '{NODE1}': [0]}}" in log
    assert "(sent with the trial)" in log  # node 1 could not see the project's folder
    assert "rank 1 of a world of 2: local rank 1 of 2" in (one.directory / "log.txt").read_text()
    _nothing_left(nodes)


def _nothing_left(nodes: TwoNodes) -> None:
    """No process of a trial on either node, a few seconds after it ended (srun's step ends
    through slurmd, a moment after srun itself)."""
    deadline = time.monotonic() + 10
    while nodes.node1_processes() or _trial_processes():
        assert time.monotonic() < deadline, (nodes.node1_processes(), _trial_processes())
        time.sleep(0.5)


def test_killing_node_1s_launcher_fails_the_trial_and_ends_both_nodes(
    nodes: TwoNodes, launcher: str, project: Path
) -> None:
    """The bar: killing node 1's launcher fails the trial and leaves no process on either
    node."""
    model = project / "model.py"
    optimizer = load_model_file(model).optimizer
    config = TrialConfig.from_settings(
        {**reference_settings(32), "processes": 2}, optimizer, 32, "sqrt"
    )
    machine = dataclasses.replace(
        detect_machine(),
        cores=1,
        devices=1,
        nodes=read_hostfile(nodes.hostfile),
        launcher=launcher,
    )
    directory = project / "trials" / f"killed_{launcher}"
    results: list[RunResult] = []
    # Enough samples to be still training when the launcher is killed.
    runner = threading.Thread(
        target=lambda: results.append(
            run_trial(config, machine, model, 400_000, [0], directory, 300)
        )
    )
    runner.start()
    try:
        log = directory / "log.txt"
        deadline = time.monotonic() + 120
        while not (log.exists() and "engine ready" in log.read_text()):
            assert time.monotonic() < deadline, "the trial never started training"
            assert runner.is_alive(), results and results[0].failure_reason
            time.sleep(0.2)
        launchers = [p for p in nodes.node1_processes() if "deepspeed.launcher.launch" in p]
        assert len(launchers) == 1, nodes.node1_processes()
        os.kill(int(launchers[0].split()[0]), signal.SIGKILL)
    finally:
        runner.join(timeout=120)
    assert not runner.is_alive()
    result = results[0]
    assert not result.ok
    assert result.failure_reason is not None
    assert f"node 1 ({NODE1})" in result.failure_reason
    assert "exit status 137" in result.failure_reason
    _nothing_left(nodes)


SPACE = textwrap.dedent(
    """
    # The reference's layout on one process, and the same on two: with one slot per node,
    # the second spans both nodes.
    micro_batch_size: [32]
    gradient_accumulation_steps: [1]
    zero_stage: [0]
    precision: [fp32]
    processes: [1, 2]
    """
)


@pytest.mark.subprocess
@pytest.mark.parametrize("launcher", ["ssh"], indirect=True)
def test_a_search_with_a_hostfile_runs_its_two_rank_trial_across_the_nodes(
    nodes: TwoNodes, launcher: str, project: Path
) -> None:
    """`autotune search --hostfile`: the nodes are checked and named, the 2-process trial runs
    across them (1 local rank of a world of 2), and the export's command names both nodes."""
    (project / "space.yaml").write_text(SPACE)
    command = [
        sys.executable,
        "-m",
        "autotune.cli",
        "search",
        "model.py",
        "--space",
        "space.yaml",
        "--hostfile",
        str(nodes.hostfile),
        "--sampler",
        "tpe",
        "--n-trials",
        "2",
        "--train-samples",
        str(SAMPLES),
        "--min-measure-seconds",
        "0.3",
        "--confirm",
        "0",
        # Across the nodes the run is several times slower than on one process; the early
        # stop would end it once it cannot win, sooner or later by the machine's speed.
        "--no-early-stop",
    ]
    path = os.environ.get("PYTHONPATH")
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO) + (os.pathsep + path if path else ""),
        DS_ACCELERATOR="cpu",
    )
    done = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"nodes: {NODE0} (1 slots), {NODE1} (1 slots)" in done.stdout
    study = load_study("model", "sqlite:///" + str(project / "trials" / "autotune.db"))
    records = [TrialRecord.of(t) for t in study.trials]
    two = [r for r in records if r.settings.get("processes") == 2]
    assert len(two) == 1 and two[0].is_ok, [(r.status, r.reason) for r in records]
    logs = list((project / "trials").glob("model/**/log.txt"))
    assert any("rank 1 of a world of 2: local rank 0 of 1" in p.read_text() for p in logs)
    assert _trial_processes() == [] and nodes.node1_processes() == []


BATCH_SCRIPT = textwrap.dedent(
    """\
    #!/bin/bash
    # docs/many-workers.md's batch script, one slot per node, autotune run by this Python.
    scontrol show hostnames "$SLURM_JOB_NODELIST" | sed 's/$/ slots=1/' > hostfile
    {python} -m autotune.cli search model.py --space space.yaml --hostfile hostfile \\
        --launcher slurm --sampler tpe --n-trials 2 --train-samples {samples} \\
        --min-measure-seconds 0.3 --confirm 0 --no-early-stop
    """
)


@pytest.mark.subprocess
def test_the_documented_batch_script_searches_across_the_allocation(
    nodes: TwoNodes, slurm: tuple[Slurm, str], project: Path
) -> None:
    """`sbatch --nodes=2` of the docs' script: the search runs on the allocation's first node,
    checks node 1 through srun, and runs its 2-process trial across both nodes."""
    cluster, _ = slurm
    folder = project / "batch"  # under the project: node 1 cannot see it either
    folder.mkdir()
    (folder / "model.py").write_text(MODEL)
    (folder / "space.yaml").write_text(SPACE)
    script = folder / "search.sh"
    script.write_text(BATCH_SCRIPT.format(python=sys.executable, samples=SAMPLES))
    path = os.environ.get("PYTHONPATH")
    env = dict(
        os.environ,
        **cluster.env,
        PYTHONPATH=str(REPO) + (os.pathsep + path if path else ""),
        DS_ACCELERATOR="cpu",
        GLOO_SOCKET_IFNAME=IFNAME,
    )
    env.pop("SLURM_JOB_ID", None)
    done = subprocess.run(
        ["sbatch", "--wait", "--nodes=2", "--ntasks-per-node=1", f"--chdir={folder}"]
        + [f"--output={folder / 'out.txt'}", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = (folder / "out.txt").read_text() if (folder / "out.txt").exists() else ""
    assert done.returncode == 0, out + done.stderr + cluster.logs()
    assert f"nodes: {NODE0} (1 slots), {NODE1} (1 slots)" in out
    study = load_study("model", "sqlite:///" + str(folder / "trials" / "autotune.db"))
    records = [TrialRecord.of(t) for t in study.trials]
    two = [r for r in records if r.settings.get("processes") == 2]
    assert len(two) == 1 and two[0].is_ok, [(r.status, r.reason) for r in records]
    logs = [p.read_text() for p in (folder / "trials").glob("model/**/log.txt")]
    assert any("rank 1 of a world of 2: local rank 0 of 1" in text for text in logs)
    assert any("(sent with the trial)" in text for text in logs)
    _nothing_left(nodes)


SEARCH_STAND_IN = textwrap.dedent(
    """
    # What a search does for a trial across the nodes, in a process the test can kill.
    import dataclasses
    import sys
    from pathlib import Path

    from autotune import TrialConfig, detect_machine
    from autotune._cluster import read_hostfile
    from autotune._task import load_model_file, reference_settings
    from autotune.runner import run_trial

    model, hostfile, directory = map(Path, sys.argv[1:4])
    launcher = sys.argv[4]
    optimizer = load_model_file(model).optimizer
    settings = {**reference_settings(32), "processes": 2}
    config = TrialConfig.from_settings(settings, optimizer, 32, "sqrt")
    machine = detect_machine()
    nodes = read_hostfile(hostfile)
    machine = dataclasses.replace(machine, cores=1, devices=1, nodes=nodes, launcher=launcher)
    run_trial(config, machine, model, 400_000, [0], directory, 300)
    """
)


def test_a_search_killed_mid_trial_leaves_no_rank_on_either_node(
    nodes: TwoNodes, launcher: str, project: Path, tmp_path: Path
) -> None:
    """SIGKILL of the search's process: its ssh or srun to node 1 dies with it
    (PR_SET_PDEATHSIG), node 1's side sees its input close and ends its ranks; node 0's ranks
    see their owner gone. No process of the trial is left on either node 5 s later."""
    script = tmp_path / "search_stand_in.py"
    script.write_text(SEARCH_STAND_IN)
    directory = project / "trials" / f"search_killed_{launcher}"
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=str(REPO) + (os.pathsep + path if path else ""))
    search = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(project / "model.py"),
            str(nodes.hostfile),
            str(directory),
            launcher,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        log = directory / "log.txt"
        deadline = time.monotonic() + 120
        while not (log.exists() and log.read_text().count("engine ready") == 2):
            assert time.monotonic() < deadline and search.poll() is None, "no training started"
            time.sleep(0.2)
        assert any("deepspeed.launcher.launch" in p for p in nodes.node1_processes())
    finally:
        search.kill()
        search.wait()
    time.sleep(5)
    assert nodes.node1_processes() == []
    assert _trial_processes() == []
