"""`manage.py prune [--dry-run]`: delete what the retention settings no longer keep, now.

Finished sync runs past RETENTION_DAYS (gitdeploy.retention: the last success of each repository
and every run whose commit is still on disk are kept), deliveries past DELIVERY_RETENTION_DAYS and
the task queue's old rows (gitdeploy.worker.prune_housekeeping). Prints what it removed, or with
--dry-run what it would remove.
"""

import datetime

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from gitdeploy import retention
from gitdeploy.models import Delivery
from gitdeploy.worker import prune_housekeeping


class Command(BaseCommand):
    help = "Delete sync runs past RETENTION_DAYS and deliveries past DELIVERY_RETENTION_DAYS now."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="only print what would go")

    def handle(self, *args, dry_run: bool, **options) -> None:
        now = timezone.now()
        verb = "would remove" if dry_run else "removed"
        runs = list(retention.prunable(now))
        for run in runs:
            self.stdout.write(
                f"{verb} sync run #{run.pk} {run.repository.slug} {run.status} "
                f"finished {run.finished_at:%Y-%m-%d %H:%M} {run.deployed_commit[:12]}".rstrip()
            )
        deliveries = 0
        if settings.DELIVERY_RETENTION_DAYS:
            cutoff = now - datetime.timedelta(days=settings.DELIVERY_RETENTION_DAYS)
            deliveries = Delivery.objects.filter(received_at__lt=cutoff).count()
        if dry_run:
            counts = {"sync_runs": len(runs), "deliveries": deliveries}
        else:
            with transaction.atomic():
                counts = prune_housekeeping(now)
        if not settings.RETENTION_DAYS:
            self.stdout.write("RETENTION_DAYS is 0: sync runs are kept")
        summary = ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in counts.items())
        self.stdout.write(f"{verb}: {summary}")
