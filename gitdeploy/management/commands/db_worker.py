"""`manage.py db_worker`: django-tasks-db's worker, with gitdeploy's defaults and a monitor thread.

The defaults are gitdeploy's worker flags, written here and nowhere else (compose, the Makefile
and the README run plain `manage.py db_worker`): only the gitdeploy queue, poll every 0.05 s so
a queued run starts within 0.1 s, no random start-up delay, and no auto-reloader (DEBUG would
otherwise restart the worker mid-sync when a file changes). Any of them can still be given.

The monitor (gitdeploy.worker.WorkerMonitor) records a heartbeat for /api/ready, queues the
initial sync of every repository nothing was deployed to yet, and recovers SyncRuns whose worker
died; a clean stop removes the heartbeat row.
"""

from django.conf import settings
from django_tasks_db.management.commands import db_worker

from gitdeploy import worker


class Command(db_worker.Command):
    help = "Run the gitdeploy worker (django-tasks-db's db_worker with heartbeat and recovery)"

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.set_defaults(
            queue_name=settings.GITDEPLOY_QUEUE,
            interval=0.05,
            startup_delay=False,
            reload=False,
        )

    def handle(self, *args, **options) -> None:
        monitor = worker.WorkerMonitor(options["worker_id"])
        monitor.start()
        try:
            super().handle(*args, **options)
        finally:
            monitor.stop()
