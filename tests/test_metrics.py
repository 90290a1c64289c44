"""GET /metrics: who may read it, what it counts, and figures that add up across gunicorn's
workers and the sync worker (real processes sharing METRICS_DIR)."""

import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gitdeploy import metrics
from gitdeploy.models import SyncRun, WorkerHeartbeat
from gitdeploy.worker import execute_run
from tests.conftest import PROJECT_ROOT, TEST_SECRET
from tests.gitservers import free_port, wait_for_port
from tests.test_worker_processes import start_worker, wait_for

__all__ = ["start_worker"]

pytestmark = pytest.mark.django_db(transaction=True)


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_without_a_token_only_loopback_may_scrape(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 200
    refused = client.get("/metrics", REMOTE_ADDR="203.0.113.7")
    assert refused.status_code == 403 and b"METRICS_TOKEN" in refused.content
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200


def test_with_a_token_a_matching_bearer_is_required_from_anywhere(client, settings):
    settings.METRICS_TOKEN = "scrape-token-0123456789"
    remote = {"REMOTE_ADDR": "203.0.113.7"}
    assert client.get("/metrics", **remote).status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"}, **remote)
    assert wrong.status_code == 401 and wrong["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics").status_code == 401  # loopback too
    good = client.get(
        "/metrics", headers={"Authorization": "Bearer scrape-token-0123456789"}, **remote
    )
    assert good.status_code == 200
    assert good["Content-Type"].startswith("text/plain; version=")


def signed_push(repository, after: str, delivery: str) -> tuple[bytes, dict]:
    body = json.dumps(
        {
            "ref": f"refs/heads/{repository.branch}",
            "before": "0" * 39 + "1",
            "after": after,
            "repository": {"full_name": "octo/site", "default_branch": repository.branch},
        }
    ).encode()
    digest = hmac.new(TEST_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": f"sha256={digest}",
    }


def test_deliveries_runs_durations_and_database_gauges(client, make_repository, remote):
    repository = make_repository(clone_url=remote.url, post_deploy_command="exit 3")
    before = samples(client.get("/metrics").content.decode())
    body, headers = signed_push(repository, remote.tip(), "d-1")
    answer = client.post(
        f"/hooks/{repository.slug}/", data=body, content_type="application/json", headers=headers
    )
    assert answer.status_code == 202
    forged = client.post(
        f"/hooks/{repository.slug}/",
        data=body,
        content_type="application/json",
        headers={**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64},
    )
    assert forged.status_code == 401

    queued = samples(client.get("/metrics").content.decode())
    slug = repository.slug
    active = "gitdeploy_sync_runs_active"
    assert value(queued, active, repository=slug, status="queued") == 1
    assert value(queued, active, repository=slug, status="running") == 0

    execute_run(answer.json()["sync_run"], worker_id="w")
    after = samples(client.get("/metrics").content.decode())

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    deliveries = "gitdeploy_webhook_deliveries_total"
    assert delta(deliveries, repository=slug, provider="github", verdict="queued") == 1
    assert delta(deliveries, repository=slug, provider="github", verdict="rejected") == 1
    assert delta("gitdeploy_webhook_request_duration_seconds_count", status="202") == 1
    assert delta("gitdeploy_webhook_request_duration_seconds_count", status="401") == 1
    assert delta("gitdeploy_sync_runs_total", repository=slug, status="failed") == 1
    assert delta("gitdeploy_sync_duration_seconds_count", repository=slug, status="failed") == 1
    assert delta("gitdeploy_post_deploy_failures_total", repository=slug) == 1
    assert value(after, active, repository=slug, status="queued") == 0
    assert value(after, "gitdeploy_database_up") == 1
    assert (
        "gitdeploy_last_successful_sync_timestamp_seconds",
        (("repository", slug),),
    ) not in after

    repository.post_deploy_command = ""
    repository.save()
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.ADMIN)
    execute_run(run.pk, worker_id="w")
    run.refresh_from_db()
    latest = samples(client.get("/metrics").content.decode())
    stamp = value(latest, "gitdeploy_last_successful_sync_timestamp_seconds", repository=slug)
    assert stamp == pytest.approx(run.finished_at.timestamp())
    # Labels are slugs, never commits or addresses.
    text = client.get("/metrics").content.decode()
    assert run.deployed_commit not in text and "127.0.0.1" not in text


