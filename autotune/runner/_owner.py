"""Who owns a launched process group, and what is left when that owner is gone.

A trial's ranks run in a process group of their own (DeepSpeed's launcher starts a new
session), so no signal aimed at the search reaches them, and DeepSpeed's CPU communication op
leaves one ``deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` segment per rank in
/dev/shm (66 MB each) that it never unlinks. So that neither outlives a search killed without
a chance to clean up (SIGKILL, a crash):

- the launcher is started through this file run as a script (``_owner.py --parent PID --
  COMMAND``), which asks the kernel to SIGKILL it when its parent thread ends
  (``PR_SET_PDEATHSIG``), then becomes COMMAND (``execv`` keeps the request);
- each rank watches the search process (``watch_owner``, named by ``OWNER_VARIABLE``) and,
  when it is gone, removes its group's segments and kills its own process group;
- each launched group is recorded in a per-user folder of /dev/shm (``register_group``), so the
  next search on the host removes the segments of groups whose owner is dead
  (``remove_orphaned_buffers``) and never those of a live search.

An owner is a process named so that a reused pid does not pass for it: host, boot, pid
namespace, pid and the process's start time. Only the standard library is imported here: the
file runs by path before anything else is loaded.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "deepspeed_allreduce_buffer"
OWNER_VARIABLE = "AUTOTUNE_GROUP_OWNER"
"""The environment variable naming a group's owner (``Owner.to_json``) to its ranks."""
WATCH_SECONDS = 0.25
_PR_SET_PDEATHSIG = 1


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read().strip()
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (/proc/PID/stat's 22nd field),
    or None when it has ended (gone, or a zombie that its parent has not reaped)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # The command name (field 2) may hold spaces and parentheses: count after its last ")".
    fields = stat.rpartition(")")[2].split()
    try:
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (IndexError, ValueError):
        return None


def _this_place() -> tuple[str, str, str]:
    """This host, boot and pid namespace: where a pid names one process."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return socket.gethostname(), _read("/proc/sys/kernel/random/boot_id") or "", namespace


@dataclasses.dataclass(frozen=True)
class Owner:
    """A process, named well enough to tell whether it still runs.

    Attributes:
        host: The host name.
        boot: The kernel's boot id (a reboot ends every process).
        namespace: The pid namespace (a container sharing the host name sees other pids).
        pid: The process id.
        start: Its start time in clock ticks since boot (a reused pid starts later).
    """

    host: str
    boot: str
    namespace: str
    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Owner:
        """Process ``pid`` of this host (its start time 0 if it has already gone)."""
        return cls(*_this_place(), pid, process_start(pid) or 0)

    @classmethod
    def current(cls) -> Owner:
        """This process."""
        return cls.of(os.getpid())

    def is_alive(self) -> bool | None:
        """Whether the process still runs: None when it runs elsewhere (another host, boot or
        pid namespace), where this process cannot see it."""
        if (self.host, self.boot, self.namespace) != _this_place():
            return None
        return process_start(self.pid) == self.start

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Owner | None:
        """The owner a record names, or None when it names none (or is malformed)."""
        try:
            return cls(
                str(data["host"]),
                str(data["boot"]),
                str(data["namespace"]),
                int(data["pid"]),
                int(data["start"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


# --- DeepSpeed's shared-memory segments and the groups that made them ------------------------


def remove_shm_buffers(port: int) -> int:
    """Delete the shared-memory buffers of a process group on ``port``; how many were removed.

    DeepSpeed's CPU communication op creates one segment per rank and never unlinks it;
    /dev/shm is memory, so every launch would keep that much RAM until reboot.
    """
    removed = 0
    for segment in SHM_DIR.glob(f"{SHM_PREFIX}_{os.getuid()}_*_{port}_*"):
        try:
            segment.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def registry_directory() -> Path:
    """This user's record of launched groups: beside the segments, cleared by the same reboot."""
    return SHM_DIR / f"autotune-{os.getuid()}"


def register_group(port: int, owner: Owner | None = None) -> Path | None:
    """Record that ``owner`` (this process by default) launches a group on ``port``; returns
    the record to pass to ``unregister_group``, or None where /dev/shm cannot be written."""
    owner = owner or Owner.current()
    folder = registry_directory()
    record = folder / f"group-{port}-{owner.pid}.json"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": port, "owner": owner.to_json()}))
        tmp.replace(record)
    except OSError:
        return None
    return record


def unregister_group(record: Path | None) -> None:
    """Forget a group whose segments are removed (``register_group``'s record)."""
    if record is not None:
        record.unlink(missing_ok=True)


def _registered_groups() -> list[tuple[Path, int, Owner | None]]:
    groups = []
    for record in registry_directory().glob("group-*.json"):
        try:
            data = json.loads(record.read_text())
            groups.append((record, int(data["port"]), Owner.from_json(data["owner"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return groups


def remove_orphaned_buffers() -> int:
    """Remove the segments of recorded groups whose owner is dead, and their records; returns
    how many segments went. A port that a live owner (or one elsewhere) records is left alone,
    whoever recorded it before."""
    groups = [
        (record, port, owner is not None and owner.is_alive() is False)
        for record, port, owner in _registered_groups()
    ]
    in_use = {port for _, port, dead in groups if not dead}
    removed = 0
    for record, port, dead in groups:
        if dead:
            if port not in in_use:
                removed += remove_shm_buffers(port)
            record.unlink(missing_ok=True)
    return removed


# --- the rank side: die with the owner -----------------------------------------------------


def group_environment(owner: Owner | None = None) -> dict[str, str]:
    """The variable that tells a group's ranks whom to watch (``watch_owner``)."""
    return {OWNER_VARIABLE: json.dumps((owner or Owner.current()).to_json())}


def _end_group() -> None:
    """What a rank does when its search is gone: free the group's segments, then kill the
    group (the launcher, every rank, their DataLoader workers), itself included."""
    port = os.environ.get("MASTER_PORT")
    if port and port.isdigit():
        remove_shm_buffers(int(port))
    os.killpg(os.getpgrp(), signal.SIGKILL)


def watch_owner(on_gone: Callable[[], None] = _end_group) -> threading.Thread | None:
    """In a rank: call ``on_gone`` once the owner named by ``OWNER_VARIABLE`` has gone (checked
    every WATCH_SECONDS on a daemon thread, so a rank asleep on a lock or stuck in a collective
    still notices). Returns the thread, or None when no owner is named."""
    try:
        owner = Owner.from_json(json.loads(os.environ.get(OWNER_VARIABLE, "")))
    except ValueError:
        owner = None
    if owner is None or owner.is_alive() is None:
        return None

    def watch() -> None:
        while process_start(owner.pid) == owner.start:  # the owner is here (checked above)
            time.sleep(WATCH_SECONDS)
        on_gone()

    thread = threading.Thread(target=watch, name="autotune-owner-watch", daemon=True)
    thread.start()
    return thread


# --- the launcher side: die with the parent ------------------------------------------------


def guarded_command(command: list[str], parent: int | None = None) -> list[str]:
    """``command`` run so that the kernel kills it when ``parent`` (this process by default)
    ends: started through this file, which sets ``PR_SET_PDEATHSIG`` and becomes ``command``.

    The signal comes when the parent *thread* that started it ends: start a group that must
    outlive a thread from a thread that lives as long (the search's main thread does).
    """
    parent = os.getpid() if parent is None else parent
    return [sys.executable, str(Path(__file__).resolve()), f"--parent={parent}", "--", *command]


def _set_parent_death_signal(signum: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _guard(argv: list[str]) -> int:
    """``_owner.py --parent=PID -- COMMAND...``: die with PID, then become COMMAND."""
    if len(argv) < 3 or not argv[0].startswith("--parent=") or argv[1] != "--":
        print("usage: _owner.py --parent=PID -- COMMAND...", file=sys.stderr)
        return 2
    parent = int(argv[0].partition("=")[2])
    _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:
        return 1  # the parent ended before the request was made: nothing to run for
    command = argv[2:]
    os.execvp(command[0], command)
    return 1  # not reached: execvp replaces this process


if __name__ == "__main__":
    sys.exit(_guard(sys.argv[1:]))
