"""`manage.py sync <slug> [--commit SHA]`: run a sync now, in the foreground, and print its log."""

import os
import socket
import time

from django.core.management.base import BaseCommand, CommandError

from gitdeploy.models import Repository, SyncRun
from gitdeploy.worker import execute_run


class Command(BaseCommand):
    help = "Sync a repository now (or deploy exactly --commit), print the log, fail on failure."

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug", help="the repository's slug (the env-configured one: default)")
        parser.add_argument("--commit", default="", help="deploy exactly this commit (roll back)")
        parser.add_argument(
            "--wait-timeout",
            type=float,
            default=3600.0,
            help="when a worker picked the run up first, how long to wait for it (seconds)",
        )

    def handle(self, *args, slug: str, commit: str, wait_timeout: float, **options) -> None:
        repository = Repository.objects.filter(slug=slug).first()
        if repository is None:
            known = ", ".join(Repository.objects.values_list("slug", flat=True)) or "none"
            raise CommandError(f"no repository {slug!r} (known: {known})")
        commit = commit.strip().lower()
        run, joined = SyncRun.request(
            repository,
            trigger=SyncRun.Trigger.CLI,
            commit=commit,
            pin_commit=bool(commit),
            label=f"{os.environ.get('USER', 'cli')}@{socket.gethostname()}",
        )
        if joined:
            self.stderr.write(f"joined sync run #{run.pk}, which was already queued")
        worker_id = f"cli-{socket.gethostname()}-{os.getpid()}"
        execute_run(run.pk, worker_id=worker_id)
        # A worker may have claimed the run between the request and our claim: follow it.
        deadline = time.monotonic() + wait_timeout
        run.refresh_from_db()
        while not run.is_finished and time.monotonic() < deadline:
            time.sleep(0.2)
            run.refresh_from_db()
        if run.status == SyncRun.Status.SUPERSEDED and run.superseded_by_id:
            self.stderr.write(f"run #{run.pk} was superseded by #{run.superseded_by_id}")
        self.stdout.write(run.log, ending="")
        if run.status != SyncRun.Status.SUCCEEDED:
            raise CommandError(
                f"sync run #{run.pk} {run.status}: {run.error or 'see the log above'}"
            )
        self.stdout.write(self.style.SUCCESS(f"sync run #{run.pk} deployed {run.deployed_commit}"))
