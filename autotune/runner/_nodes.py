"""Run one trial across nodes: DeepSpeed's node launcher here for node 0's ranks, and on each
other node of the hostfile through ssh or srun, all with the same ``--world_info`` and node 0's
address, as DeepSpeed's multinode runner starts them.

Every node other than this one runs ``_node.py``, which gets the plan, the model file's content
and the trial's environment on its standard input, so nothing needs a shared filesystem. The
trial ends on every node when it ends here: closing that input ends the node's ranks, and the
ssh or srun process itself dies with the search (``PR_SET_PDEATHSIG``). Nothing is matched by
name, so other DeepSpeed jobs on the nodes are left alone (DeepSpeed's pdsh runner kills every
process named like its own).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from autotune._cluster import Node, is_this_machine, node_command, placement, read_hostfile
from autotune._errors import UserError
from autotune._machine import Machine
from autotune.runner._node import FAILURE_MARK
from autotune.runner._owner import guarded_command
from autotune.runner._protocol import FAILURE_GLOB, TrialPlan, failure_file
from autotune.runner._workers import Outcome, end_group, launch_command, launch_group

NODE_AGENT = Path(__file__).resolve().with_name("_node.py")
POLL_SECONDS = 0.02
FORWARDED_PREFIXES = ("NCCL_", "GLOO_", "UCX_", "FI_", "TORCH_", "DS_", "OMP_", "MKL_", "KMP_")
"""Variables a trial's ranks on other nodes get from the search's environment, besides those the
trial sets (DeepSpeed's runner forwards NCCL_*, PYTHON* and its .deepspeed_env the same way)."""
FORWARDED = ("PYTHONPATH", "PYTHONUNBUFFERED", "LD_LIBRARY_PATH", "TORCH_EXTENSIONS_DIR")
END_GRACE_SECONDS = 10.0
"""How long a node's ssh or srun gets to finish on its own once the trial has ended."""
CHECK_SECONDS = 120.0
"""How long a node gets to answer the check before the search starts (ssh and an import)."""


def with_nodes(machine: Machine, hostfile: Path, launcher: str) -> Machine:
    """``machine`` with the hostfile's nodes, once the file says this machine is its first
    node with no more slots than it has devices.

    Raises:
        UserError: The hostfile is unreadable or malformed, its first node is another machine,
            or it gives this one more slots than devices, or srun is asked for outside Slurm.
    """
    nodes = read_hostfile(hostfile)
    first = nodes[0]
    if not is_this_machine(first.host):
        raise UserError(
            f"--hostfile {hostfile}: its first node, {first.host}, is not an address of this "
            "machine. Run the search on the first node: every trial's ranks meet at its address."
        )
    if first.slots > machine.devices:
        unit = "cores" if machine.accelerator == "cpu" else "devices"
        raise UserError(
            f"--hostfile {hostfile} gives this machine {first.slots} slots, but it has "
            f"{machine.devices} {unit}."
        )
    if launcher == "slurm" and "SLURM_JOB_ID" not in os.environ:
        raise UserError(
            "--launcher slurm starts ranks with srun inside a Slurm allocation; run the search "
            "from an sbatch script or salloc, or use --launcher ssh."
        )
    return dataclasses.replace(machine, nodes=nodes, launcher=launcher)


def check_nodes(machine: Machine) -> None:
    """Check that every node other than this one can be reached by its launcher and imports
    DeepSpeed and autotune with this Python, all at once.

    Raises:
        UserError: One line per node that cannot, with what it said.
    """
    probe = [sys.executable, str(NODE_AGENT), "--check"]
    started = []
    for node in machine.nodes[1:]:
        command = node_command(machine.launcher, node.host, probe)
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise UserError(
                f"--launcher {machine.launcher} runs {command[0]}, which cannot be started "
                f"here: {exc.strerror or exc}."
            ) from None
        started.append((node, process))
    problems = []
    for node, process in started:
        try:
            _, err = process.communicate(timeout=CHECK_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            problems.append(f"{node.host}: no answer within {CHECK_SECONDS:g} s")
            continue
        if process.returncode != 0:
            said = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
            problems.append(
                f"{node.host}: {said[-1].strip() if said else 'no message'} "
                f"(exit status {process.returncode})"
            )
    if problems:
        raise UserError(
            f"Trials cannot start on {len(problems)} node(s) of the hostfile with "
            f"{machine.launcher} and {sys.executable}: " + "; ".join(problems)
        )


def forwarded_environment(env: dict[str, str], set_by_trial: dict[str, str]) -> dict[str, str]:
    """What of the trial's environment the ranks on other nodes get."""
    sent = {k: v for k, v in env.items() if k in FORWARDED or k.startswith(FORWARDED_PREFIXES)}
    return {**sent, **set_by_trial}


def free_port_on(address: str) -> int:
    """A TCP port that nothing listens on now at ``address`` (node 0's, for the master port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def launch_across(
    plan_path: Path,
    plan: TrialPlan,
    machine: Machine,
    env: dict[str, str],
    set_by_trial: dict[str, str],
    log: Path,
    timeout: float,
) -> Outcome:
    """Run ``plan`` on the hostfile's first nodes (as many as its processes need) and wait for
    it, at most ``timeout`` seconds; every node's output goes to ``log``."""
    placed = placement(machine.nodes, plan.config.processes)
    world = {node.host: list(range(count)) for node, count in placed}
    world[placed[0][0].host] = machine.local_device_ids(placed[0][1])  # this node's --devices
    master = placed[0][0].host
    port = free_port_on(master)
    harness_args = ["--plan", str(plan_path)]
    model = Path(plan.model_path).read_bytes()
    request = {
        "world": world,
        "master_addr": master,
        "master_port": port,
        "plan": plan.to_json(),
        "model_path": plan.model_path,
        "model": base64.b64encode(model).decode(),
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "environment": forwarded_environment(env, set_by_trial),
    }
    remotes: list[tuple[int, Node, subprocess.Popen[bytes]]] = []
    with log.open("wb") as log_file:
        local = launch_group(
            placed[0][1],
            port,
            harness_args,
            log_file,
            env,
            command=launch_command(0, port, harness_args, world, 0, master),
        )
        try:
            for node_rank, (node, _) in enumerate(placed[1:], start=1):
                process = _start_node(machine, node, {**request, "node_rank": node_rank}, log_file)
                remotes.append((node_rank, node, process))
            outcome = Outcome(1)  # until the wait says otherwise (an exception, Ctrl-C)
            outcome = _wait(local.process, remotes, timeout)
        finally:
            _end_nodes(remotes, finished=outcome.returncode == 0)
            end_group(local)
    return _with_node_reason(outcome, log, plan_path.parent, remotes)


def _start_node(
    machine: Machine, node: Node, request: dict[str, object], log_file: IO[bytes]
) -> subprocess.Popen[bytes]:
    """The node's launcher, started through ssh or srun; its plan goes on its input, which
    stays open for as long as the trial runs."""
    command = node_command(machine.launcher, node.host, [sys.executable, "-u", str(NODE_AGENT)])
    process = subprocess.Popen(
        guarded_command(command),
        stdin=subprocess.PIPE,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(request).encode() + b"\n")
    process.stdin.flush()
    return process


def _wait(
    local: subprocess.Popen[bytes],
    remotes: list[tuple[int, Node, subprocess.Popen[bytes]]],
    timeout: float,
) -> Outcome:
    """Until node 0's launcher ends, a node ends with a failure, or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        returncode = local.poll()
        if returncode is not None:
            return Outcome(returncode)
        for node_rank, node, process in remotes:
            status = process.poll()
            if status not in (None, 0):
                return Outcome(status, reason=f"node {node_rank} ({node.host})")
        if time.monotonic() > deadline:
            return Outcome(-signal.SIGKILL, timed_out=True)
        time.sleep(POLL_SECONDS)


def _end_nodes(remotes: list[tuple[int, Node, subprocess.Popen[bytes]]], finished: bool) -> None:
    """Let go of every node: once the trial has ``finished``, give its ranks a moment to end on
    their own; then close its input (its ranks end), give its ssh or srun a moment to bring back
    the last lines, and kill what is left of it."""
    if finished:
        deadline = time.monotonic() + END_GRACE_SECONDS
        for _, _, process in remotes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
    for _, _, process in remotes:
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
    deadline = time.monotonic() + END_GRACE_SECONDS
    for _, _, process in remotes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


_PEER_LOST = re.compile(
    r"connection (closed|reset)|broken pipe|peer|socket|timed? ?out|nccl|gloo", re.IGNORECASE
)
"""What a rank reports when another rank, not itself, went wrong (its collective lost a peer)."""


def root_failure(reasons: list[str]) -> str | None:
    """Of the failed ranks' reasons, the one that is the cause: the first that is not a lost
    peer (a rank whose neighbour on another node died fails in its collective too); None when
    each is."""
    return next((r for r in reasons if not _PEER_LOST.search(r)), None)


def _with_node_reason(
    outcome: Outcome,
    log: Path,
    directory: Path,
    remotes: list[tuple[int, Node, subprocess.Popen[bytes]]],
) -> Outcome:
    """The outcome, with the failures that other nodes' ranks sent back written beside the
    plan, and its reason: the failing rank's own (on whichever node), or else what ended a
    node first, in words."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(FAILURE_MARK):
            with contextlib.suppress(ValueError, KeyError):
                failure = json.loads(line[len(FAILURE_MARK) :])
                (directory / failure_file(int(failure["rank"]))).write_text(json.dumps(failure))
    reasons = []
    for path in sorted(directory.glob(FAILURE_GLOB)):
        with contextlib.suppress(ValueError, KeyError, OSError):
            reasons.append(str(json.loads(path.read_text())["reason"]))
    if outcome.returncode == 0 and not outcome.timed_out:
        return outcome
    cause = root_failure(reasons)
    if cause is not None:
        return dataclasses.replace(
            outcome, reason=f"{cause} (log: {log})" if cause.startswith("error") else cause
        )
    if outcome.reason is None:
        return outcome  # node 0's own ranks' failure files say why
    if outcome.returncode == 255:
        reason = (
            f"error: the connection to {outcome.reason} failed or its command was killed "
            f"(exit status 255; log: {log})"
        )
    else:
        reason = (
            f"error: {outcome.reason} ended with exit status {outcome.returncode} before the "
            f"trial finished (log: {log})"
        )
    return dataclasses.replace(outcome, reason=reason)
