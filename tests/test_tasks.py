"""run_sync in-process: claim, lock, sync, record; retries; lost runs; `manage.py sync`."""

import datetime
import subprocess

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from gitdeploy.models import SyncRun
from gitdeploy.worker import execute_run, recover_lost
from tests.gitservers import HTTP_PASSWORD, HTTP_USER, free_port, git

pytestmark = pytest.mark.django_db(transaction=True)


def head(path) -> str:
    return git("rev-parse", "HEAD", cwd=path)


def test_a_queued_run_clones_then_updates_and_records_commits(make_repository, remote):
    repository = make_repository(clone_url=remote.url, branch="main")
    first, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK, commit=remote.tip())
    execute_run(first.pk, worker_id="test-worker")
    first.refresh_from_db()
    assert first.status == SyncRun.Status.SUCCEEDED, first.log
    assert first.deployed_commit == remote.tip() == head(repository.target_dir)
    assert first.previous_commit == ""
    assert first.started_at and first.finished_at and first.worker_id == "test-worker"
    assert first.lease_expires_at is None

    new_tip = remote.commit({"app.py": "print('v2')\n"}, "v2")
    second, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK, commit=new_tip)
    execute_run(second.pk, worker_id="test-worker")
    second.refresh_from_db()
    assert second.status == SyncRun.Status.SUCCEEDED, second.log
    assert second.previous_commit == first.deployed_commit
    assert second.deployed_commit == new_tip == head(repository.target_dir)


def test_a_late_delivery_deploys_the_tip_not_its_older_commit(make_repository, remote):
    repository = make_repository(clone_url=remote.url)
    old = remote.tip()
    newest = remote.commit({"a.txt": "new\n"}, "newer push")
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK, commit=old)
    execute_run(run.pk, worker_id="w")
    run.refresh_from_db()
    assert run.requested_commit == old
    assert run.deployed_commit == newest


def test_a_superseded_or_finished_run_is_not_run_again(make_repository, remote):
    repository = make_repository(clone_url=remote.url)
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.ADMIN)
    SyncRun.objects.filter(pk=run.pk).update(status=SyncRun.Status.SUPERSEDED)
    execute_run(run.pk, worker_id="w")
    run.refresh_from_db()
    assert run.status == SyncRun.Status.SUPERSEDED and run.started_at is None


def test_the_default_branch_is_learned_from_the_sync(make_repository, remote):
    repository = make_repository(clone_url=remote.url, branch="")
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.CLI)
    execute_run(run.pk, worker_id="w")
    repository.refresh_from_db()
    assert repository.default_branch == "main"


def test_a_failed_fetch_is_retried_with_backoff_as_new_attempts(make_repository, settings):
    settings.SYNC_RETRIES = 2
    settings.SYNC_RETRY_BACKOFF = 5
    # Nothing listens there: a server that is down may be back later.
    repository = make_repository(clone_url=f"git://127.0.0.1:{free_port()}/missing.git")
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    attempts = [run]
    for expected_attempt in (2, 3):
        execute_run(attempts[-1].pk, worker_id="w")
        attempts[-1].refresh_from_db()
        assert attempts[-1].status == SyncRun.Status.FAILED
        retry = SyncRun.objects.get(status=SyncRun.Status.QUEUED)
        assert retry.attempt == expected_attempt and retry.retry_of_id == attempts[-1].pk
        assert retry.trigger == SyncRun.Trigger.RETRY
        assert retry.triggered_by_label == f"attempt {expected_attempt} of run #{run.pk}, retry"
        assert f"attempt {expected_attempt} of run #{run.pk} in " in attempts[-1].log
        assert retry.run_after > timezone.now() + datetime.timedelta(seconds=2)
        # The backoff is the task's run_after too, so the worker does not pick it up early.
        task = DBTaskResult.objects.filter(args_kwargs__args=[retry.pk, repository.pk]).get()
        assert task.run_after is not None and task.run_after > timezone.now()
        SyncRun.objects.filter(pk=retry.pk).update(run_after=None)
        attempts.append(retry)
    execute_run(attempts[-1].pk, worker_id="w")
    assert not SyncRun.objects.filter(status=SyncRun.Status.QUEUED).exists(), "retries exhausted"
    assert SyncRun.objects.filter(status=SyncRun.Status.FAILED).count() == 3
    assert all("unable to connect" in run.error for run in SyncRun.objects.all())
    last = SyncRun.objects.get(pk=attempts[-1].pk)
    assert f"attempt 3 of run #{run.pk} was the last; not retried" in last.log


