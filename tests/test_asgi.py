"""project.asgi, called as gunicorn's asgi worker calls it (an ASGI scope, receive and send).

The handler reads the request on the event loop and does the request's synchronous work (every
middleware and the view) in one trip to one of its lanes (threads with their own database
connections), as a synchronous worker would; Django's stock ASGI handler made about fifteen trips
per request, one per middleware method, and two more for the request signals.

The views run on the lanes' threads, with connections of their own: the tests' data is committed
(transaction=True), and the lanes' connections are closed after each test.
"""

import asyncio
import contextlib
import hashlib
import hmac
import json

import pytest
from asgiref import sync as asgiref_sync
from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIHandler

from gitdeploy.models import Delivery
from tests.conftest import TEST_SECRET
from tests.test_webhook import push_payload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def close_the_lanes_connections():
    yield
    from project.asgi import close_lane_connections

    close_lane_connections()


def asgi_scope(path: str, headers, method: str = "POST") -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


def call(application, path: str, body: bytes = b"", headers=(), method: str = "POST"):
    """One request through an ASGI application; returns (status, headers, body)."""
    done = asyncio.Event()
    sent: list[dict] = []
    scope = asgi_scope(path, headers, method)
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        await done.wait()  # the client stays connected until the answer is sent
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    async def run():
        await application(scope, receive, send)

    async_to_sync(run)()
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.lower(): v for k, v in start["headers"]}, content


def signed_push(delivery: str):
    body = json.dumps(push_payload()).encode()
    signature = hmac.new(TEST_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-github-event", b"push"),
        (b"x-github-delivery", delivery.encode()),
        (b"x-hub-signature-256", f"sha256={signature}".encode()),
    ]
    return body, headers


@pytest.fixture
def trips(monkeypatch):
    """Counts the trips from the event loop to a thread: asgiref's sync_to_async calls (Django's
    handler) and the lanes' runs (project.asgi's)."""
    from project.asgi import Lane

    count = {"n": 0}
    original = asgiref_sync.SyncToAsync.__call__
    original_run = Lane.run

    async def counted(self, *args, **kwargs):
        count["n"] += 1
        return await original(self, *args, **kwargs)

    def counted_run(self, *args):
        count["n"] += 1
        return original_run(self, *args)

    monkeypatch.setattr(asgiref_sync.SyncToAsync, "__call__", counted)
    monkeypatch.setattr(Lane, "run", counted_run)
    return count


def test_a_signed_push_is_recorded_through_the_asgi_application(make_repository, trips):
    from project.asgi import application

    repository = make_repository(default_branch="main")
    body, headers = signed_push("asgi-1")

    status, response_headers, content = call(
        application, f"/hooks/{repository.slug}/", body, headers
    )

    assert status == 202, content
    answer = json.loads(content)
    delivery = Delivery.objects.get(pk=answer["delivery"])
    assert (delivery.delivery_id, delivery.verdict) == ("asgi-1", Delivery.Verdict.QUEUED)
    # request_started, the middleware chain with the view, and closing the response: one trip.
    assert trips["n"] == 1, trips["n"]
    # The middleware ran: the security headers are there.
    assert response_headers[b"x-content-type-options"] == b"nosniff"


def test_djangos_stock_asgi_handler_makes_many_more_trips(make_repository, trips):
    """What the count above is compared with: the same request through Django's own handler."""
    repository = make_repository(default_branch="main")
    body, headers = signed_push("asgi-2")

    status, _, content = call(ASGIHandler(), f"/hooks/{repository.slug}/", body, headers)

    assert status == 202, content
    assert trips["n"] >= 10, trips["n"]


# Django warns that it reads a static file's (synchronous) iterator whole before sending it, as it
# did before this handler; the files served are the admin's and our CSS and icons.
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
def test_pages_static_files_and_errors_still_work(make_repository):
    from project.asgi import application

    make_repository(default_branch="main")
    status, headers, content = call(application, "/", method="GET")
    assert status == 200 and b"<html" in content.lower()
    status, headers, content = call(application, "/static/gitdeploy/site.css", method="GET")
    assert status == 200 and headers[b"content-type"].startswith(b"text/css") and content
    status, _, content = call(application, "/hooks/no-such-repository/", b"{}")
    assert status == 404 and b"no repository" in content
    status, _, _ = call(application, "/admin/", method="GET")
    assert status == 302  # to the login page


def test_a_push_whose_client_leaves_before_the_answer_is_still_recorded(make_repository):
    """The Git host gave up waiting (its timeout) as the push arrived. Django's own handler
    cancels such a request, and one still waiting for the thread never runs (whether it had
    started depends on timing, so that side is not asserted). Here it is recorded; the answer goes
    nowhere (the server drops it)."""
    from project.asgi import application

    repository = make_repository(default_branch="main")
    body, headers = signed_push("asgi-gone")
    messages = [
        {"type": "http.request", "body": body, "more_body": False},
        {"type": "http.disconnect"},
    ]

    async def receive():
        return messages.pop(0)

    async def send(message):
        pass

    async_to_sync(application)(asgi_scope(f"/hooks/{repository.slug}/", headers), receive, send)
    assert Delivery.objects.filter(delivery_id="asgi-gone").count() == 1


def test_a_push_whose_call_the_server_cancels_is_still_recorded(make_repository, monkeypatch):
    """gunicorn cancels the call a grace period after the client left: a request already read
    is still handled to its end (here the view is held until the call was cancelled), and its
    body closed once it is."""
    import threading

    import project.asgi
    from gitdeploy import views
    from project.asgi import application

    repository = make_repository(default_branch="main")
    body, headers = signed_push("asgi-cancelled")
    in_view, release = threading.Event(), threading.Event()
    receive_delivery = views.receive

    def held_receive(*args, **kwargs):
        in_view.set()
        assert release.wait(10)
        return receive_delivery(*args, **kwargs)

    monkeypatch.setattr(views, "receive", held_receive)
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # never disconnects: the server cancels instead

    async def send(message):
        sent.append(message)

    async def run():
        call = asyncio.ensure_future(
            application(asgi_scope(f"/hooks/{repository.slug}/", headers), receive, send)
        )
        while not in_view.is_set():
            await asyncio.sleep(0.01)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        assert call.cancelled() and project.asgi._finishing
        release.set()
        while project.asgi._finishing:
            await asyncio.sleep(0.01)

    async_to_sync(run)()
    assert Delivery.objects.filter(delivery_id="asgi-cancelled").count() == 1
    assert not sent


def test_the_web_process_warms_up_as_it_starts_without_connecting(subprocess_env):
    """project.asgi loads what the first webhook would (the task and its backend, the hot path's
    statements: about 90 ms of that webhook's answer), and opens no database connection doing so
    (it would be the loading thread's, not the views')."""
    from tests.conftest import run_python

    script = (
        "import sys, project.asgi; from django.db import connections; "
        "from gitdeploy import models; "
        "print([c.connection is None for c in connections.all()], "
        "'gitdeploy.tasks' in sys.modules, models._push_statement.cache_info().currsize, "
        "models._run_sync_backend.cache_info().currsize)"
    )
    result = run_python(script, subprocess_env)
    assert result.returncode == 0, result.stderr
    pushes_in_one_statement = 1 if "postgres" in subprocess_env["DATABASE_URL"] else 0
    assert result.stdout.split("\n")[0] == f"[True] True {pushes_in_one_statement} 1"
