"""Nodes from a hostfile: reading it, where a trial's ranks go, what the feasibility rules and
the export make of the nodes, and how a node is reached (pure logic; tests/test_nodes_e2e.py
runs trials across two real nodes)."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest

from autotune import Machine, TrialConfig, why_not_runnable
from autotune._cluster import Node, is_this_machine, node_command, placement, read_hostfile
from autotune._errors import UserError
from autotune._memory import memory_limit_bytes
from autotune._task import reference_settings
from autotune.runner._nodes import forwarded_environment, root_failure

CPU = Machine(accelerator="cpu", devices=8, cores=8, fp16=False, bf16=True)
GPUS = Machine(accelerator="cuda", devices=4, cores=32, fp16=True, bf16=True, device_name="H100")
NODES = (Node("10.0.0.1", 4), Node("10.0.0.2", 4), Node("10.0.0.3", 2))
OPTIMIZER = {"type": "Adam", "params": {"lr": 1e-3}}


def _config(**settings: object) -> TrialConfig:
    return TrialConfig.from_settings({**reference_settings(32), **settings}, OPTIMIZER, 32, "sqrt")


def test_a_hostfile_reads_as_deepspeed_writes_it(tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# the cluster\n\nworker-0 slots=8\nworker-1  slots = 4   # half\n")
    assert read_hostfile(hostfile) == (Node("worker-0", 8), Node("worker-1", 4))


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("worker-0 slots=8\nworker-1\n", "line 2: expected 'HOST slots=N'"),
        ("worker-0 slots=0\n", "line 1: expected 'HOST slots=N' with N at least 1"),
        ("worker-0 slots=2\nworker-0 slots=2\n", "line 2: worker-0 is listed twice"),
        ("# nothing\n\n", "lists no node"),
    ],
)
def test_a_bad_hostfile_says_which_line(tmp_path: Path, text: str, phrase: str) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(text)
    with pytest.raises(UserError, match=phrase):
        read_hostfile(hostfile)


def test_ranks_fill_the_nodes_in_order() -> None:
    assert placement(NODES, 3) == ((NODES[0], 3),)
    assert placement(NODES, 6) == ((NODES[0], 4), (NODES[1], 2))
    assert placement(NODES, 10) == ((NODES[0], 4), (NODES[1], 4), (NODES[2], 2))
    assert placement((), 5) == ((Node("localhost", 5), 5),)
    with pytest.raises(ValueError):
        placement(NODES, 11)


def test_a_machine_with_nodes_counts_their_slots() -> None:
    alone = CPU
    cluster = dataclasses.replace(GPUS, nodes=NODES)
    assert alone.slots == 8 and cluster.slots == 10
    assert not cluster.spans_nodes(4) and cluster.spans_nodes(5)
    assert not dataclasses.replace(GPUS, nodes=NODES[:1]).spans_nodes(4)
    assert cluster.local_ranks(6) == 4 and cluster.local_ranks(2) == 2
    assert "3 nodes, 10 slots" in cluster.describe()
    assert "nodes" not in GPUS.describe()


def test_the_feasibility_rules_count_the_hostfiles_slots() -> None:
    cluster = dataclasses.replace(GPUS, nodes=NODES)
    args = (4096, 4096, ("Linear",))
    assert why_not_runnable(_config(processes=8), GPUS, *args) == (
        "8 processes but this machine has 4 devices"
    )
    assert why_not_runnable(_config(processes=8), cluster, *args) is None
    assert why_not_runnable(_config(processes=16), cluster, *args) == (
        "16 processes but the hostfile has 10 slots on 3 nodes"
    )


def test_cpu_ranks_share_only_their_own_nodes_cores() -> None:
    cluster = dataclasses.replace(CPU, cores=4, devices=4, nodes=(Node("a", 4), Node("b", 4)))
    # 8 ranks: 4 on each node, one core each; a DataLoader worker each would need 8 per node.
    assert _config(processes=8).threads_per_process(cluster) == 1
    assert _config(processes=2).threads_per_process(cluster) == 2
    assert why_not_runnable(_config(processes=8, num_workers=1), cluster, 4096, 4096, ()) == (
        "4 ranks on a node with 1 DataLoader workers each need 8 cores; this machine has 4"
    )
    whole = memory_limit_bytes(cluster, 1, None)
    assert memory_limit_bytes(cluster, 8, None) == pytest.approx(whole / 4)


def test_the_export_names_each_nodes_ranks() -> None:
    cluster = dataclasses.replace(GPUS, nodes=NODES)
    recipe = _config(processes=6).launch_recipe(cluster)
    assert recipe["command"].endswith(
        "deepspeed --hostfile hostfile --include 10.0.0.1:0,1,2,3@10.0.0.2:0,1 "
        "--master_addr 10.0.0.1 train.py --deepspeed_config ds_config.json"
    )
    assert recipe["nodes"] == [{"host": "10.0.0.1", "ranks": 4}, {"host": "10.0.0.2", "ranks": 2}]
    slurm = dataclasses.replace(cluster, launcher="slurm")
    assert "--launcher slurm train.py" in _config(processes=6).launch_recipe(slurm)["command"]
    local = _config(processes=4).launch_recipe(cluster)
    assert "deepspeed --num_gpus 4 train.py" in local["command"] and "nodes" not in local


def test_a_node_is_reached_by_ssh_or_srun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_SSH_OPTIONS", "-i /keys/id -p 2222")
    command = ["/venv/bin/python", "-u", "/venv/autotune/runner/_node.py"]
    ssh = node_command("ssh", "node-1", command)
    assert ssh[:5] == ["ssh", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
    assert ssh[5:9] == ["-i", "/keys/id", "-p", "2222"]
    assert ssh[9] == "node-1" and shlex.split(ssh[10]) == command
    srun = node_command("slurm", "node-1", command)
    assert srun[0] == "srun" and "--nodelist=node-1" in srun and srun[-3:] == command


def test_ranks_on_other_nodes_get_the_trials_variables_and_the_networks() -> None:
    env = {
        "PATH": "/bin",
        "HOME": "/root",
        "NCCL_SOCKET_IFNAME": "ib0",
        "GLOO_SOCKET_IFNAME": "eth1",
        "PYTHONPATH": "/src",
        "AUTOTUNE_SSH_OPTIONS": "-i key",
    }
    sent = forwarded_environment(env, {"OMP_NUM_THREADS": "4", "DS_ACCELERATOR": "cpu"})
    assert sent == {
        "NCCL_SOCKET_IFNAME": "ib0",
        "GLOO_SOCKET_IFNAME": "eth1",
        "PYTHONPATH": "/src",
        "OMP_NUM_THREADS": "4",
        "DS_ACCELERATOR": "cpu",
    }


def test_this_machine_is_told_from_others() -> None:
    assert is_this_machine("127.0.0.1")
    assert not is_this_machine("198.51.100.7")  # TEST-NET-2: nobody's address
    assert not is_this_machine("no-such-host.invalid")


def test_the_rank_that_failed_is_named_not_its_peers() -> None:
    lost = "error: RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer"
    oom = "oom: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert root_failure([lost, oom]) == oom
    assert root_failure([lost]) is None  # then the node that ended first is named
    assert root_failure([]) is None
