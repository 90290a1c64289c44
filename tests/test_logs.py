"""The worker's and the web server's output: one line per run start and end, LOG_FORMAT=json.

Real `manage.py db_worker` and gunicorn processes; the lines are read from their output.
"""

import contextlib
import json
import logging
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from gitdeploy import logs
from gitdeploy.models import Delivery, SyncRun, WorkerHeartbeat
from tests.conftest import PROJECT_ROOT, TEST_SECRET
from tests.gitservers import free_port, wait_for_port
from tests.reliability.stack import gunicorn
from tests.test_asgi import signed_push
from tests.test_worker_processes import (  # noqa: F401 - fixtures
    deployed_repository,
    finished,
    push_webhook,
    start_worker,
    wait_for,
)

__all__ = ["start_worker"]  # the fixture, used by name below

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]


def json_lines(output: str) -> list[dict]:
    """Every non-empty line, each of which must be one JSON object."""
    documents = []
    for line in output.splitlines():
        if line.strip():
            try:
                documents.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"not a JSON line: {line!r}") from None
    return documents


def run_lines(documents: list[dict], event: str) -> list[dict]:
    return [d for d in documents if d.get("event") == event]


def test_a_failed_post_deploy_is_one_json_line_with_repository_run_commit_and_error(
    client,
    deployed_repository,  # noqa: F811 - the fixture
    remote,
    start_worker,  # noqa: F811 - the fixture
):
    repository = deployed_repository(
        clone_url=remote.url, post_deploy_command="echo 'migrations failed: no table'; exit 3"
    )
    worker = start_worker(LOG_FORMAT="json")
    wait_for(WorkerHeartbeat.latest, timeout=30, message="the worker's first heartbeat")
    tip = remote.commit({"app.txt": "v2\n"}, "v2")
    answer = push_webhook(client, repository, tip, "delivery-json-1")
    run = wait_for(lambda: finished(answer["sync_run"]), message="the sync")
    assert run.status == SyncRun.Status.FAILED
    wait_for(lambda: '"run_finished"' in worker.output(), timeout=10, message="the result line")
    assert worker.stop() == 0

    documents = json_lines(worker.output())
    started = run_lines(documents, "run_started")
    ended = run_lines(documents, "run_finished")
    assert len(started) == 1 and len(ended) == 1, documents
    start, end = started[0], ended[0]
    for document in (start, end):
        assert document["repository"] == repository.slug
        assert document["run_id"] == run.pk
        assert document["delivery_id"] == "delivery-json-1"
        assert document["trigger"] == "webhook"
        assert document["logger"] == "gitdeploy.runs"
        assert {"time", "level", "message"} <= document.keys()
    assert start["commit"] == tip[:12]
    assert end["level"] == "ERROR"
    assert end["result"] == "failed"
    assert end["commit"] == tip[:12]
    assert end["duration_seconds"] > 0
    assert "exit" in end["error"] and "\n" not in end["error"]
    assert end["error"] == run.error.strip().splitlines()[0]
    # django-tasks' own line is JSON too, and no longer the only trace.
    assert any("state=SUCCESSFUL" in d["message"] for d in documents)


def test_a_removed_remote_fails_with_a_readable_line_in_the_default_format(
    client,
    deployed_repository,  # noqa: F811 - the fixture
    remote,
    start_worker,  # noqa: F811 - the fixture
):
    repository = deployed_repository(clone_url=remote.url)
    worker = start_worker(SYNC_RETRIES="0")
    tip = remote.commit({"app.txt": "v2\n"}, "v2")
    shutil.rmtree(remote.path)
    answer = push_webhook(client, repository, tip, "delivery-text-1")
    run = wait_for(lambda: finished(answer["sync_run"]), message="the sync")
    assert run.status == SyncRun.Status.FAILED
    wait_for(lambda: f"sync run #{run.pk} failed" in worker.output(), message="the result line")
    assert worker.stop() == 0
    output = worker.output()
    line = next(x for x in output.splitlines() if f"sync run #{run.pk} failed" in x)
    assert " ERROR gitdeploy.runs " in line
    assert f"repository={repository.slug}" in line and "trigger=webhook" in line
    assert f"commit={tip[:12]}" in line and "duration=" in line
    assert f"error={run.error.strip().splitlines()[0]}" in line
    assert f"sync run #{run.pk} started: repository={repository.slug}" in output
    with pytest.raises(ValueError):
        json.loads(line)


