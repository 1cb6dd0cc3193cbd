"""Many workers on one study: the lock every worker of a storage takes around what must happen
once (the schema, the study and its first trials, each run's slot, the choice of who finishes),
the study's register of its workers, and the rules a proposal is claimed by.

Workers are `autotune search` processes on one study, on one machine or many. The lock is a
PostgreSQL advisory lock (held on a connection of its own, so a worker that dies releases it), a
file lock beside an SQLite file (workers on one host), and nothing for other storages (one
worker at a time). See docs/many-workers.md.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import optuna

from autotune._errors import UserError
from autotune._records import PROBE, PROBED, REPEAT, RETRY_OF, STUDY_WORKERS, TrialRecord
from autotune.study._storage import redact, storage_error

_LOCK_KEY = 0x6175746F74756E65
"""The advisory lock's key: "autotune" in ASCII, one lock for every study of a storage (held for
milliseconds at a time, so studies sharing it cost nothing)."""
_SQLITE = "sqlite:///"
STALE_WORKER_SECONDS = 120.0
"""A worker on another host that holds no running trial and was not heard from for this long
(it reports at each claim and after each trial; heartbeats fail its trials 60 s after it dies)
is taken as gone: its number is free again and it is not waited for."""
_RUNNING = optuna.trial.TrialState.RUNNING
_COMPLETE = optuna.trial.TrialState.COMPLETE


class StorageLock:
    """Mutual exclusion among every worker of one storage, on every host; a context manager.

    Args:
        url: The storage URL (`autotune search --storage`).
    """

    def __init__(self, url: str, storage: Any = None) -> None:
        self.url = url
        self._release: Callable[[], None] | None = None
        self._engine: Any = None
        if storage is not None:
            self.share(storage)

    def share(self, storage: Any) -> None:
        """Take the lock on a connection of ``storage``'s own pool (its SQLAlchemy engine), so
        a worker holds no more connections than that pool allows (`open_storage`: 2 on
        PostgreSQL); before the storage exists, a connection of its own is opened each time."""
        backend = getattr(storage, "_backend", storage)  # Optuna wraps it in a cache
        engine = getattr(backend, "engine", None)
        if engine is not None and self.url.startswith("postgresql"):
            self._engine = engine

    def __enter__(self) -> StorageLock:
        if self.url.startswith("postgresql"):
            self._release = self._hold_advisory_lock()
        elif self.url.startswith(_SQLITE) and self.url[len(_SQLITE) :] not in ("", ":memory:"):
            self._release = self._hold_file_lock(Path(self.url[len(_SQLITE) :] + ".lock"))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def _hold_advisory_lock(self) -> Callable[[], None]:
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        statement = sqlalchemy.text("SELECT pg_advisory_lock(:key)")
        try:
            if self._engine is None:
                self._engine = sqlalchemy.create_engine(self.url, poolclass=NullPool)
            connection = self._engine.connect()
        except Exception as exc:
            raise storage_error(self.url, exc) from None
        try:
            connection.execute(statement, {"key": _LOCK_KEY})
            connection.commit()  # the lock is the session's: it outlives the transaction
        except BaseException:
            # The server may still grant the lock to this session: end the session itself
            # rather than hand it back to the storage's pool.
            connection.invalidate()
            connection.close()
            raise

        def release() -> None:
            try:
                connection.execute(
                    sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY}
                )
                connection.commit()
            except BaseException:
                connection.invalidate()  # ending the session releases its lock
                raise
            finally:
                connection.close()  # back to the pool, or closed

        return release

    def _hold_file_lock(self, path: Path) -> Callable[[], None]:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("a")
        except OSError as exc:
            raise UserError(
                f"Cannot create the lock file beside {redact(self.url)}: {exc.strerror}."
            ) from None
        fcntl.flock(handle, fcntl.LOCK_EX)

        def release() -> None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

        return release


# --- the register of workers -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Worker:
    """One `autotune search` process on a study.

    Attributes:
        number: Its number in the study, the lowest free when it joined: 0 for the first, whose
            sampler keeps --seed; the others add theirs to it.
        host: The host it runs on.
        pid: Its process id there.
    """

    number: int
    host: str
    pid: int

    @classmethod
    def here(cls, number: int) -> Worker:
        return cls(number, socket.gethostname(), os.getpid())

    @property
    def folder_name(self) -> str:
        """A name no other live worker of the study has (its warm groups' folder)."""
        return f"{self.host}-{self.pid}"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_workers(
    entries: Mapping[str, Mapping[str, Any]],
    running: Iterable[int],
    host: str,
    now: float,
    alive: Callable[[int], bool] = pid_alive,
) -> dict[str, dict[str, Any]]:
    """The register's entries whose worker is still there: on this host, its process is
    alive; on another, it holds a running trial (``running``: their worker numbers) or reported
    in the last `STALE_WORKER_SECONDS`."""
    busy = set(running)
    kept: dict[str, dict[str, Any]] = {}
    for number, entry in entries.items():
        if entry.get("host") == host:
            live = alive(int(entry.get("pid", 0)))
        else:
            seen = float(entry.get("seen", 0.0))
            live = int(number) in busy or now - seen < STALE_WORKER_SECONDS
        if live:
            kept[str(number)] = dict(entry)
    return kept


def lowest_free_number(taken: Iterable[str | int]) -> int:
    numbers = {int(n) for n in taken}
    return next(n for n in range(len(numbers) + 1) if n not in numbers)


def _live_entries(study: optuna.Study) -> dict[str, dict[str, Any]]:
    running = (
        TrialRecord.of(t).worker for t in study.get_trials(deepcopy=False, states=(_RUNNING,))
    )
    return live_workers(
        study.user_attrs.get(STUDY_WORKERS, {}),
        (n for n in running if n is not None),
        socket.gethostname(),
        time.time(),
    )


def join(study: optuna.Study, devices: Sequence[int] = ()) -> Worker:
    """Register this process as a worker of ``study``, with the devices its trials use (all
    when empty); call under the `StorageLock`."""
    entries = _live_entries(study)
    worker = Worker.here(lowest_free_number(entries))
    entries[str(worker.number)] = {
        "host": worker.host,
        "pid": worker.pid,
        "seen": time.time(),
        "devices": list(devices) or None,
    }
    study.set_user_attr(STUDY_WORKERS, entries)
    return worker


def sharing_devices(study: optuna.Study, worker: Worker) -> list[int]:
    """The other live workers on ``worker``'s host whose devices overlap its own (a worker
    without ``--devices`` uses them all): their trials would time each other's load."""
    entries = _live_entries(study)
    mine = entries.get(str(worker.number), {}).get("devices")
    shared = []
    for number, entry in entries.items():
        if int(number) == worker.number or entry.get("host") != worker.host:
            continue
        theirs = entry.get("devices")
        if mine is None or theirs is None or set(mine) & set(theirs):
            shared.append(int(number))
    return sorted(shared)


def report_in(study: optuna.Study, worker: Worker) -> None:
    """Tell the register ``worker`` is still searching (call under the `StorageLock`)."""
    entries = dict(study.user_attrs.get(STUDY_WORKERS, {}))
    entry = dict(entries.get(str(worker.number), {}))
    entry.update(host=worker.host, pid=worker.pid, seen=time.time())
    entries[str(worker.number)] = entry
    study.set_user_attr(STUDY_WORKERS, entries)


def leave(study: optuna.Study, worker: Worker) -> bool:
    """Take ``worker`` off the register (call under the `StorageLock`); True when no other
    worker is left, so this one finishes the study (confirmation, export, report)."""
    entries = _live_entries(study)
    entries.pop(str(worker.number), None)
    study.set_user_attr(STUDY_WORKERS, entries)
    return not entries


# --- claiming a run ------------------------------------------------------------------------------


def twin_of(
    trials: Iterable[optuna.trial.FrozenTrial], key: str, number: int
) -> optuna.trial.FrozenTrial | None:
    """The trial a proposal of configuration ``key`` (trial ``number``) would repeat: a finished
    one of the same configuration (not itself a repeat), else one that claimed a run of it and
    runs now; None when there is neither. Probes (`PROBED`) time a configuration, they do not
    run it: none is repeated."""
    running = None
    for trial in trials:
        record = TrialRecord.of(trial)
        if trial.number == number or record.config_key != key or record.role == PROBE:
            continue
        if trial.state == _COMPLETE and record.status not in (REPEAT, PROBED):
            return trial
        if trial.state == _RUNNING and record.run_slot is not None and running is None:
            running = trial
    return running


def queued_retries(trials: Iterable[optuna.trial.FrozenTrial]) -> int:
    """Retries of runs cut short that wait to be run (each will need one of the runs)."""
    return sum(
        1
        for t in trials
        if t.state == optuna.trial.TrialState.WAITING and t.user_attrs.get(RETRY_OF) is not None
    )


def slots_taken(trials: Iterable[optuna.trial.FrozenTrial]) -> int:
    """Runs the study holds or has handed out: finished trials that launched a run, and running
    ones that claimed a slot."""
    return sum(
        1
        for t in trials
        if (t.state == _COMPLETE and TrialRecord.of(t).ran)
        or (t.state == _RUNNING and TrialRecord.of(t).run_slot is not None)
    )