@pytest.mark.parametrize("problem", ["not a repository", "unknown branch"])
def test_a_failure_no_retry_can_fix_is_not_retried(make_repository, remote, tmp_path, problem):
    if problem == "not a repository":
        (tmp_path / "plain-dir").mkdir()
        repository = make_repository(clone_url=f"file://{tmp_path}/plain-dir")
    else:
        repository = make_repository(clone_url=remote.url, branch="no-such-branch")
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    execute_run(run.pk, worker_id="w")
    run.refresh_from_db()
    assert run.status == SyncRun.Status.FAILED, run.log
    assert not SyncRun.objects.filter(status=SyncRun.Status.QUEUED).exists(), run.log
    assert "FAILED: trying again cannot fix this; not retried" in run.log
    # The error is in the log once, not as ERROR and then again as FAILED.
    assert run.log.count(run.error.splitlines()[0]) == 1, run.log


def test_a_retry_keeps_the_directory_at_its_last_good_commit(make_repository, remote, tmp_path):
    repository = make_repository(clone_url=remote.url)
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.CLI)
    execute_run(run.pk, worker_id="w")
    good = head(repository.target_dir)
    # The remote goes away (renamed), a push arrives: the fetch fails, nothing is touched.
    remote.path.rename(tmp_path / "gone.git")
    failing, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    execute_run(failing.pk, worker_id="w")
    failing.refresh_from_db()
    assert failing.status == SyncRun.Status.FAILED
    assert head(repository.target_dir) == good
    assert (
        subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=repository.target_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        == ""
    )


def test_a_run_whose_lease_expired_is_failed_as_worker_lost_and_requeued(make_repository):
    repository = make_repository()
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK, commit="c" * 40)
    assert run.claim("dead-worker")
    SyncRun.objects.filter(pk=run.pk).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    follow_ups = recover_lost()
    run.refresh_from_db()
    assert run.status == SyncRun.Status.FAILED and run.error == "worker lost"
    assert "worker lost" in run.log
    assert len(follow_ups) == 1
    fresh = follow_ups[0]
    assert fresh.status == SyncRun.Status.QUEUED and fresh.retry_of_id == run.pk
    assert fresh.requested_commit == "c" * 40
    assert recover_lost() == [], "recovery happens once"


def test_a_live_lease_is_not_recovered(make_repository):
    repository = make_repository()
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    assert run.claim("busy-worker")
    assert recover_lost() == []
    run.refresh_from_db()
    assert run.status == SyncRun.Status.RUNNING


def test_claim_refuses_a_second_running_run_of_a_repository(make_repository):
    repository = make_repository()
    first, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    assert first.claim("w1")
    second, joined = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    assert not joined
    assert not second.claim("w2"), "the database allows one running run per repository"
    second.refresh_from_db()
    assert second.status == SyncRun.Status.QUEUED


def test_a_roll_back_replaces_a_queued_tip_request(make_repository):
    repository = make_repository()
    tip, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    rollback, joined = SyncRun.request(
        repository, trigger=SyncRun.Trigger.ADMIN, commit="d" * 40, pin_commit=True
    )
    tip.refresh_from_db()
    assert not joined and tip.status == SyncRun.Status.SUPERSEDED
    assert tip.superseded_by_id == rollback.pk


