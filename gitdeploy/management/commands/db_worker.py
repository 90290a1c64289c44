"""`manage.py db_worker`: django-tasks-db's worker, with gitdeploy's defaults and a monitor thread.

The monitor records a heartbeat (for /api/ready) and recovers SyncRuns whose worker died. The
defaults make a queued run start within 0.1 s: poll every 0.05 s, no random start-up delay, and
only the gitdeploy queue.
"""

from django.conf import settings
from django_tasks_db.management.commands import db_worker

from gitdeploy import tasks


class Command(db_worker.Command):
    help = "Run the gitdeploy worker (django-tasks-db's db_worker with heartbeat and recovery)"

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.set_defaults(
            queue_name=settings.GITDEPLOY_QUEUE,
            interval=0.05,
            startup_delay=False,
        )

    def handle(self, *args, **options) -> None:
        worker_id = options["worker_id"]
        tasks.worker_identity["id"] = worker_id
        monitor = tasks.WorkerMonitor(worker_id)
        monitor.start()
        try:
            super().handle(*args, **options)
        finally:
            monitor.stopped.set()
