"""The worker outlives the database: restarts and outages of PostgreSQL are waited out, no run is
lost or run twice, and a SIGTERM to an idle worker stops it cleanly (issue: the worker exited on
the first OperationalError, and an idle stop could end in a ProgrammingError traceback).

Everything runs against a cluster of the test's own (tests/reliability/private_postgres.py):
`manage.py migrate`, a real `manage.py db_worker`, runs queued with `manage.py shell`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT_ROOT
from tests.gitservers import git
from tests.reliability.private_postgres import private_postgres  # noqa: F401 - a fixture
from tests.reliability.stack import wait_for

pytestmark = pytest.mark.processes


def manage(env, *args, timeout=120) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def queue_redeploy(env) -> int:
    out = manage(
        env,
        "shell",
        "-c",
        "from gitdeploy.models import Repository\n"
        "run, _ = Repository.objects.get(slug='default').redeploy()\n"
        "print(run.pk)",
    )
    return int(out.strip().splitlines()[-1])


@pytest.fixture
def stack(private_postgres, subprocess_env, remote, tmp_path):  # noqa: F811 - the fixture
    env = {
        **subprocess_env,
        "DATABASE_URL": private_postgres.url,
        "GIT_URL": remote.url,
        "REPO_DIR": str(tmp_path / "checkout"),
        "WEBHOOK_SECRET": "restart-secret",
        # Short, so that the restart in the middle of a run outlasts the lease.
        "SYNC_LEASE_SECONDS": "6",
    }
    manage(env, "migrate", "--noinput")
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "db_worker", "--worker-id", "survivor"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield env, worker, log_path
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        print(log_path.read_text(errors="replace")[-5000:])


def run_row(db, run_id):
    rows = db.query("SELECT status, deployed_commit, error FROM gitdeploy_syncrun WHERE id = %s",
                    run_id)  # fmt: skip
    return rows[0] if rows else None


def deployed(db, run_id, timeout=60):
    return wait_for(
        lambda: (row := run_row(db, run_id)) and row[0] in ("succeeded", "failed") and row,
        timeout,
        f"run #{run_id} to finish",
        interval=0.2,
    )


def test_the_worker_rides_out_restarts_and_outages_and_stops_cleanly(
    stack,
    private_postgres,  # noqa: F811 - the fixture
    remote,
    tmp_path,
):
    env, worker, log_path = stack
    db = private_postgres
    checkout = tmp_path / "checkout"

    first = queue_redeploy(env)
    assert deployed(db, first)[0] == "succeeded", log_path.read_text()

    # 1. A restart while the worker is idle.
    db.restart()
    tip = remote.commit({"a.txt": "after restart\n"}, "after restart")
    second = queue_redeploy(env)
    assert deployed(db, second)[:2] == ("succeeded", tip), log_path.read_text()
    assert worker.poll() is None, "the worker exited on a database restart"

    # 2. An outage of several seconds (longer than the worker's backoff steps).
    db.stop()
    time.sleep(8)
    assert worker.poll() is None, "the worker exited while the database was down"
    db.start()
    tip = remote.commit({"a.txt": "after outage\n"}, "after outage")
    third = queue_redeploy(env)
    assert deployed(db, third)[:2] == ("succeeded", tip), log_path.read_text()

    # 3. A restart in the middle of a run, longer than its lease: the result is still recorded,
    # once, by the worker that ran it; nothing is queued again.
    runs_before = db.query("SELECT count(*) FROM gitdeploy_syncrun")[0][0]
    tip = remote.commit({"a.txt": "during a run\n"}, "during a run")
    slow = "Repository.objects.filter(slug='default').update(post_deploy_command='sleep 4')"
    manage(env, "shell", "-c", f"from gitdeploy.models import Repository\n{slow}")
    fourth = queue_redeploy(env)
    wait_for(lambda: run_row(db, fourth)[0] == "running", 30, "the run to start", interval=0.2)
    db.stop()
    time.sleep(8)  # past the 6 s lease
    db.start()
    assert deployed(db, fourth)[:2] == ("succeeded", tip), log_path.read_text()
    assert git("rev-parse", "HEAD", cwd=checkout) == tip
    time.sleep(4)  # a recovery, had there been one, runs every 3 s (half the 6 s lease)
    assert db.query("SELECT count(*) FROM gitdeploy_syncrun")[0][0] == runs_before + 1
    assert db.query("SELECT status FROM gitdeploy_syncrun WHERE id = %s", fourth) == [
        ("succeeded",)
    ]

    # 4. SIGTERM to the idle worker: a clean exit, no traceback.
    time.sleep(1)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    output = log_path.read_text(errors="replace")
    assert "Traceback" not in output, output
    assert "database unreachable" in output  # it said what it was waiting for


@pytest.mark.parametrize("attempt", range(5))
def test_sigterm_to_an_idle_worker_never_ends_in_a_traceback(
    attempt,
    private_postgres,  # noqa: F811 - the fixture
    subprocess_env,
    tmp_path,
):
    env = {**subprocess_env, "DATABASE_URL": private_postgres.url}
    manage(env, "migrate", "--noinput")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "db_worker"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # Once its loop runs (before that, SIGTERM's default action ends it: not what is tested),
    # at different moments of the poll loop: the 0.05 s sleep or a query.
    assert proc.stdout is not None
    started = b""
    while b"Starting worker" not in started:
        line = proc.stdout.readline()
        assert line, started  # it exited before starting its loop
        started += line
    time.sleep(0.5 + attempt * 0.013)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=15)
    text = (started + output).decode(errors="replace")
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "Error" not in text, text
