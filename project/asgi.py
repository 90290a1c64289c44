"""The ASGI entry point gunicorn serves (its `asgi` worker class; see gunicorn.conf.py).

Why ASGI for a service whose views are all synchronous: slow clients. A synchronous worker reads
a request's headers and body itself, so 200 connections trickling headers keep every worker busy
and the webhook unreachable (seen: 60 s). The asyncio worker reads requests on its event loop,
where a slow connection costs a few kilobytes, and Django runs the view only once the request is
complete. That holds with `make run HOST=0.0.0.0` too, where no proxy stands in front.

Django's ASGI handler reads the whole body before the view runs, with no cap, so BodyLimit stops
reading past MAX_WEBHOOK_BYTES: the view then answers 413 and records the delivery, as it does
under WSGI.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import time
import typing
from concurrent.futures import ThreadPoolExecutor

import django
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.db import DatabaseError, connections
from django.http import FileResponse
from django.http.response import HttpResponseBase
from django.urls import set_script_prefix

from gitdeploy.gunicorn_worker import client_gone, views_backlog

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


class LanesASGIHandler(ASGIHandler):
    """Django's ASGI handler, with the synchronous work of a request done in one step on one of a
    few long-lived threads (lanes).

    - Lanes: Django's handler runs each request's synchronous code in a thread of its own (a
      ThreadSensitiveContext per request), and database connections belong to a thread: every
      request opened a new connection (a webhook took 37 ms instead of 10). Here a process has
      WEB_THREADS lanes, each a thread that keeps its own connection (CONN_MAX_AGE) as under a
      synchronous worker. A request goes to the lane with the fewest requests, the first on a tie,
      so that with requests one at a time one connection serves them all; with several at once,
      one lane's database round trips overlap another's Python (one lane answered at most 330
      webhooks a second here, waiting on PostgreSQL for a third of each).
    - One step: every view and middleware here is synchronous, and Django's async path wraps each
      middleware's process_request and process_response in a trip from the event loop to that
      thread and back: about fifteen per request, which cost a webhook 3-4 ms of CPU (8.5 ms
      against 4.9 under a synchronous worker). Here the middleware chain is loaded for the
      synchronous path, as under WSGI, and one trip does the request's synchronous work:
      request_started, building the request, the middleware chain with the view, and for a
      response held in memory its close() (request_finished), which Django makes two more trips
      for. A streamed response (a static file) is closed after it is sent, as Django does.

    What the asgi worker is for stays: the event loop reads a request's headers and body (slow
    clients cost memory, not the thread), and only a complete request reaches Django."""

    def __init__(self) -> None:
        BaseHandler.__init__(self)  # not ASGIHandler's, which loads the async middleware chain
        self.load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send):
        """ASGIHandler.handle, with one trip to the thread (respond) where Django makes three,
        and a request read whole always handled to its end.

        Django cancels a request whose client disconnects, and a request still waiting for the
        thread (behind others) then never runs: a push whose Git host stopped waiting would be
        lost. Here it is recorded (and deployed) all the same; the answer to a client that left
        is dropped by the server, and a redelivery of it joins or repeats it. The same if the
        server cancels this call (gunicorn does, a grace period after the disconnect)."""
        client_gone.set(False)  # a kept-alive connection's earlier request does not count
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            client_gone.set(True)
            return
        set_script_prefix(get_script_prefix(scope))
        lane = min(_lanes, key=lambda lane: lane.waiting)
        work = lane.run(self.respond, scope, body_file, lane)
        try:
            response = await asyncio.shield(work)
        except asyncio.CancelledError:
            client_gone.set(True)
            finishing = asyncio.ensure_future(self.close_when_done(work, body_file, lane))
            _finishing.add(finishing)  # a reference until it is done, as asyncio asks
            finishing.add_done_callback(_finishing.discard)
            raise
        try:
            await self.send_response(response, send)
        finally:
            await self.close_when_done(work, body_file, lane)
            lane.keeper.after_response()

    async def close_when_done(self, work: asyncio.Future, body_file, lane: Lane) -> None:
        """After respond(): a streamed response is closed (request_finished) on its lane, and
        the body."""
        try:
            response = await work
            if response.streaming:
                await lane.run(response.close)
        finally:
            body_file.close()

    def respond(self, scope, body_file, lane: Lane) -> HttpResponseBase:
        """A request's synchronous work, on its lane: request_started, the request, the
        middleware chain and the view; a response held in memory is closed here (its content
        stays readable), so that request_finished runs in the same trip."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            # An undecodable or too large request: create_request answered it.
            response = typing.cast(HttpResponseBase, error_response)
        else:
            response = self.get_response(request)
            response._handler_class = self.__class__  # type: ignore[attr-defined]
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size  # as Django's: the server chunks it
        if not response.streaming:
            response.close()
        if lane.keeper.enabled:
            lane.keeper.due = connections_due()  # read here, on the thread: no trip of its own
        return response


# Requests whose call was cancelled while respond() still ran: closed when it is done.
_finishing: set[asyncio.Future] = set()


