"""The first deploy does not wait for a push (issue 9, item 3): each worker, on start, queues an
"initial" sync for every enabled repository that nothing was deployed to and that has nothing
queued or running. Several workers starting together queue one run."""

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from gitdeploy.models import SyncRun
from gitdeploy.worker import execute_run, queue_initial_syncs

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_fresh_repository_gets_one_initial_sync(make_repository, remote):
    repository = make_repository(clone_url=remote.url)
    (run,) = queue_initial_syncs()
    assert (run.repository_id, run.trigger, run.pin_commit) == (repository.pk, "initial", False)
    assert queue_initial_syncs() == [], "a second worker starting finds it queued"
    execute_run(run.pk, worker_id="w")
    run.refresh_from_db()
    assert run.status == "succeeded", run.log
    assert queue_initial_syncs() == [], "deployed now: nothing to do on the next start"
    assert SyncRun.objects.count() == 1


def test_no_initial_sync_for_disabled_deployed_or_busy_repositories(make_repository):
    make_repository(enabled=False)
    deployed = make_repository()
    SyncRun.objects.create(
        repository=deployed, trigger="webhook", status="succeeded", deployed_commit="a" * 40
    )
    busy = make_repository()
    SyncRun.objects.create(repository=busy, trigger="webhook", status="running")
    assert queue_initial_syncs() == []


def test_the_monitor_queues_initial_syncs_and_removes_its_heartbeat_on_stop(make_repository):
    from gitdeploy.models import WorkerHeartbeat
    from gitdeploy.worker import WorkerMonitor

    repository = make_repository()
    monitor = WorkerMonitor("monitor-test", every=0.05)
    monitor.start()
    try:
        for _ in range(200):
            if SyncRun.objects.filter(repository=repository, trigger="initial").exists():
                break
            monitor.stopped.wait(0.05)
        assert SyncRun.objects.filter(repository=repository, trigger="initial").count() == 1
        assert WorkerHeartbeat.objects.filter(worker_id="monitor-test").exists()
    finally:
        monitor.stop()
    assert not WorkerHeartbeat.objects.filter(worker_id="monitor-test").exists()


def test_the_first_deploy_button_says_deploy_now(client, make_repository):
    repository = make_repository()
    client.force_login(User.objects.create_superuser("root", "r@example.com", "pw-root-123"))
    url = reverse("admin:gitdeploy_repository_change", args=[repository.pk])
    page = client.get(url).content.decode()
    assert "Deploy now" in page and "Redeploy" not in page
    SyncRun.objects.create(
        repository=repository, trigger="webhook", status="succeeded", deployed_commit="a" * 40
    )
    page = client.get(url).content.decode()
    assert "Deploy latest" in page and "Deploy now" not in page
