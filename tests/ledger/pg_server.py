"""A private PostgreSQL server for the tests: `initdb` in a temp directory, a free port, the
unix socket in that directory, `pg_ctl -w start`; stopped at the end. Never the machine's
own server on 5432. Debian puts `initdb` under `/usr/lib/postgresql/*/bin`, not on PATH."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.redis_servers import free_port

MACHINE_PORT = 5432
SERVER_USER = "postgres"  # PostgreSQL refuses to run as root: as root, run it as this user


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@dataclass
class PostgresServer:
    directory: Path
    port: int = 0

    def start(self) -> None:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.skip("PostgreSQL is not installed (scripts/test installs `postgresql`)")
        while self.port in (0, MACHINE_PORT):
            self.port = free_port()
        data = self.directory / "data"
        as_user = self._as_user()
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "-A", "trust",
                        "--no-sync", "-E", "UTF8", "--locale=C"], check=True, capture_output=True)
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-w", "-t", "60", "-o", options, "-l",
                        str(self.directory / "log"), "start"], check=True, capture_output=True)

    def stop(self) -> None:
        pg_ctl = pg_bin("pg_ctl")
        if pg_ctl:
            subprocess.run([*self._as_user(), pg_ctl, "-D", str(self.directory / "data"),
                            "-m", "immediate",
                            "-w", "stop"], capture_output=True)

    def _as_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        shutil.chown(self.directory, SERVER_USER, SERVER_USER)
        return [runuser, "-u", SERVER_USER, "--"]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh database (one per test); returns its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        subprocess.run([pg_bin("psql") or "psql", "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", "-qc", f"CREATE DATABASE {name}"], check=True,
                       capture_output=True, env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    directory = Path(tempfile.mkdtemp(prefix="bp-pg-"))
    server = PostgresServer(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()