def test_gunicorn_writes_json_access_and_application_lines(
    make_repository, subprocess_env, tmp_path
):
    repository = make_repository()
    port = free_port()
    log_path = tmp_path / "web.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            # As gitdeploy serves itself: gunicorn.conf.py in the project directory.
            [str(Path(sys.executable).parent / "gunicorn")],
            cwd=PROJECT_ROOT,
            env={
                **subprocess_env,
                "LOG_FORMAT": "json",
                "DATA_DIR": str(tmp_path),
                "WEB_BIND": f"127.0.0.1:{port}",
                "WEB_CONCURRENCY": "1",
            },
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, timeout=30, proc=proc)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/hooks/{repository.slug}/",
                data=b"{}",
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    "X-GitHub-Event": "push",
                    "X-GitHub-Delivery": "delivery-forged",
                    "X-Hub-Signature-256": "sha256=" + "0" * 64,
                    "User-Agent": "GitHub-Hookshot/test",
                },
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 401
            wait_for(lambda: '"/hooks/' in log_path.read_text(), timeout=10, message="access")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    documents = json_lines(log_path.read_text())
    access = [d for d in documents if d["logger"] == "gunicorn.access"]
    assert len(access) == 1, documents
    assert access[0]["method"] == "POST"
    assert access[0]["path"] == f"/hooks/{repository.slug}/"
    assert access[0]["status"] == 401
    assert access[0]["user_agent"] == "GitHub-Hookshot/test"
    assert access[0]["duration_ms"] >= 0
    # The delivery's own line carries the repository, the delivery id and the verdict.
    (refusal,) = [d for d in documents if d["logger"] == "gitdeploy.deliveries"]
    assert refusal["repository"] == repository.slug
    assert refusal["delivery_id"] == "delivery-forged"
    assert refusal["verdict"] == "rejected" and refusal["status"] == 401
    assert refusal["level"] == "WARNING" and "signature does not match" in refusal["message"]
    assert any(d["logger"] == "gunicorn.error" for d in documents)
    # post_worker_init froze what the worker loaded (Django and the project: tens of thousands
    # of objects) out of the garbage collector's full scans.
    (frozen,) = [d["message"] for d in documents if d["message"].startswith("froze ")]
    assert int(frozen.split()[1]) > 10_000, frozen
    assert TEST_SECRET not in log_path.read_text()


def test_the_json_formatter_adds_context_and_extra_fields():
    record = logging.LogRecord(
        "gitdeploy.x", logging.WARNING, __file__, 1, "hello %s", ("you",), None
    )
    record.duration_seconds = 1.5
    with logs.context(repository="site", run_id=7, delivery_id=""):
        logs.ContextFilter().filter(record)
    document = json.loads(logs.JsonFormatter().format(record))
    assert document["message"] == "hello you"
    assert document["level"] == "WARNING" and document["logger"] == "gitdeploy.x"
    assert document["repository"] == "site" and document["run_id"] == 7
    assert "delivery_id" not in document  # empty: left out
    assert document["duration_seconds"] == 1.5
    assert document["time"].endswith("Z")


def test_an_unknown_log_format_stops_start_up():
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=PROJECT_ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "SECRET_KEY": "k" * 50,
            "LOG_FORMAT": "xml",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "LOG_FORMAT='xml': use text or json" in result.stderr


def raw_push(slug: str, delivery: str, *, body_cut: int | None = None) -> bytes:
    """test_asgi's signed push as bytes on the wire, or its head and the first body_cut bytes."""
    body, headers = signed_push(delivery)
    head = f"POST /hooks/{slug}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    return head + (body if body_cut is None else body[:body_cut])


@contextlib.contextmanager
def deliveries_locked():
    """Another session holds a lock that makes every insert into the Delivery table wait."""
    settings_dict = connection.settings_dict
    with psycopg.connect(
        dbname=settings_dict["NAME"],
        user=settings_dict.get("USER") or "postgres",
        host=settings_dict.get("HOST") or "127.0.0.1",
        port=str(settings_dict.get("PORT") or 5432),
    ) as other:
        other.execute(f"LOCK TABLE {Delivery._meta.db_table} IN SHARE ROW EXCLUSIVE MODE")
        yield
        other.rollback()


def test_a_request_whose_client_left_is_logged_499_not_500(
    make_repository, subprocess_env, tmp_path
):
    """gunicorn logs a request its application did not answer as a 500. A Git host that gave up
    mid-body, or while its push was being recorded (which is recorded all the same), met no
    failure of gitdeploy's: the access log says 499, nginx's "client closed request"."""
    repository = make_repository(default_branch="main")
    with gunicorn({**subprocess_env, "DATA_DIR": str(tmp_path)}, tmp_path / "web.log") as server:
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(raw_push(repository.slug, "gone-mid-body", body_cut=20))
            time.sleep(0.3)
        wait_for(lambda: server.output().count('" 499 ') == 1, 10, "the mid-body line")
        if connection.vendor == "postgresql":  # SQLite has no lock one table's inserts wait on
            with deliveries_locked():
                with socket.create_connection(("127.0.0.1", server.port)) as client:
                    client.sendall(raw_push(repository.slug, "gone-while-recorded"))
                    time.sleep(0.5)
                # gunicorn cancels the call a grace period (3 s) after the client left.
                wait_for(lambda: server.output().count('" 499 ') == 2, 15, "the cancelled line")
            wait_for(
                lambda: Delivery.objects.filter(delivery_id="gone-while-recorded").exists(),
                15,
                "the delivery, recorded once the lock was gone",
            )
        # The server is still well: an ordinary request is answered and logged as usual.
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/health", timeout=10):
            pass
        wait_for(lambda: "/api/health" in server.output().split('" 499 ')[-1], 10, "health")
        output = server.output()
    assert '" 500 ' not in output, output
    assert not Delivery.objects.filter(delivery_id="gone-mid-body").exists()
