"""Prepared statements on the hot path (gitdeploy.prebuilt.cursor): the push's statements and the
worker's claim are prepared once per connection; a pooler that loses them costs no delivery; the
switch that turns them off.

transaction=True: outside a transaction, as the web and the worker run them (inside one, prebuilt
hands out the plain cursor)."""

import logging

import pytest
from django.conf import settings
from django.db import connection, transaction

from gitdeploy import prebuilt
from gitdeploy.models import Delivery, SyncRun
from tests.test_webhook import push_payload, signed_github

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="SQLite has no prepared statements to keep"
    ),
]


@pytest.fixture(autouse=True)
def fresh_process_state():
    """Each test starts as a new process would: preparing, on a new connection."""
    prebuilt._pooler_drops_prepared_statements = False
    connection.close()
    yield
    prebuilt._pooler_drops_prepared_statements = False
    connection.close()


def prepared() -> dict[str, str]:
    """This connection's prepared statements: name -> statement."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, statement FROM pg_prepared_statements")
        return dict(cursor.fetchall())


def push(client, repository, commit: str, delivery: str):
    response = signed_github(client, repository, push_payload(after=commit * 40), delivery=delivery)
    assert response.status_code == 202, response.content
    return response.json()


def test_a_push_prepares_its_statements_once_per_connection(client, make_repository):
    repository = make_repository(default_branch="main")
    push(client, repository, "a", "d-1")
    first = prepared()
    # The repository by slug, the push's statement (with the redelivery look-up in it).
    assert len(first) == 2, first
    assert any(sql.startswith("WITH earlier AS") for sql in first.values()), first
    converted = prebuilt._converted_statement.cache_info()
    push(client, repository, "b", "d-2")  # a join: the same two statements, run again
    assert prepared() == first
    # Nor is any of them converted again (%s to $1...): the push's is over psycopg's own limits.
    again = prebuilt._converted_statement.cache_info()
    assert (again.hits - converted.hits, again.misses - converted.misses) == (2, 0)
    assert Delivery.objects.count() == 2
    assert SyncRun.objects.get().requested_commit == "a" * 40  # a join writes nothing to it


def test_in_a_transaction_nothing_is_prepared(make_repository):
    repository = make_repository()
    with transaction.atomic():
        assert prebuilt.get(type(repository), "slug", repository.slug) == repository
    assert prepared() == {}


def test_a_statement_the_pooler_lost_runs_again_unprepared(client, make_repository, caplog):
    """A pooler in transaction mode hands the next statement to a server connection that never saw
    the prepared one. Here the statement is deallocated behind psycopg's back, which is what that
    connection looks like: the push is still recorded, and the process stops preparing."""
    repository = make_repository(default_branch="main")
    push(client, repository, "a", "d-1")
    with connection.cursor() as cursor:
        for name in prepared():
            cursor.execute(f'DEALLOCATE "{name}"')
    with caplog.at_level(logging.WARNING, logger="gitdeploy.prebuilt"):
        answer = push(client, repository, "b", "d-2")
    assert answer["joined"] is True
    assert list(Delivery.objects.order_by("pk").values_list("delivery_id", flat=True)) == [
        "d-1",
        "d-2",
    ]
    assert "prepares no more statements" in caplog.text
    assert prebuilt._pooler_drops_prepared_statements
    push(client, repository, "c", "d-3")
    assert prepared() == {}, "nothing is prepared once a pooler was seen"


def test_a_name_another_client_prepared_is_not_a_failed_push(client, make_repository):
    """The other way a pooler shows: the server connection already has a statement of that name,
    prepared there by another client."""
    repository = make_repository(default_branch="main")
    prebuilt.get(type(repository), "slug", repository.slug)  # prepared: psycopg's first name
    (name,) = prepared()
    with connection.cursor() as cursor:
        # The names psycopg gives next (_pg3_1, ...), taken on the server.
        stem, number = name.rsplit("_", 1)
        taken = [f"{stem}_{int(number) + n}" for n in range(1, 4)]
        for name in taken:
            cursor.execute(f"PREPARE {name} AS SELECT 1")
    push(client, repository, "a", "d-1")
    assert Delivery.objects.get().delivery_id == "d-1"
    assert prebuilt._pooler_drops_prepared_statements


def test_switched_off_nothing_is_prepared(client, make_repository):
    """DB_PREPARED_STATEMENTS=false leaves psycopg's prepare_threshold at Django's None."""
    threshold = connection.settings_dict["OPTIONS"].pop("prepare_threshold")
    try:
        connection.close()
        repository = make_repository(default_branch="main")
        push(client, repository, "a", "d-1")
        push(client, repository, "b", "d-2")
        assert prepared() == {}
        assert Delivery.objects.count() == 2
    finally:
        connection.settings_dict["OPTIONS"]["prepare_threshold"] = threshold
        connection.close()


def test_the_worker_claims_with_a_prepared_statement(make_repository):
    """The claim is planned once, not at every wake-up (test_worker_idle holds what it claims)."""
    from gitdeploy.worker import ResilientWorker

    runs = [SyncRun.request(make_repository(), trigger=SyncRun.Trigger.CLI)[0] for _ in range(2)]
    worker = ResilientWorker(  # as manage.py db_worker builds it, without its loop
        queue_names=[settings.GITDEPLOY_QUEUE],
        interval=1,
        batch=False,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id="worker-test",
        excluded_queue_names=[],
    )
    claimed = [worker.claim_in_one_statement() for _ in range(3)]
    assert claimed[2] is None
    assert sorted(task.args_kwargs["args"][0] for task in claimed[:2]) == [run.pk for run in runs]
    claims = [sql for sql in prepared().values() if "SKIP LOCKED" in sql]
    assert len(claims) == 1, prepared()


@pytest.mark.parametrize("raw, prepares", [(None, True), ("false", False)])
def test_db_prepared_statements_sets_psycopgs_threshold(raw, prepares):
    """On: a threshold out of reach (only what prebuilt asks for is prepared). Off: Django's
    None, under which psycopg prepares nothing even when asked."""
    import os

    from tests.conftest import run_python

    env = {k: v for k, v in os.environ.items() if k != "DB_PREPARED_STATEMENTS"}
    if raw is not None:
        env["DB_PREPARED_STATEMENTS"] = raw
    script = (
        "import django; django.setup(); from django.db import connection; "
        "print(connection.get_connection_params()['prepare_threshold'])"
    )
    result = run_python(script, {**env, "DJANGO_SETTINGS_MODULE": "project.settings"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (str(2**31 - 1) if prepares else "None")
