"""With the database unreachable the webhook answers 503 (the Git host shows a failure the user can
redeliver), never a 500 page. Runs the real server (gunicorn) against a database that is not
there."""

import json
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.reliability.stack import gunicorn

pytestmark = pytest.mark.processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused at once."""
    return free_port()


@pytest.fixture(params=["postgres", "sqlite"])
def unreachable_database_url(request, tmp_path):
    if request.param == "postgres":
        return f"postgres://postgres@127.0.0.1:{closed_port()}/gitdeploy"
    # A directory where the database file should be: SQLite cannot open it.
    (tmp_path / "db-is-a-directory").mkdir()
    return f"sqlite:///{tmp_path / 'db-is-a-directory'}"


def post(url: str, body: bytes, headers: dict) -> tuple[int, dict, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def test_webhook_answers_503_json_when_the_database_is_unreachable(
    unreachable_database_url, tmp_path
):
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "SECRET_KEY": "test-secret-key-for-the-database-down-test-0123456789",
        "DATABASE_URL": unreachable_database_url,
        "DB_CONNECT_TIMEOUT": "2",
        "DATA_DIR": str(tmp_path / "data"),
    }
    # As gitdeploy serves itself: gunicorn.conf.py in the project directory.
    with gunicorn(env, tmp_path / "gunicorn.log", workers=1) as server:
        port = server.port
        body = json.dumps({"ref": "refs/heads/main", "after": "a" * 40}).encode()
        status, headers, text = post(
            f"http://127.0.0.1:{port}/hooks/default/",
            body,
            {"Content-Type": "application/json", "X-GitHub-Event": "push"},
        )
        assert status == 503, text
        assert headers.get("Content-Type", "").startswith("application/json")
        assert json.loads(text)["status"] == "error"
        assert "Retry-After" in headers

        # The readiness probe says why, so an operator knows what to fix.
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/ready", timeout=20)
            pytest.fail("/api/ready answered 2xx with the database down")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            checks = json.loads(exc.read().decode())["checks"]
        assert checks["database"]["detail"].startswith("database unreachable")
