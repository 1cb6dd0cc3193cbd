"""A trial's ranks on a node other than the search's.

Started on that node by ssh or srun (``autotune.runner._nodes``), run by path. It reads one
line from its standard input: the trial's plan, the model file's content and this node's place
in the world. It runs DeepSpeed's launcher for this node's ranks, and ends them as soon as its
standard input closes: the search ended the trial, or the search or its connection is gone.

The model file is used where the search has it when this node sees the same content at the same
path (a shared filesystem, so the file's own imports work); otherwise the copy sent with the
plan. Failure reasons of this node's ranks go back on standard output, marked, one per line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run by path: the package this file belongs to is importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from autotune.runner._owner import group_environment, guarded_command  # noqa: E402
from autotune.runner._protocol import FAILURE_GLOB, PLAN_FILE  # noqa: E402
from autotune.runner._workers import launch_command  # noqa: E402

FAILURE_MARK = "autotune-node-failure "
"""Starts each line that carries a failed rank's ``failure.rank<R>.json`` back to the search."""


def _say(node_rank: int, message: str) -> None:
    print(f"[autotune node {node_rank}] {message}", flush=True)


def model_on_node(request: dict[str, Any], folder: Path) -> Path:
    """The model file this node's ranks load: the search's own path when it holds the same
    content here, else the sent copy written into ``folder``."""
    shared = Path(request["model_path"])
    try:
        if hashlib.sha256(shared.read_bytes()).hexdigest() == request["model_sha256"]:
            return shared
    except OSError:
        pass
    copy = folder / shared.name
    copy.write_bytes(base64.b64decode(request["model"]))
    return copy


def _exit_status(returncode: int) -> int:
    """A shell's exit status for a child's return code (128 + N for signal N)."""
    return returncode if returncode >= 0 else 128 - returncode


def run(request: dict[str, Any], folder: Path) -> int:
    """Run this node's ranks of the requested trial in ``folder``; the launcher's exit status."""
    node_rank = int(request["node_rank"])
    plan = dict(request["plan"])
    model = model_on_node(request, folder)
    shared = model == Path(request["model_path"])
    _say(node_rank, f"model file {model} ({'shared' if shared else 'sent with the trial'})")
    plan["model_path"] = str(model)
    plan_path = folder / PLAN_FILE
    plan_path.write_text(json.dumps(plan))
    command = launch_command(
        0,
        int(request["master_port"]),
        ["--plan", str(plan_path)],
        world=request["world"],
        node_rank=node_rank,
        master_addr=request["master_addr"],
    )
    launcher = subprocess.Popen(
        guarded_command(command),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **request["environment"], **group_environment()},
    )
    closed = threading.Event()

    def watch_input() -> None:
        sys.stdin.buffer.read()  # returns at end of input: the search let go of this trial
        closed.set()
        _end(launcher)

    threading.Thread(target=watch_input, name="autotune-node-input", daemon=True).start()
    returncode = launcher.wait()
    _end(launcher)  # ranks that outlive their launcher, and their DataLoader workers
    for failure in sorted(folder.glob(FAILURE_GLOB)):
        print(FAILURE_MARK + failure.read_text().strip(), flush=True)
    if closed.is_set() and returncode != 0:
        _say(node_rank, "the search ended this trial; this node's ranks are gone")
    elif returncode != 0:
        _say(node_rank, f"DeepSpeed's launcher ended with status {_exit_status(returncode)}")
    return _exit_status(returncode)


def _end(launcher: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(launcher.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    if argv == ["--check"]:  # the search's check before it starts: can this node run ranks?
        import deepspeed  # noqa: F401

        return 0
    line = sys.stdin.buffer.readline()
    if not line.strip():
        return 2  # the search went away before sending the trial
    request = json.loads(line)
    folder = Path(tempfile.mkdtemp(prefix="autotune-node-"))
    try:
        return run(request, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    # No interpreter teardown: the input watcher is still blocked reading stdin, and
    # finalizing under it aborts the process (which ssh reports as a lost connection).
    os._exit(code)
