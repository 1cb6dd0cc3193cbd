"""DeepSpeed's compiled ops: built once per environment, before anything is timed, and never
waited on forever.

DeepSpeed compiles its ops just in time on first use (about a minute each on a small CPU);
done inside a trial that would blow its timeout. torch builds them under
``TORCH_EXTENSIONS_DIR`` (by default one folder in the home directory that every virtual
environment shares, so a second environment with other include paths rebuilds there), and
guards each build with a ``lock`` file in the op's build folder that torch's ``FileBaton``
creates, holds open while it builds, and deletes when done; a build that is killed leaves it
behind, and every later load waits on it forever. So autotune gives each environment its own
extensions folder, builds the ops before the first trial, removes locks whose owner is gone,
and lets a trial wait for another process's build up to its timeout, then fail with the reason.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from autotune._errors import UserError
from autotune._machine import Machine

EXTENSIONS_VARIABLE = "TORCH_EXTENSIONS_DIR"
STALE_LOCK_SECONDS = 15 * 60
"""A build lock older than this is taken as left behind, even if its holder still lives."""
WAIT_POLL_SECONDS = 1.0

_built: dict[tuple[Any, ...], tuple[Path, ...]] = {}
"""The lock files of the ops built in this process, by what decided them (see ``_key``)."""


class BuildInProgressError(RuntimeError):
    """Another live process holds an op's build lock."""


def extensions_directory() -> Path:
    """Where torch builds and finds DeepSpeed's ops: ``TORCH_EXTENSIONS_DIR`` when set, else a
    folder of this environment's own (keyed by its prefix, Python and torch version)."""
    given = os.environ.get(EXTENSIONS_VARIABLE)
    if given:
        return Path(given)
    import torch

    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    identity = f"{sys.prefix}\n{python}\n{torch.__version__}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "autotune" / "torch_extensions" / f"{python}-{digest}"


def ops_environment() -> dict[str, str]:
    """The variables every process that loads DeepSpeed's ops runs with (ranks, warm groups,
    profiling runs), so each finds what ``prepare_deepspeed_ops`` built."""
    return {EXTENSIONS_VARIABLE: str(extensions_directory())}


