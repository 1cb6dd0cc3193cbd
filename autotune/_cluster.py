"""The nodes a trial may span: a DeepSpeed hostfile read into `Node` values, where a trial's
ranks go on them, and how a rank's node is reached (ssh, or srun inside a Slurm allocation).

A hostfile has one node per line, ``HOST slots=N`` (N ranks: GPUs, or cores on the CPU
accelerator), ``#`` comments and blank lines allowed, as DeepSpeed's own runner reads it. The
search runs on the first node; a trial whose processes exceed that node's slots takes the next
nodes in order. Only the standard library is imported here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import socket
from pathlib import Path

from autotune._errors import UserError

LAUNCHERS = ("ssh", "slurm")
"""How the launcher on a node other than the first is started: ``ssh HOST`` (plain OpenSSH,
what pdsh runs per host), or ``srun`` on one node of the current Slurm allocation (DeepSpeed's
runner calls that launcher ``slurm`` too)."""

_LINE = re.compile(r"^(?P<host>[^\s=#]+)\s+slots\s*=\s*(?P<slots>\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class Node:
    """One line of a hostfile: a host name or address the others can reach, and its slots."""

    host: str
    slots: int


def read_hostfile(path: Path) -> tuple[Node, ...]:
    """The nodes of a DeepSpeed hostfile, in its order.

    Raises:
        UserError: The file is missing, a line is not ``HOST slots=N`` with N at least 1, a
            host is listed twice, or no node is listed.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"--hostfile {path}: {exc.strerror or exc}") from None
    nodes: list[Node] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None or int(match["slots"]) < 1:
            raise UserError(
                f"--hostfile {path}, line {number}: expected 'HOST slots=N' with N at least 1, "
                f"got {raw.strip()!r}"
            )
        if any(node.host == match["host"] for node in nodes):
            raise UserError(f"--hostfile {path}, line {number}: {match['host']} is listed twice")
        nodes.append(Node(match["host"], int(match["slots"])))
    if not nodes:
        raise UserError(f"--hostfile {path} lists no node ('HOST slots=N' lines)")
    return tuple(nodes)


def placement(nodes: tuple[Node, ...], processes: int) -> tuple[tuple[Node, int], ...]:
    """Where ``processes`` ranks go: the first node's slots first, then the next node's, and so
    on; each node with how many ranks it runs. Without nodes, all on this one."""
    if not nodes:
        return ((Node("localhost", processes), processes),)
    placed: list[tuple[Node, int]] = []
    left = processes
    for node in nodes:
        if left <= 0:
            break
        placed.append((node, min(node.slots, left)))
        left -= node.slots
    if left > 0:
        raise ValueError(f"{processes} processes exceed the hostfile's slots")
    return tuple(placed)


def is_this_machine(host: str) -> bool:
    """Whether ``host`` names an address of this machine (one a socket here can bind to)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, socket.AF_INET)}
    except OSError:
        return False
    for address in addresses:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((address, 0))
                return True
            except OSError:
                continue
    return False


def node_command(launcher: str, host: str, command: list[str]) -> list[str]:
    """``command`` run on ``host`` by ``launcher``, its standard input forwarded (the node's
    side reads its plan there, and ends the node's ranks when it closes).

    ssh options come from ``AUTOTUNE_SSH_OPTIONS`` (shell words, for a key or a port) besides
    the user's ssh configuration.
    """
    if launcher == "slurm":
        # One task on that node; srun forwards stdin to task 0 and ends the step on every node
        # when it is killed.
        return [
            "srun",
            "--nodes=1",
            "--ntasks=1",
            f"--nodelist={host}",
            "--overlap",
            "--kill-on-bad-exit=1",
            *command,
        ]
    options = shlex.split(os.environ.get("AUTOTUNE_SSH_OPTIONS", ""))
    return [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        *options,
        host,
        shlex.join(command),
    ]