def test_manage_py_sync_runs_in_the_foreground_and_rolls_back(make_repository, remote, capsys):
    repository = make_repository(clone_url=remote.url)
    first = remote.tip()
    remote.commit({"b.txt": "b\n"}, "second")
    call_command("sync", repository.slug)
    out = capsys.readouterr().out
    assert "deployed" in out and head(repository.target_dir) == remote.tip()

    call_command("sync", repository.slug, commit=first)
    assert head(repository.target_dir) == first
    run = SyncRun.objects.order_by("-pk").first()
    assert run.pin_commit and run.trigger == SyncRun.Trigger.CLI and run.deployed_commit == first


def test_manage_py_sync_fails_loudly(make_repository, tmp_path):
    repository = make_repository(clone_url=f"file://{tmp_path}/nothing-here.git")
    with pytest.raises(CommandError, match="failed"):
        call_command("sync", repository.slug)
    with pytest.raises(CommandError, match="no repository"):
        call_command("sync", "does-not-exist")


def test_credentials_appear_in_no_stored_text(make_repository, remote, http_server):
    url = http_server.url_for(remote).replace("http://", f"http://{HTTP_USER}:{HTTP_PASSWORD}@")
    repository = make_repository(clone_url=url)
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.CLI)
    execute_run(run.pk, worker_id="w")
    run.refresh_from_db()
    assert run.status == SyncRun.Status.SUCCEEDED, run.log
    assert HTTP_PASSWORD not in run.log and HTTP_PASSWORD not in run.error
    config = (remote_config := f"{repository.target_dir}/.git/config")
    with open(config) as handle:
        assert HTTP_PASSWORD not in handle.read(), remote_config

    # A wrong password fails, and neither password is stored anywhere.
    repository.clone_url = url.replace(HTTP_PASSWORD, "wrong-password-123456")
    repository.save()
    remote.commit({"c.txt": "c\n"}, "third")
    failing, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.CLI)
    execute_run(failing.pk, worker_id="w")
    failing.refresh_from_db()
    assert failing.status == SyncRun.Status.FAILED
    for text in (failing.log, failing.error):
        assert "wrong-password-123456" not in text and HTTP_PASSWORD not in text


def test_housekeeping_prunes_only_old_rows(make_repository, settings):
    from django_tasks_db.models import DBTaskResult

    from gitdeploy.models import Delivery, WorkerHeartbeat
    from gitdeploy.worker import prune_housekeeping

    now = timezone.now()
    long_ago = now - datetime.timedelta(days=40)
    repository = make_repository()
    WorkerHeartbeat.objects.create(worker_id="gone", seen_at=long_ago)
    WorkerHeartbeat.objects.create(worker_id="alive", seen_at=now)
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.ADMIN)
    DBTaskResult.objects.update(status="SUCCESSFUL", finished_at=long_ago)
    old = Delivery.objects.create(
        repository=repository, verdict="ignored", status_code=200, received_at=long_ago
    )
    recent = Delivery.objects.create(repository=repository, verdict="ignored", status_code=200)

    settings.DELIVERY_RETENTION_DAYS = 0
    pruned = prune_housekeeping()
    assert pruned == {"heartbeats": 1, "task_results": 1, "deliveries": 0, "sync_runs": 0}
    assert list(WorkerHeartbeat.objects.values_list("worker_id", flat=True)) == ["alive"]
    assert Delivery.objects.filter(pk=old.pk).exists(), "deliveries are kept unless asked"

    settings.DELIVERY_RETENTION_DAYS = 30
    assert prune_housekeeping()["deliveries"] == 1
    assert list(Delivery.objects.values_list("pk", flat=True)) == [recent.pk]
    assert SyncRun.objects.filter(pk=run.pk).exists(), "runs are kept unless RETENTION_DAYS"