def lock_holders(lock: Path) -> list[int]:
    """The processes that hold ``lock`` open (torch's FileBaton keeps it open while it builds).

    Reads /proc; a process of another user, whose descriptors cannot be read, is not seen.
    """
    target = os.path.realpath(lock)
    holders = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            descriptors = list((entry / "fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                if os.readlink(descriptor) == target:
                    holders.append(int(entry.name))
                    break
            except OSError:
                continue
    return holders


def clear_stale_lock(lock: Path, stale_seconds: float = STALE_LOCK_SECONDS) -> int | None:
    """Remove ``lock`` when its owner is gone (no live process holds it, or it is older than
    ``stale_seconds``); return the pid of the live process building, or None."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    holders = [pid for pid in lock_holders(lock) if pid != os.getpid()]
    if holders and age <= stale_seconds:
        return holders[0]
    lock.unlink(missing_ok=True)
    return None


def build_in_progress(locks: list[Path] | tuple[Path, ...]) -> str | None:
    """The reason a trial cannot start while another process builds an op, or None; locks
    whose owner is gone are removed on the way."""
    for lock in locks:
        pid = clear_stale_lock(lock)
        if pid is not None:
            return (
                f"DeepSpeed is building its ops in another process (lock {lock}, pid {pid}); "
                "let that build finish (or stop that process) and run again"
            )
    return None


def _op_builders(machine: Machine, optimizer: dict[str, Any], offload: bool = False) -> list[str]:
    """``offload``: the optimizer steps on the CPU (ZeRO's ``offload_optimizer``), where
    DeepSpeed runs Adam with its CPU op instead of FusedAdam."""
    names = ["ShareMemCommBuilder"] if machine.accelerator == "cpu" else []
    params = optimizer.get("params", {})
    if str(optimizer.get("type", "")).lower() in ("adam", "adamw") and not params.get("torch_adam"):
        names.append("CPUAdamBuilder" if offload else "FusedAdamBuilder")
    return names


def _key(machine: Machine, optimizer: dict[str, Any], offload: bool = False) -> tuple[Any, ...]:
    return (
        machine.accelerator,
        tuple(_op_builders(machine, optimizer, offload)),
        tuple(sorted(machine.environment.items())),
        str(extensions_directory()),
    )


def _build(builder: Any, name: str) -> None:
    """Load (building if needed) one op; a failure is the user's to fix, with a hint."""
    try:
        builder.load(verbose=False)
    except Exception as exc:
        hint = (
            ' Setting "torch_adam": true in OPTIMIZER["params"] avoids this build.'
            if name == "FusedAdamBuilder"
            else ""
        )
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__
        raise UserError(
            f"DeepSpeed could not build its {builder.absolute_name()} op on this machine "
            f"({detail}); no trial can run without it.{hint}"
        ) from exc


def wait_for_other_build(lock: Path, until: float | None) -> None:
    """Wait while another live process holds ``lock``: forever (``until`` None, though a lock
    turns stale) or until ``time.monotonic()`` passes ``until``."""
    while (pid := clear_stale_lock(lock)) is not None:
        if until is not None and time.monotonic() >= until:
            raise BuildInProgressError(build_in_progress([lock]) or f"pid {pid}")
        time.sleep(WAIT_POLL_SECONDS)


def _builders(
    machine: Machine, optimizer: dict[str, Any], offload: bool = False
) -> list[tuple[str, Any]]:
    """The op builders every trial of this optimizer loads here, by builder class name."""
    from deepspeed.accelerator import get_accelerator

    found = []
    for name in _op_builders(machine, optimizer, offload):
        builder = get_accelerator().create_op_builder(name)
        if builder is not None and builder.is_compatible(verbose=False):
            found.append((name, builder))
    return found


def build_locks(machine: Machine, optimizer: dict[str, Any]) -> list[Path]:
    """The lock file torch creates while it builds each op the trials load."""
    return [
        extensions_directory() / builder.name / "lock"
        for _, builder in _builders(machine, optimizer)
    ]


def _prepare(
    machine: Machine, optimizer: dict[str, Any], until: float | None, offload: bool = False
) -> list[str]:
    key = _key(machine, optimizer, offload)
    if key in _built:
        return []
    os.environ.update(machine.environment)  # DeepSpeed's builders read it in this process
    os.environ.update(ops_environment())  # and torch builds where every trial will look
    built, locks = [], []
    for name, builder in _builders(machine, optimizer, offload):
        build_dir = extensions_directory() / builder.name
        lock = build_dir / "lock"
        locks.append(lock)
        wait_for_other_build(lock, until)
        fresh = not any(build_dir.glob("*.so"))
        try:
            _build(builder, name)
        except BaseException:
            lock.unlink(missing_ok=True)  # torch leaves it when the build is interrupted
            raise
        if fresh:
            built.append(builder.absolute_name())
    _built[key] = tuple(locks)
    return built


def prepare_deepspeed_ops(machine: Machine, optimizer: dict[str, Any]) -> list[str]:
    """Build the DeepSpeed ops every trial loads, once per process, before any trial is timed.

    Waits for another process that is building them (until it ends or its lock turns
    stale). Returns the ops it had to build now.

    Raises:
        UserError: An op does not build here.
    """
    return _prepare(machine, optimizer, until=None)


def ensure_deepspeed_ops(
    machine: Machine, optimizer: dict[str, Any], wait_seconds: float = 0.0, offload: bool = False
) -> str | None:
    """What ``run_trial`` calls before it launches: builds the ops if this process has not
    (the search has, so this stays cheap), removes build locks whose owner is gone, waits up to
    ``wait_seconds`` while another process holds a build lock, and returns the reason a trial
    cannot start if one still does, or None.

    torch takes an op's lock on every load, not only to build: the ranks and the other workers
    of a search on this machine hold it for a moment while they check that the op is up to
    date. Those moments are waited out; a real build (a minute or more) is waited for up to
    ``wait_seconds``.

    Raises:
        UserError: An op does not build here.
    """
    until = time.monotonic() + wait_seconds
    try:
        _prepare(machine, optimizer, until=until, offload=offload)
    except BuildInProgressError as exc:
        return str(exc)
    locks = _built[_key(machine, optimizer, offload)]
    while (reason := build_in_progress(locks)) is not None and time.monotonic() < until:
        time.sleep(WAIT_POLL_SECONDS)
    return reason
