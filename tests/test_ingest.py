"""The ingest hot path (issue: a lock convoy on the Repository row): how many queries a push
costs, that pushes to one repository do not wait for each other, and that a dropped connection is
not a 503.

transaction=True: the counts are the production ones (no test transaction adding savepoints)."""

import threading

import psycopg
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from gitdeploy.models import Delivery, SyncRun
from tests.test_webhook import push_payload, signed_github

pytestmark = pytest.mark.django_db(transaction=True)


def push(client, repository, commit: str, delivery: str, *, at_once: bool = True):
    with CaptureQueriesContext(connection) as queries:
        response = signed_github(
            client, repository, push_payload(after=commit * 40), delivery=delivery
        )
    assert response.status_code == 202, response.content
    # Statements, without a transaction's own BEGIN and COMMIT.
    statements = [q["sql"] for q in queries.captured_queries]
    control = [sql for sql in statements if sql.split()[0] in ("BEGIN", "COMMIT")]
    # PostgreSQL records a push in one statement, its own transaction (SyncRun.record_push);
    # SQLite, and PostgreSQL when that statement cannot decide alone, in one transaction.
    at_once = at_once and connection.vendor == "postgresql"
    assert len(control) == (0 if at_once else 2), statements
    return response.json(), [sql for sql in statements if sql not in control]


def test_a_joining_push_costs_at_most_four_queries(client, make_repository):
    repository = make_repository(default_branch="main")
    first, queued_queries = push(client, repository, "a", "d-1")
    second, joined_queries = push(client, repository, "b", "d-2")
    assert (first["joined"], second["joined"]) == (False, True)
    if connection.vendor == "postgresql":
        # The repository, and one statement for the rest: the redelivery check, the join or the
        # insert, with the task row and the NOTIFY for a new run, and the Delivery.
        assert len(joined_queries) == 2, "\n".join(joined_queries)
        assert len(queued_queries) == 2, "\n".join(queued_queries)
    else:
        # The repository, the redelivery check, the queued run, the Delivery; queuing adds the
        # insert in a savepoint and the task row.
        assert len(joined_queries) <= 4, "\n".join(joined_queries)
        assert len(queued_queries) <= 8, "\n".join(queued_queries)
    assert not any("FOR UPDATE" in sql for sql in queued_queries + joined_queries)
    assert not any("UPDATE" in sql for sql in joined_queries), "a join writes nothing to the run"
    run = SyncRun.objects.get()
    assert list(Delivery.objects.values_list("sync_run", flat=True)) == [run.pk, run.pk]
    assert run.claim("worker-1")  # which records the newest push's commit
    run.refresh_from_db()
    assert run.requested_commit == "b" * 40


def test_a_push_after_a_queued_roll_back_supersedes_it(client, make_repository):
    repository = make_repository(default_branch="main")
    rollback, _ = SyncRun.request(
        repository, trigger=SyncRun.Trigger.ADMIN, commit="c" * 40, pin_commit=True
    )
    # The one statement finds the roll back and writes nothing; a transaction supersedes it.
    answer, _ = push(client, repository, "d", "d-3", at_once=False)
    assert answer["joined"] is False and answer["sync_run"] != rollback.pk
    rollback.refresh_from_db()
    assert rollback.status == SyncRun.Status.SUPERSEDED
    assert rollback.superseded_by_id == answer["sync_run"]


