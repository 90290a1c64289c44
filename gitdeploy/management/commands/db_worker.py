"""`manage.py db_worker`: django-tasks-db's worker, with gitdeploy's defaults and a monitor thread.

The defaults are gitdeploy's worker flags, written here and nowhere else (compose, the Makefile
and the README run plain `manage.py db_worker`): only the gitdeploy queue, poll every 0.05 s so
a queued run starts within 0.1 s, no random start-up delay, and no auto-reloader (a reload would
abandon a running sync). The loop is gitdeploy.worker.ResilientWorker, which outlives database
restarts and stops cleanly; the monitor (gitdeploy.worker.WorkerMonitor) records a heartbeat for
/api/ready, queues the initial sync of every repository nothing was deployed to yet, recovers
runs whose worker died and requeues runs whose task was lost; a clean stop removes the heartbeat
row.
"""

from django.conf import settings
from django.core.management.base import CommandError
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

    def handle(
        self,
        *,
        verbosity: int,
        queue_name: str,
        interval: float,
        batch: bool,
        backend_name: str,
        startup_delay: bool,
        reload: bool,
        max_tasks: int | None,
        worker_id: str,
        exclude_queues: str,
        **options,
    ) -> None:
        self.configure_logging(verbosity)
        if reload:
            raise CommandError(
                "gitdeploy's worker does not auto-reload (a reload would abandon a running sync); "
                "restart it after changing code"
            )
        queue_names = queue_name.split(",")
        excluded = exclude_queues.split(",") if exclude_queues else []
        if excluded and "*" not in queue_names:
            raise CommandError("--exclude-queues can only be used with --queue-name=*")
        loop = worker.ResilientWorker(
            queue_names=queue_names,
            interval=interval,
            batch=batch,
            backend_name=backend_name,
            startup_delay=startup_delay,
            max_tasks=max_tasks,
            worker_id=worker_id,
            excluded_queue_names=excluded,
        )
        monitor = worker.WorkerMonitor(worker_id)
        monitor.start()
        try:
            loop.configure_signals()
            loop.run()
        finally:
            monitor.stop()
