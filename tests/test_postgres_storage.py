"""The study storage on a real PostgreSQL server (tests/_postgres.py), without training: the
schema created once when workers open an empty database together, the advisory lock, and a
password that no error shows."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
from _postgres import PostgresServer

from autotune._errors import UserError
from autotune.study import open_storage
from autotune.study._sharing import StorageLock

pytestmark = [pytest.mark.postgres, pytest.mark.subprocess]
REPO = Path(__file__).resolve().parents[1]

OPEN_TOGETHER = textwrap.dedent(
    """
    import sys, time
    import optuna
    from autotune.study import open_storage
    from autotune.study._sharing import StorageLock

    url, start = sys.argv[1], float(sys.argv[2])
    time.sleep(max(0.0, start - time.time()))  # every process opens it at the same moment
    with StorageLock(url):
        storage = open_storage(url)
        optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
    print("opened")
    """
)


def test_workers_opening_an_empty_database_together_all_succeed(postgres_url: str) -> None:
    """Without the lock 2 of 4 stopped with UniqueViolation while the schema was created
    (optuna#1092)."""
    start = time.time() + 4
    env = dict(os.environ, PYTHONPATH=str(REPO))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_TOGETHER, postgres_url, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    outcomes = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0] * 4, outcomes
    assert len(optuna.get_all_study_summaries(open_storage(postgres_url))) == 1


def test_the_advisory_lock_excludes_other_holders(postgres_url: str) -> None:
    order: list[str] = []

    def second() -> None:
        with StorageLock(postgres_url):
            order.append("second")

    with StorageLock(postgres_url):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(1.0)
        order.append("first")
    waiter.join(timeout=30)
    assert order == ["first", "second"]


def test_storage_with_heartbeats(postgres_url: str) -> None:
    storage = open_storage(postgres_url)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.heartbeat_interval and storage.grace_period


def test_a_wrong_password_is_one_line_without_any_password(
    postgres_server: PostgresServer,
) -> None:
    wrong = postgres_server.url().replace(postgres_server.password, "not-the-pw-4711")
    for attempt in (lambda: open_storage(wrong), lambda: StorageLock(wrong).__enter__()):
        with pytest.raises(UserError) as caught:
            attempt()
        message = str(caught.value)
        assert "not-the-pw-4711" not in message and postgres_server.password not in message
        assert "autotune:***@127.0.0.1" in message and "\n" not in message
