"""Requests built to break the webhook: values the database cannot store, sizes past every range,
broken chunked bodies, huge headers and refs. A data error is not an outage: each gets a 4xx (or
the 2xx it deserves), a Delivery row with its values made safe, and a bounded answer — never a 503
"database unreachable" that makes the host redeliver forever, never a 500.

Through the real server (gunicorn) where the transport matters, the test client elsewhere; on
PostgreSQL (CI runs the suite on it) these values used to fail the INSERT."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import socket

import pytest

from gitdeploy.models import Delivery, SyncRun
from tests.conftest import TEST_SECRET
from tests.reliability.stack import gunicorn
from tests.test_webhook import post_github, push_payload

pytestmark = pytest.mark.django_db(transaction=True)


def signed_raw(body: bytes, *, event="push", secret=TEST_SECRET) -> dict:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": event, "X-Hub-Signature-256": f"sha256={digest}"}


@pytest.fixture
def server(subprocess_env, tmp_path):
    """gunicorn as gitdeploy serves itself (gunicorn.conf.py); its port."""
    with gunicorn(subprocess_env, tmp_path / "gunicorn.log", workers=1) as web:
        yield web.port


def raw_request(port: int, data: bytes) -> tuple[int, bytes]:
    """Sends bytes as they are (no client library would send these) and reads the answer,
    keeping the sending side open like a client still uploading."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


def test_a_content_length_past_every_integer_range_is_413_and_recorded(server, make_repository):
    repository = make_repository()
    huge = "9" * 40
    status, body = raw_request(
        server,
        f"POST /hooks/{repository.slug}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-GitHub-Event: push\r\nContent-Type: application/json\r\n"
        f"Content-Length: {huge}\r\nConnection: close\r\n\r\n{{}}".encode(),
    )
    assert status == 413, body
    delivery = Delivery.objects.get()
    assert (delivery.status_code, delivery.verdict) == (413, "rejected")
    assert delivery.body_size == 2**63 - 1  # clamped to what the column holds


def test_a_malformed_chunked_body_is_400(server, make_repository):
    """The server refuses broken framing itself (400) before the request reaches Django: no
    repository was reached, so there is nothing to record."""
    repository = make_repository()
    status, body = raw_request(
        server,
        f"POST /hooks/{repository.slug}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "X-GitHub-Event: push\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        "zz\r\n{}\r\n0\r\n\r\n".encode(),
    )
    assert status == 400, body
    assert not Delivery.objects.exists()


def test_a_body_a_wsgi_server_cannot_read_is_400_and_recorded(make_repository):
    """Under a WSGI server the view reads the body itself: a stream that fails (gunicorn's sync
    worker raises on broken chunks) is the client's fault, recorded and answered 400."""
    from django.test import RequestFactory

    from gitdeploy.views import webhook

    class BrokenStream(io.RawIOBase):
        def read(self, size=-1):
            raise ValueError("Invalid chunk size")

    repository = make_repository()
    request = RequestFactory().post(
        f"/hooks/{repository.slug}/", data=b"", content_type="application/json",
        headers={"X-GitHub-Event": "push"},
    )  # fmt: skip
    request.META.pop("CONTENT_LENGTH", None)
    request.META["wsgi.input"] = BrokenStream()
    request.META["wsgi.input_terminated"] = True
    response = webhook(request, slug=repository.slug)
    assert response.status_code == 400, response.content
    delivery = Delivery.objects.get()
    assert delivery.status_code == 400 and "could not be read" in delivery.reason


def test_a_nul_in_the_ref_is_400_with_the_delivery_stored(client, make_repository):
    repository = make_repository()
    body = json.dumps(push_payload(ref="refs/heads/ma\x00in")).encode()
    response = post_github(client, repository, body, delivery="nul-1")
    assert response.status_code == 400, response.content
    delivery = Delivery.objects.get()
    assert delivery.ref == "refs/heads/ma\ufffdin"
    assert "replaced" in delivery.reason
    assert not SyncRun.objects.exists()