def test_concurrent_pushes_to_one_repository_make_one_queued_run(make_repository):
    from django.test import Client

    repository = make_repository(default_branch="main")
    answers, errors = [], []

    def send(n: int) -> None:
        try:
            response = signed_github(
                Client(), repository, push_payload(after=f"{n:040x}"), delivery=f"c-{n}"
            )
            answers.append(response.status_code)
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(n + 1,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and answers == [202] * 8
    assert SyncRun.objects.filter(status=SyncRun.Status.QUEUED).count() == 1
    assert Delivery.objects.filter(sync_run__isnull=False).count() == 8


class JoinInProgress(threading.Thread):
    """A push's transaction on another connection, stopped after its join: request_tip ran and its
    Delivery is written, nothing is committed until release(). With joins=False the push is the
    first, stopped after inserting the queued run."""

    def __init__(self, repository, commit: str, *, joins: bool = True) -> None:
        super().__init__(daemon=True)
        self.repository, self.commit, self.joins = repository, commit, joins
        self.joined, self.released, self.queued = threading.Event(), threading.Event(), None
        self.error: BaseException | None = None

    def run(self) -> None:  # noqa: D102 - threading.Thread's
        try:
            with transaction.atomic():
                self.queued, joined = SyncRun.request_tip(
                    self.repository, trigger=SyncRun.Trigger.WEBHOOK, commit=self.commit
                )
                assert joined is self.joins
                Delivery.objects.create(
                    repository=self.repository,
                    sync_run=self.queued,
                    after=self.commit,
                    verdict=Delivery.Verdict.JOINED if self.joins else Delivery.Verdict.QUEUED,
                    status_code=202,
                )
                self.joined.set()
                self.released.wait(30)
        except BaseException as exc:  # reported by __enter__
            self.error = exc
            self.joined.set()
        finally:
            connection.close()

    def __enter__(self):
        self.start()
        assert self.joined.wait(30) and self.error is None, f"the join failed: {self.error!r}"
        return self

    def __exit__(self, *exc_info) -> None:
        self.released.set()
        self.join(30)


def in_thread(function, timeout: float):
    """function() on another connection; (finished within timeout, its result, the thread)."""
    result: list = []

    def call() -> None:
        try:
            result.append(function())
        finally:
            connection.close()

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), result, thread


postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite has one writer at a time: every push waits for the one in progress",
)


@postgresql_only
def test_a_joining_push_does_not_wait_for_a_join_in_progress(client, make_repository):
    repository = make_repository(default_branch="main")
    first, _ = push(client, repository, "a", "d-1")
    with JoinInProgress(repository, "b" * 40):
        from django.test import Client

        done, answers, _ = in_thread(lambda: push(Client(), repository, "c", "d-3")[0], 10)
        assert done, "the push waited for the other push's transaction"
    assert answers[0]["joined"] is True and answers[0]["sync_run"] == first["sync_run"]


@postgresql_only
def test_a_claim_waits_for_a_join_in_progress_and_records_its_commit(client, make_repository):
    repository = make_repository(default_branch="main")
    first, _ = push(client, repository, "a", "d-1")
    run = SyncRun.objects.get(pk=first["sync_run"])
    with JoinInProgress(repository, "b" * 40):
        done, _, claimer = in_thread(lambda: run.claim("worker-1"), 1)
        assert not done, "the run was claimed under a join that had not committed"
    claimer.join(30)
    run.refresh_from_db()
    assert run.status == SyncRun.Status.RUNNING
    assert run.requested_commit == "b" * 40  # the join committed first; the claim saw it


@postgresql_only
def test_a_roll_back_supersedes_a_queued_run_with_the_join_in_progress(client, make_repository):
    repository = make_repository(default_branch="main")
    first, _ = push(client, repository, "a", "d-1")

    def roll_back():
        return SyncRun.request(
            repository, trigger=SyncRun.Trigger.ADMIN, commit="0" * 40, pin_commit=True
        )[0]

    with JoinInProgress(repository, "b" * 40):
        done, rolled_back, roller = in_thread(roll_back, 1)
        assert not done, "the queued run was superseded under a join that had not committed"
    roller.join(30)
    queued = SyncRun.objects.get(pk=first["sync_run"])
    assert queued.status == SyncRun.Status.SUPERSEDED
    # No delivery is left on the superseded run: the join's went with the others.
    assert set(Delivery.objects.values_list("sync_run", flat=True)) == {rolled_back[0].pk}


