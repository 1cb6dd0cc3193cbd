"""Who owns a launched group (autotune/runner/_owner.py): a process named so that a reused pid
does not pass for it, the per-user record of launched groups, and the removal of the shared
memory of groups whose owner is dead. Real processes and real /dev/shm files; no DeepSpeed."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _owners import dead_owner

import autotune.runner
from autotune.runner import Owner, remove_orphaned_buffers
from autotune.runner._owner import (
    OWNER_VARIABLE,
    SHM_DIR,
    SHM_PREFIX,
    guarded_command,
    process_start,
    register_group,
    unregister_group,
)


def test_this_process_is_alive_and_an_ended_one_is_not() -> None:
    me = Owner.current()
    assert me.pid == os.getpid() and me.start == process_start(os.getpid()) and me.start > 0
    assert me.is_alive() is True
    assert dead_owner().is_alive() is False


def test_a_reused_pid_is_not_the_owner() -> None:
    """Same pid, later start: another process."""
    me = Owner.current()
    assert dataclasses.replace(me, start=me.start - 1).is_alive() is False


def test_a_process_elsewhere_is_neither_alive_nor_dead() -> None:
    me = Owner.current()
    assert dataclasses.replace(me, host=me.host + "-other").is_alive() is None
    assert dataclasses.replace(me, boot="another-boot").is_alive() is None
    assert dataclasses.replace(me, namespace="pid:[1]").is_alive() is None


def test_an_owner_survives_its_record_and_a_bad_record_names_none() -> None:
    me = Owner.current()
    assert Owner.from_json(me.to_json()) == me
    assert Owner.from_json(None) is None
    assert Owner.from_json({"pid": 3}) is None
    assert Owner.from_json({**me.to_json(), "pid": "x"}) is None


def test_the_start_time_reads_a_command_name_with_spaces_and_parentheses(
    tmp_path: Path,
) -> None:
    odd = tmp_path / "a b) (c"
    odd.symlink_to(sys.executable)
    child = subprocess.Popen([str(odd), "-c", "import time; time.sleep(60)"])
    try:
        assert process_start(child.pid) == Owner.of(child.pid).start > 0
        child.kill()
        time.sleep(0.2)
        assert process_start(child.pid) is None  # a zombie has ended too
    finally:
        child.kill()
        child.wait()


# --- the record of launched groups and their segments -----------------------------------------


@pytest.fixture
def ports() -> Iterator[list[int]]:
    """Ports no real group gets (below the ephemeral range); their files are removed after."""
    chosen = [100 + os.getpid() % 800, 101 + os.getpid() % 800]
    yield chosen
    for port in chosen:
        for leftover in SHM_DIR.glob(f"{SHM_PREFIX}_{os.getuid()}_*_{port}_*"):
            leftover.unlink()
        for record in SHM_DIR.glob(f"autotune-{os.getuid()}/group-{port}-*.json"):
            record.unlink()


def _segments(port: int) -> list[Path]:
    """What DeepSpeed's shm op creates for a 2-rank group on ``port`` (small stand-ins)."""
    made = []
    for rank in (0, 1):
        segment = SHM_DIR / f"{SHM_PREFIX}_{os.getuid()}_127.0.0.1_{port}_{rank}"
        segment.write_bytes(b"x")
        made.append(segment)
    return made


def test_the_segments_of_a_dead_owner_go_and_a_live_ones_stay(ports: list[int]) -> None:
    dead_port, live_port = ports
    dead_segments, live_segments = _segments(dead_port), _segments(live_port)
    dead_record = register_group(dead_port, dead_owner())
    live_record = register_group(live_port)
    assert dead_record is not None and live_record is not None
    assert remove_orphaned_buffers() >= 2
    assert not any(s.exists() for s in dead_segments) and not dead_record.exists()
    assert all(s.exists() for s in live_segments) and live_record.exists()
    unregister_group(live_record)
    assert not live_record.exists()


def test_a_port_a_live_owner_records_is_kept_whoever_recorded_it_before(
    ports: list[int],
) -> None:
    """A dead search's port, taken since by a live one: its segments are the live one's."""
    port = ports[0]
    segments = _segments(port)
    register_group(port, dead_owner())
    live = register_group(port)
    remove_orphaned_buffers()
    assert all(s.exists() for s in segments)
    assert list(SHM_DIR.glob(f"autotune-{os.getuid()}/group-{port}-*.json")) == [live]
    unregister_group(live)


def test_a_group_of_another_host_is_left_alone(ports: list[int]) -> None:
    port = ports[0]
    segments = _segments(port)
    elsewhere = dataclasses.replace(dead_owner(), host="another-host")
    record = register_group(port, elsewhere)
    remove_orphaned_buffers()
    assert all(s.exists() for s in segments) and record is not None and record.exists()


# --- the ranks' watch and the launcher's guard -------------------------------------------------

# The children load _owner.py alone, as the launcher's guard does: no package import to wait for.
OWNER_MODULE = Path(autotune.runner.__file__).parent

WATCHER = (
    "import sys, time\n"
    f"sys.path.insert(0, {str(OWNER_MODULE)!r})\n"
    "from _owner import watch_owner\n"
    "thread = watch_owner(lambda: (print('gone', flush=True), sys.exit()))\n"
    "print('watching' if thread else 'no owner', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_watcher_notices_its_owner_end() -> None:
    """What every rank does (``watch_owner`` in the harness), here with a callback that says
    so instead of killing the group."""
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    env = {**os.environ, OWNER_VARIABLE: json.dumps(Owner.of(owner.pid).to_json())}
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER], stdout=subprocess.PIPE, text=True, env=env
    )
    assert watcher.stdout is not None and watcher.stdout.readline().strip() == "watching"
    owner.kill()
    owner.wait()
    started = time.monotonic()
    assert watcher.stdout.readline().strip() == "gone"
    assert time.monotonic() - started < 2
    watcher.kill()
    watcher.wait()


def test_without_an_owner_nothing_is_watched() -> None:
    env = {k: v for k, v in os.environ.items() if k != OWNER_VARIABLE}
    out = subprocess.run(
        [sys.executable, "-c", WATCHER.replace("time.sleep(60)", "")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.stdout.strip() == "no owner"


GUARDED_PARENT = (
    "import subprocess, sys, time\n"
    f"sys.path.insert(0, {str(OWNER_MODULE)!r})\n"
    "from _owner import guarded_command\n"
    "child = subprocess.Popen(guarded_command([sys.executable, '-c', 'import time; "
    "time.sleep(60)']), start_new_session=True)\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_guarded_command_dies_with_its_parent() -> None:
    """The launcher's case: its own session, its parent killed with SIGKILL."""
    parent = subprocess.Popen(
        [sys.executable, "-c", GUARDED_PARENT], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    time.sleep(0.5)  # the guard has become the command
    assert Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[1] == b"-c"
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while process_start(child) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_start(child) is None


def test_a_guard_whose_parent_is_already_gone_runs_nothing() -> None:
    command = guarded_command([sys.executable, "-c", "print('ran')"], parent=1)
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "ran" not in out.stdout
