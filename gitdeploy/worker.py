"""The worker runtime: executing one SyncRun, and what keeps runs honest around it.

    execute_run      claim the queued run (queued -> running, with a lease), take the repository's
                     OS lock, call gitdeploy.sync with a SyncSpec built from the Repository row,
                     record the result (SyncRun.finish), schedule a retry when one can help
    RunLog           the run's one log: timestamped lines, published with each lease renewal
    LeaseKeeper      the heartbeat sync calls while git or the post-deploy command runs
    recover_lost     runs whose worker stopped renewing its lease: failed as "worker lost" and
                     asked for again, unless the same request already crashed a worker twice
                     (the crash-loop guard: then it stays failed with that reason)
    WorkerMonitor    a thread beside django-tasks-db's loop: heartbeat row, recovery, pruning

SyncRun is the source of truth, not django-tasks-db's task row: a task whose run was superseded or
already done returns at once, and a run whose worker died is recovered through its lease.
gitdeploy.tasks holds only the task definition that calls execute_run.
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
from django.db import close_old_connections, transaction
from django.utils import timezone

from gitdeploy import sync
from gitdeploy.models import Repository, SyncRun, redact_url

logger = logging.getLogger(__name__)

# Hard cap on what the log column holds; sync already caps post-deploy output.
MAX_LOG_CHARS = 2 * 1024 * 1024


# A request whose runs stopped renewing their lease this many times in a row is not asked for
# again: whatever it does (a post-deploy command that exhausts memory, a git that hangs the box)
# takes the worker down, and retrying it forever would crash-loop every worker.
CRASH_LIMIT = 2


def local_worker_id() -> str:
    """The id of a run executed outside db_worker (an eager backend, a test)."""
    return f"{socket.gethostname()}-{os.getpid()}"


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
    recover_lost()
    run = SyncRun.objects.select_related("repository").filter(pk=run_id).first()
    if run is None or run.status != SyncRun.Status.QUEUED:
        logger.info("SyncRun %s is not queued (%s); nothing to do", run_id, run and run.status)
        return run
    # run_after (a retry's backoff) is honoured by django-tasks, which does not hand the task out
    # earlier; `manage.py sync` runs it now on purpose.

    repository = run.repository
    path = lock_path(repository)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One sync at a time per repository across processes: the OS lock (released by the kernel if
    # this process dies) plus the database's one-running-run constraint.
    with sync.repository_lock(str(path)):
        while True:
            # A run of this repository still 'running' past its lease lost its worker.
            recover_lost(repository)
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
    log(f"sync run #{run.pk} ({run.attempt_label()}, {trigger}{who}) on worker {run.worker_id}")
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
        # sync has logged the error itself ("ERROR: ..."): say only what happens next.
        retry_after = _retry_delay(run) if exc.retryable else None
        if not exc.retryable:
            log("FAILED: trying again cannot fix this; not retried")
        elif retry_after is None:
            log(f"FAILED: {run.attempt_label()} was the last; not retried")
        else:
            log(
                f"FAILED: attempt {run.attempt + 1} of run #{run.first_attempt_id} "
                f"in {retry_after:g} s"
            )
        _finish(
            run,
            succeeded=False,
            log=log.text(),
            error=sync.redact(str(exc), log.secrets),
            previous_commit=exc.previous_commit,
            deployed_commit=exc.deployed_commit,
            post_deploy_exit_code=exc.post_deploy_exit_code,
            **_commit_fields(repository, exc.deployed_commit),
        )
        if retry_after is not None:
            _schedule_retry(run, retry_after)
        return
    except Exception as exc:  # a bug must not leave the run 'running' until its lease expires
        log("FAILED with an unexpected error:")
        log(traceback.format_exc())
        _finish(run, succeeded=False, log=log.text(), error=sync.redact(repr(exc), log.secrets))
        logger.exception("SyncRun %s crashed", run.pk)
        return
    except BaseException:
        # A second SIGTERM/SIGINT stops the worker mid-sync (sync has killed git by now): say so
        # and queue the same request again, rather than wait for the lease to expire.
        log("INTERRUPTED: the worker was stopped before the sync finished")
        if run.finish(succeeded=False, log=log.text(), error="worker stopped during the sync"):
            run.request_again(why="after the worker was stopped")
        raise
    if not repository.branch and result.branch:
        repository.learn_default_branch(result.branch)
    log(f"deployed {result.deployed_commit} (was {result.previous_commit or 'nothing'})")
    _finish(
        run,
        succeeded=True,
        log=log.text(),
        previous_commit=result.previous_commit,
        deployed_commit=result.deployed_commit,
        post_deploy_exit_code=result.post_deploy_exit_code,
        **_commit_fields(repository, result.deployed_commit),
    )


def _commit_fields(repository: Repository, sha: str) -> dict:
    """The deployed commit's subject, author and time, for SyncRun.finish (empty if unknown)."""
    info = sync.commit_info(repository.target_dir, repository.deploy_mode, sha) if sha else None
    if info is None:
        return {}
    return {
        "commit_subject": info.subject,
        "commit_author": info.author,
        "committed_at": info.committed_at,
    }