def test_lone_surrogates_are_made_safe_and_the_push_still_deploys(client, make_repository):
    repository = make_repository()
    # json.dumps writes the lone surrogate as the escape \ud800, which json.loads gives back.
    payload = push_payload(pusher={"name": "\ud800bob"})
    response = post_github(client, repository, json.dumps(payload).encode(), delivery="sur-1")
    assert response.status_code == 202, response.content
    run = SyncRun.objects.get()
    assert run.triggered_by_label.startswith("\ufffdbob")


def test_a_default_branch_longer_than_its_column_is_not_learned(client, make_repository):
    repository = make_repository(branch="main")
    payload = push_payload()
    payload["repository"] = {"default_branch": "b" * 300, "full_name": "octo/site"}
    response = post_github(client, repository, json.dumps(payload).encode(), delivery="db-1")
    assert response.status_code == 202, response.content
    repository.refresh_from_db()
    assert repository.default_branch == ""


def test_a_huge_ref_is_not_echoed_back(client, make_repository):
    repository = make_repository()
    payload = push_payload(ref="refs/heads/" + "x" * 1_000_000)
    response = post_github(client, repository, json.dumps(payload).encode(), delivery="big-1")
    assert response.status_code in (200, 400)
    assert len(response.content) < 2000
    assert len(Delivery.objects.get().reason) <= 2000


def test_a_rejected_delivery_keeps_bounded_headers(client, make_repository):
    repository = make_repository()
    headers = {f"X-Filler-{n}": "v" * 8000 for n in range(40)}
    response = client.post(
        f"/hooks/{repository.slug}/",
        data=b"{}",
        content_type="application/json",
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=00", **headers},
    )
    assert response.status_code == 401
    stored = Delivery.objects.get().headers
    assert sum(len(k) + len(v) for k, v in stored.items()) <= 4096 + 100
    assert "X-Gitdeploy-Headers-Dropped" in stored


def test_a_forged_flood_is_counted_per_source_and_minute_and_a_real_push_still_lands(
    client, make_repository, settings
):
    from django.utils import timezone

    from gitdeploy.models import RejectionWindow

    settings.REJECTED_DELIVERIES_PER_MINUTE = 5
    repository = make_repository()
    forged = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64}
    for _attempt in range(2):  # once more if the minute turned in the middle
        Delivery.objects.all().delete()
        RejectionWindow.objects.all().delete()
        minute = timezone.now().replace(second=0, microsecond=0)
        answers = [
            client.post(
                f"/hooks/{repository.slug}/",
                data=b"{}",
                content_type="application/json",
                headers=forged,
                REMOTE_ADDR="203.0.113.9",
            )  # fmt: skip
            for _ in range(12)
        ]
        # Another source is not limited by the first one's flood, and neither is a signed push.
        other = client.post(f"/hooks/{repository.slug}/", data=b"{}",
                            content_type="application/json", headers=forged,
                            REMOTE_ADDR="203.0.113.10")  # fmt: skip
        body = json.dumps(push_payload()).encode()
        real = client.post(f"/hooks/{repository.slug}/", data=body,
                           content_type="application/json", headers=signed_raw(body),
                           REMOTE_ADDR="203.0.113.9")  # fmt: skip
        if timezone.now().replace(second=0, microsecond=0) == minute:
            break
    assert [a.status_code for a in answers] == [401] * 5 + [429] * 7
    assert all(0 < int(a["Retry-After"]) <= 60 for a in answers[5:])
    assert other.status_code == 401
    assert real.status_code == 202, real.content
    assert Delivery.objects.filter(verdict="rejected").count() == 6
    window = RejectionWindow.objects.get()
    assert (window.remote_addr, window.count) == ("203.0.113.9", 7)
    assert "does not match" in window.last_reason