@postgresql_only
@pytest.mark.parametrize("pin_commit", [False, True], ids=["redeploy", "roll back"])
def test_a_request_that_loses_the_insert_to_a_push_joins_or_supersedes_its_run(
    make_repository, pin_commit
):
    """request() (a redeploy, a roll back, a retry, the worker's initial sync) looks for the queued
    run under the repository's lock, but a push takes no such lock: one that queues a run between
    that look-up and request()'s insert made the insert break the one-queued-run constraint, an
    IntegrityError (the worker's initial sync logged it, CI 2026-11-26). It now looks again."""
    repository = make_repository(default_branch="main")

    def request():
        return SyncRun.request(
            repository, trigger=SyncRun.Trigger.ADMIN, commit="0" * 40, pin_commit=pin_commit
        )

    with JoinInProgress(repository, "b" * 40, joins=False) as pushed:
        # Its look-up does not see the push's run; its insert waits for the push to commit.
        done, answer, requester = in_thread(request, 1)
        assert not done, "the request's insert did not wait for the push's queued run"
    requester.join(30)
    assert answer, "the request failed (see the thread's traceback above)"
    run, joined = answer[0]
    queued = SyncRun.objects.get(status=SyncRun.Status.QUEUED)
    assert queued.pk == run.pk
    if pin_commit:  # the roll back is the newest intent: it supersedes the push's run
        assert not joined and run.pk != pushed.queued.pk and run.pin_commit
        assert SyncRun.objects.get(pk=pushed.queued.pk).status == SyncRun.Status.SUPERSEDED
        assert set(Delivery.objects.values_list("sync_run", flat=True)) == {run.pk}
    else:  # a redeploy of the tip joins the push's run
        assert joined and run.pk == pushed.queued.pk
    assert SyncRun.objects.count() == (2 if pin_commit else 1)


def test_a_connection_the_database_dropped_is_replaced_not_a_503(client, make_repository):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no server connection to drop")
    repository = make_repository(default_branch="main")
    push(client, repository, "e", "d-4")
    pid = connection.connection.info.backend_pid
    params = connection.get_connection_params()
    admin = {key: params[key] for key in ("host", "port", "user", "dbname") if params.get(key)}
    with psycopg.connect(**admin, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    answer, _ = push(client, repository, "f", "d-5")
    assert answer["status"] == "queued"


# --- a push in one statement (PostgreSQL) ---------------------------------------------------------

one_statement_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite records a push in a transaction"
)

DELIVERY_FIELDS_SET_BY_THE_DATABASE = {"id", "received_at", "repository", "sync_run"}


def stored(delivery: Delivery) -> dict:
    """A Delivery's stored fields that do not differ between two repositories' copies of a push,
    with the run's id in its reason and answer read as "#RUN"."""
    delivery.refresh_from_db()
    run = f"#{delivery.sync_run_id}"
    fields = {
        field.name: getattr(delivery, field.attname)
        for field in Delivery._meta.concrete_fields
        if field.name not in DELIVERY_FIELDS_SET_BY_THE_DATABASE
    }
    fields["reason"] = fields["reason"].replace(run, "#RUN")
    fields["response_body"] = {
        **fields["response_body"],
        "reason": fields["response_body"]["reason"].replace(run, "#RUN"),
        "sync_run": fields["response_body"]["sync_run"] == delivery.sync_run_id,
    }
    return fields


@one_statement_only
def test_a_push_in_one_statement_stores_what_the_transaction_stores(
    client, make_repository, monkeypatch
):
    """The same two pushes (one queues, one joins) through SyncRun.record_push and through the
    transaction that SQLite uses: the same Delivery rows, the same answers, one task row each."""
    from django_tasks_db.models import DBTaskResult

    from gitdeploy import intake

    at_once, in_a_transaction = (make_repository(default_branch="main") for _ in range(2))
    answers = {}
    for repository in (at_once, in_a_transaction):
        if repository is in_a_transaction:
            monkeypatch.setattr(intake, "_record_push_at_once", lambda *args: None)
        answers[repository.pk] = [
            push(client, repository, commit, delivery, at_once=repository is at_once)[0]
            for commit, delivery in (("a", "d-1"), ("b", "d-2"))
        ]
    for repository in (at_once, in_a_transaction):
        queued, joined = answers[repository.pk]
        assert (queued["joined"], joined["joined"]) == (False, True)
        assert queued["sync_run"] == joined["sync_run"]
        assert joined["reason"] == intake.JOINED_REASON.format(run=joined["sync_run"])
    one, other = (
        [stored(d) for d in Delivery.objects.filter(repository=r).order_by("pk")]
        for r in (at_once, in_a_transaction)
    )
    assert one == other
    assert [d["verdict"] for d in one] == [Delivery.Verdict.QUEUED, Delivery.Verdict.JOINED]
    tasks = DBTaskResult.objects.order_by("enqueued_at")
    assert [task.args_kwargs["args"] for task in tasks] == [
        [answers[r.pk][0]["sync_run"], r.pk] for r in (at_once, in_a_transaction)
    ]


