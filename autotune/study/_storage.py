"""Where a study lives: any Optuna RDB storage (SQLite by default, PostgreSQL to share a study
between machines), opened with heartbeats, and URLs printed without their passwords."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import optuna

from autotune._errors import UserError

_HEARTBEAT_SECONDS = 10
_GRACE_SECONDS = 60
_SQLITE = "sqlite:///"
_POOL = {"pool_size": 2, "max_overflow": 0}
"""A worker's connections to a PostgreSQL server, at most: one for its searching thread, one for
the trial's heartbeat thread; the storage lock borrows one of them (`StorageLock.share`), and a
thread that finds both busy waits its turn (milliseconds)."""
_DRIVER_MISSING = "Failed to import DB access module"


def redact(url: str) -> str:
    """A storage URL safe to print: a password in the user part or the query becomes ***.

    Works on the text rather than through sqlalchemy, which would re-encode the URL.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        rest = f"{credentials.split(':', 1)[0]}:***@{host}"
    return scheme + sep + re.sub(r"(?i)(password=)[^&]*", r"\1***", rest)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage with heartbeats, so trials of a dead process are failed, not lost.

    Raises:
        UserError: The URL is malformed or the database cannot be reached.
    """
    if url.startswith(_SQLITE):
        _make_sqlite_folder(url)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=dict(_POOL) if url.startswith("postgresql") else None,
            heartbeat_interval=_HEARTBEAT_SECONDS,
            grace_period=_GRACE_SECONDS,
        )
    except Exception as exc:
        raise storage_error(url, exc) from None


def has_tables(url: str) -> bool:
    """Whether the PostgreSQL database at ``url`` holds Optuna's tables already (asked on a
    connection of its own, closed before returning); False for other storages, or when the
    server cannot be asked (`open_storage` then says why)."""
    if not url.startswith("postgresql"):
        return False
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        with engine.connect() as connection:
            found = connection.execute(sqlalchemy.text("SELECT to_regclass('alembic_version')"))
            return found.scalar() is not None
    except Exception:
        return False


def storage_error(url: str, exc: BaseException) -> UserError:
    """The one line a user sees when the storage at ``url`` cannot be opened (or locked)."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    detail = detail.replace(url, redact(url)).rstrip(".")
    driver_missing = isinstance(exc, ImportError) or _DRIVER_MISSING in detail
    if driver_missing and url.startswith("postgresql"):
        detail += " (install the driver: pip install 'psycopg[binary]', autotune's postgres extra)"
    return UserError(
        f"Cannot open the study storage {redact(url)}: {detail[:300]}. Check --storage "
        "(e.g. sqlite:///trials/autotune.db or postgresql://user:pass@host/db)."
    )


def _make_sqlite_folder(url: str) -> None:
    path = Path(url[len(_SQLITE) :])
    if path.parent and str(path) != ":memory:":
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"Cannot create the folder for {redact(url)}: {exc.strerror}."
            ) from None


def load_study(study: str | None, storage: str) -> optuna.Study:
    """Open an existing study for reading (export, report, trials).

    Args:
        study: Its name; may be None when the storage holds exactly one study.
        storage: An Optuna storage URL.

    Raises:
        UserError: The storage cannot be opened or holds no such study.
    """
    if storage.startswith(_SQLITE) and not Path(storage[len(_SQLITE) :]).exists():
        raise UserError(
            f"No study storage at {storage}; run `autotune search` first or pass --storage."
        )
    opened = open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(opened, include_best_trial=False)]
    if study is None and len(names) == 1:
        study = names[0]
    if study is None or study not in names:
        known = ", ".join(names) if names else "none"
        raise UserError(
            f"No study named '{study}' in {redact(storage)} (studies there: {known}). "
            "Pass --study and --storage as given to `autotune search`."
        )
    return optuna.load_study(study_name=study, storage=opened)
