"""Warm workers: one launched DeepSpeed process group kept alive across trials.

A fresh launch costs seconds per trial (the launcher, imports in every rank, process-group
setup); rebuilding the model, engine and loaders inside a running rank costs a fraction of a
second. `WarmWorkers` launches the harness in serve mode once per layout (number of processes)
and hands it one plan at a time through a request file. It keeps the groups of the last
`KEEP_GROUPS` layouts alive, idle, so a search that goes back and forth between process counts
launches each once (a launch took 8.5-9 s on the 2-core CPU machine, a probe 1-2 s). A group is
closed and relaunched after any failure: a failed rank may have left others stuck in a
collective, and after an out-of-memory the memory is not reliably given back. It is closed too
after a trial that leaves its ranks changed (`reusable` False): a ZeRO-3 engine replaces torch's
linear for the rest of the process and left every later trial in its group up to 47% slower
(digits_mlp on the 2-core CPU machine; restoring torch's linear alone did not undo it).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from autotune.runner._owner import (
    group_environment,
    guarded_command,
    register_group,
    remove_shm_buffers,
    unregister_group,
)
from autotune.runner._protocol import FAILURE_GLOB, RESULT_FILE, STOP

POLL_SECONDS = 0.005
KEEP_GROUPS = 2
"""Warm groups (layouts) kept alive at most; the one used longest ago is closed first. An idle
group's ranks hold their memory (on a GPU, a context on each of their devices) and their rank 0
looks for a request every few milliseconds."""
HARNESS = Path(__file__).resolve().with_name("_harness.py")
"""The harness script, run by path in every rank (it imports nothing of the orchestrator's)."""


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process``'s whole process group (its ranks, their DataLoader workers) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def launch_command(
    processes: int,
    port: int,
    harness_args: list[str],
    world: dict[str, list[int]] | None = None,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
) -> list[str]:
    """DeepSpeed's node launcher running the harness on this node's ranks, as its `deepspeed`
    runner starts it on each node (the runner's extra hop adds an import and nothing else).

    Args:
        processes: Ranks on this one machine, when ``world`` is None.
        port: The master port.
        harness_args: The harness's own arguments.
        world: Each node's local device indices, in node order, for a trial across nodes.
        node_rank: This node's place in ``world``.
        master_addr: Node 0's address, which every rank reaches.
    """
    world_info = world if world is not None else {"localhost": list(range(processes))}
    return [
        sys.executable,
        "-u",
        "-m",
        "deepspeed.launcher.launch",
        "--world_info=" + base64.urlsafe_b64encode(json.dumps(world_info).encode()).decode(),
        f"--node_rank={node_rank}",
        f"--master_addr={master_addr}",
        f"--master_port={port}",
        str(HARNESS),
        *harness_args,
    ]


@dataclasses.dataclass(frozen=True)
class LaunchedGroup:
    """A launched process group: DeepSpeed's launcher (the group's leader) and its ranks.

    Attributes:
        process: The launcher.
        port: Its master port, which names its ranks' shared-memory segments.
        record: Its entry in the per-user record of launched groups (see ``_owner``).
    """

    process: subprocess.Popen[bytes]
    port: int
    record: Path | None


def launch_group(
    processes: int,
    port: int,
    harness_args: list[str],
    log_file: IO[bytes],
    env: dict[str, str],
    device_ids: Sequence[int] = (),
    command: list[str] | None = None,
) -> LaunchedGroup:
    """Start the harness on ``processes`` ranks in a new session, tied to this process: the
    launcher dies with it (``PR_SET_PDEATHSIG``) and the ranks watch it (``watch_owner``), so
    no rank outlives a search killed without a chance to clean up. The ranks use the first of
    ``device_ids`` (``--devices``; all devices from 0 when empty). ``command`` replaces the
    one-node launch command (node 0 of a trial across nodes)."""
    record = register_group(port)
    world = {"localhost": list(device_ids[:processes])} if device_ids else None
    command = guarded_command(command or launch_command(processes, port, harness_args, world))
    process = subprocess.Popen(
        command,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**env, **group_environment()},
    )
    return LaunchedGroup(process, port, record)


