"""What an idle worker costs the database, and what it still does on time while idle.

An idle worker used to poll every 0.05 s (1,130 transactions in 30 s). On PostgreSQL it now
LISTENs, polls every 30 s as a fallback, beats and looks for lost runs every 15 s (with the
default settings), and looks for stranded runs every 30 s. A retry deferred by its backoff is
announced when it is queued, not when it comes due, so the worker wakes for it at its due time.
"""

import datetime
import time

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from gitdeploy.models import TASKS_CHANNEL, SyncRun, WorkerHeartbeat
from gitdeploy.worker import ResilientWorker, Waker, WorkerMonitor, monitor_interval
from tests.conftest import is_sqlite
from tests.test_worker_processes import (  # noqa: F401 - fixtures
    deployed_repository,
    start_worker,
    wait_for,
)


def in_process_worker(worker_id: str) -> ResilientWorker:
    """The worker db_worker runs, as manage.py db_worker builds it, without its loop."""
    return ResilientWorker(
        queue_names=["default"],
        interval=0.05,
        batch=False,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id=worker_id,
        excluded_queue_names=[],
    )


def listening_worker(start_worker, **env):  # noqa: F811 - the fixture, passed in
    """A real worker (manage.py db_worker), past its start-up poll and waiting on LISTEN."""
    worker = start_worker(**env)
    wait_for(WorkerHeartbeat.latest, timeout=30, message="the worker's first heartbeat")
    time.sleep(1.5)
    return worker


def started(run: SyncRun, *, timeout: float, message: str) -> SyncRun:
    return wait_for(
        lambda: SyncRun.objects.filter(pk=run.pk).exclude(started_at=None).first(),
        timeout=timeout,
        message=message,
    )


postgresql_only = pytest.mark.skipif(
    is_sqlite(), reason="LISTEN/NOTIFY is PostgreSQL's; on SQLite the worker polls"
)


def test_the_monitor_beats_four_times_per_heartbeat_age_and_twice_per_lease():
    with override_settings(WORKER_HEARTBEAT_MAX_AGE=60, SYNC_LEASE_SECONDS=30):
        assert monitor_interval() == 15
        assert WorkerMonitor("w").every == 15
    # A short lease (the kill -9 tests use 2 s) is checked often enough to be recovered soon.
    with override_settings(WORKER_HEARTBEAT_MAX_AGE=60, SYNC_LEASE_SECONDS=2):
        assert monitor_interval() == 1
    with override_settings(WORKER_HEARTBEAT_MAX_AGE=8, SYNC_LEASE_SECONDS=30):
        assert monitor_interval() == 2


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_the_waker_polls_once_after_connecting_then_sleeps_until_a_notify():
    waker = Waker()
    try:
        # A NOTIFY sent before it listened is lost: the first wait returns at once so the worker
        # looks for ready tasks.
        assert waker.wait(5) is True
        began = time.monotonic()
        assert waker.wait(0.3) is False
        assert time.monotonic() - began >= 0.3
        with connection.cursor() as cursor:
            cursor.execute(f"NOTIFY {TASKS_CHANNEL}")
        assert waker.wait(30) is True
        # Its connection dropped (the database restarted): it reconnects and says so.
        connection.connection.close()
        assert waker.wait(5) is True
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_listening_channels()")
            assert cursor.fetchall() == [(TASKS_CHANNEL,)], "listening again"
    finally:
        waker.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_listening_channels()")
        assert cursor.fetchall() == [], "close() stops listening"


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_the_waker_listens_on_the_connection_that_claims(make_repository):
    """The claim after a wake-up goes to the server process that delivered the notification: the
    worker's own connection listens, not a second one."""
    worker = in_process_worker("listener")
    worker.queue_names = [settings.GITDEPLOY_QUEUE]
    waker = Waker()
    try:
        assert waker.wait(5) is True
        listener = connection.connection.info.backend_pid
        run, _ = SyncRun.request(make_repository(), trigger=SyncRun.Trigger.CLI)
        assert waker.wait(30) is True
        claimed = worker.claim_in_one_statement()
        assert claimed is not None and claimed.args_kwargs["args"][0] == run.pk
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid(), pg_listening_channels()")
            assert cursor.fetchall() == [(listener, TASKS_CHANNEL)]
    finally:
        waker.close()


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_notifications_that_arrived_while_busy_wake_the_waker_once():
    waker = Waker()
    try:
        assert waker.wait(5) is True
        # The worker was syncing while five pushes queued runs: psycopg kept their notifications.
        with connection.cursor() as cursor:
            for _ in range(5):
                cursor.execute(f"NOTIFY {TASKS_CHANNEL}")
        assert waker.wait(5) is True
        began = time.monotonic()
        assert waker.wait(0.3) is False, "one wake-up for all five"
        assert time.monotonic() - began >= 0.3
    finally:
        waker.close()


