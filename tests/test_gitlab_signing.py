"""GitLab's signing token (Standard Webhooks): webhook-id / webhook-timestamp / webhook-signature.

The specification's published vector and a GitLab push signed by us (tests/fixtures/
standard-webhooks/SOURCES.md); then the webhook end to end: accepted beside X-Gitlab-Token, a
stale timestamp refused, a reused webhook-id refused within the window.
"""

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest

from gitdeploy import providers
from gitdeploy.models import Delivery, SyncRun

FIXTURES = Path(__file__).parent / "fixtures" / "standard-webhooks"
GITLAB = providers.Envelope("gitlab", "Push Hook", "")
SPEC_WRONG_SIGNATURE = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="


def fixture(name: str, body_path: Path | None = None) -> tuple[dict, bytes, str]:
    headers = json.loads((FIXTURES / f"{name}.headers.json").read_text())
    secret = headers.pop("secret")
    body = (body_path or FIXTURES / f"{name}.txt").read_bytes()
    return headers, body, secret


def spec_vector():
    return fixture("spec-sign")


def gitlab_signed():
    return fixture(
        "gitlab-push-signed", FIXTURES.parent / "webhooks" / "gitlab" / "push-recorded-17.1.json"
    )


def at(headers: dict) -> float:
    return float(headers["webhook-timestamp"])


def test_the_specification_vector_verifies():
    headers, body, secret = spec_vector()
    result = providers.verify(GITLAB, headers, body, secret, now=at(headers))
    assert result == providers.Verification("valid", replay_key="msg_p5jXN8AQM9LWM0D4loKWxJek")


def test_the_specification_vector_with_its_wrong_signature_is_invalid():
    headers, body, secret = spec_vector()
    headers["webhook-signature"] = SPEC_WRONG_SIGNATURE
    result = providers.verify(GITLAB, headers, body, secret, now=at(headers))
    assert result.state == "invalid" and "does not match" in result.reason
    assert result.replay_key == ""


def test_one_matching_signature_among_several_is_enough():
    headers, body, secret = spec_vector()
    headers["webhook-signature"] = (
        f"v1a,AAAA {SPEC_WRONG_SIGNATURE} v1,not-base64!! {headers['webhook-signature']}"
    )
    assert providers.verify(GITLAB, headers, body, secret, now=at(headers)).valid


def test_the_key_is_the_base64_after_whsec_with_or_without_padding():
    headers, body, secret = spec_vector()
    key = providers.signing_key(secret)
    assert len(key) == 24 and base64.b64encode(key).decode() == secret.removeprefix("whsec_")
    assert providers.signing_key(secret.rstrip("=")) == key
    with pytest.raises(providers.Unauthorized, match="not base64"):
        providers.signing_key("whsec_%%%")


@pytest.mark.parametrize("change", ["body", "id", "timestamp"])
def test_a_changed_body_id_or_timestamp_breaks_the_signature(change):
    headers, body, secret = spec_vector()
    if change == "body":
        body = body.replace(b"2432232314", b"2432232315")
    elif change == "id":
        headers["webhook-id"] = "msg_p5jXN8AQM9LWM0D4loKWxJel"
    else:
        headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) + 1)
    assert providers.verify(GITLAB, headers, body, secret, now=at(headers)).state == "invalid"


@pytest.mark.parametrize(
    "offset, valid", [(-299, True), (299, True), (-301, False), (301, False), (-86400, False)]
)
def test_the_timestamp_must_be_within_five_minutes_of_now(offset, valid):
    headers, body, secret = spec_vector()
    result = providers.verify(GITLAB, headers, body, secret, now=at(headers) - offset)
    assert result.valid is valid, result
    if not valid:
        assert "more than 5 minutes" in result.reason


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp"])
def test_a_signature_without_its_id_or_timestamp_is_invalid(missing):
    headers, body, secret = spec_vector()
    del headers[missing]
    result = providers.verify(GITLAB, headers, body, secret, now=0)
    assert result.state == "invalid" and "without webhook-id" in result.reason


def test_our_signed_gitlab_push_verifies_and_names_its_webhook_id():
    headers, body, secret = gitlab_signed()
    result = providers.verify(GITLAB, headers, body, secret, now=at(headers) + 10)
    assert result.valid and result.replay_key == headers["Idempotency-Key"]
    # The same delivery checked against another signing token is refused.
    other = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert providers.verify(GITLAB, headers, body, other, now=at(headers)).state == "invalid"


