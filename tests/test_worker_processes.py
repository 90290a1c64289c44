"""Real `manage.py db_worker` processes: syncing, kill -9 recovery, SIGTERM, a burst of pushes.

The test process plays the web server (Django's test client posting signed webhooks) and the
workers are subprocesses reading the same test database.
"""

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gitdeploy.models import Delivery, SyncRun, WorkerHeartbeat
from tests.conftest import PROJECT_ROOT, TEST_SECRET, is_sqlite
from tests.gitservers import git
from tests.reliability.stack import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]


class Worker:
    def __init__(self, env: dict, name: str, log_dir: Path, interval: str | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        extra = ["--interval", interval] if interval else []
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "db_worker", "--worker-id", name, *extra],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=30) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode


@pytest.fixture
def start_worker(subprocess_env, tmp_path):
    workers = []

    def start(name="worker-1", interval=None, **env):
        worker = Worker({**subprocess_env, **env}, name, tmp_path, interval)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(signal.SIGKILL)


@pytest.fixture
def deployed_repository(make_repository):
    """A repository deployed once already (in this process, before any worker starts), so a
    starting worker has no initial sync to queue and the test's push is the next run. The
    post-deploy command is set after that first deploy."""
    from gitdeploy.models import Repository
    from gitdeploy.worker import execute_run

    def make(post_deploy_command="", **fields):
        repository = make_repository(**fields)
        run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.CLI)
        execute_run(run.pk, worker_id="setup")
        run.refresh_from_db()
        assert run.status == SyncRun.Status.SUCCEEDED, run.log
        Repository.objects.filter(pk=repository.pk).update(post_deploy_command=post_deploy_command)
        repository.refresh_from_db()
        return repository

    return make


