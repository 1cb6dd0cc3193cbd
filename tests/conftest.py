"""What every test module shares.

Markers (registered in pyproject.toml): ``e2e`` for real training (DeepSpeed ranks launched on
the CPU, or a model trained to a threshold), ``browser`` for headless Chromium, ``subprocess``
for the `autotune` command run in a child process, ``postgres`` for a private PostgreSQL server
(`postgres_server`). The fast lane is ``python -m pytest -m "not e2e and not browser"``.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _postgres import PostgresServer, find_binaries

REPO = Path(__file__).resolve().parents[1]

# The benchmarks' own modules (the landscape replay) are tested here but are not the product.
sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.fixture(scope="session")
def write_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """Write a model file's text to a fresh folder: ``write_model(TEXT, "tiny.py")``."""

    def write(text: str, name: str = "model.py") -> Path:
        path = tmp_path_factory.mktemp("model") / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real, private PostgreSQL server for the session (tests/_postgres.py), stopped after.

    Without Debian's `postgresql` or the `psycopg` driver the tests that use it skip, except
    under CI=true, where they fail: CI must not pass by skipping them (.ci/run installs both).
    """
    binaries = find_binaries()
    missing = []
    if binaries is None:
        missing.append("PostgreSQL's initdb and pg_ctl (apt-get install postgresql)")
    if importlib.util.find_spec("psycopg") is None:
        missing.append("the psycopg driver (pip install '.[postgres]')")
    if missing:
        message = "needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI=true this fails instead of skipping")
        pytest.skip(message)
    assert binaries is not None
    server = PostgresServer(binaries)
    try:
        yield server
    finally:
        server.stop()


_DATABASES = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL (with its password) of a new, empty database on `postgres_server`."""
    return postgres_server.create_database(f"study_{next(_DATABASES)}")
