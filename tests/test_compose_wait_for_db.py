"""`manage.py wait_for_db`: what the container entrypoint waits on before migrating or working."""

import os
import socket
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def wait_for_db(database_url: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "DJANGO_SETTINGS_MODULE", "DATA_DIR"}
    }
    env.update(
        DATABASE_URL=database_url,
        DATA_DIR=str(tmp_path / "data"),
        SECRET_KEY="wait-for-db-test-secret-key-0123456789-abcdefghijklmnop",
        DEBUG="false",
    )
    return subprocess.run(
        [sys.executable, "manage.py", "wait_for_db", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_reachable_database_is_ready_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    result = wait_for_db(url, "--timeout", "5", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Database is ready."


def test_migrated_waits_for_someone_else_to_migrate_then_gives_up(tmp_path):
    result = wait_for_db(
        f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "--migrated",
        "--timeout",
        "0.6",
        "--interval",
        "0.2",
        tmp_path=tmp_path,
    )
    assert result.returncode == 1
    # One line per change of state, not one per attempt.
    assert result.stderr.count("Waiting for the database:") == 1
    assert "migration(s) not applied yet" in result.stderr
    assert "Database not ready after 0.6 s" in result.stderr


def test_an_unreachable_database_fails_after_the_timeout_without_the_password(tmp_path):
    url = f"postgres://gitdeploy:hunter2-not-shown@127.0.0.1:{closed_port()}/gitdeploy"
    result = wait_for_db(url, "--timeout", "1", "--interval", "0.3", tmp_path=tmp_path)
    assert result.returncode == 1
    assert "Database not ready after 1 s" in result.stderr
    assert "hunter2-not-shown" not in result.stdout + result.stderr