def test_which_header_decides_for_each_kind_of_secret():
    headers, body, secret = gitlab_signed()
    now = at(headers)
    # A signing token: X-Gitlab-Token equal to it verifies a delivery without a signature ...
    token_only = {k: v for k, v in headers.items() if not k.startswith("webhook-")}
    assert providers.verify(GITLAB, {**token_only, "X-Gitlab-Token": secret}, body, secret).valid
    missing = providers.verify(GITLAB, token_only, body, secret)
    assert missing.state == "missing" and "webhook-signature" in missing.reason
    # ... but a signature that was sent decides: the token cannot rescue a wrong one.
    forged = {**headers, "webhook-signature": SPEC_WRONG_SIGNATURE, "X-Gitlab-Token": secret}
    assert providers.verify(GITLAB, forged, body, secret, now=now).state == "invalid"
    # A plain secret token: the signature is not checked, X-Gitlab-Token is required.
    plain = "plain-secret-token"
    result = providers.verify(GITLAB, headers, body, plain, now=now)
    assert result.state == "invalid" and "X-Gitlab-Token is required" in result.reason
    assert providers.verify(GITLAB, {**headers, "X-Gitlab-Token": plain}, body, plain).valid


# --- end to end through the webhook ---------------------------------------------------------------


def sign(body: bytes, secret: str, webhook_id: str, timestamp: int | None = None) -> dict:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    key = providers.signing_key(secret)
    digest = hmac.new(key, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def post_signed(client, repository, *, webhook_id="wh-1", timestamp=None, secret=None):
    headers, body, token = gitlab_signed()
    sent = {
        k: v for k, v in headers.items() if not k.startswith("webhook-") and k != "Content-Type"
    }
    sent.update(sign(body, secret or token, webhook_id, timestamp))
    return client.post(
        f"/hooks/{repository.slug}/", data=body, content_type="application/json", headers=sent
    )


@pytest.fixture
def signed_repository(make_repository):
    _headers, _body, token = gitlab_signed()
    return make_repository(webhook_secret=token, branch="master")


def test_a_signed_gitlab_push_is_queued(client, signed_repository):
    response = post_signed(client, signed_repository)
    assert response.status_code == 202, response.json()
    delivery = Delivery.objects.get()
    assert delivery.signature == "valid" and delivery.webhook_id == "wh-1"
    assert delivery.sync_run.status == SyncRun.Status.QUEUED


def test_a_reused_webhook_id_is_refused_within_the_window(client, signed_repository):
    assert post_signed(client, signed_repository, webhook_id="wh-replayed").status_code == 202
    replay = post_signed(client, signed_repository, webhook_id="wh-replayed")
    assert replay.status_code == 409
    assert "already accepted" in replay.json()["reason"]
    assert SyncRun.objects.count() == 1
    refused = Delivery.objects.order_by("-pk").first()
    assert refused.verdict == "rejected" and refused.sync_run is None
    # Another id from the same host is a new delivery.
    assert post_signed(client, signed_repository, webhook_id="wh-next").status_code in (200, 202)


def test_an_id_accepted_before_the_window_is_new_again(client, signed_repository):
    assert post_signed(client, signed_repository, webhook_id="wh-old").status_code == 202
    Delivery.objects.update(received_at=Delivery.objects.get().received_at.replace(year=2020))
    assert post_signed(client, signed_repository, webhook_id="wh-old").status_code in (200, 202)


def test_a_stale_timestamp_is_refused_as_a_replay(client, signed_repository):
    response = post_signed(client, signed_repository, timestamp=int(time.time()) - 600)
    assert response.status_code == 401
    assert "more than 5 minutes" in response.json()["reason"]
    assert not SyncRun.objects.exists()


def test_the_token_header_still_works_beside_the_signing_token(client, signed_repository):
    headers, body, token = gitlab_signed()
    sent = {
        k: v for k, v in headers.items() if not k.startswith("webhook-") and k != "Content-Type"
    }
    response = client.post(
        f"/hooks/{signed_repository.slug}/",
        data=body,
        content_type="application/json",
        headers={**sent, "X-Gitlab-Token": token},
    )
    assert response.status_code == 202, response.json()
    assert Delivery.objects.get().headers["X-Gitlab-Token"] == "[removed]"