def _finish(run: SyncRun, **fields) -> None:
    """SyncRun.finish and the live record (what the directory holds now, success or failure) in
    one transaction: no page ever shows the run finished with the previous live commit."""
    repository = run.repository
    try:
        commit: str | None = sync.current_commit(repository.target_dir, repository.deploy_mode)
    except Exception:  # reading the directory must never fail the run's bookkeeping
        logger.exception("SyncRun %s: cannot read the deployed commit", run.pk)
        commit = None
    with transaction.atomic():
        if run.finish(**fields) and commit is not None:
            repository.record_live(commit, run)


def _retry_delay(run: SyncRun) -> float | None:
    """Seconds before the next attempt, or None when the attempts are used up."""
    if run.attempt > settings.SYNC_RETRIES:
        return None
    return settings.SYNC_RETRY_BACKOFF * (2 ** (run.attempt - 1))


def _schedule_retry(run: SyncRun, delay: float) -> None:
    """A failed fetch is tried again as a new attempt of the same request, with exponential
    backoff; a newer queued request already covers it, so then nothing is added."""
    retry = run.request_again(
        why="retry", run_after=timezone.now() + datetime.timedelta(seconds=delay)
    )
    logger.info("SyncRun %s failed: next is run #%s (in %g s)", run.pk, retry.pk, delay)


def recover_lost(repository: Repository | None = None) -> list[SyncRun]:
    """Called by every worker's monitor and before each claim: nothing stays 'running' after a
    kill -9. Returns the runs queued to carry the lost ones' requests on."""
    expired = SyncRun.objects.lease_expired().select_related("repository")
    if repository is not None:
        expired = expired.filter(repository=repository)
    follow_ups = []
    for run in expired:
        crashes = 1 + _lost_before(run)
        if crashes >= CRASH_LIMIT:
            run.mark_lost(
                give_up=f"the worker was lost {crashes} times running this request; not retried "
                "(look at the log and the post-deploy command, then redeploy)"
            )
            continue
        follow_up = run.mark_lost()
        if follow_up is not None:
            follow_ups.append(follow_up)
    return follow_ups


def _lost_before(run: SyncRun) -> int:
    """How many earlier attempts of the same request, in a row, lost their worker."""
    count, earlier = 0, run.retry_of
    while earlier is not None and earlier.error.startswith(SyncRun.WORKER_LOST) and count < 10:
        count, earlier = count + 1, earlier.retry_of
    return count


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


def queue_initial_syncs() -> list[SyncRun]:
    """On start: every enabled repository that nothing was ever deployed to gets its first sync
    (trigger "initial"), so a fresh install does not wait for a push, and a host's *Test* (a ping,
    which deploys nothing) is not the only way to see it work. Idempotent across workers: see
    Repository.request_initial_sync."""
    queued = []
    for repository in Repository.objects.filter(enabled=True, live_commit="").order_by("pk"):
        run = repository.request_initial_sync()
        if run is not None:
            logger.info("queued initial sync run #%s for %s", run.pk, repository.slug)
            queued.append(run)
    return queued


class WorkerMonitor(threading.Thread):
    """Beside the db_worker loop: records this worker's heartbeat for /api/ready, queues the
    initial syncs once, and recovers runs whose worker died, so nothing stays 'running' forever
    after a kill -9. stop() removes the heartbeat: a worker that stopped cleanly is not "lost"."""

    def __init__(self, worker_id: str, every: float = 2.0):
        super().__init__(name="gitdeploy-monitor", daemon=True)
        self.worker_id = worker_id
        self.every = every
        self.stopped = threading.Event()

    PRUNE_EVERY = 3600.0

    def run(self) -> None:
        hostname, pid = socket.gethostname(), os.getpid()
        next_prune = time.monotonic()
        initial_done = False
        while not self.stopped.is_set():
            try:
                from gitdeploy.models import WorkerHeartbeat

                WorkerHeartbeat.beat(self.worker_id, hostname, pid)
                recover_lost()
                if not initial_done:
                    # After recovery, so a run lost by the previous worker is asked for again
                    # first; retried on the next beat if the database was not ready.
                    queue_initial_syncs()
                    initial_done = True
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

    def stop(self, timeout: float = 10.0) -> None:
        """Stop beating and remove this worker's heartbeat row."""
        from gitdeploy.models import WorkerHeartbeat

        self.stopped.set()
        if self.is_alive():
            self.join(timeout)
        try:
            WorkerHeartbeat.objects.filter(worker_id=self.worker_id).delete()
        except Exception:  # the database is gone: the row ages out and is pruned later
            logger.warning("could not remove the heartbeat of %s", self.worker_id)
        finally:
            close_old_connections()
