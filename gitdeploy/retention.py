"""How long finished sync runs are kept: RETENTION_DAYS (0: forever).

A finished run older than that is deleted, except
- the last successful run of each repository (what is deployed, and the roll back's anchor);
- every successful run whose commit is still on disk: the checkout's commit (in place) or a
  directory under releases/ (atomic), which the admin can still roll back to.

Deliveries that fed a deleted run keep their row (their link is cleared); DELIVERY_RETENTION_DAYS
prunes them. Called hourly by the worker's monitor and by `manage.py prune [--dry-run]`; it reads
the target directories, so it runs where the worker runs.
"""

from __future__ import annotations

import datetime
import os

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from gitdeploy import sync
from gitdeploy.models import Repository, SyncRun


def commits_on_disk(repository: Repository) -> set[str]:
    commits = {sync.current_commit(repository.target_dir, repository.deploy_mode)}
    if repository.deploy_mode == Repository.DeployMode.ATOMIC:
        releases = os.path.join(repository.target_dir, "releases")
        try:
            commits |= {entry.name for entry in os.scandir(releases) if entry.is_dir()}
        except OSError:
            pass
    return commits - {""}


def kept(repository: Repository) -> set[int]:
    """The runs of the repository that are kept whatever their age."""
    succeeded = SyncRun.objects.filter(repository=repository, status=SyncRun.Status.SUCCEEDED)
    keep = set(succeeded.order_by("-finished_at", "-pk").values_list("pk", flat=True)[:1])
    on_disk = commits_on_disk(repository)
    if on_disk:
        keep |= set(succeeded.filter(deployed_commit__in=on_disk).values_list("pk", flat=True))
    return keep


def prunable(now: datetime.datetime | None = None) -> QuerySet[SyncRun]:
    if not settings.RETENTION_DAYS:
        return SyncRun.objects.none()
    cutoff = (now or timezone.now()) - datetime.timedelta(days=settings.RETENTION_DAYS)
    keep: set[int] = set()
    for repository in Repository.objects.all():
        keep |= kept(repository)
    return (
        SyncRun.objects.filter(status__in=SyncRun.FINISHED, finished_at__lt=cutoff)
        .exclude(pk__in=keep)
        .select_related("repository")
        .order_by("finished_at", "pk")
    )


def prune_runs(now: datetime.datetime | None = None) -> int:
    runs = prunable(now)
    return runs.delete()[0] if runs.exists() else 0
