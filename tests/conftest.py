"""Shared fixtures: a named cast of repositories and the environment for real subprocesses."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# A git that needs a credential must fail at once in tests, never wait at a prompt.
os.environ["GIT_TERMINAL_PROMPT"] = "0"

# The git server fixtures (remote, git_daemon, http_server, ssh_server, ...) for every test file.
pytest_plugins = ["tests.gitservers"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEST_SECRET = "s3cret-for-tests"


def run_python(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -c script` in the project directory with exactly `env`, its output captured."""
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database, which it drops at the end. On PostgreSQL a process a test
    stopped (a worker killed with SIGKILL) can leave its backend connected for a moment, and the
    DROP then fails ("being accessed by other users", seen in CI), leaving the database behind on
    the server: the backends still connected to it are ended first."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def database_url_for_subprocess() -> str:
    """DATABASE_URL of the test database pytest-django created, for processes the test starts."""
    from django.db import connection

    params = connection.settings_dict
    if params["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{params['NAME']}"
    user = params.get("USER") or "postgres"
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{params['NAME']}"


def is_sqlite() -> bool:
    from django.db import connection

    return connection.vendor == "sqlite"


@pytest.fixture
def subprocess_env(tmp_path):
    """Environment for `manage.py ...` subprocesses that must see the test database."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_SETTINGS_MODULE", "GIT_URL", "REPO_DIR", "WEBHOOK_SECRET"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=database_url_for_subprocess(),
        SECRET_KEY="test-subprocess-secret-key-0123456789-abcdefghijklmnop",
        DEBUG="false",
        LOCK_DIR=str(tmp_path / "locks"),
        PYTHONUNBUFFERED="1",
        GIT_TERMINAL_PROMPT="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


@pytest.fixture
def make_repository(db, tmp_path):
    """Repository rows with safe defaults; target directories live under tmp_path."""
    from gitdeploy.models import Repository

    counter = {"n": 0}

    def make(**fields):
        counter["n"] += 1
        n = counter["n"]
        defaults = {
            "name": f"site{n}",
            "slug": f"site{n}",
            "clone_url": "https://github.com/octo/site.git",
            "branch": "main",
            "target_dir": str(tmp_path / f"checkout{n}"),
            "webhook_secret": TEST_SECRET,
        }
        defaults.update(fields)
        return Repository.objects.create(**defaults)

    return make
