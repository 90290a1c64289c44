"""`make run` as a user runs it: web and worker come up, and Ctrl-C lets a running sync finish."""

import hashlib
import hmac
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import PROJECT_ROOT
from tests.gitservers import free_port

pytestmark = pytest.mark.processes


def wait_until(predicate, timeout, message):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_ctrl_c_lets_the_running_sync_finish(remote, tmp_path):
    started, finished = tmp_path / "started", tmp_path / "finished"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))},
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'run.sqlite3'}",
        "SECRET_KEY": "make-run-test-secret-key-0123456789-abcdefghijklmnop",
        "GIT_URL": remote.url,
        "REPO_DIR": str(tmp_path / "checkout"),
        "WEBHOOK_SECRET": "make-run-secret",
        "POST_DEPLOY_COMMAND": f'touch "{started}"; sleep 3; touch "{finished}"',
        "WEB_CONCURRENCY": "1",
    }
    make = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"PORT={port}"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=(tmp_path / "make.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal gives it
    )
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/api/health"), 120, "the web server")
        # The worker's start deploys what is there first (trigger "initial"); then the push.
        wait_until(lambda: runs(tmp_path) == [("initial", "succeeded")], 60, "the initial sync")
        started.unlink()
        finished.unlink()
        tip = remote.commit({"app.txt": "v2\n"}, "v2")
        body = json.dumps({"ref": "refs/heads/main", "after": tip}).encode()
        signature = hmac.new(b"make-run-secret", body, hashlib.sha256).hexdigest()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/webhook",
            data=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-Hub-Signature-256": f"sha256={signature}",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        wait_until(started.exists, 60, "the post-deploy command to start")

        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C in the terminal
        make.wait(timeout=60)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    log = (tmp_path / "make.log").read_text(errors="replace")
    assert finished.exists(), f"the post-deploy command was cut short:\n{log}"
    assert runs(tmp_path) == [("initial", "succeeded"), ("webhook", "succeeded")], log


def runs(tmp_path) -> list[tuple[str, str]]:
    """(trigger, status) of every sync run in `make run`'s database, oldest first."""
    try:
        with sqlite3.connect(tmp_path / "data" / "run.sqlite3") as db:
            return list(db.execute("SELECT trigger, status FROM gitdeploy_syncrun ORDER BY id"))
    except sqlite3.Error:  # not migrated yet
        return []


FAKE_OLD_PYTHON = """#!/bin/sh
# Answers like a Python 3.9 would, to whatever the Makefile asks.
case "$1" in
  --version|-V) echo "Python 3.9.18" ;;
  -c) case "$2" in *version_info*) exit 1 ;; *) exit 0 ;; esac ;;
  *) echo "fake python3: unexpected $*" >&2; exit 2 ;;
esac
"""


def make_install(tmp_path, *args, path=None):
    env = {**os.environ, "PATH": path or os.environ["PATH"]}
    return subprocess.run(
        ["make", "--no-print-directory", "install", f"VENV={tmp_path / 'venv'}", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_too_old_python_says_which_one_was_found_and_how_to_pick_another(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python3").write_text(FAKE_OLD_PYTHON)
    (fake_bin / "python3").chmod(0o755)

    result = make_install(tmp_path, path=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")

    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "needs Python 3.11 or newer" in message
    assert "Python 3.9.18" in message and str(fake_bin / "python3") in message, message
    assert "make run PYTHON=python3.11" in message, message
    assert not (tmp_path / "venv").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_missing_python_says_how_to_pick_another(tmp_path):
    result = make_install(tmp_path, "PYTHON=python3.99-not-installed")
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "python3.99-not-installed was not found" in message, message
    assert "make run PYTHON=python3.11" in message, message
