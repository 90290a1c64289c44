"""The web process connects to PostgreSQL between requests, not during one (project.asgi's
ConnectionKeeper): a persistent connection about to come of age is replaced on a timer, even with
no request coming, so the next webhook does not pay for connecting. The real server (gunicorn)
against the test database; the connections are read from pg_stat_activity."""

import hashlib
import hmac
import json
import time
import uuid

import pytest
from django.db import connection

from gitdeploy.models import Delivery
from tests.conftest import TEST_SECRET
from tests.reliability.stack import gunicorn
from tests.test_webhook import push_payload
from tests.test_webhook_database_down import post

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.processes,
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="SQLite keeps no connection between requests"
    ),
]


def backends(application_name: str) -> list[tuple[int, object]]:
    """(pid, backend_start) of the server's connections to the test database."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, backend_start FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database() ORDER BY pid",
            [application_name],
        )
        return cursor.fetchall()


def push(port: int, repository, delivery: str) -> None:
    """A signed push through the real server, answered 202."""
    body = json.dumps(push_payload(after=uuid.uuid4().hex[:8] * 5)).encode()
    signature = "sha256=" + hmac.new(TEST_SECRET.encode(), body, hashlib.sha256).hexdigest()
    status, _headers, text = post(
        f"http://127.0.0.1:{port}/hooks/{repository.slug}/",
        body,
        {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature,
        },
    )
    assert status == 202, text


def test_an_aging_connection_is_replaced_while_the_server_is_idle(
    subprocess_env, make_repository, tmp_path
):
    repository = make_repository(default_branch="main")
    name = f"web-keeper-{uuid.uuid4().hex[:8]}"
    # Replaced at 3.8 s of age (REPLACE_EARLY); looked at 5 s after the first push, well before
    # the new connection's own turn (7.6 s), so a slow machine has a second either way.
    env = {**subprocess_env, "CONN_MAX_AGE": "4", "GITDEPLOY_PROCESS": name}
    with gunicorn(env, tmp_path / "gunicorn.log", workers=1) as server:
        push(server.port, repository, "d-1")
        (first,) = backends(name)
        # Past the connection's age, and no request meanwhile: replaced all the same (Django
        # alone would keep the old one open until a request closed it, and connect in it).
        time.sleep(5.0)
        (second,) = backends(name)
        assert second[0] != first[0], "the connection was not replaced while idle"
        # The next webhook finds it open: no connection is made during the request.
        push(server.port, repository, "d-2")
        assert backends(name) == [second]
    assert Delivery.objects.filter(repository=repository).count() == 2


def test_no_connection_max_age_no_timer(subprocess_env, make_repository, tmp_path):
    """CONN_MAX_AGE=0: Django's own behaviour, a connection per request, and nothing between."""
    repository = make_repository(default_branch="main")
    name = f"web-keeper-{uuid.uuid4().hex[:8]}"
    env = {**subprocess_env, "CONN_MAX_AGE": "0", "GITDEPLOY_PROCESS": name}
    with gunicorn(env, tmp_path / "gunicorn.log", workers=1) as server:
        push(server.port, repository, "d-1")
        time.sleep(0.5)
        assert backends(name) == []