@one_statement_only
def test_the_task_row_of_a_push_is_the_one_django_tasks_enqueues(client, make_repository):
    """record_push writes run_sync's task row itself: every column as run_sync.enqueue() writes
    it (but for the id and the time), so a django-tasks upgrade that changes them fails here."""
    from django_tasks_db.models import DBTaskResult

    from gitdeploy.tasks import run_sync

    repository = make_repository(default_branch="main")
    answer, _ = push(client, repository, "a", "d-1")
    ours = DBTaskResult.objects.get()
    theirs = DBTaskResult.objects.get(pk=run_sync.enqueue(answer["sync_run"], repository.pk).id)

    def columns(row):
        return {
            field.attname: getattr(row, field.attname)
            for field in DBTaskResult._meta.concrete_fields
            if field.attname not in ("id", "enqueued_at")
        }

    assert columns(ours) == columns(theirs)
    assert ours.task_result.args == [answer["sync_run"], repository.pk]
    assert ours.enqueued_at <= theirs.enqueued_at


@one_statement_only
def test_a_push_that_queues_notifies_the_workers_and_a_join_does_not(client, make_repository):
    from gitdeploy.models import TASKS_CHANNEL

    params = connection.get_connection_params()
    admin = {key: params[key] for key in ("host", "port", "user", "dbname") if params.get(key)}
    with psycopg.connect(**admin, autocommit=True) as listener:
        listener.execute(f"LISTEN {TASKS_CHANNEL}")
        repository = make_repository(default_branch="main")

        def notified() -> int:
            return len(list(listener.notifies(timeout=0.5, stop_after=5)))

        push(client, repository, "a", "d-1")
        assert notified() == 1
        push(client, repository, "b", "d-2")
        assert notified() == 0


def test_an_ignored_push_is_one_insert_without_a_transaction(client, make_repository):
    repository = make_repository(default_branch="main")
    with CaptureQueriesContext(connection) as queries:
        response = signed_github(client, repository, push_payload(ref="refs/heads/other"))
    assert response.status_code == 200 and response.json()["status"] == "ignored"
    statements = [q["sql"].split()[0] for q in queries.captured_queries]
    assert statements == ["SELECT", "INSERT"], statements  # the repository, the Delivery
    delivery = Delivery.objects.get()
    assert delivery.verdict == Delivery.Verdict.IGNORED
    assert delivery.answer == response.json()


def test_a_redelivery_of_a_pending_run_is_found_in_the_statement_and_joins_it(
    client, make_repository
):
    """The push's one statement looks for an earlier delivery with the same Git host delivery id
    whose run is pending: it writes nothing then, and the push is recorded in a transaction
    that joins that run (the same answer as before the look-up moved into the statement)."""
    from django_tasks_db.models import DBTaskResult

    repository = make_repository(default_branch="main")
    first, _ = push(client, repository, "a", "same-id")
    SyncRun.objects.update(status=SyncRun.Status.RUNNING, worker_id="w")
    with CaptureQueriesContext(connection) as queries:
        again = signed_github(client, repository, push_payload(after="a" * 40), delivery="same-id")
    assert again.status_code == 200, again.content
    assert again.json()["status"] == "duplicate"
    assert again.json()["sync_run"] == first["sync_run"]
    assert SyncRun.objects.count() == 1
    assert DBTaskResult.objects.count() == 1, "no task for a run that was not inserted"
    assert Delivery.objects.filter(verdict=Delivery.Verdict.JOINED).count() == 1
    control = [q["sql"] for q in queries.captured_queries if q["sql"].split()[0] == "BEGIN"]
    assert len(control) == 1, "recorded in _record's transaction"


def test_pushes_without_a_delivery_id_are_never_taken_for_redeliveries(client, make_repository):
    repository = make_repository(default_branch="main")
    first, _ = push(client, repository, "a", "")
    SyncRun.objects.update(status=SyncRun.Status.RUNNING, worker_id="w")
    second, _ = push(client, repository, "b", "")
    assert second["status"] == "queued" and second["joined"] is False
    assert second["sync_run"] != first["sync_run"]