def end_group(group: LaunchedGroup) -> None:
    """Kill the group, whatever is left of it, and free its shared memory."""
    kill_group(group.process)
    remove_shm_buffers(group.port)
    unregister_group(group.record)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a run ended: ``returncode`` 0 with a result on disk, non-zero, or ``timed_out``;
    ``reason`` says why when no rank wrote a failure file (a node's launcher ended)."""

    returncode: int
    timed_out: bool = False
    launched: bool = True
    reason: str | None = None


@dataclasses.dataclass
class _Group:
    processes: int
    launched: LaunchedGroup
    inbox: Path
    log: Path

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.launched.process


class WarmWorkers:
    """Keeps warm groups alive, one per layout, at most `KEEP_GROUPS`; see the module
    docstring.

    Args:
        directory: Where the groups' request folders and launcher logs go.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.groups: dict[int, _Group] = {}  # by processes, the one used last at the end
        self.launches = 0

    def _start(
        self, processes: int, port: int, env: dict[str, str], device_ids: Sequence[int]
    ) -> _Group:
        self.launches += 1
        inbox = self.directory / f"group_{self.launches:03d}"
        inbox.mkdir(parents=True, exist_ok=True)
        log = inbox / "launcher.log"
        with log.open("wb") as log_file:
            launched = launch_group(
                processes, port, ["--serve", str(inbox)], log_file, env, device_ids
            )
        return _Group(processes, launched, inbox, log)

    def close(self, wait: bool = True) -> None:
        """End every warm group: ask each to stop (with ``wait``, when it is idle), then kill
        what is left, whatever interrupts the wait."""
        try:
            for processes in list(self.groups):
                self._close(processes, wait)
        finally:
            for processes in list(self.groups):
                self._close(processes, wait=False)

    def _close(self, processes: int, wait: bool = True) -> None:
        """End the warm group of ``processes`` ranks, if any (see ``close``)."""
        group = self.groups.pop(processes, None)
        if group is None:
            return
        try:
            if wait and group.process.poll() is None:
                # Written aside and renamed, as every request: a rank that globbed the file
                # while it was still empty took "" for a plan path and ran the plan "." (cwd).
                tmp = group.inbox / "zz-stop.tmp"
                tmp.write_text(STOP)
                tmp.replace(group.inbox / "zz-stop.request")
                try:
                    group.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            end_group(group.launched)

    def _group_for(
        self, processes: int, port: int, env: dict[str, str], device_ids: Sequence[int]
    ) -> tuple[_Group, bool]:
        """The live warm group of ``processes`` ranks, launched if there is none (closing the
        one used longest ago when `KEEP_GROUPS` are alive); and whether it was launched now."""
        group = self.groups.pop(processes, None)
        if group is not None and group.process.poll() is None:
            self.groups[processes] = group  # used last: to the end
            return group, False
        if group is not None:
            end_group(group.launched)
        while len(self.groups) >= KEEP_GROUPS:
            self._close(next(iter(self.groups)))
        self.groups[processes] = self._start(processes, port, env, device_ids)
        return self.groups[processes], True

    def run(
        self,
        plan_path: Path,
        processes: int,
        port: int,
        timeout: float,
        env: dict[str, str],
        device_ids: Sequence[int] = (),
        reusable: bool = True,
    ) -> Outcome:
        """Run one plan in the warm group for ``processes`` ranks on ``device_ids`` (starting
        one if needed) and wait for its result, its failure, the group's end, or
        ``timeout``. A plan that is not ``reusable`` leaves its ranks changed: the group is
        closed after it, whatever its outcome."""
        group, fresh = self._group_for(processes, port, env, device_ids)
        directory = plan_path.parent
        request = group.inbox / f"{time.time_ns()}.request"
        tmp = request.with_suffix(".tmp")
        tmp.write_text(str(plan_path.resolve()))
        tmp.replace(request)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if (directory / RESULT_FILE).exists():
                    if not reusable:
                        self._close(processes)
                    return Outcome(0, launched=fresh)
                if any(directory.glob(FAILURE_GLOB)):
                    self._close(processes)  # its other ranks may wait forever on the failed one
                    return Outcome(1, launched=fresh)
                returncode = group.process.poll()
                if returncode is not None:
                    self._close(processes)
                    return Outcome(returncode if returncode else 1, launched=fresh)
                if time.monotonic() > deadline:
                    self._close(processes)
                    return Outcome(-signal.SIGKILL, timed_out=True, launched=fresh)
                time.sleep(POLL_SECONDS)
        except BaseException:  # Ctrl-C, SIGTERM: kill the busy group at once, the others too
            self.close(wait=False)
            raise

    def __enter__(self) -> WarmWorkers:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(wait=exc_type is None)
