"""PostgreSQL restarted while signed pushes stream in through a real gunicorn and a real worker.

On a cluster of the test's own (private_postgres): gunicorn (2 workers) and `manage.py db_worker`
point at it; a client streams signed GitHub pushes while the test restarts the server twice (a
fast restart, then a stop of 3 s). Every 2xx has its Delivery row, everything else is a 503 with
Retry-After, and afterwards web and worker carry on unattended: the last push is deployed without
restarting either."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

import pytest

from tests.gitservers import git
from tests.reliability.private_postgres import private_postgres  # noqa: F401 - a fixture
from tests.reliability.stack import WorkerProcess, gunicorn, post, wait_for
from tests.reliability.test_database_restart import manage

pytestmark = [pytest.mark.processes, pytest.mark.reliability, pytest.mark.timeout(300)]

SECRET = "restart-under-load-secret"


def signed_push(after: str, delivery: str) -> tuple[dict[str, str], bytes]:
    body = json.dumps({
        "ref": "refs/heads/main", "before": "0" * 40, "after": after,
        "repository": {"full_name": "octo/site", "default_branch": "main"},
        "pusher": {"name": "octocat"},
    }).encode()  # fmt: skip
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": f"sha256={digest}",
    }
    return headers, body


def test_pushes_through_database_restarts_are_recorded_or_answered_503(
    private_postgres,  # noqa: F811 - the fixture
    subprocess_env,
    remote,
    tmp_path,
    figures,
):
    db = private_postgres
    env = {
        **subprocess_env,
        "DATABASE_URL": db.url,
        "GIT_URL": remote.url,
        "GIT_BRANCH": "main",
        "REPO_DIR": str(tmp_path / "checkout"),
        "WEBHOOK_SECRET": SECRET,
        "SYNC_LEASE_SECONDS": "6",
        "DB_CONNECT_TIMEOUT": "2",
    }
    manage(env, "migrate", "--noinput")
    answers: list[tuple[str, int, str | None]] = []
    errors: list[str] = []
    stop = threading.Event()

    with gunicorn(env, tmp_path / "gunicorn.log", workers=2) as web:
        worker = WorkerProcess(env, "steady", tmp_path / "worker.log")
        try:

            def stream() -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    delivery = f"load-{n}"
                    headers, body = signed_push(remote.tip(), delivery)
                    try:
                        answer = post(web.port, "/api/webhook", headers, body, timeout=30)
                    except OSError as exc:  # the server must answer, database or not
                        errors.append(f"{delivery}: {exc!r}")
                        continue
                    answers.append((delivery, answer.status, answer.headers.get("retry-after")))
                    time.sleep(0.02)

            client = threading.Thread(target=stream)
            client.start()
            time.sleep(2)
            remote.commit({"a.txt": "before the restart\n"}, "before the restart")
            db.restart()
            time.sleep(2)
            db.stop()
            time.sleep(3)
            db.start()
            time.sleep(3)
            last = remote.commit({"a.txt": "after the outage\n"}, "after the outage")
            time.sleep(2)  # pushes naming the last commit
            stop.set()
            client.join(60)

            assert errors == [], errors[:5]
            ok = [d for d, status, _ in answers if 200 <= status < 300]
            unavailable = [(d, retry) for d, status, retry in answers if status == 503]
            other = [(d, status) for d, status, _ in answers if status not in (200, 202, 503)]
            assert other == [], other[:10]
            assert unavailable, "the stream never met the database down"
            assert all(retry and int(retry) > 0 for _, retry in unavailable)
            stored = {row[0] for row in db.query("SELECT delivery_id FROM gitdeploy_delivery")}
            missing = [d for d in ok if d not in stored]
            assert missing == [], f"answered 2xx without a row: {missing[:10]}"
            not_answered_2xx = [d for d, _ in unavailable if d in stored]
            assert not_answered_2xx == [], f"503 but recorded: {not_answered_2xx[:10]}"

            # Unattended: the same web and worker deploy the last commit.
            wait_for(
                lambda: (
                    git("rev-parse", "HEAD", cwd=tmp_path / "checkout") == last
                    if (tmp_path / "checkout" / ".git").exists()
                    else False
                ),
                90,
                "the last commit to be deployed\n" + worker.output()[-3000:],
                interval=0.3,
            )
            wait_for(
                lambda: db.query("SELECT count(*) FROM gitdeploy_syncrun "
                                 "WHERE status IN ('queued', 'running')")[0][0] == 0,
                60,
                "every run to finish",
                interval=0.3,
            )  # fmt: skip
            assert worker.proc.poll() is None and web.proc.poll() is None
            runs = db.query("SELECT status, count(*) FROM gitdeploy_syncrun GROUP BY status")
        finally:
            stop.set()
            worker.kill()
    figures(
        f"database restarts under load: {len(answers)} signed pushes, {len(ok)} answered 2xx "
        f"(all recorded), {len(unavailable)} answered 503 with Retry-After, 0 other; "
        f"runs {dict(runs)}, none left queued or running; web and worker still up"
    )
