"""gunicorn's asgi worker, accepting connections fairly between the web processes.

gunicorn's workers share one listening socket. asyncio's server accepts every connection waiting
each time the socket wakes it (up to a hundred), and every worker's loop is woken: the first to
run takes them all. A burst of connections (a proxy opening its keep-alive pool, a Git host
redelivering a backlog, wrk's sixteen) then lands on one process while the others idle, and since
a process runs its views on one thread (project.asgi), that one thread answers for all of them:
the bench's ack figures swung between 121/s (16 connections on one worker, none on the other) and
183/s (9/7) with the same code.

Here a worker accepts one connection per wake-up, and while requests wait for its views' threads
(project.asgi counts them in `views_backlog`) it accepts at most one every BUSY_ACCEPT_EVERY:
connections it leaves stay in the kernel's queue for a worker with a free thread, so a busy or
stuck worker does not hoard them, and none waits longer than that for want of an idle worker
(never refusing outright: a keep-alive client that keeps every worker busy would starve the new
connections, a Git host's among them). A connection still sending its headers or body is not
counted: slow clients cost memory, never a worker's turn to accept (project/asgi.py).

The listening socket stays shared, as gunicorn sets it up: a worker that dies or restarts leaves
the connections waiting to the others (one socket per worker, SO_REUSEPORT, would reset them).

Loaded by gunicorn's master before Django is set up: stdlib and gunicorn only.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import socket
from collections.abc import Callable

from gunicorn.workers.gasgi import ASGIWorker

logger = logging.getLogger(__name__)

# Set by project.asgi when a request's client went away before its answer (mid-body, or while the
# view ran: the delivery is recorded all the same). gunicorn then logs the request with status 500,
# as if gitdeploy had failed; gitdeploy.gunicorn_conf's access log says 499 instead, nginx's
# "client closed request". A context variable: gunicorn logs in the task that awaited the app.
client_gone: contextvars.ContextVar[bool] = contextvars.ContextVar("client_gone", default=False)

# While a worker is busy (views_backlog), it accepts one connection per this many seconds.
BUSY_ACCEPT_EVERY = 0.02
# After the process ran out of file descriptors (or memory for a socket): seconds before trying
# to accept again, instead of spinning on a socket that stays readable.
RETRY_ACCEPT_AFTER = 0.5


class ViewsBacklog:
    """How many requests of this process wait for or run on its views' threads; project.asgi
    counts them (and sets busy_at: one more than it has threads), the acceptors of this process
    listen."""

    def __init__(self) -> None:
        self.count = 0
        self.busy_at = 2
        self.listeners: list[Callable[[], None]] = []

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if self.count < self.busy_at:
            for listener in self.listeners:
                listener()

    @property
    def busy(self) -> bool:
        return self.count >= self.busy_at


views_backlog = ViewsBacklog()


class FairAcceptor:
    """Serves a listening socket on an event loop, as loop.create_server(sock=...) does, but
    accepting one connection per wake-up, and one per BUSY_ACCEPT_EVERY while views_backlog is
    busy. What gunicorn calls on its servers: close() and wait_closed()."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sock: socket.socket,
        ssl=None,
    ) -> None:
        self.loop, self.protocol_factory, self.sock, self.ssl = loop, protocol_factory, sock, ssl
        self.sock.setblocking(False)
        self.reading = self.closed = False
        # The next accept while busy, or after running out of descriptors (backing_off).
        self.later: asyncio.TimerHandle | None = None
        self.backing_off = False
        self.connecting: set[asyncio.Task] = set()
        views_backlog.listeners.append(self.resume)
        self.resume()

    def resume(self) -> None:
        """Accepts on every wake-up, or one per BUSY_ACCEPT_EVERY while views_backlog is busy."""
        if self.reading or self.closed or self.backing_off:
            return
        if views_backlog.busy:
            self._accept_in(BUSY_ACCEPT_EVERY)
            return
        self._cancel_later()
        self.loop.add_reader(self.sock.fileno(), self.accept_one)
        self.reading = True

    def pause(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.sock.fileno())
            self.reading = False

    def accept_one(self) -> None:
        if views_backlog.busy:
            # No more per wake-up (resumed at once when a request leaves the threads).
            self.pause()
            self.resume()
            return
        self._accept()

    def _accept_in(self, delay: float) -> None:
        if self.later is None:
            self.later = self.loop.call_later(delay, self._accept_later)

    def _cancel_later(self) -> None:
        if self.later is not None:
            self.later.cancel()
            self.later = None

    def _accept_later(self) -> None:
        self.later, self.backing_off = None, False
        if self.closed:
            return
        if views_backlog.busy:
            self._accept()
        self.resume()

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                raise
            logger.warning("Cannot accept a connection (%s); retrying shortly", exc)
            self.pause()
            self._cancel_later()
            self.backing_off = True
            self._accept_in(RETRY_ACCEPT_AFTER)
            return
        conn.setblocking(False)
        task = self.loop.create_task(
            self.loop.connect_accepted_socket(self.protocol_factory, conn, ssl=self.ssl)
        )
        self.connecting.add(task)
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task) -> None:
        self.connecting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("A connection failed as it was set up: %s", task.exception())

    def close(self) -> None:
        """Stops accepting; connections already accepted are gunicorn's to finish."""
        self.closed = True
        self.pause()
        self._cancel_later()
        if self.resume in views_backlog.listeners:
            views_backlog.listeners.remove(self.resume)

    async def wait_closed(self) -> None:
        if self.connecting:
            await asyncio.wait(set(self.connecting))


class FairASGIWorker(ASGIWorker):
    """gunicorn's asgi worker with a FairAcceptor on each listening socket."""

    def _setup_event_loop(self) -> None:
        super()._setup_event_loop()
        loop = self.loop

        async def create_server(protocol_factory, *, sock, ssl=None, **_ignored) -> FairAcceptor:
            # What gunicorn's worker calls for each listening socket (reuse_address and
            # start_serving are the listening socket's business, which gunicorn's master set up).
            return FairAcceptor(loop, protocol_factory, sock, ssl)

        loop.create_server = create_server
