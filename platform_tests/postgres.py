"""A throwaway PostgreSQL cluster for tests: `initdb` in a temp dir, `pg_ctl` on 127.0.0.1 and a free
port (its unix socket inside the temp dir), trust auth on loopback, stopped and removed afterwards.

Postgres refuses to run as root, so when the tests run as root the cluster belongs to the `postgres`
system user (the temp dir is chowned to it; commands go through `runuser -u postgres --`).

Use the session fixture `postgres_cluster` (registered in platform_tests/conftest.py):

    url = postgres_cluster.create_database("source")   # a fresh database, e.g. source_3
    postgres_cluster.execute(url, "CREATE TABLE t (x int)")
    rows = postgres_cluster.execute(url, "SELECT count(*) FROM t")
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from platform_tests.servers import free_port

SUPERUSER = "postgres"
SYSTEM_USER = "postgres"  # the non-root account the server runs as when the tests run as root
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def postgres_bin_dir() -> Path:
    """The folder holding initdb/pg_ctl: PATH first, then Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3].split(".")[0])
    )
    if not candidates:
        pytest.fail("PostgreSQL's initdb/pg_ctl not found: install Debian's `postgresql` (.ci/run does)")
    return Path(candidates[-1]).parent


@dataclass
class PostgresCluster:
    """A running cluster; `url(db)` is a libpq/SQLAlchemy URL usable by psycopg2, Dagster and MLflow."""

    root: Path
    port: int
    host: str = "127.0.0.1"
    user: str = SUPERUSER
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    @staticmethod
    def sqlalchemy_url(url: str) -> str:
        """`url` for SQLAlchemy with psycopg2 named (Dagster, MLflow): SQLAlchemy 2.1 maps a bare
        postgresql:// to psycopg 3, which the platform does not install."""
        return url.replace("postgresql://", "postgresql+psycopg2://", 1)

    def create_database(self, prefix: str) -> str:
        """Create a fresh database named `<prefix>_<n>` (unique in the session); returns its URL."""
        if not _NAME.match(prefix):
            raise ValueError(f"database prefix {prefix!r} must be a lower-case identifier")
        name = f"{prefix}_{next(self._counter)}"
        self.execute(self.url("postgres"), f'CREATE DATABASE "{name}"', autocommit=True)
        return self.url(name)

    def connect(self, url: str) -> Any:
        import psycopg2

        return psycopg2.connect(url)

    def execute(
        self, url: str, sql: str, params: Sequence[Any] | None = None, autocommit: bool = False
    ) -> list[tuple]:
        """Run one statement in its own connection (committed); returns its rows ([] when none)."""
        conn = self.connect(url)
        try:
            conn.autocommit = autocommit
            with conn.cursor() as cur:
                cur.execute(sql, params)
                rows = cur.fetchall() if cur.description is not None else []
            if not autocommit:
                conn.commit()
            return rows
        finally:
            conn.close()

    @staticmethod
    def database_of(url: str) -> str:
        return urlsplit(url).path.lstrip("/")


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", SYSTEM_USER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], cwd: Path, timeout: float = 120) -> None:
    done = subprocess.run(_as_server_user(command), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def _server_options(port: int, socket_dir: Path) -> str:
    # Loopback only, socket in the temp dir; durability off: the cluster lives for one test session.
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(socket_dir),
        "max_connections": "200",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    return " ".join(f"-c {key}={value}" for key, value in settings.items())


def _start(bin_dir: Path, data: Path, socket_dir: Path, log: Path) -> int:
    """Start on a free port; retried because another process may take the port in between."""
    last_error: Exception | None = None
    for _ in range(5):
        port = free_port()
        command = [str(bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-l", str(log)]
        try:
            _run([*command, "-o", _server_options(port, socket_dir)], cwd=data.parent)
            return port
        except RuntimeError as error:
            last_error = error
            time.sleep(0.5)
    raise RuntimeError(f"postgres did not start: {last_error}\n{log.read_text() if log.exists() else ''}")


@contextmanager
def postgres_cluster_running() -> Iterator[PostgresCluster]:
    """initdb + pg_ctl start in a fresh temp dir; always `pg_ctl stop -m fast` and remove the dir."""
    bin_dir = postgres_bin_dir()
    # Not under pytest's tmp dir: that is private to root (0700), and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="mlplatform-pg-"))
    data, socket_dir, log = root / "data", root / "socket", root / "server.log"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        for path in (root, socket_dir):
            shutil.chown(path, SYSTEM_USER, SYSTEM_USER)
    started = False
    try:
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust"]
        _run([*initdb, "--encoding=UTF8", "--locale=C", "--no-sync"], cwd=root)
        port = _start(bin_dir, data, socket_dir, log)
        started = True
        yield PostgresCluster(root=root, port=port)
    finally:
        if started:
            _run([str(bin_dir / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(data)], cwd=root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One cluster per test session; tests take fresh databases with `create_database(prefix)`."""
    with postgres_cluster_running() as cluster:
        yield cluster
