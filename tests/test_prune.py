"""RETENTION_DAYS and `manage.py prune [--dry-run]`: old finished runs go, deployed ones stay."""

import datetime
import io
import shutil
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from gitdeploy import retention
from gitdeploy.models import Delivery, SyncRun
from gitdeploy.worker import execute_run, prune_housekeeping

pytestmark = pytest.mark.django_db(transaction=True)


def deploy(repository, commit="", **fields):
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.ADMIN, commit=commit, **fields)
    execute_run(run.pk, worker_id="w")
    run.refresh_from_db()
    return run


def age(run, days):
    stamp = timezone.now() - datetime.timedelta(days=days)
    SyncRun.objects.filter(pk=run.pk).update(finished_at=stamp, queued_at=stamp)


def prune(*args) -> str:
    out = io.StringIO()
    call_command("prune", *args, stdout=out)
    return out.getvalue()


def test_old_runs_go_and_the_deployed_ones_stay(make_repository, remote, settings):
    settings.RETENTION_DAYS = 30
    repository = make_repository(clone_url=remote.url)
    first = deploy(repository)  # v1: replaced later, old -> pruned
    remote.commit({"a.txt": "2\n"}, "v2")
    repository.post_deploy_command = "exit 1"
    repository.save()
    failed = deploy(repository)  # old failure -> pruned
    repository.post_deploy_command = ""
    repository.save()
    current = deploy(repository)  # v2, on disk, the last success: kept
    recent_failure = deploy(repository, commit="0" * 40, pin_commit=True)  # recent: kept
    for run in (first, failed, current):
        age(run, 45)
    delivery = Delivery.objects.create(
        repository=repository, verdict="queued", status_code=202, sync_run=first
    )

    listing = prune("--dry-run")
    assert f"would remove sync run #{first.pk} {repository.slug} succeeded" in listing
    assert f"would remove sync run #{failed.pk} {repository.slug} failed" in listing
    assert f"#{current.pk} " not in listing and f"#{recent_failure.pk} " not in listing
    assert "would remove: 2 sync runs, 0 deliveries" in listing
    assert SyncRun.objects.count() == 4  # a dry run removes nothing

    done = prune()
    assert f"removed sync run #{first.pk}" in done and "2 sync runs" in done
    assert set(SyncRun.objects.values_list("pk", flat=True)) == {current.pk, recent_failure.pk}
    delivery.refresh_from_db()
    assert delivery.sync_run is None  # the delivery stays, its run is gone


def test_a_release_still_on_disk_keeps_its_run(make_repository, remote, settings):
    settings.RETENTION_DAYS = 1
    repository = make_repository(clone_url=remote.url, deploy_mode="atomic", keep_releases=5)
    old = deploy(repository)
    remote.commit({"a.txt": "2\n"}, "v2")
    newer = deploy(repository)
    assert Path(repository.target_dir, "releases", old.deployed_commit).is_dir()
    for run in (old, newer):
        age(run, 10)
    assert list(retention.prunable()) == []
    # Once its release is gone from disk, the old run may go.
    shutil.rmtree(Path(repository.target_dir, "releases", old.deployed_commit))
    assert list(retention.prunable()) == [old]
    assert prune_housekeeping()["sync_runs"] == 1
    assert list(SyncRun.objects.all()) == [newer]


def test_without_retention_days_every_run_is_kept(make_repository, remote, settings):
    settings.RETENTION_DAYS = 0
    repository = make_repository(clone_url=remote.url)
    run = deploy(repository)
    age(run, 4000)
    deploy(repository)
    output = prune()
    assert "RETENTION_DAYS is 0" in output and "removed: " in output
    assert SyncRun.objects.count() == 2