def push_webhook(client, repository, after, delivery):
    body = json.dumps(
        {
            "ref": f"refs/heads/{repository.branch}",
            "before": "0" * 39 + "1",
            "after": after,
            "repository": {"full_name": "octo/site", "default_branch": repository.branch},
            "pusher": {"name": "octocat"},
        }
    ).encode()
    signature = hmac.new(TEST_SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = client.post(
        f"/hooks/{repository.slug}/",
        data=body,
        content_type="application/json",
        headers={
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": f"sha256={signature}",
        },
    )
    assert response.status_code in (200, 202), response.content
    return response.json()


def push_and_wait_for_post_deploy(client, repository, remote, started, delivery):
    """Push a commit, send its webhook, and return once the post-deploy command (which touches
    `started` first) is running: the moment to signal or kill the worker."""
    tip = remote.commit({"app.txt": "v2\n"}, "v2")
    answer = push_webhook(client, repository, tip, delivery)
    wait_for(started.exists, message="the post-deploy command to start")
    return tip, SyncRun.objects.get(pk=answer["sync_run"])


def head(path) -> str:
    return git("rev-parse", "HEAD", cwd=path)


def finished(run_id):
    run = SyncRun.objects.get(pk=run_id)
    return run if run.is_finished else None


def test_a_worker_process_syncs_a_pushed_commit(client, make_repository, remote, start_worker):
    repository = make_repository(clone_url=remote.url)
    first = remote.tip()
    worker = start_worker()
    wait_for(WorkerHeartbeat.latest, timeout=30, message="the worker's first heartbeat")
    # Nothing was deployed: the worker's start queued the first deploy, without a push.
    initial = wait_for(
        lambda: SyncRun.objects.filter(trigger="initial", status="succeeded").first(),
        message="the initial sync",
    )
    assert initial.deployed_commit == first == head(repository.target_dir), worker.output()

    tip = remote.commit({"index.html": "<h1>v2</h1>\n"}, "v2")
    answer = push_webhook(client, repository, tip, "delivery-1")
    assert answer["status"] == "queued"
    run = wait_for(lambda: finished(answer["sync_run"]), message="the sync")
    assert run.status == SyncRun.Status.SUCCEEDED, run.log + worker.output()
    assert run.deployed_commit == tip == head(repository.target_dir)
    assert run.worker_id == "worker-1"
    # How fast it was picked up is printed for the record; bench/ measures it properly.
    print(f"queued -> started: {(run.started_at - run.queued_at).total_seconds():.3f}s")
    assert Delivery.objects.get().sync_run_id == run.pk
    assert worker.stop() == 0
    assert not WorkerHeartbeat.objects.filter(worker_id="worker-1").exists(), "a clean stop"


def test_on_postgresql_a_push_wakes_an_idle_worker_without_waiting_for_its_poll(
    client, make_repository, remote, start_worker
):
    if is_sqlite():
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; on SQLite the worker polls")
    repository = make_repository(clone_url=remote.url)
    # A poll every 120 s: only the NOTIFY sent when the push is committed can start it sooner.
    worker = start_worker(interval="120")
    wait_for(WorkerHeartbeat.latest, timeout=30, message="the worker's first heartbeat")
    time.sleep(1)  # past its first poll, now waiting on LISTEN
    for n in range(3):
        tip = remote.commit({"index.html": f"<h1>v{n}</h1>\n"}, f"v{n}")
        answer = push_webhook(client, repository, tip, f"wake-{n}")
        run_id = answer["sync_run"]
        run = wait_for(lambda: finished(run_id), timeout=60, message="the sync")  # noqa: B023
        assert run.status == SyncRun.Status.SUCCEEDED, run.log + worker.output()
        assert (run.started_at - run.queued_at).total_seconds() < 30, worker.output()
    assert worker.stop() == 0


def test_kill_9_mid_sync_is_recovered_and_leaves_a_consistent_directory(
    client,
    deployed_repository,
    remote,
    start_worker,
    tmp_path,
):
    slow = tmp_path / "slow-post-deploy"
    slow.touch()
    started = tmp_path / "post-deploy-started"
    repository = deployed_repository(
        clone_url=remote.url,
        # Slow only while the marker exists, so the recovered run can finish quickly.
        post_deploy_command=f'touch "{started}"; if [ -e "{slow}" ]; then sleep 60; fi',
    )
    lease = {"SYNC_LEASE_SECONDS": "2"}
    victim = start_worker("victim", **lease)
    tip, run = push_and_wait_for_post_deploy(client, repository, remote, started, "delivery-kill")
    assert run.status == SyncRun.Status.RUNNING and run.worker_id == "victim"

    victim.stop(signal.SIGKILL)
    slow.unlink()
    rescuer = start_worker("rescuer", **lease)

    lost = wait_for(
        lambda: SyncRun.objects.filter(pk=run.pk, status=SyncRun.Status.FAILED).first(),
        timeout=60,
        message="the lost run to be failed",
    )
    assert lost.error == "worker lost"
    fresh = wait_for(
        lambda: SyncRun.objects.filter(retry_of=run, status=SyncRun.Status.SUCCEEDED).first(),
        timeout=60,
        message="the recovery run to succeed",
    )
    assert fresh.deployed_commit == tip == head(repository.target_dir), rescuer.output()
    status = subprocess.run(
        ["git", "status", "--porcelain"],
        cwd=repository.target_dir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert status == "", "the killed sync left the checkout consistent"
    assert not SyncRun.objects.filter(status=SyncRun.Status.RUNNING).exists()


def test_sigterm_lets_the_current_run_finish(
    client, deployed_repository, remote, start_worker, tmp_path
):
    started = tmp_path / "post-deploy-started"
    repository = deployed_repository(
        clone_url=remote.url, post_deploy_command=f'touch "{started}"; sleep 2; echo finished'
    )
    worker = start_worker()
    tip, run = push_and_wait_for_post_deploy(client, repository, remote, started, "delivery-term")

    assert worker.stop(signal.SIGTERM, timeout=60) == 0, worker.output()
    run.refresh_from_db()
    assert run.status == SyncRun.Status.SUCCEEDED, run.log + worker.output()
    assert "finished" in run.log and run.post_deploy_exit_code == 0
    assert head(repository.target_dir) == tip


def test_a_burst_of_pushes_gives_at_most_three_syncs_and_ends_at_the_last_commit(
    client,
    deployed_repository,
    remote,
    start_worker,
):
    repository = deployed_repository(clone_url=remote.url, post_deploy_command="sleep 1")
    # SQLite serialises writers; one worker there, two on PostgreSQL.
    workers = [start_worker("worker-1")]
    if not is_sqlite():
        workers.append(start_worker("worker-2"))
    wait_for(
        lambda: WorkerHeartbeat.objects.count() >= len(workers), timeout=30, message="heartbeats"
    )

    # 50 pushes land on the remote one after another, then their 50 webhooks arrive together,
    # as they do when a CI bot or a rebase pushes in a loop.
    pushes = 50
    commits = [remote.commit({"counter.txt": f"{n}\n"}, f"push {n}") for n in range(pushes)]
    last = commits[-1]
    for n, commit in enumerate(commits):
        push_webhook(client, repository, commit, f"burst-{n}")

    wait_for(
        lambda: not SyncRun.objects.active().exists(),
        timeout=120,
        message="every run to finish",
    )
    ran = SyncRun.objects.exclude(started_at=None).exclude(worker_id="setup")
    assert ran.count() <= 3, list(ran.values_list("pk", "status", "deployed_commit"))
    assert not SyncRun.objects.filter(status=SyncRun.Status.FAILED).exists()
    final = SyncRun.objects.filter(status=SyncRun.Status.SUCCEEDED).order_by("-finished_at").first()
    assert final.deployed_commit == last == head(repository.target_dir)
    # Every delivery is recorded and points at a run that covered it.
    assert Delivery.objects.count() == pushes
    assert not Delivery.objects.filter(sync_run=None).exists()
    print(f"{pushes} pushes -> {ran.count()} syncs with {len(workers)} worker(s)")
    for worker in workers:
        assert worker.stop() == 0, worker.output()


def test_the_worker_reports_a_heartbeat_with_its_pid(start_worker, db):
    worker = start_worker("beating")
    beat = wait_for(
        lambda: WorkerHeartbeat.objects.filter(worker_id="beating").first(),
        timeout=30,
        message="a heartbeat",
    )
    assert beat.pid == worker.proc.pid
    assert os.uname().nodename == beat.hostname


def test_a_second_sigterm_stops_at_once_and_the_request_is_queued_again(
    client, deployed_repository, remote, start_worker, tmp_path
):
    started = tmp_path / "post-deploy-started"
    repository = deployed_repository(
        clone_url=remote.url, post_deploy_command=f'touch "{started}"; sleep 60'
    )
    worker = start_worker()
    _, run = push_and_wait_for_post_deploy(client, repository, remote, started, "delivery-twice")

    worker.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    stopping = time.monotonic()
    # django-tasks-db records the task as failed and exits; well before the 60 s command ends.
    assert worker.stop(signal.SIGTERM, timeout=30) != -signal.SIGKILL, worker.output()
    print(f"stopped {time.monotonic() - stopping:.1f}s after the second SIGTERM")
    run.refresh_from_db()
    assert run.status == SyncRun.Status.FAILED, run.log + worker.output()
    assert run.error == "worker stopped during the sync"
    again = SyncRun.objects.get(retry_of=run)
    assert again.status == SyncRun.Status.QUEUED
    # The post-deploy command was killed with the worker, not left running.
    assert subprocess.run(["pgrep", "-f", f'touch "{started}"']).returncode != 0