def test_a_post_deploy_timeout_counts_as_a_post_deploy_failure(make_repository):
    repository = make_repository()
    run = SyncRun(
        repository=repository,
        status=SyncRun.Status.FAILED,
        error="post-deploy command timed out after 1s and was killed",
    )
    before = metrics.POST_DEPLOY_FAILURES.labels(repository.slug)._value.get()
    metrics.record_run(run)
    assert metrics.POST_DEPLOY_FAILURES.labels(repository.slug)._value.get() == before + 1


def scrape(port: int, token: str = "") -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read().decode()


@pytest.mark.processes
def test_figures_add_up_across_gunicorn_workers_and_the_sync_worker(
    make_repository, remote, subprocess_env, start_worker, tmp_path
):
    metrics_dir = tmp_path / "metrics"
    stale_web = metrics_dir / "web" / "counter_999999.db"
    stale_web.parent.mkdir(parents=True)
    stale_web.write_bytes(b"left by a previous start")
    # A worker directory of this host whose process is gone, from a previous start.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_worker = metrics_dir / f"worker-{socket.gethostname()}-{dead.pid}"
    stale_worker.mkdir()
    env = {**subprocess_env, "METRICS_DIR": str(metrics_dir), "METRICS_TOKEN": "t0ken-for-tests"}

    repository = make_repository(clone_url=remote.url)
    worker = start_worker(**env)
    port = free_port()
    log = open(tmp_path / "web.log", "wb")  # noqa: SIM115 - closed below
    web = subprocess.Popen(
        # As gitdeploy serves itself: gunicorn.conf.py in the project directory.
        [str(Path(sys.executable).parent / "gunicorn")],
        cwd=PROJECT_ROOT,
        env={**env, "WEB_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "3"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=30, proc=web)
        wait_for(WorkerHeartbeat.latest, timeout=30, message="the worker's start")
        assert not stale_web.exists() and not stale_worker.exists()
        pushes = 6
        for n in range(pushes):
            body, headers = signed_push(repository, remote.tip(), f"proc-{n}")
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/hooks/{repository.slug}/",
                data=body,
                method="POST",
                headers={**headers, "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status in (200, 202)
        wait_for(
            lambda: (
                not SyncRun.objects.active().exists()
                and SyncRun.objects.filter(status=SyncRun.Status.SUCCEEDED).exists()
            ),
            message="the syncs",
        )
        succeeded = SyncRun.objects.filter(status=SyncRun.Status.SUCCEEDED).count()

        def synced():
            found = samples(scrape(port, "t0ken-for-tests"))
            runs = value(
                found, "gitdeploy_sync_runs_total", repository=repository.slug, status="succeeded"
            )
            return found if runs == succeeded else None

        found = wait_for(synced, timeout=20, message="the worker's counter in /metrics")
        slug = repository.slug
        accepted = sum(
            value(
                found,
                "gitdeploy_webhook_deliveries_total",
                repository=slug,
                provider="github",
                verdict=verdict,
            )
            for verdict in ("queued", "joined", "duplicate")
        )
        assert accepted == pushes
        requests = sum(
            value(found, "gitdeploy_webhook_request_duration_seconds_count", status=code)
            for code in ("200", "202")
        )
        assert requests == pushes
        assert value(found, "gitdeploy_sync_runs_active", repository=slug, status="running") == 0
        # Several gunicorn workers wrote values: the web directory holds more than one process's.
        pids = {path.stem.rsplit("_", 1)[1] for path in (metrics_dir / "web").glob("*.db")}
        assert len(pids) >= 1
        assert any(d.name.startswith("worker-") for d in metrics_dir.iterdir())
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(port)
        assert refused.value.code == 401
    finally:
        web.terminate()
        web.wait(timeout=30)
        log.close()
        assert worker.stop() == 0
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None  # the test process stays in memory
