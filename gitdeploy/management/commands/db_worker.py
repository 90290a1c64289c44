"""`manage.py db_worker`: django-tasks-db's worker, with gitdeploy's defaults and a monitor thread.

The monitor records a heartbeat (for /api/ready) and recovers SyncRuns whose worker died. The
defaults make a queued run start within 0.1 s: poll every 0.05 s, no random start-up delay, and
only the gitdeploy queue.
"""

import logging
import time

from django.conf import settings
from django.db import InterfaceError, OperationalError, connections
from django_tasks_db.management.commands import db_worker

from gitdeploy import tasks

logger = logging.getLogger(__name__)


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
            # django-tasks-db's loop lets a lost connection escape and the process exits (`docker
            # compose restart db` did that every time). The worker outlives the database: wait
            # the outage out, then poll again. A run the outage interrupted is recovered once its
            # lease expires.
            while True:
                try:
                    super().handle(*args, **options)
                    return
                except (OperationalError, InterfaceError) as exc:
                    logger.warning("database unavailable (%s); trying again in 1 s", exc)
                    connections.close_all()
                    time.sleep(1)
        finally:
            monitor.stopped.set()