@pytest.mark.django_db
def test_next_due_is_the_earliest_deferred_task(make_repository):
    repository = make_repository()
    worker = in_process_worker("idle-test")
    SyncRun.request(repository, trigger=SyncRun.Trigger.CLI)
    assert worker.next_due() is None, "a task that is not deferred is ready now, not due later"

    later = timezone.now() + datetime.timedelta(seconds=90)
    other = make_repository()
    SyncRun.request(other, trigger=SyncRun.Trigger.RETRY, run_after=later)
    assert worker.next_due() == pytest.approx(later.timestamp(), abs=0.001)


@postgresql_only
@pytest.mark.django_db
def test_due_is_judged_by_the_databases_clock_not_the_workers(make_repository, monkeypatch):
    """A worker whose clock runs ahead of the database's neither claims a deferred task early nor
    forgets to wake for it: the claim and next_due read one clock, the database's (README)."""
    worker = in_process_worker("ahead")
    worker.queue_names = [settings.GITDEPLOY_QUEUE]
    later = timezone.now() + datetime.timedelta(minutes=10)
    SyncRun.request(make_repository(), trigger=SyncRun.Trigger.RETRY, run_after=later)
    ahead = timezone.now() + datetime.timedelta(hours=1)
    monkeypatch.setattr(timezone, "now", lambda: ahead)  # the worker's clock, an hour ahead

    assert worker.claim_in_one_statement() is None, "not due yet by the database's clock"
    assert worker.next_due() == pytest.approx(later.timestamp(), abs=0.001)


@postgresql_only
@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_deferred_retry_starts_when_due_not_at_the_next_poll(
    deployed_repository,  # noqa: F811 - fixture
    remote,
    start_worker,  # noqa: F811 - fixture
):
    repository = deployed_repository(clone_url=remote.url)
    worker = listening_worker(start_worker)
    due = timezone.now() + datetime.timedelta(seconds=2)
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.RETRY, run_after=due)

    run = started(run, timeout=40, message="the deferred run to start")

    assert run.started_at >= due
    # The fallback poll is 30 s away; only the due time can have started it this soon.
    assert (run.started_at - due).total_seconds() < 10, worker.output()
    assert worker.stop() == 0


@postgresql_only
@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_an_idle_worker_makes_almost_no_database_transactions(
    deployed_repository,  # noqa: F811 - fixture
    remote,
    start_worker,  # noqa: F811 - fixture
):
    deployed_repository(clone_url=remote.url)
    start_worker()
    wait_for(WorkerHeartbeat.latest, timeout=30, message="the worker's first heartbeat")
    database = connection.settings_dict["NAME"]
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)

    def committed() -> int:
        # A fresh connection each time: pg_stat_database is read as of the transaction's start.
        with psycopg.connect(**{**params, "dbname": "postgres"}, autocommit=True) as admin:
            admin.execute("SELECT pg_stat_force_next_flush()")
            row = admin.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                [database],
            ).fetchone()
            return int(row[0])

    time.sleep(12)  # past the start-up queries; a backend reports its counts within 10 s idle
    before = committed()
    time.sleep(30)
    after = committed()

    print(f"idle worker: {after - before} transactions in 30 s")
    # Per 30 s: two heartbeats with their recovery check (2 statements each), one stranded-run
    # sweep (3), one fallback poll (1-2), and these two reads. Polling every 0.05 s was 1,130.
    assert after - before <= 16, f"{after - before} transactions in 30 s"


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_a_task_is_claimed_in_one_statement_in_queue_order(make_repository):
    """django-tasks-db's claim is four round trips (BEGIN, SELECT ... FOR UPDATE SKIP LOCKED,
    UPDATE, COMMIT); the worker makes it one UPDATE picking the same row, a row another worker
    holds skipped."""
    from django.test.utils import CaptureQueriesContext
    from django_tasks import TaskResultStatus
    from django_tasks_db.models import DBTaskResult

    worker = in_process_worker("claimer")
    worker.queue_names = [settings.GITDEPLOY_QUEUE]
    first, _ = SyncRun.request(make_repository(), trigger=SyncRun.Trigger.CLI)
    second, _ = SyncRun.request(make_repository(), trigger=SyncRun.Trigger.CLI)
    deferred = make_repository()
    SyncRun.request(
        deferred,
        trigger=SyncRun.Trigger.RETRY,
        run_after=timezone.now() + datetime.timedelta(hours=1),
    )
    oldest, newer = DBTaskResult.objects.order_by("enqueued_at")[:2]

    # Another worker holds the oldest task's row (its claim transaction is open).
    other = psycopg.connect(
        **{
            k: v
            for k, v in connection.get_connection_params().items()
            if k not in ("cursor_factory", "context")
        }
    )
    try:
        table = DBTaskResult._meta.db_table
        other.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", [oldest.pk])  # noqa: S608
        with CaptureQueriesContext(connection) as queries:
            claimed = worker.claim_in_one_statement()
        assert len(queries) == 1, [q["sql"] for q in queries]
        assert claimed.pk == newer.pk, "the held row is skipped, not waited for"
    finally:
        other.close()
    assert worker.claim_in_one_statement().pk == oldest.pk
    assert worker.claim_in_one_statement() is None, "the deferred one is not due"
    for task in DBTaskResult.objects.filter(pk__in=[oldest.pk, newer.pk]):
        assert task.status == TaskResultStatus.RUNNING
        assert task.worker_ids == ["claimer"] and task.started_at is not None
    assert {first.pk, second.pk} == {
        task.args_kwargs["args"][0]
        for task in DBTaskResult.objects.filter(pk__in=[oldest.pk, newer.pk])
    }