def test_a_recovery_defers_to_a_newer_queued_request(make_repository):
    repository = make_repository()
    rollback, _ = SyncRun.request(
        repository, trigger=SyncRun.Trigger.ADMIN, commit="d" * 40, pin_commit=True
    )
    assert rollback.claim("dead-worker")
    newer, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK, commit="e" * 40)
    SyncRun.objects.filter(pk=rollback.pk).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    assert recover_lost() == [newer]
    newer.refresh_from_db()
    assert newer.status == SyncRun.Status.QUEUED, (
        "the newer push is not replaced by the old roll back"
    )
    assert SyncRun.objects.count() == 2


def lose(run, worker_id="dead-worker"):
    """The run's worker dies mid-sync: claimed, then its lease runs out."""
    assert run.claim(worker_id)
    SyncRun.objects.filter(pk=run.pk).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )


def test_a_request_that_crashed_the_worker_twice_is_failed_not_retried(make_repository):
    repository = make_repository()
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK, commit="c" * 40)
    lose(run)
    (second,) = recover_lost()
    lose(second, "another-dead-worker")
    assert recover_lost() == [], "the crash-loop guard queues nothing after the second loss"
    second.refresh_from_db()
    assert second.status == SyncRun.Status.FAILED
    assert second.error.startswith("worker lost: the worker was lost 2 times")
    assert "not retried" in second.log
    assert not SyncRun.objects.filter(status=SyncRun.Status.QUEUED).exists()
    # A new push is a new request: it deploys as usual.
    fresh, joined = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    assert not joined and fresh.attempt == 1


def test_the_task_runs_as_the_worker_that_claimed_it(make_repository, remote):
    from django_tasks_db.management.commands.db_worker import Worker

    repository = make_repository(clone_url=remote.url)
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    worker = Worker(
        queue_names=["gitdeploy"],
        interval=0,
        batch=True,
        backend_name="default",
        startup_delay=False,
        max_tasks=1,
        worker_id="claiming-worker-7",
        excluded_queue_names=[],
    )
    worker.run()
    run.refresh_from_db()
    assert run.status == SyncRun.Status.SUCCEEDED, run.log
    assert run.worker_id == "claiming-worker-7"
    assert "on worker claiming-worker-7" in run.log


def test_tasks_and_runs_left_by_a_dead_worker_are_swept(make_repository):
    from django_tasks import TaskResultStatus

    from gitdeploy.models import WorkerHeartbeat
    from gitdeploy.worker import requeue_stranded

    repository = make_repository()
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    long_ago = timezone.now() - datetime.timedelta(minutes=10)
    SyncRun.objects.filter(pk=run.pk).update(queued_at=long_ago)
    # The worker that took the run's task was killed before it claimed the run.
    task = DBTaskResult.objects.get()
    DBTaskResult.objects.filter(pk=task.pk).update(
        status=TaskResultStatus.RUNNING, worker_ids=["ghost"], started_at=long_ago
    )
    # A live worker's long task, waiting behind the repository lock while another run of the
    # repository runs, is left alone.
    WorkerHeartbeat.beat("alive", "host", 1)
    other_repository = make_repository()
    running, _ = SyncRun.request(other_repository, trigger=SyncRun.Trigger.WEBHOOK)
    assert running.claim("alive")
    other, _ = SyncRun.request(other_repository, trigger=SyncRun.Trigger.WEBHOOK)
    SyncRun.objects.filter(pk=other.pk).update(queued_at=long_ago)
    DBTaskResult.objects.exclude(pk=task.pk).update(
        status=TaskResultStatus.RUNNING, worker_ids=["alive"], started_at=long_ago
    )

    assert requeue_stranded() == [run]
    task.refresh_from_db()
    assert task.status == TaskResultStatus.FAILED and "ghost" in task.traceback
    ready = DBTaskResult.objects.filter(status=TaskResultStatus.READY)
    assert [t.args_kwargs["args"] for t in ready] == [[run.pk, repository.pk]]
    assert DBTaskResult.objects.filter(status=TaskResultStatus.RUNNING).count() == 2
    assert requeue_stranded() == [], "the new task covers it"


