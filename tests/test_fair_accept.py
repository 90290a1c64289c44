"""gunicorn's workers share connections fairly (gitdeploy.gunicorn_worker): one accepted per
wake-up, none while the views' thread has a backlog. Real sockets on 127.0.0.1, a real event loop,
and the real server with two workers."""

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from gitdeploy import gunicorn_worker
from gitdeploy.gunicorn_worker import FairAcceptor, views_backlog
from tests.reliability.stack import gunicorn


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    with sock:
        yield sock


class Recorder(asyncio.Protocol):
    made: list["Recorder"] = []

    def connection_made(self, transport):
        self.transport = transport
        Recorder.made.append(self)


@pytest.fixture(autouse=True)
def clean_backlog():
    Recorder.made = []
    yield
    views_backlog.count = 0
    views_backlog.listeners.clear()


def connect(port: int, count: int) -> list[socket.socket]:
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    time.sleep(0.05)  # the kernel has completed them: all wait in the listening socket's queue
    return clients


def run_scenario(scenario) -> None:
    """Runs the coroutine function on an event loop of its own, in a thread of its own: the test's
    thread may run one already (the browser tests' Playwright does, for the session). What it
    raised is raised here."""
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(scenario())
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the scenario did not finish"
    if outcome:
        raise outcome[0]


def test_one_connection_is_accepted_per_wake_up(listener):
    clients = connect(listener.getsockname()[1], 3)

    async def scenario():
        acceptor = FairAcceptor(asyncio.get_running_loop(), Recorder, listener)
        acceptor.pause()  # the calls below stand for the loop's: no await between them
        acceptor.accept_one()  # what the loop calls when the socket is readable
        assert len(acceptor.connecting) == 1, "asyncio's server would have taken all three"
        acceptor.accept_one()
        acceptor.accept_one()
        acceptor.accept_one()  # nothing left: not an error
        await acceptor.wait_closed()
        assert len(Recorder.made) == 3
        acceptor.close()
        for protocol in Recorder.made:
            protocol.transport.close()
        await asyncio.sleep(0)

    try:
        run_scenario(scenario)
    finally:
        for client in clients:
            client.close()


def test_a_busy_worker_accepts_one_connection_per_interval(listener, monkeypatch):
    """While requests wait for the views' threads, connections are left to an idle worker, one
    taken per BUSY_ACCEPT_EVERY all the same (none starves when every worker is busy)."""
    monkeypatch.setattr(gunicorn_worker, "BUSY_ACCEPT_EVERY", 0.3)
    port = listener.getsockname()[1]

    async def scenario():
        for _ in range(views_backlog.busy_at):
            views_backlog.enter()
        acceptor = FairAcceptor(asyncio.get_running_loop(), Recorder, listener)
        clients = connect(port, 3)
        await asyncio.sleep(0.15)
        assert Recorder.made == [], "a busy worker took a connection an idle one could serve"
        await asyncio.sleep(0.3)
        assert len(Recorder.made) == 1, "a busy worker must still take one now and then"
        views_backlog.leave()  # a request left: every wake-up accepts again
        deadline = time.monotonic() + 5
        while len(Recorder.made) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(Recorder.made) == 3
        acceptor.close()
        # Closed: neither a request leaving nor the interval starts it again.
        for _ in range(views_backlog.busy_at):
            views_backlog.enter()
        views_backlog.leave()
        more = connect(port, 1)
        await asyncio.sleep(0.7)
        assert len(Recorder.made) == 3
        for protocol in Recorder.made:
            protocol.transport.close()
        for client in clients + more:
            client.close()

    run_scenario(scenario)


def test_out_of_file_descriptors_pauses_and_retries(listener, monkeypatch):
    monkeypatch.setattr(gunicorn_worker, "RETRY_ACCEPT_AFTER", 0.2)

    async def scenario():
        loop = asyncio.get_running_loop()
        acceptor = FairAcceptor(loop, Recorder, listener)
        real_socket = acceptor.sock
        refusals = []

        class Exhausted:
            """The listening socket while the process has no descriptor left."""

            def accept(self):
                refusals.append(time.monotonic())
                raise OSError(24, "Too many open files")

            def fileno(self):
                return real_socket.fileno()

        acceptor.sock = Exhausted()
        clients = connect(listener.getsockname()[1], 1)
        await asyncio.sleep(0.1)
        assert len(refusals) == 1, "it must not spin on a socket that stays readable"
        acceptor.sock = real_socket
        deadline = time.monotonic() + 5
        while not Recorder.made and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(Recorder.made) == 1
        acceptor.close()
        Recorder.made[0].transport.close()
        clients[0].close()

    run_scenario(scenario)


def _socket_owners(pids: list[int]) -> dict[int, set[int]]:
    """pid -> inodes of the sockets it holds, for the given processes."""
    owners: dict[int, set[int]] = {}
    for pid in pids:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        owners[pid] = inodes
    return owners


def _owner(port: int, workers: list[int], client: socket.socket) -> int | None:
    """Which worker holds the server's side of `client`'s connection."""
    client_port = client.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
            owners = _socket_owners(workers)
            return next((pid for pid in workers if int(fields[9]) in owners[pid]), None)
    return None


HEALTH = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _ask_health(client: socket.socket) -> bytes:
    client.sendall(HEALTH)
    return client.recv(65536)


@pytest.mark.processes
def test_a_burst_of_keepalive_connections_is_shared_by_the_workers(subprocess_env, tmp_path):
    """Sixteen connections opened at once, each kept alive: asyncio's server let the first worker
    to wake take them all (16/0 in the bench); here both workers get some."""
    with gunicorn(subprocess_env, tmp_path / "gunicorn.log", workers=2) as server:
        master = server.proc.pid
        workers = [
            int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()
        ]
        assert len(workers) == 2
        # Workers load the application after the port opens: wait until both have answered.
        seen: set[int | None] = set()
        deadline = time.monotonic() + 30
        while not set(workers) <= seen:
            assert time.monotonic() < deadline, f"a worker never answered:\n{server.output()}"
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
                assert _ask_health(client).startswith(b"HTTP/1.1 200")
                seen.add(_owner(server.port, workers, client))
        # All sixteen wait in the queue, each with its request sent, before either worker looks
        # (the worst case, and what wrk's start is like): asyncio's server let the first to wake
        # take them all.
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            clients = [
                socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(16)
            ]
            for client in clients:
                client.sendall(HEALTH)
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        try:
            for client in clients:
                assert client.recv(65536).startswith(b"HTTP/1.1 200"), server.output()
            spread = sorted(
                (sum(_owner(server.port, workers, c) == pid for c in clients) for pid in workers),
                reverse=True,
            )
            assert sum(spread) == 16
            assert spread[1] >= 4, f"connections per worker {spread}"
        finally:
            for client in clients:
                client.close()
