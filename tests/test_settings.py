"""Configuration from the environment: bad values stop start-up with a message that names them."""

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from project.env import env_bool, env_int
from tests.conftest import PROJECT_ROOT, run_python


def start_django(**env) -> subprocess.CompletedProcess:
    base = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_SETTINGS_MODULE", "SECRET_KEY", "DEBUG"}
    }
    base.update(DJANGO_SETTINGS_MODULE="project.settings", **env)
    return run_python("import django; django.setup(); print('started')", base)


@pytest.mark.parametrize(
    "raw, expected", [("true", True), ("False", False), ("1", True), ("off", False)]
)
def test_boolean_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("SOME_FLAG", raw)
    assert env_bool("SOME_FLAG", not expected) is expected


def test_unset_or_empty_boolean_takes_the_default(monkeypatch):
    monkeypatch.delenv("SOME_FLAG", raising=False)
    assert env_bool("SOME_FLAG", True) is True
    monkeypatch.setenv("SOME_FLAG", "")
    assert env_bool("SOME_FLAG", True) is True


@pytest.mark.parametrize("raw", ["ture", "enabled", "2", "y e s"])
def test_anything_else_is_refused(monkeypatch, raw):
    monkeypatch.setenv("SOME_FLAG", raw)
    with pytest.raises(ImproperlyConfigured, match="SOME_FLAG"):
        env_bool("SOME_FLAG", False)


def test_numbers_are_checked(monkeypatch):
    monkeypatch.setenv("SOME_NUMBER", "ten")
    with pytest.raises(ImproperlyConfigured, match="SOME_NUMBER"):
        env_int("SOME_NUMBER", 1)


def test_a_misspelt_boolean_stops_start_up():
    result = start_django(SECRET_KEY="x" * 50, ALLOW_UNSIGNED_WEBHOOKS="ture")
    assert result.returncode != 0
    assert "ALLOW_UNSIGNED_WEBHOOKS='ture' is not a boolean" in result.stderr


def test_secret_key_is_required_unless_debug(tmp_path):
    # An empty DATA_DIR: no key anywhere, not even the one `make run` would have generated.
    refused = start_django(DATA_DIR=str(tmp_path))
    assert refused.returncode != 0 and "SECRET_KEY" in refused.stderr
    allowed = start_django(DATA_DIR=str(tmp_path), DEBUG="true")
    assert allowed.returncode == 0, allowed.stderr


def test_secret_key_can_come_from_a_file(tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text("k" * 50 + "\n")
    result = start_django(SECRET_KEY_FILE=str(key_file))
    assert result.returncode == 0, result.stderr


def manage_py(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_manage_py_commands_use_the_key_make_run_generated(remote, tmp_path):
    # The layout `make run` leaves: DATA_DIR with its generated key and the SQLite database, and
    # no SECRET_KEY in the shell the operator then types `manage.py sync default` into.
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret_key").write_text("generated-by-make-run-" + "k" * 40 + "\n")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_SETTINGS_MODULE", "SECRET_KEY", "SECRET_KEY_FILE", "DEBUG"}
        and not key.startswith("DATABASE_")
    }
    env.update(
        DATA_DIR=str(data),
        GIT_URL=remote.url,
        REPO_DIR=str(tmp_path / "checkout"),
        WEBHOOK_SECRET="s3cret",
    )
    migrated = manage_py("migrate", "--noinput", env=env)
    assert migrated.returncode == 0, migrated.stderr

    synced = manage_py("sync", "default", env=env)
    assert synced.returncode == 0, synced.stderr
    assert "deployed" in synced.stdout
    assert (tmp_path / "checkout" / "README.md").exists()

    (data / "secret_key").unlink()
    refused = manage_py("sync", "default", env=env)
    assert refused.returncode != 0 and "SECRET_KEY" in refused.stderr


def test_an_unreadable_git_token_file_stops_only_processes_that_run_git(tmp_path):
    # docker-compose.yml mounts docker/secrets/ into the worker only; .env reaches every service.
    missing = str(tmp_path / "secrets" / "git_token")
    worker = start_django(SECRET_KEY="x" * 50, GIT_TOKEN_FILE=missing, GITDEPLOY_PROCESS="worker")
    assert worker.returncode != 0 and "GIT_TOKEN_FILE" in worker.stderr
    web = start_django(SECRET_KEY="x" * 50, GIT_TOKEN_FILE=missing, GITDEPLOY_PROCESS="web")
    assert web.returncode == 0, web.stderr


def test_readme_lists_every_variable_the_settings_read():
    from tests.test_compose import settings_variables

    readme = (PROJECT_ROOT / "README.md").read_text()
    # Test-only and process-label variables are documented where they are used.
    internal = {"TEST_DATABASE_NAME", "GITDEPLOY_PROCESS"}
    missing = sorted(
        name
        for name in settings_variables() - internal
        if f"`{name}`" not in readme and not name.endswith("_FILE")
    )
    assert not missing, f"document in README.md's Configuration table: {missing}"


def test_schema_commands_run_without_a_secret_key(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_SETTINGS_MODULE", "SECRET_KEY", "SECRET_KEY_FILE", "DEBUG"}
    }
    env.update(DJANGO_SETTINGS_MODULE="project.settings", DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "No changes detected" in result.stdout


HTTPS_PROBE = """
import django
django.setup()
from django.conf import settings
from django.test import Client
client = Client()
print("health", client.get("/api/health").status_code)
print("landing", client.get("/").status_code, client.get("/")["Location"])
secure = client.get("/api/health", headers={"X-Forwarded-Proto": "https"})
print("hsts", secure["Strict-Transport-Security"])
print("cookies", settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE)
"""


def test_https_mode_redirects_and_secures_everything_but_the_probes(tmp_path):
    result = run_python(
        HTTPS_PROBE,
        {
            **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "SECRET_KEY": "k" * 50,
            "HTTPS": "true",
            "ALLOWED_HOSTS": "testserver",
            "DATA_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "health 200" in lines, "the container's plain-HTTP health probe is not redirected"
    assert "landing 301 https://testserver/" in lines
    assert "hsts max-age=31536000" in lines
    assert "cookies True True" in lines
