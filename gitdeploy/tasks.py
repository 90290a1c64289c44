"""The run_sync task: claim the SyncRun, take the repository's lock, call gitdeploy.sync, record.

SyncRun is the source of truth, not django-tasks-db's task row: a task whose run was superseded or
already done returns at once, and a run whose worker died is recovered through its lease.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
import time
import traceback
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone
from django_tasks import task

from gitdeploy import sync
from gitdeploy.models import Repository, SyncRun, redact_url

logger = logging.getLogger(__name__)

# Set by the db_worker command; a run executed by `manage.py sync` gets a cli-... id instead.
worker_identity = {"id": f"{socket.gethostname()}-{os.getpid()}"}

# Hard cap on what the log column holds; sync already caps post-deploy output.
MAX_LOG_CHARS = 2 * 1024 * 1024


@task(queue_name=settings.GITDEPLOY_QUEUE)
def run_sync(run_id: int) -> str:
    run = execute_run(run_id, worker_id=worker_identity["id"])
    return run.status if run is not None else "gone"


def lock_path(repository: Repository) -> Path:
    # Keyed by primary key: a slug can be renamed in the admin while a sync runs.
    return Path(settings.LOCK_DIR) / f"repository-{repository.pk}.lock"


def secrets_of(repository: Repository) -> list[str]:
    values = [repository.webhook_secret, settings.WEBHOOK_SECRET, settings.GIT_TOKEN]
    return [value for value in values if value]


def spec_for(run: SyncRun) -> sync.SyncSpec:
    """Everything the sync needs comes from the Repository row and the settings, never from a
    request: the webhook only ever contributes the commit it named, and only for a pinned run."""
    repository = run.repository
    from_env = repository.managed_by_env
    return sync.SyncSpec(
        clone_url=repository.clone_url,
        branch=repository.branch,
        target_dir=repository.target_dir,
        commit=run.requested_commit if run.pin_commit else "",
        deploy_mode=repository.deploy_mode,
        keep_releases=repository.keep_releases,
        depth=settings.GIT_DEPTH,
        filter=settings.GIT_FILTER,
        clean_untracked=settings.CLEAN_UNTRACKED,
        post_deploy_command=repository.post_deploy_command,
        post_deploy_timeout=settings.POST_DEPLOY_TIMEOUT,
        post_deploy_env={
            "GITDEPLOY_REPOSITORY": repository.slug,
            "GITDEPLOY_RUN_ID": str(run.pk),
        },
        git_timeout=settings.GIT_TIMEOUT,
        token=settings.GIT_TOKEN if from_env else "",
        ssh_key_file=repository.ssh_key_file,
        ssh_known_hosts_file=settings.GIT_SSH_KNOWN_HOSTS_FILE,
    )


class RunLog:
    """Collects the run's log lines, redacted, and lets the lease renewal publish them so the
    admin shows a sync's progress while it runs."""

    def __init__(self, secrets: list[str]):
        self.secrets = secrets
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        for part in str(line).rstrip("\n").split("\n"):
            self.lines.append(f"{stamp} {sync.redact(part, self.secrets)}")

    def text(self) -> str:
        text = "\n".join(self.lines) + ("\n" if self.lines else "")
        if len(text) > MAX_LOG_CHARS:
            text = "[log truncated, tail kept]\n" + text[-MAX_LOG_CHARS:]
        return text


class LeaseKeeper:
    """The heartbeat sync calls while git or the post-deploy command runs: renews the lease every
    third of its length, so a killed worker's run is recovered within one lease."""

    def __init__(self, run: SyncRun, log: RunLog):
        self.run = run
        self.log = log
        self.interval = settings.SYNC_LEASE_SECONDS / 3
        self.last = time.monotonic()
        self.lost = False

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        if not self.run.renew_lease(log=self.log.text()) and not self.lost:
            self.lost = True
            logger.error("SyncRun %s is no longer owned by %s", self.run.pk, self.run.worker_id)