@postgresql_only
@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_task_queued_without_a_notify_is_found_by_the_fallback_poll(
    deployed_repository,  # noqa: F811 - fixture
    remote,
    start_worker,  # noqa: F811 - fixture
):
    """What PgBouncer in transaction mode does to NOTIFY (it never arrives): WORKER_POLL_SECONDS
    is then the only wake-up, and it is honoured."""
    from gitdeploy.tasks import run_sync

    repository = deployed_repository(clone_url=remote.url)
    worker = listening_worker(start_worker, WORKER_POLL_SECONDS="1")
    # A queued run and its task, as SyncRun.enqueue writes them, but without the NOTIFY.
    run = SyncRun.objects.create(
        repository=repository,
        trigger=SyncRun.Trigger.CLI,
        branch=repository.tracked_branch,
    )
    # Nor the repository id: a task as queued before tasks carried it is still run.
    run_sync.enqueue(run.pk)
    queued = timezone.now()

    run = started(run, timeout=25, message="the run to be found by the poll")
    # The default poll is 30 s: only WORKER_POLL_SECONDS=1 finds it this soon.
    assert (run.started_at - queued).total_seconds() < 10, worker.output()
    assert worker.stop() == 0


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_connection_past_its_age_is_replaced_after_a_claim_not_before_it(
    make_repository, monkeypatch
):
    """Connecting costs about 5 ms here, as much as the rest of a pick-up: a worker replaces a
    connection past CONN_MAX_AGE once it has nothing to do, not on its way from a NOTIFY to the
    claim (with pushes minutes apart, nearly every claim used to reconnect first)."""
    worker = in_process_worker("refresher")
    worker.queue_names = [settings.GITDEPLOY_QUEUE]
    used = []
    claim = ResilientWorker.claim_in_one_statement

    def recording_claim(self):
        used.append(connection.connection)
        return claim(self)

    monkeypatch.setattr(ResilientWorker, "claim_in_one_statement", recording_claim)
    old = a_ready_task_and_an_aged_connection(make_repository, monkeypatch)

    assert worker.run_one() is True
    assert used == [old], "the claim waited for a new connection"
    assert connection.connection is not None and connection.connection is not old
    # Nothing to do: the look for work, then nothing more (the new connection is young).
    assert worker.run_one() is False
    assert used[-1] is connection.connection


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_listening_worker_keeps_its_connection_past_its_age(make_repository, monkeypatch):
    """The connection a Waker listens on is not replaced at CONN_MAX_AGE: a new one would have to
    LISTEN again and look for work it might have missed, three statements a minute at idle."""
    worker = in_process_worker("keeper")
    worker.queue_names = [settings.GITDEPLOY_QUEUE]
    worker.keeps_connection = True  # as run() sets it on PostgreSQL
    old = a_ready_task_and_an_aged_connection(make_repository, monkeypatch)

    assert worker.run_one() is True
    assert worker.run_one() is False
    assert connection.connection is old


def a_ready_task_and_an_aged_connection(make_repository, monkeypatch):
    """A run's task ready to claim (running it does nothing), and Django's connection past
    CONN_MAX_AGE; returns that connection."""
    monkeypatch.setattr(ResilientWorker, "run_task", lambda self, task_result: None)
    SyncRun.request(make_repository(), trigger=SyncRun.Trigger.CLI)
    connection.ensure_connection()
    connection.close_at = time.monotonic() - 1
    return connection.connection
