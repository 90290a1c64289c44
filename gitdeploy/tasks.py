"""The task definition, and nothing else: gitdeploy.worker executes the run.

The task takes the run's id, never a model instance (django-tasks serialises arguments as JSON),
and its context: the task result names the worker that claimed it, which becomes the SyncRun's
worker id (the lease and /api/ready are keyed by it).
"""

from __future__ import annotations

from django.conf import settings
from django_tasks import TaskContext, task

from gitdeploy import worker


@task(queue_name=settings.GITDEPLOY_QUEUE, takes_context=True)
def run_sync(context: TaskContext, run_id: int, repository_id: int | None = None) -> str:
    worker_ids = context.task_result.worker_ids
    worker_id = worker_ids[-1] if worker_ids else worker.local_worker_id()
    # repository_id saves the worker a query before it can lock; tasks queued before it was
    # passed have none.
    run = worker.execute_run(run_id, worker_id=worker_id, repository_id=repository_id)
    return run.status if run is not None else "gone"
