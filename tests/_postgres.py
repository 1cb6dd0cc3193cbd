"""A private PostgreSQL server for the tests of many workers on one study: Debian's
`postgresql` binaries, `initdb` and `pg_ctl` run as the postgres user (as the current user when
that is not root), a fresh folder, a free port on 127.0.0.1 and the socket inside the folder.
Clients log in with a password (scram-sha-256), so a test can check it is never printed.

Used by the ``postgres_server`` and ``postgres_url`` fixtures in conftest.py, and by
benchmarks/many_workers.py.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "autotune"
"""The role the workers log in as (the superuser, created by initdb)."""


def find_binaries() -> Path | None:
    """The folder with initdb and pg_ctl, or None where PostgreSQL is not installed."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One server, started on construction; `stop` ends it and removes its folder.

    Attributes:
        port: Its TCP port on 127.0.0.1.
        password: The password of `USER`, which every URL carries.
    """

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="autotune-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.password = "pw-" + secrets.token_hex(8)
        self._as_postgres = os.geteuid() == 0  # the server refuses to run as root
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        password_file = self.folder / "password"
        password_file.write_text(self.password + "\n")
        if self._as_postgres:
            os.chown(password_file, entry.pw_uid, entry.pw_gid)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                USER,
                f"--pwfile={password_file}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
            )
            options = f"-k {self.folder} -p {self.port} -c listen_addresses=127.0.0.1"
            log = self.folder / "server.log"
            self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(log), "-w", "start")
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.binaries / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)

    def url(self, database: str = "postgres", driver: str = "postgresql") -> str:
        return f"{driver}://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def connections(self, database: str) -> list[tuple[str, str]]:
        """(application name, state) of every client connected to ``database``; a worker whose
        URL carries ``?application_name=NAME`` shows as NAME."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            rows = connection.execute(
                "SELECT application_name, coalesce(state, '') FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchall()
        return [(str(name), str(state)) for name, state in rows]

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
