"""The run_sync task (filled in next)."""

from django.conf import settings
from django_tasks import task


@task(queue_name=settings.GITDEPLOY_QUEUE)
def run_sync(run_id: int) -> None:
    raise NotImplementedError
