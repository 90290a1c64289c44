"""A PostgreSQL cluster of the test's own, on a free loopback port: restarting or stopping the
shared server would break every other test, so fault tests get a throwaway one.

Debian's server binaries (/usr/lib/postgresql/<version>/bin). PostgreSQL refuses to run as root:
as root the cluster belongs to the `postgres` user, in a directory outside pytest's 0700 tmp."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from tests.gitservers import free_port


def server_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class PrivatePostgres:
    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.log = root / "server.log"
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/gitdeploy"

    def _as_owner(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._as_owner("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                       "--no-sync", "-E", "UTF8")  # fmt: skip
        self.start()
        with psycopg.connect(self.admin_dsn(), autocommit=True) as connection:
            connection.execute("CREATE DATABASE gitdeploy")

    def admin_dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off"
        )
        self._as_owner("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log),
                       "-w", "-t", "60", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._as_owner("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop",
                       check=False)  # fmt: skip

    def restart(self) -> None:
        self.stop()
        self.start()

    def query(self, sql: str, *params) -> list[tuple]:
        """A short connection of the test's own (never reused across a restart)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.admin_dsn("gitdeploy"), connect_timeout=3) as connection:
                    return connection.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.fixture
def private_postgres():
    bin_dir = server_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing: CI must run the fault tests")
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
    root = Path(tempfile.mkdtemp(prefix="gitdeploy-pg-"))
    root.chmod(0o755)
    server = PrivatePostgres(bin_dir, root)
    try:
        server.init()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