class Lane:
    """A thread of its own for requests' synchronous work, with the database connections Django
    opens on it, and a ConnectionKeeper for them."""

    def __init__(self, name: str) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self.waiting = 0  # requests given to it and not finished
        self.keeper = ConnectionKeeper(self)

    def run(self, function, *args) -> asyncio.Future:
        """function(*args) on this lane's thread, in a copy of the caller's context (the script
        prefix, as asgiref's sync_to_async carries it). Counted while it waits or runs: a worker
        with a backlog leaves new connections to the others (gitdeploy.gunicorn_worker)."""
        context = contextvars.copy_context()
        work = asyncio.get_running_loop().run_in_executor(
            self.executor, context.run, function, *args
        )
        self.waiting += 1
        views_backlog.enter()
        work.add_done_callback(self._done)
        return work

    def _done(self, _work: asyncio.Future) -> None:
        self.waiting -= 1
        views_backlog.leave()


class ConnectionKeeper:
    """Connects to the database between requests, not during one (a lane's connections).

    Django closes a persistent connection (CONN_MAX_AGE, 60 s) at the first request past its age,
    and that request connects anew: about 5 ms here, on a webhook answered in 10. Pushes come
    minutes apart, so nearly every webhook paid it. Here a connection about to come of age is
    replaced on a timer, on the lane's thread (connections belong to a thread), whether requests
    come or not: an idle lane that has connected reconnects once per CONN_MAX_AGE. A connection a
    request closed, or one the database refused, is left to the next request, as before.

    Off when no database keeps connections (CONN_MAX_AGE 0, as for SQLite, or None)."""

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.enabled = any(db.get("CONN_MAX_AGE") for db in settings.DATABASES.values())
        # When the next open connection is to be replaced (time.monotonic()), as respond() or a
        # refresh left it: None when none is open.
        self.due: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.refreshing: asyncio.Future | None = None

    def after_response(self) -> None:
        """Sets the timer for the connection a request opened (none while one is set)."""
        if self.enabled and self.timer is None and self.refreshing is None:
            self._schedule()

    def _schedule(self) -> None:
        if self.due is not None:
            delay = max(self.due - time.monotonic(), 0.0)
            self.timer = asyncio.get_running_loop().call_later(delay, self._refresh)

    def _refresh(self) -> None:
        self.timer = None
        self.refreshing = self.lane.run(refresh_connections)
        self.refreshing.add_done_callback(self._refreshed)

    def _refreshed(self, refreshing: asyncio.Future) -> None:
        self.refreshing = None
        if refreshing.cancelled() or refreshing.exception() is not None:
            return
        self.due = refreshing.result()
        self._schedule()


# A connection is replaced this share of CONN_MAX_AGE before Django would close it (at 57 s of
# 60), so that a request arriving as the timer fires does not find it closed.
REPLACE_EARLY = 0.05


def _persistent_connections():
    """This thread's (a lane's) open connections that Django closes by age (CONN_MAX_AGE above
    0), outside a transaction (a test's)."""
    for connection in connections.all(initialized_only=True):
        max_age = connection.settings_dict.get("CONN_MAX_AGE")
        if not max_age or connection.connection is None or connection.close_at is None:
            continue
        if not connection.in_atomic_block:
            yield connection, max_age


def connections_due() -> float | None:
    """When the first of this thread's persistent connections is to be replaced, or None."""
    return min(
        (
            connection.close_at - max_age * REPLACE_EARLY
            for connection, max_age in _persistent_connections()
        ),
        default=None,
    )


def refresh_connections() -> float | None:
    """On a lane's thread: each persistent connection about to come of age is opened anew.
    Returns connections_due() after."""
    for connection, max_age in list(_persistent_connections()):
        if time.monotonic() >= connection.close_at - max_age * REPLACE_EARLY:
            connection.close()
            with contextlib.suppress(DatabaseError):  # unreachable: the next request says so
                connection.ensure_connection()
    return connections_due()


django.setup(set_prefix=False)


_lanes = [Lane(f"views-{number}") for number in range(settings.WEB_THREADS)]


def close_lane_connections() -> None:
    """Closes the lanes' database connections, each on its own thread (a test's teardown)."""
    for lane in _lanes:
        lane.executor.submit(connections.close_all).result()


# A worker is busy (accepts fewer connections) once a request waits for a lane.
views_backlog.busy_at = len(_lanes) + 1
django_application = LanesASGIHandler()

from gitdeploy import intake  # noqa: E402 - needs the apps that django.setup() loads

intake.warm_up()


class BodyLimit:
    """Reads at most `limit` + 1 bytes of a request body (nothing when Content-Length already
    says it is too large), so an endless or huge body never reaches memory or disk. The view
    sees a body over the limit and refuses it (413), with the Delivery recorded."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"").strip()
        # Too large by its own Content-Length: not a byte is read; the view refuses it from the
        # header, as under WSGI.
        budget = -1 if declared.isdigit() and int(declared) > self.limit else self.limit + 1
        ended = False

        async def capped_receive():
            nonlocal budget, ended
            while ended:
                # After the body Django only listens for the disconnect; what is left of an
                # oversized body is read and dropped, never kept.
                message = await receive()
                if message["type"] != "http.request":
                    return message
            if budget < 0:
                ended = True
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] != "http.request":
                return message
            body = message.get("body", b"")
            if len(body) >= budget or not message.get("more_body", False):
                ended = True
                return {"type": "http.request", "body": body[:budget], "more_body": False}
            budget -= len(body)
            return message

        return await self.app(scope, capped_receive, send)


application = BodyLimit(django_application, settings.MAX_WEBHOOK_BYTES)
