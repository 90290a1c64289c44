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

import contextlib
import datetime
import functools
import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
import weakref
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    connections,
    transaction,
)
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone
from django_tasks import TaskResultStatus
from django_tasks_db.management.commands.db_worker import Worker

from gitdeploy import prebuilt, redaction, reporting, retention, sync
from gitdeploy.models import TASKS_CHANNEL, Repository, SyncRun

logger = logging.getLogger(__name__)

# Hard cap on what the log column holds; sync already caps post-deploy output.
MAX_LOG_CHARS = 2 * 1024 * 1024


# A request whose runs stopped renewing their lease this many times in a row is not asked for
# again: whatever it does (a post-deploy command that exhausts memory, a git that hangs the box)
# takes the worker down, and retrying it forever would crash-loop every worker.
CRASH_LIMIT = 2


# What an unreachable database raises (a restart, a network cut, a failover): waited out, never a
# reason to exit or to drop a result. Anything else is a bug and surfaces.
DATABASE_DOWN = (OperationalError, InterfaceError)
DATABASE_BACKOFF_MAX = 5.0  # seconds: short, so a restarted database is used again quickly

# Runs this process is executing now: never "lost" while it is alive, even when the database was
# away for longer than the lease (recover_lost skips them; their result is still to be written).
running_here: set[int] = set()


def close_connections() -> None:
    """Drops every connection of this thread, so the next query reconnects."""
    for each in connections.all(initialized_only=True):
        try:
            each.close()
        except DATABASE_DOWN:  # closing a dead connection can fail too; it is gone either way
            pass


def until_recorded(write, *, what: str):
    """Calls write() until the database accepts it: a finished run's result must not be lost to a
    database restart. Backs off up to DATABASE_BACKOFF_MAX seconds between tries."""
    delay = 0.25
    while True:
        try:
            return write()
        except DATABASE_DOWN as exc:
            logger.warning(
                "%s: database unreachable (%s); trying again in %.1f s",
                what,
                exc.__class__.__name__,
                delay,
            )
            close_connections()
            time.sleep(delay)
            delay = min(delay * 2, DATABASE_BACKOFF_MAX)