def test_a_task_its_live_worker_abandoned_is_queued_again(make_repository):
    """The worker lost the database between claiming the task and claiming the run, and went on
    without it: its RUNNING task will never start the run, though the worker is alive."""
    from django_tasks import TaskResultStatus

    from gitdeploy.models import WorkerHeartbeat
    from gitdeploy.worker import requeue_stranded

    repository = make_repository()
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    long_ago = timezone.now() - datetime.timedelta(minutes=10)
    SyncRun.objects.filter(pk=run.pk).update(queued_at=long_ago)
    WorkerHeartbeat.beat("alive", "host", 1)
    DBTaskResult.objects.update(
        status=TaskResultStatus.RUNNING, worker_ids=["alive"], started_at=long_ago
    )
    assert requeue_stranded() == [run]
    expected = [run.pk, repository.pk]
    assert DBTaskResult.objects.get(status=TaskResultStatus.FAILED).args_kwargs["args"] == expected
    assert DBTaskResult.objects.get(status=TaskResultStatus.READY).args_kwargs["args"] == expected


def test_a_run_costs_at_most_eleven_statements(make_repository, remote):
    # Recovery check, the run, this repository's recovery check, the claim, the repository as it
    # is now, the delivery id its log lines name (once), the result, the live record, and the
    # reporting after the lock (the run and its repository as recorded, whether a notification is
    # due). Reading back what an UPDATE just wrote is not needed.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    repository = make_repository(clone_url=remote.url)
    execute_run(SyncRun.request(repository, trigger=SyncRun.Trigger.CLI)[0].pk, worker_id="w")
    remote.commit({"a.txt": "new\n"}, "v2")
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.CLI)

    with CaptureQueriesContext(connection) as queries:
        done = execute_run(run.pk, worker_id="w")

    statements = [
        q["sql"] for q in queries.captured_queries if q["sql"].startswith(("SELECT", "UPDATE"))
    ]
    assert len(statements) <= 11, "\n".join(statements)
    assert done is not None and done.status == SyncRun.Status.SUCCEEDED
    assert done.deployed_commit == remote.tip() and done.finished_at and done.log
    stored = SyncRun.objects.get(pk=run.pk)
    assert (stored.status, stored.started_at, stored.finished_at, stored.lease_expires_at) == (
        done.status, done.started_at, done.finished_at, None,
    )  # fmt: skip


def test_a_run_blocked_by_a_lost_run_of_its_repository_recovers_it_and_runs(
    make_repository, remote
):
    """The claim comes first (no recovery query on the way from a push to its sync); when another
    run of the repository is still 'running' past its lease, the worker recovers it and claims."""
    repository = make_repository(clone_url=remote.url)
    lost, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    assert lost.claim("dead-worker")
    SyncRun.objects.filter(pk=lost.pk).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    waiting, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)

    done = execute_run(waiting.pk, worker_id="w")

    lost.refresh_from_db()
    assert (lost.status, lost.error) == (SyncRun.Status.FAILED, "worker lost")
    assert done.pk == waiting.pk and done.status == SyncRun.Status.SUCCEEDED, done.log
    assert done.worker_id == "w"


def test_a_task_naming_another_repository_is_refused_and_the_run_stays_queued(make_repository):
    """The task carries the repository's id so the worker can take its lock before reading the
    run; the claim checks it, so a task that names the wrong one never syncs under another
    repository's lock."""
    repository, other = make_repository(), make_repository()
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    with pytest.raises(ValueError, match="not a run of repository"):
        execute_run(run.pk, worker_id="w", repository_id=other.pk)
    run.refresh_from_db()
    assert run.status == SyncRun.Status.QUEUED and run.worker_id == ""