def execute_run(run_id: int, *, worker_id: str) -> SyncRun | None:
    """Run one queued SyncRun to completion. Safe to call from any number of processes."""
    SyncRun.recover_lost()
    run = SyncRun.objects.select_related("repository").filter(pk=run_id).first()
    if run is None or run.status != SyncRun.Status.QUEUED:
        logger.info("SyncRun %s is not queued (%s); nothing to do", run_id, run and run.status)
        return run
    if run.run_after and run.run_after > timezone.now():
        # A retry's backoff; the task was enqueued with the same run_after, so this is only reached
        # when `manage.py sync` insists. Wait it out rather than run early.
        time.sleep(max(0.0, (run.run_after - timezone.now()).total_seconds()))

    repository = run.repository
    path = lock_path(repository)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One sync at a time per repository across processes: the OS lock (released by the kernel if
    # this process dies) plus the database's one-running-run constraint.
    with sync.repository_lock(str(path)):
        while True:
            # A run of this repository still 'running' past its lease lost its worker.
            SyncRun.recover_lost(repository)
            run.refresh_from_db()
            if run.status != SyncRun.Status.QUEUED:
                return run
            if run.claim(worker_id):
                break
            # Another worker that does not share our lock directory still holds a live lease.
            time.sleep(0.5)
        _perform(run)
    close_old_connections()
    return run


def _perform(run: SyncRun) -> None:
    repository = run.repository
    log = RunLog(secrets_of(repository))
    trigger = run.get_trigger_display()
    who = f" by {run.triggered_by_label}" if run.triggered_by_label else ""
    log(f"sync run #{run.pk} (attempt {run.attempt}, {trigger}{who}) on worker {run.worker_id}")
    log(
        f"repository {repository.slug}: {redact_url(repository.clone_url)} "
        f"branch {repository.branch or '(remote default)'} -> {repository.target_dir}"
    )
    if run.pin_commit:
        log(f"deploying exactly {run.requested_commit}")
    keeper = LeaseKeeper(run, log)
    try:
        result = sync.sync(spec_for(run), log=log, heartbeat=keeper)
    except sync.SyncError as exc:
        log(f"FAILED: {exc}")
        error = sync.redact(str(exc), log.secrets)
        # A line in the worker's own log (`docker compose logs worker`); the full log is the run's.
        logger.warning("SyncRun %s failed: %s", run.pk, error)
        run.finish(
            succeeded=False,
            log=log.text(),
            error=error,
            previous_commit=getattr(exc, "previous_commit", "") or "",
            deployed_commit=getattr(exc, "deployed_commit", "") or "",
            post_deploy_exit_code=getattr(exc, "post_deploy_exit_code", None),
        )
        if getattr(exc, "retryable", False):
            _schedule_retry(run)
        return
    except Exception as exc:  # a bug must not leave the run 'running' until its lease expires
        log("FAILED with an unexpected error:")
        log(traceback.format_exc())
        run.finish(succeeded=False, log=log.text(), error=sync.redact(repr(exc), log.secrets))
        logger.exception("SyncRun %s crashed", run.pk)
        return
    except BaseException:
        # A second SIGTERM/SIGINT stops the worker mid-sync (sync has killed git by now): say so
        # and queue the same request again, rather than wait for the lease to expire.
        log("INTERRUPTED: the worker was stopped before the sync finished")
        if run.finish(succeeded=False, log=log.text(), error="worker stopped during the sync"):
            run.request_again(label=f"retry of run #{run.pk}, interrupted")
        raise
    if not repository.branch and result.branch:
        repository.learn_default_branch(result.branch)
    log(f"deployed {result.deployed_commit} (was {result.previous_commit or 'nothing'})")
    logger.info("SyncRun %s deployed %s", run.pk, result.deployed_commit)
    run.finish(
        succeeded=True,
        log=log.text(),
        previous_commit=result.previous_commit,
        deployed_commit=result.deployed_commit,
        post_deploy_exit_code=result.post_deploy_exit_code,
    )


def _schedule_retry(run: SyncRun) -> None:
    """A failed fetch is tried again as a new attempt of the same request, with exponential
    backoff; a newer queued request already covers it, so then nothing is added."""
    if run.attempt > settings.SYNC_RETRIES:
        logger.warning("SyncRun %s failed after %s attempts", run.pk, run.attempt)
        return
    delay = settings.SYNC_RETRY_BACKOFF * (2 ** (run.attempt - 1))
    retry = run.request_again(
        label=f"retry {run.attempt + 1} of run #{(run.retry_of_id or run.pk)}",
        run_after=timezone.now() + datetime.timedelta(seconds=delay),
    )
    logger.info("SyncRun %s: next attempt is run #%s (in %.1fs)", run.pk, retry.pk, delay)


def prune_housekeeping(now: datetime.datetime | None = None) -> dict[str, int]:
    """Old rows nobody reads again: heartbeats of workers gone for a day, the task queue's finished
    results (SyncRun holds the history), and deliveries past DELIVERY_RETENTION_DAYS when set."""
    from django_tasks_db.models import DBTaskResult

    from gitdeploy.models import Delivery, WorkerHeartbeat

    now = now or timezone.now()
    pruned = {
        "heartbeats": WorkerHeartbeat.objects.filter(
            seen_at__lt=now - datetime.timedelta(days=1)
        ).delete()[0],
        "task_results": DBTaskResult.objects.finished()
        .filter(finished_at__lt=now - datetime.timedelta(days=settings.TASK_RESULT_RETENTION_DAYS))
        .delete()[0],
        "deliveries": 0,
    }
    if settings.DELIVERY_RETENTION_DAYS:
        cutoff = now - datetime.timedelta(days=settings.DELIVERY_RETENTION_DAYS)
        pruned["deliveries"] = Delivery.objects.filter(received_at__lt=cutoff).delete()[0]
    return pruned


class WorkerMonitor(threading.Thread):
    """Beside the db_worker loop: records this worker's heartbeat for /api/ready and recovers runs
    whose worker died, so nothing stays 'running' forever after a kill -9."""

    def __init__(self, worker_id: str, every: float = 2.0):
        super().__init__(name="gitdeploy-monitor", daemon=True)
        self.worker_id = worker_id
        self.every = every
        self.stopped = threading.Event()

    PRUNE_EVERY = 3600.0

    def run(self) -> None:
        hostname, pid = socket.gethostname(), os.getpid()
        next_prune = time.monotonic()
        while not self.stopped.is_set():
            try:
                from gitdeploy.models import WorkerHeartbeat

                WorkerHeartbeat.beat(self.worker_id, hostname, pid)
                SyncRun.recover_lost()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self.PRUNE_EVERY
                    pruned = prune_housekeeping()
                    if any(pruned.values()):
                        logger.info("pruned old rows: %s", pruned)
            except Exception:
                logger.exception("worker monitor: heartbeat or recovery failed; trying again")
            finally:
                close_old_connections()
            self.stopped.wait(self.every)