def local_worker_id() -> str:
    """The id of a run executed outside db_worker (an eager backend, a test)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def lock_path(repository_id: int) -> Path:
    # Keyed by primary key: a slug can be renamed in the admin while a sync runs. An id, not a
    # Repository: building a model instance on the way to a pick-up cost more than the path.
    return Path(settings.LOCK_DIR) / f"repository-{repository_id}.lock"


def spec_for(run: SyncRun, secrets: tuple[str, ...] = ()) -> sync.SyncSpec:
    """Everything the sync needs comes from the Repository row and the settings, never from a
    request: the webhook only ever contributes the commit it named, and only for a pinned run.
    `secrets` are hidden by sync in every line it logs (it knows the token and URL already)."""
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
        niceness=settings.SYNC_NICENESS,
        token=settings.GIT_TOKEN if from_env else "",
        ssh_key_file=repository.ssh_key_file,
        ssh_known_hosts_file=settings.GIT_SSH_KNOWN_HOSTS_FILE,
        secrets=secrets,
    )


class RunLog:
    """The run's one log: timestamped lines, published with each lease renewal so the admin shows
    a sync's progress while it runs. Each line is redacted once: the worker's own lines here,
    sync's lines by sync itself (they arrive through `synced`, already redacted)."""

    def __init__(self, secrets: tuple[str, ...]):
        self.secrets = secrets
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.synced(redaction.redact(str(line), self.secrets))

    def synced(self, line: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        for part in line.rstrip("\n").split("\n"):
            self.lines.append(f"{stamp} {part}")

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
        try:
            renewed = self.run.renew_lease(log=self.log.text())
        except DATABASE_DOWN as exc:
            # The sync goes on; the result is written when the database is back (until_recorded).
            logger.warning(
                "SyncRun %s: lease not renewed, database unreachable (%s)",
                self.run.pk,
                exc.__class__.__name__,
            )
            close_connections()
            return
        if not renewed and not self.lost:
            self.lost = True
            logger.error("SyncRun %s is no longer owned by %s", self.run.pk, self.run.worker_id)


def execute_run(run_id: int, *, worker_id: str, repository_id: int | None = None) -> SyncRun | None:
    """Run one queued SyncRun to completion. Safe to call from any number of processes.

    Between the task's claim and the run's, pick-up is measured: what to lock (the task carries
    the repository's id; older tasks and `manage.py sync` read it), the claim, then the run and
    its repository as they are once the lock is ours (an admin may have changed the repository
    while we waited for it)."""
    if repository_id is None:
        found = SyncRun.objects.filter(pk=run_id).values_list("repository_id", "status").first()
        if found is None or found[1] != SyncRun.Status.QUEUED:
            logger.info("SyncRun %s is not queued (%s); nothing to do", run_id, found and found[1])
            return SyncRun.objects.filter(pk=run_id).first()
        repository_id = found[0]
    # run_after (a retry's backoff) is honoured by django-tasks, which does not hand the task out
    # earlier; `manage.py sync` runs it now on purpose.

    path = lock_path(repository_id)  # repository_lock creates its directory
    # One sync at a time per repository across processes: the OS lock (released by the kernel if
    # this process dies) plus the database's one-running-run constraint.
    with sync.repository_lock(str(path)) as held:
        claimant = SyncRun(pk=run_id, repository_id=repository_id)
        while not claimant.claim(worker_id):  # only if still queued: no need to read it first
            current = SyncRun.objects.filter(pk=run_id).first()
            if current is None or current.status != SyncRun.Status.QUEUED:
                logger.info(
                    "SyncRun %s is not queued (%s); nothing to do",
                    run_id,
                    current and current.status,
                )
                return current
            if current.repository_id != repository_id:
                raise ValueError(f"SyncRun {run_id} is not a run of repository {repository_id}")
            # Another run of this repository is still 'running'. Past its lease its worker was
            # lost: recover it (the monitor would, within its interval) and claim at once.
            recover_lost(repository_id=repository_id)
            if claimant.claim(worker_id):
                break
            # Its lease is live: a worker that does not share our lock directory is syncing it.
            time.sleep(0.5)
        run = SyncRun.objects.select_related("repository").get(pk=run_id)
        running_here.add(run.pk)
        try:
            with reporting.run_context(run):
                reporting.run_started(run)
                _perform(run, held)
        except BaseException:
            reporting.run_finished(run, network=False)  # being stopped: no slow calls now
            raise
        finally:
            running_here.discard(run.pk)
    # Outside the lock: the next sync of this repository does not wait for the Git host's API or
    # the mail server (each call is bounded by NOTIFY_TIMEOUT anyway).
    reporting.run_finished(run)
    close_old_connections()
    return run


def _perform(run: SyncRun, held: sync.HeldLock) -> None:
    repository = run.repository
    log = RunLog(repository.secrets())
    trigger = run.get_trigger_display()
    who = f" by {run.triggered_by_label}" if run.triggered_by_label else ""
    log(f"sync run #{run.pk} ({run.attempt_label()}, {trigger}{who}) on worker {run.worker_id}")
    log(
        f"repository {repository.slug}: {repository.display_clone_url} "
        f"branch {repository.branch or '(remote default)'} -> {repository.target_dir}"
    )
    if run.pin_commit:
        log(f"deploying exactly {run.requested_commit}")
    if held.ended:
        log(held.ended)
    keeper = LeaseKeeper(run, log)
    try:
        result = sync.sync(spec_for(run, log.secrets), log=log.synced, heartbeat=keeper, lock=held)
    except sync.SyncError as exc:
        # sync has logged the error itself ("ERROR: ..."): say only what happens next.
        failure = exc  # the except clause unbinds exc; the writes below may be retried
        retry_after = _retry_delay(run) if failure.retryable else None
        if not failure.retryable:
            log("FAILED: trying again cannot fix this; not retried")
        elif retry_after is None:
            log(f"FAILED: {run.attempt_label()} was the last; not retried")
        else:
            log(
                f"FAILED: attempt {run.attempt + 1} of run #{run.first_attempt_id} "
                f"in {retry_after:g} s"
            )
        # Read from the directory once, not again at every try of the database write.
        commit_fields = _commit_fields(repository, failure.deployed_commit)
        until_recorded(
            lambda: _finish(
                run,
                succeeded=False,
                log=log.text(),
                error=failure.message,  # redacted by sync
                previous_commit=failure.previous_commit,
                deployed_commit=failure.deployed_commit,
                post_deploy_exit_code=failure.post_deploy_exit_code,
                **commit_fields,
            ),
            what=f"SyncRun {run.pk} result",
        )
        if retry_after is not None:
            until_recorded(
                lambda: _schedule_retry(run, retry_after), what=f"SyncRun {run.pk} retry"
            )
        return
    except Exception as exc:  # a bug must not leave the run 'running' until its lease expires
        log("FAILED with an unexpected error:")
        log(traceback.format_exc())
        error = redaction.redact(repr(exc), log.secrets)
        until_recorded(
            lambda: _finish(run, succeeded=False, log=log.text(), error=error),
            what=f"SyncRun {run.pk} result",
        )
        logger.exception("SyncRun %s crashed", run.pk)
        return
    except BaseException:
        # A second SIGTERM/SIGINT stops the worker mid-sync (sync has killed git by now): say so
        # and queue the same request again, rather than wait for the lease to expire.
        log("INTERRUPTED: the worker was stopped before the sync finished")
        if run.finish(succeeded=False, log=log.text(), error="worker stopped during the sync"):
            run.request_again(why="after the worker was stopped")
        raise
    log(f"deployed {result.deployed_commit} (was {result.previous_commit or 'nothing'})")
    commit_fields = _commit_fields(repository, result.deployed_commit)

    def record() -> None:
        if not repository.branch and result.branch:
            repository.learn_default_branch(result.branch)
        _finish(
            run,
            succeeded=True,
            log=log.text(),
            previous_commit=result.previous_commit,
            deployed_commit=result.deployed_commit,
            post_deploy_exit_code=result.post_deploy_exit_code,
            **commit_fields,
        )

    until_recorded(record, what=f"SyncRun {run.pk} result")


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


def recover_lost(repository_id: int | None = None) -> list[SyncRun]:
    """Called by every worker's monitor, and by a worker whose claim another run of the repository
    (repository_id) blocks: nothing stays 'running' after a kill -9. Returns the runs queued to
    carry the lost ones' requests on."""
    expired = (
        SyncRun.objects.lease_expired().exclude(pk__in=running_here).select_related("repository")
    )
    if repository_id is not None:
        expired = expired.filter(repository_id=repository_id)
    follow_ups = []
    for run in expired:
        crashes = 1 + _lost_before(run)
        if crashes >= CRASH_LIMIT:
            run.mark_lost(
                give_up=f"the worker was lost {crashes} times running this request; not retried "
                "(look at the log and the post-deploy command, then redeploy)"
            )
            reporting.run_lost(run)
            continue
        follow_up = run.mark_lost()
        reporting.run_lost(run)
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
    pruned["sync_runs"] = retention.prune_runs(now)  # RETENTION_DAYS, when set
    return pruned


def requeue_stranded(now: datetime.datetime | None = None) -> list[SyncRun]:
    """Tasks and runs a dead worker left behind (kill -9, or the database gone between the task's
    claim and the run's):

    - task rows RUNNING under a worker with no recent heartbeat are marked failed (django-tasks-db
      would keep them RUNNING forever), so the task table tells the truth and is pruned in time;
    - queued runs that no live task will start get a new task. A duplicate task is harmless:
      execute_run returns at once for a run that is no longer queued.
    """
    from django_tasks_db.models import DBTaskResult

    from gitdeploy.models import WorkerHeartbeat
    from gitdeploy.tasks import run_sync

    now = now or timezone.now()
    max_age = datetime.timedelta(seconds=settings.WORKER_HEARTBEAT_MAX_AGE)
    alive = set(
        WorkerHeartbeat.objects.filter(seen_at__gte=now - max_age).values_list(
            "worker_id", flat=True
        )
    )
    running = DBTaskResult.objects.filter(
        task_path=run_sync.module_path,
        status=TaskResultStatus.RUNNING,
        started_at__lt=now - max_age,  # a worker that just started may not have beaten yet
    )
    for task_id, worker_ids in running.values_list("id", "worker_ids"):
        if worker_ids and worker_ids[-1] in alive:
            continue
        DBTaskResult.objects.filter(id=task_id, status=TaskResultStatus.RUNNING).update(
            status=TaskResultStatus.FAILED,
            finished_at=now,
            exception_class_path="gitdeploy.worker.WorkerLost",
            traceback=f"worker {worker_ids[-1] if worker_ids else '?'} stopped without finishing",
        )
        logger.warning("task %s: its worker is gone; marked failed", task_id)

    settle = now - datetime.timedelta(seconds=STRANDED_AFTER)
    queued = list(
        SyncRun.objects.filter(status=SyncRun.Status.QUEUED, queued_at__lt=settle).filter(
            Q(run_after__isnull=True) | Q(run_after__lt=settle)
        )
    )
    if not queued:
        return []
    # A live worker's RUNNING task waits for its run only while another run of the repository is
    # running (the lock, the one-running-run constraint); otherwise the task was abandoned, e.g.
    # its worker lost the database between claiming the task and claiming the run.
    busy = set(
        SyncRun.objects.filter(status=SyncRun.Status.RUNNING).values_list(
            "repository_id", flat=True
        )
    )
    repository_of = {run.pk: run.repository_id for run in queued}
    covered, abandoned = set(), []
    tasks = DBTaskResult.objects.filter(
        task_path=run_sync.module_path,
        status__in=[TaskResultStatus.READY, TaskResultStatus.RUNNING],
    ).values_list("id", "status", "worker_ids", "args_kwargs", "started_at")
    for task_id, status, worker_ids, args_kwargs, started_at in tasks:
        args = (args_kwargs or {}).get("args") or []
        run_id = args[0] if args else None
        if status == TaskResultStatus.RUNNING:
            if not worker_ids or worker_ids[-1] not in alive:
                continue  # its worker is gone: this task will never finish
            if (
                run_id in repository_of
                and repository_of[run_id] not in busy
                and started_at is not None
                and started_at < settle
            ):
                abandoned.append(task_id)
                continue
        if run_id is not None:
            covered.add(run_id)
    if abandoned:
        DBTaskResult.objects.filter(id__in=abandoned, status=TaskResultStatus.RUNNING).update(
            status=TaskResultStatus.FAILED,
            finished_at=now,
            exception_class_path="gitdeploy.worker.TaskAbandoned",
            traceback="its worker went on without it (the database was lost mid-claim)",
        )
    stranded = [run for run in queued if run.pk not in covered]
    for run in stranded:
        logger.warning("SyncRun %s was queued with no live task: queued again", run.pk)
        run.enqueue()
    return stranded


# A queued run older than this with no live task is stranded (a normal one is picked up in < 0.1 s,
# or waits as a READY task / behind the repository lock in a live worker's RUNNING task).
STRANDED_AFTER = 30.0


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


def monitor_interval() -> float:
    """Seconds between the monitor's heartbeats and recovery checks: four beats within
    WORKER_HEARTBEAT_MAX_AGE, so /api/ready never sees a live worker as gone, and two checks within
    a lease, so a run whose worker died is recovered soon after its lease expires. No more often:
    an idle worker should cost the database (almost) nothing. 15 s with the defaults."""
    return max(0.2, min(settings.WORKER_HEARTBEAT_MAX_AGE / 4, settings.SYNC_LEASE_SECONDS / 2))


class WorkerMonitor(threading.Thread):
    """Beside the db_worker loop: records this worker's heartbeat for /api/ready, queues the
    initial syncs once, and recovers runs whose worker died, so nothing stays 'running' forever
    after a kill -9. stop() removes the heartbeat: a worker that stopped cleanly is not "lost"."""

    def __init__(self, worker_id: str, every: float | None = None):
        super().__init__(name="gitdeploy-monitor", daemon=True)
        self.worker_id = worker_id
        self.every = monitor_interval() if every is None else every
        self.stopped = threading.Event()

    PRUNE_EVERY = 3600.0
    # A queued run is only stranded once STRANDED_AFTER old: looking more often finds nothing new.
    STRANDED_EVERY = STRANDED_AFTER

    def run(self) -> None:
        hostname, pid = socket.gethostname(), os.getpid()
        next_prune = time.monotonic()
        next_stranded = time.monotonic() + self.STRANDED_EVERY
        database_down = False
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
                if time.monotonic() >= next_stranded:
                    next_stranded = time.monotonic() + self.STRANDED_EVERY
                    requeue_stranded()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self.PRUNE_EVERY
                    pruned = prune_housekeeping()
                    if any(pruned.values()):
                        logger.info("pruned old rows: %s", pruned)
                if database_down:
                    logger.warning("worker monitor: the database is reachable again")
                database_down = False
            except DATABASE_DOWN as exc:
                # One line per outage, not a traceback at every beat.
                if not database_down:
                    logger.warning(
                        "worker monitor: database unreachable (%s); waiting for it",
                        exc.__class__.__name__,
                    )
                database_down = True
                close_connections()
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


class Waker:
    """LISTEN on PostgreSQL: SyncRun.enqueue NOTIFYs when its transaction commits, so an idle
    worker starts a queued run within milliseconds instead of at its next poll, and polls rarely.

    It listens on the worker's own database connection (Django's, autocommit), the one it claims
    on: one connection per worker rather than two, and no second set of connection settings to
    keep in step. A new connection (the database restarted, CONN_MAX_AGE) listens again at the
    next wait. (Tried for speed too: the claim then reaches the server process that has just
    delivered the notification, but pick-up did not move measurably, BENCHMARKS.md.)"""

    def __init__(self) -> None:
        # The psycopg connection LISTEN was sent on; Django replaces it when it reconnects.
        self.listening_on: weakref.ref[psycopg.Connection] | None = None

    @staticmethod
    def available() -> bool:
        return connections["default"].vendor == "postgresql"

    def _listening(self) -> psycopg.Connection | None:
        """Django's connection, listening; None when LISTEN has just been sent on it."""
        if connection.connection is not None and connection.connection.closed:
            connection.close()  # dropped under Django (the database restarted): reconnect
        connection.ensure_connection()
        raw = connection.connection
        if self.listening_on is not None and self.listening_on() is raw:
            return raw
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {TASKS_CHANNEL}")
        self.listening_on = weakref.ref(raw)
        return None

    def wait(self, timeout: float, running=lambda: True) -> bool:
        """Blocks until a NOTIFY, the timeout, or running() turning false (checked twice a
        second: a stop request must not wait for the poll); True when woken. Never raises:
        without the connection it sleeps, and polling covers the gap.

        Also True at once when it has just started listening: a NOTIFY sent while nobody listened
        is lost, so the caller looks for ready tasks now rather than at the next poll. And True at
        once for the notifications that arrived while the worker was busy (psycopg keeps them):
        one wake-up for all of them, not one claim per push that queued a run meanwhile."""
        deadline = time.monotonic() + timeout
        try:
            raw = self._listening()
            if raw is None:
                return True
            if sum(1 for _notify in raw.notifies(timeout=0)):
                return True
            while running() and (left := deadline - time.monotonic()) > 0:
                for _notify in raw.notifies(timeout=min(left, 0.5), stop_after=1):
                    return True
            return False
        except (psycopg.Error, *DATABASE_DOWN) as exc:
            logger.debug("listening connection lost (%s); polling", exc.__class__.__name__)
            self.listening_on = None
            close_connections()  # the next query reconnects, and the next wait listens again
            time.sleep(min(timeout, 1.0))
            return False

    def close(self) -> None:
        """Stops listening; the connection stays Django's (psycopg would otherwise keep every
        notification for a notifies() call that never comes)."""
        raw, self.listening_on = self.listening_on and self.listening_on(), None
        if raw is not None and raw is connection.connection and not raw.closed:
            with contextlib.suppress(Exception), connection.cursor() as cursor:
                cursor.execute(f"UNLISTEN {TASKS_CHANNEL}")


class ResilientWorker(Worker):
    """django-tasks-db's worker loop, made to outlive the database and to stop cleanly.

    - Its loop raises OperationalError when the database restarts, which ended the process: here
      the loop is entered again after a backoff (connections closed first), for as long as the
      outage lasts. A task the lost connection interrupted is left to requeue_stranded and the
      run's lease.
    - An idle worker's first SIGTERM raised SystemExit from the signal handler, possibly in the
      middle of a database call, and psycopg then failed while closing (a ProgrammingError
      traceback on a clean stop): here it only asks the loop to end, within one poll interval.
      During a task, the first signal lets it finish and a second one stops at once, as upstream.
    """

    def shutdown(self, signum: int, frame) -> None:
        if self.running and not self.running_task:
            logger.info("Received %s - stopping", signal.strsignal(signum))
            self.running = False
            return
        super().shutdown(signum, frame)

    # With LISTEN, polling only catches a notification lost while the listening connection was
    # up (reconnecting already polls once): every WORKER_POLL_SECONDS (30 s), not every 0.05 s. A
    # task deferred with run_after (a retry's backoff) is announced when it is queued, not when it
    # comes due, so the worker also wakes when the earliest one is due (next_due).

    def run(self) -> None:
        logger.info(
            "Starting worker worker_id=%s queues=%s", self.worker_id, ",".join(self.queue_names)
        )
        waker = Waker() if Waker.available() else None
        self.keeps_connection = waker is not None
        delay = 0.25
        woken, due = True, None
        try:
            while self.running:
                try:
                    ran = self.run_one()
                    if waker is not None and (ran or woken or (due and time.time() >= due)):
                        # Something changed (a NOTIFY, a task ran, the awaited one came due):
                        # when is the next deferred task due? One query, never while idle.
                        due = self.next_due()
                    delay = 0.25
                except DATABASE_DOWN as exc:
                    logger.warning(
                        "worker: database unreachable (%s); trying again in %.1f s",
                        exc.__class__.__name__,
                        delay,
                    )
                    close_connections()
                    self.pause(delay)
                    delay = min(delay * 2, DATABASE_BACKOFF_MAX)
                    continue
                if self.batch and not ran:
                    return
                if self.max_tasks is not None and self._run_tasks >= self.max_tasks:
                    return
                if ran or not self.running:
                    continue
                if waker is not None:
                    timeout = max(self.interval, settings.WORKER_POLL_SECONDS)
                    if due is not None:
                        timeout = min(timeout, max(self.interval, due - time.time()))
                    woken = waker.wait(timeout, lambda: self.running)
                else:
                    self.pause(self.interval)
        finally:
            if waker is not None:
                waker.close()

    def run_one(self) -> bool:
        """Claims the next ready task and runs it (as django-tasks-db's loop does: a row lock
        with SKIP LOCKED, so workers never take the same task). False when there was none."""
        from django_tasks_db.utils import exclusive_transaction

        if connection.vendor == "postgresql":
            task_result = self.claim_in_one_statement()
        else:
            tasks = self.ready_tasks(timezone.now())
            with exclusive_transaction(tasks.db):
                task_result = tasks.get_locked()
                if task_result is not None:
                    task_result.claim(self.worker_id)
        if task_result is not None:
            self.run_task(task_result)
        if not self.keeps_connection:
            self.refresh_connection()
        return task_result is not None

    # True while a Waker listens on the connection (run() on PostgreSQL): an idle worker keeps it
    # for as long as it works, as a listening connection must be kept. Replacing it at
    # CONN_MAX_AGE cost a LISTEN, a look for work and a next_due() each time: an idle worker's 20
    # statements a minute became 23. One that breaks is replaced by the loop's database backoff;
    # after a run, execute_run still replaces one past its age.
    keeps_connection = False

    @staticmethod
    def refresh_connection() -> None:
        """After each claim or look for work, not before: a connection past CONN_MAX_AGE is
        replaced now, while there is nothing to do, so that the next pick-up does not pay for
        connecting (5 ms here, where the whole pick-up is 5). Django's own loop closes it before
        the claim: with pushes minutes apart, nearly every pick-up reconnected. A connection that
        broke while waiting fails the claim instead, and the loop's database backoff reconnects."""
        close_old_connections()
        connection.ensure_connection()

    def ready_tasks(self, now):
        """django-tasks-db's ready tasks for this worker's backend and queues (its own loop's
        queryset), with `now` as the clock: a datetime, or Now(), the database's."""
        from django_tasks_db.models import DBTaskResult, get_date_max

        tasks = DBTaskResult.objects.filter(
            Q(run_after=get_date_max()) | Q(run_after__lte=now),
            status=TaskResultStatus.READY,
            backend_name=self.backend_name,
        )
        if not self.process_all_queues:
            tasks = tasks.filter(queue_name__in=self.queue_names)
        if self.excluded_queue_names:
            tasks = tasks.exclude(queue_name__in=self.excluded_queue_names)
        return tasks

    @functools.cached_property
    def claim_statement(self) -> tuple[str, tuple]:
        """The UPDATE claim_in_one_statement runs, compiled once: with the database's clock
        (Now()) its SQL and parameters never change, where compiling it at every wake-up took
        half of the worker's pick-up. next_due() reads the same clock, so a worker whose clock is
        ahead of the database's does not wake for a task the database does not yet call due."""
        from django_tasks_db.models import DBTaskResult

        pick = self.ready_tasks(Now()).order_by(*(DBTaskResult._meta.ordering or ())).values("pk")
        pick_sql, pick_params = pick[:1].query.sql_with_params()
        tasks = prebuilt.table(DBTaskResult)
        return (
            # The table comes from _meta and the sub-select from the ORM; values are parameters.
            f"UPDATE {tasks.table} SET status = %s, started_at = %s, "  # noqa: S608
            f"worker_ids = worker_ids || %s::jsonb "
            f"WHERE id = ({pick_sql} FOR UPDATE SKIP LOCKED) RETURNING {tasks.columns}",
            tuple(pick_params or ()),
        )

    def claim_in_one_statement(self):
        """On PostgreSQL, django-tasks-db's claim (BEGIN, SELECT ... FOR UPDATE SKIP LOCKED, UPDATE,
        COMMIT: four round trips on the way from a push to its sync) as one UPDATE of the row its
        own query picks, in its order, skipping rows another worker holds. The same claim: status
        RUNNING, started_at, this worker appended to worker_ids."""
        from django_tasks_db.models import DBTaskResult

        sql, pick_params = self.claim_statement
        claim: list[Any] = [TaskResultStatus.RUNNING, timezone.now(), json.dumps([self.worker_id])]
        with prebuilt.cursor() as cursor:  # prepared: planned once, not at every wake-up
            cursor.execute(sql, [*claim, *pick_params])
            row = cursor.fetchone()
        return prebuilt.from_row(DBTaskResult, row) if row is not None else None

    def next_due(self) -> float | None:
        """When the earliest task deferred with run_after comes due (a Unix time), or None. Due
        by the database's clock, as claim_statement judges it."""
        from django_tasks_db.models import DBTaskResult, get_date_max

        run_after = (
            DBTaskResult.objects.filter(
                backend_name=self.backend_name,
                status=TaskResultStatus.READY,
                run_after__gt=Now(),
            )
            .exclude(run_after=get_date_max())  # django-tasks-db's "not deferred"
            .order_by("run_after")
            .values_list("run_after", flat=True)
            .first()
        )
        return run_after.timestamp() if run_after is not None else None

    def pause(self, seconds: float) -> None:
        """A sleep a stop request ends early."""
        deadline = time.monotonic() + seconds
        while self.running and time.monotonic() < deadline:
            time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
