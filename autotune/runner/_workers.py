"""Warm workers: one launched DeepSpeed process group kept alive across trials.

A fresh launch costs seconds per trial (the launcher, imports in every rank, process-group
setup); rebuilding the model, engine and loaders inside a running rank costs a fraction of a
second. `WarmWorkers` launches the harness in serve mode once per layout (number of processes)
and hands it one plan at a time through a request file. The group is closed and relaunched when
the layout changes, and after any failure: a failed rank may have left others stuck in a
collective, and after an out-of-memory the memory is not reliably given back.
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
from pathlib import Path

from autotune.runner._protocol import FAILURE_GLOB, RESULT_FILE, STOP

POLL_SECONDS = 0.005
SHM_DIR = Path("/dev/shm")
HARNESS = Path(__file__).resolve().with_name("_harness.py")
"""The harness script, run by path in every rank (it imports nothing of the orchestrator's)."""


def remove_shm_buffers(port: int) -> int:
    """Delete the shared-memory buffers of a finished process group on ``port``.

    DeepSpeed's CPU communication op creates one ``deepspeed_allreduce_buffer_<uid>_<addr>_
    <port>_<rank>`` segment per rank (66 MB each) and never unlinks it; /dev/shm is memory, so
    every launch would keep that much RAM until reboot. Returns how many were removed.
    """
    removed = 0
    for segment in SHM_DIR.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
        try:
            segment.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process``'s whole process group (its ranks, their DataLoader workers) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def launch_command(processes: int, port: int, harness_args: list[str]) -> list[str]:
    """DeepSpeed's node launcher running the harness on ``processes`` local ranks, as its
    `deepspeed` runner starts it on one node (the runner's extra hop adds an import and
    nothing else on one machine)."""
    world_info = {"localhost": list(range(processes))}
    return [
        sys.executable,
        "-u",
        "-m",
        "deepspeed.launcher.launch",
        "--world_info=" + base64.urlsafe_b64encode(json.dumps(world_info).encode()).decode(),
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(HARNESS),
        *harness_args,
    ]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a run ended: ``returncode`` 0 with a result on disk, non-zero, or ``timed_out``."""

    returncode: int
    timed_out: bool = False
    launched: bool = True


@dataclasses.dataclass
class _Group:
    processes: int
    process: subprocess.Popen[bytes]
    inbox: Path
    log: Path
    port: int


class WarmWorkers:
    """Keeps at most one warm group (one layout) alive; see the module docstring.

    Args:
        directory: Where the groups' request folders and launcher logs go.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.group: _Group | None = None
        self.launches = 0

    def _start(self, processes: int, port: int, env: dict[str, str]) -> _Group:
        self.launches += 1
        inbox = self.directory / f"group_{self.launches:03d}"
        inbox.mkdir(parents=True, exist_ok=True)
        log = inbox / "launcher.log"
        command = launch_command(
            processes, port, ["--serve", str(inbox), "--owner", str(os.getpid())]
        )
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        return _Group(processes, process, inbox, log, port)

    def close(self) -> None:
        """End the warm group, if any: ask it to stop, then kill what is left."""
        group, self.group = self.group, None
        if group is None:
            return
        if group.process.poll() is None:
            # Written aside and renamed, as every request: a rank that globbed the file while
            # it was still empty took "" for a plan path and ran the plan "." (the cwd).
            tmp = group.inbox / "zz-stop.tmp"
            tmp.write_text(STOP)
            tmp.replace(group.inbox / "zz-stop.request")
            try:
                group.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        kill_group(group.process)
        remove_shm_buffers(group.port)

    def run(
        self, plan_path: Path, processes: int, port: int, timeout: float, env: dict[str, str]
    ) -> Outcome:
        """Run one plan in the warm group for ``processes`` ranks (starting one if needed) and
        wait for its result, its failure, the group's end, or ``timeout``."""
        if self.group is not None and (
            self.group.processes != processes or self.group.process.poll() is not None
        ):
            self.close()
        fresh = self.group is None
        if self.group is None:
            self.group = self._start(processes, port, env)
        group = self.group
        directory = plan_path.parent
        request = group.inbox / f"{time.time_ns()}.request"
        tmp = request.with_suffix(".tmp")
        tmp.write_text(str(plan_path.resolve()))
        tmp.replace(request)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if (directory / RESULT_FILE).exists():
                    return Outcome(0, launched=fresh)
                if any(directory.glob(FAILURE_GLOB)):
                    self.close()  # its other ranks may wait forever on the failed one
                    return Outcome(1, launched=fresh)
                returncode = group.process.poll()
                if returncode is not None:
                    self.close()
                    return Outcome(returncode if returncode else 1, launched=fresh)
                if time.monotonic() > deadline:
                    self.close()
                    return Outcome(-signal.SIGKILL, timed_out=True, launched=fresh)
                time.sleep(POLL_SECONDS)
        except BaseException:  # Ctrl-C: leave no rank behind
            self.close()
            raise

    def __enter__(self) -> WarmWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
