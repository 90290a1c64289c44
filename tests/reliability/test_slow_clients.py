"""Slow clients must not take the webhook down (issue: 200 connections trickling headers kept the
two synchronous gunicorn workers busy and the webhook unreachable for 60 s).

The server is started exactly as gitdeploy serves itself: gunicorn with the repository's
gunicorn.conf.py (the asgi worker class, project.asgi). Printed: how long the signed push took
while 200 slow connections were open; asserted: it was answered and recorded, well under the
minute it took before (a bound loose enough for a loaded 2-core machine)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from gitdeploy.models import Delivery
from tests.conftest import TEST_SECRET
from tests.reliability.stack import gunicorn
from tests.test_webhook import push_payload

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]

SLOW_CONNECTIONS = 200


@pytest.fixture
def server(subprocess_env, tmp_path):
    """gunicorn as gitdeploy serves itself (gunicorn.conf.py); its port."""
    with gunicorn(
        {**subprocess_env, "MAX_WEBHOOK_BYTES": "65536"}, tmp_path / "gunicorn.log", workers=2
    ) as web:
        yield web.port


def signed_push(port: int, slug: str, delivery: str) -> tuple[int, float]:
    body = json.dumps(push_payload(after="a" * 40)).encode()
    digest = hmac.new(TEST_SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/hooks/{slug}/",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": f"sha256={digest}",
        },
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=90) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, time.monotonic() - started


def test_200_slow_clients_do_not_delay_a_signed_push(server, make_repository):
    repository = make_repository()
    connections, stop = [], threading.Event()
    for _ in range(SLOW_CONNECTIONS):
        connection = socket.create_connection(("127.0.0.1", server), timeout=10)
        connection.sendall(f"POST /hooks/{repository.slug}/ HTTP/1.1\r\nHost: x\r\n".encode())
        connections.append(connection)

    def trickle() -> None:  # one more header line a second: never a complete request
        while not stop.wait(1.0):
            for connection in connections:
                try:
                    connection.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    pass

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        time.sleep(2)
        timings = []
        for n in range(5):
            status, took = signed_push(server, repository.slug, f"slow-{n}")
            assert status == 202
            timings.append(took)
    finally:
        stop.set()
        trickler.join(5)
        for connection in connections:
            connection.close()
    print(f"signed push with {SLOW_CONNECTIONS} slow clients open: "
          f"{', '.join(f'{t * 1000:.0f} ms' for t in timings)}")  # fmt: skip
    assert max(timings) < 10, timings  # was over 60 s with synchronous workers
    assert Delivery.objects.filter(delivery_id__startswith="slow-").count() == 5


def raw(port: int, data: bytes) -> int:
    """Sends the bytes and reads the answer, keeping the sending side open (a client still
    uploading the rest of its body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_an_oversized_body_is_refused_and_recorded_without_being_kept(server, make_repository):
    repository = make_repository()
    head = (
        f"POST /hooks/{repository.slug}/ HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n"
    )
    # By its Content-Length: refused before a byte is read.
    assert raw(server, f"{head}Content-Length: 10000000\r\n\r\n{{}}".encode()) == 413
    # Chunked, with no length: read up to the limit (64 KiB here), then refused.
    chunk = b"x" * 32768
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"
    assert raw(server, f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + body) == 413
    sizes = list(Delivery.objects.order_by("pk").values_list("status_code", "body_size", "body"))
    assert [(code, size) for code, size, _ in sizes] == [(413, 10_000_000), (413, 65537)]
    assert all(len(stored) <= 4096 for _, _, stored in sizes)
