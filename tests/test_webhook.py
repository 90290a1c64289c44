"""The webhook endpoint: one test per decision, replaying real deliveries from tests/fixtures."""

import hashlib
import hmac
import io
import json

import pytest
from django.test import RequestFactory, override_settings
from django_tasks_db.models import DBTaskResult

from gitdeploy.models import Delivery, SyncRun
from gitdeploy.views import BodyTooLarge, read_capped_body, webhook
from tests.conftest import TEST_SECRET
from tests.webhook_fixtures import content_type, load_sample

pytestmark = pytest.mark.django_db

SKIPPED_HEADERS = {"host", "content-length", "content-type"}


def send(client, repository, provider, name, *, secret_override=None, path=None, **extra_headers):
    """POST a recorded delivery exactly as its sender did (same bytes, same headers)."""
    headers, body, _secret = load_sample(provider, name)
    sent = {k: v for k, v in headers.items() if k.lower() not in SKIPPED_HEADERS}
    sent.update(extra_headers)
    return client.post(
        path or f"/hooks/{repository.slug}/",
        data=body,
        content_type=content_type(headers),
        headers=sent,
    )


def post_github(client, repository, body: bytes, *, event="push", delivery="", secret=TEST_SECRET):
    """POST raw bytes as GitHub does, signed with `secret` (None: no signature header)."""
    headers = {"X-GitHub-Event": event}
    if delivery:
        headers["X-GitHub-Delivery"] = delivery
    if secret is not None:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers["X-Hub-Signature-256"] = f"sha256={digest}"
    return client.post(
        f"/hooks/{repository.slug}/", data=body, content_type="application/json", headers=headers
    )


def signed_github(client, repository, payload, *, event="push", delivery="d-1", secret=TEST_SECRET):
    return post_github(
        client,
        repository,
        json.dumps(payload).encode(),
        event=event,
        delivery=delivery,
        secret=secret,
    )


def push_payload(ref="refs/heads/main", after="a" * 40, before="b" * 40, **extra):
    payload = {
        "ref": ref,
        "before": before,
        "after": after,
        "deleted": after == "0" * 40,
        "repository": {"full_name": "octo/site", "default_branch": "main"},
        "pusher": {"name": "octocat"},
    }
    payload.update(extra)
    return payload


def only_delivery():
    assert Delivery.objects.count() == 1
    return Delivery.objects.get()


# --- accepted pushes, one per provider, from the recorded samples ---------------------------------


@pytest.mark.parametrize(
    "provider, name, secret, branch, commit",
    [
        (
            "github",
            "push-branch-signed",
            "topsecret",
            "master",
            "199eddf46df50de8d02e99bf1c5fdb4101338224",
        ),
        (
            "gitea",
            "push-signed",
            "IsWishesWereHorsesWedAllBeEatingSteak!",
            "master",
            "67b56589a45103f891bdee7c0546e5d40bc02001",
        ),
        (
            "gitlab",
            "push-goplayground-token",
            "sampleToken!",
            "master",
            "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        ),
        (
            "bitbucket",
            "repo-push-branch-created-signed",
            "Gkvl$k$wyNpQAF42",
            "feature/webhook",
            None,
        ),
    ],
)
def test_signed_push_to_tracked_branch_queues_a_sync(
    client,
    make_repository,
    django_capture_on_commit_callbacks,
    provider,
    name,
    secret,
    branch,
    commit,
):
    repository = make_repository(webhook_secret=secret, branch=branch)
    with django_capture_on_commit_callbacks(execute=True):
        response = send(client, repository, provider, name)

    assert response.status_code == 202, response.json()
    answer = response.json()
    assert answer["status"] == "queued"
    delivery = only_delivery()
    run = SyncRun.objects.get()
    assert answer["delivery"] == delivery.pk and answer["sync_run"] == run.pk
    assert delivery.provider == provider
    assert delivery.signature == Delivery.Signature.VALID
    assert delivery.verdict == Delivery.Verdict.QUEUED
    assert delivery.status_code == 202
    assert delivery.ref == f"refs/heads/{branch}"
    if commit:
        assert delivery.after == commit and run.requested_commit == commit
    assert run.status == SyncRun.Status.QUEUED and run.trigger == SyncRun.Trigger.WEBHOOK
    assert not run.pin_commit, "a webhook deploys the tip as fetched, never the payload's commit"
    # The task was enqueued on the tasks queue after the commit.
    task = DBTaskResult.objects.get()
    assert task.queue_name == "gitdeploy" and task.args_kwargs["args"] == [run.pk, repository.pk]


def test_github_documented_signature_vector_is_accepted(client, make_repository):
    """GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!"."""
    headers, body, secret = load_sample("vectors", "github-docs-hello-world")
    repository = make_repository(webhook_secret=secret)
    response = client.post(
        f"/hooks/{repository.slug}/",
        data=body,
        content_type="application/json",
        headers={"X-GitHub-Event": "push", **{k: v for k, v in headers.items() if "ignature" in k}},
    )
    # The signature is right; the body is not JSON, so it is a 400, not a 401.
    assert response.status_code == 400, response.json()
    delivery = only_delivery()
    assert delivery.signature == Delivery.Signature.VALID
    assert "JSON" in delivery.reason or "json" in delivery.reason


def test_form_encoded_github_delivery(client, make_repository, django_capture_on_commit_callbacks):
    """GitHub's default content type: payload=<json>, the signature covering the raw form body."""
    headers, body, _ = load_sample("github", "push-branch-form-2013")
    repository = make_repository(webhook_secret="form-secret", branch="")
    signature = hmac.new(b"form-secret", body, hashlib.sha256).hexdigest()
    with django_capture_on_commit_callbacks(execute=True):
        response = send(
            client,
            repository,
            "github",
            "push-branch-form-2013",
            **{"X-Hub-Signature-256": f"sha256={signature}"},
        )
    assert response.status_code == 202, response.json()
    delivery = only_delivery()
    assert delivery.content_type == "application/x-www-form-urlencoded"
    assert delivery.ref.startswith("refs/heads/")
    assert delivery.body.encode() == body, "an accepted delivery is stored whole"


# --- ignored: pings, other events, other refs ----------------------------------------------------


@pytest.mark.parametrize("name", ["ping", "ping-organization", "ping-github-app"])
def test_github_ping_is_ignored(client, make_repository, name):
    headers, body, _ = load_sample("github", name)
    repository = make_repository()
    signature = hmac.new(TEST_SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = send(
        client, repository, "github", name, **{"X-Hub-Signature-256": f"sha256={signature}"}
    )
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert only_delivery().verdict == Delivery.Verdict.IGNORED
    assert not SyncRun.objects.exists()


def test_other_event_is_ignored(client, make_repository):
    repository = make_repository()
    response = signed_github(client, repository, {"action": "opened"}, event="issues")
    assert response.status_code == 200 and response.json()["status"] == "ignored"
    assert "issues" in response.json()["reason"]
    assert not SyncRun.objects.exists()


def test_gitea_pull_request_event_is_ignored(client, make_repository):
    _, _, secret = load_sample("gitea", "pull-request-edited-signed")
    repository = make_repository(webhook_secret=secret)
    response = send(client, repository, "gitea", "pull-request-edited-signed")
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "ignored"


def test_push_to_another_branch_is_ignored(client, make_repository):
    repository = make_repository(branch="main")
    response = signed_github(client, repository, push_payload(ref="refs/heads/feature"))
    assert response.status_code == 200
    assert "feature" in response.json()["reason"] and "main" in response.json()["reason"]
    assert not SyncRun.objects.exists()


def test_tag_push_is_ignored(client, make_repository):
    repository = make_repository()
    response = signed_github(client, repository, push_payload(ref="refs/tags/v1.0"))
    assert response.status_code == 200 and response.json()["status"] == "ignored"
    assert "tag" in response.json()["reason"]


@pytest.mark.parametrize(
    "provider, name, secret, branch",
    [
        ("github", "push-branch-deleted", None, "feature-branch"),
        ("gitlab", "push-branch-deleted-token", "topsecret", "feature"),
        ("bitbucket", "repo-push-branch-deleted", None, None),
    ],
)
def test_branch_deletion_is_ignored(
    client, make_repository, settings, provider, name, secret, branch
):
    headers, body, _ = load_sample(provider, name)
    if secret is None:
        # These samples carry no signature; sign them as the host would with our secret.
        settings.ALLOW_UNSIGNED_WEBHOOKS = False
        secret = TEST_SECRET
        signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        extra = {"X-Hub-Signature-256": signature} if provider == "github" else {}
        if provider == "bitbucket":
            extra = {"X-Hub-Signature": signature}
    else:
        extra = {}
    if branch is None:
        payload = json.loads(body)
        branch = payload["push"]["changes"][0]["old"]["name"]
    repository = make_repository(webhook_secret=secret, branch=branch)
    response = send(client, repository, provider, name, **extra)
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "ignored"
    assert "deleted" in response.json()["reason"]
    assert not SyncRun.objects.exists()


# --- coalescing and redeliveries ------------------------------------------------------------------


def test_push_while_a_run_is_queued_joins_it(client, make_repository):
    repository = make_repository()
    first = signed_github(client, repository, push_payload(after="1" * 40), delivery="d-1")
    second = signed_github(client, repository, push_payload(after="2" * 40), delivery="d-2")
    assert first.status_code == 202 and second.status_code == 202
    assert second.json()["joined"] is True
    assert second.json()["sync_run"] == first.json()["sync_run"]
    run = SyncRun.objects.get()
    assert run.deliveries.count() == 2
    # A join writes nothing to the run; claiming it, the worker records the newest push.
    assert run.requested_commit == "1" * 40
    assert run.claim("worker-1")
    run.refresh_from_db()
    assert run.requested_commit == "2" * 40


def test_push_while_a_run_is_running_queues_exactly_one_follow_up(client, make_repository):
    repository = make_repository()
    signed_github(client, repository, push_payload(after="1" * 40), delivery="d-1")
    SyncRun.objects.update(status=SyncRun.Status.RUNNING, worker_id="w")
    for n in range(2, 6):
        signed_github(client, repository, push_payload(after=str(n) * 40), delivery=f"d-{n}")
    assert SyncRun.objects.filter(status=SyncRun.Status.RUNNING).count() == 1
    follow_up = SyncRun.objects.get(status=SyncRun.Status.QUEUED)
    assert follow_up.deliveries.count() == 4
    SyncRun.objects.filter(status=SyncRun.Status.RUNNING).update(status=SyncRun.Status.SUCCEEDED)
    assert follow_up.claim("w")
    follow_up.refresh_from_db()
    assert follow_up.requested_commit == "5" * 40


def test_redelivery_while_its_run_is_pending_joins_without_a_second_run(client, make_repository):
    repository = make_repository()
    first = signed_github(client, repository, push_payload(), delivery="same-id")
    SyncRun.objects.update(status=SyncRun.Status.RUNNING, worker_id="w")
    again = signed_github(client, repository, push_payload(), delivery="same-id")
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert again.json()["sync_run"] == first.json()["sync_run"]
    assert SyncRun.objects.count() == 1
    assert Delivery.objects.count() == 2, "the redelivery is recorded too"
    assert Delivery.objects.first().verdict == Delivery.Verdict.JOINED


def test_redelivery_after_its_run_finished_requests_a_new_sync(client, make_repository):
    repository = make_repository()
    signed_github(client, repository, push_payload(), delivery="same-id")
    SyncRun.objects.update(status=SyncRun.Status.FAILED)
    again = signed_github(client, repository, push_payload(), delivery="same-id")
    assert again.status_code == 202 and again.json()["status"] == "queued"
    assert SyncRun.objects.count() == 2


# --- rejected -------------------------------------------------------------------------------------


def test_missing_signature_is_401(client, make_repository):
    repository = make_repository()
    response = post_github(client, repository, json.dumps(push_payload()).encode(), secret=None)
    assert response.status_code == 401
    delivery = only_delivery()
    assert delivery.signature == Delivery.Signature.MISSING
    assert delivery.verdict == Delivery.Verdict.REJECTED
    assert not SyncRun.objects.exists()


def test_wrong_secret_is_401(client, make_repository):
    repository = make_repository()
    response = signed_github(client, repository, push_payload(), secret="not-the-secret")
    assert response.status_code == 401
    assert only_delivery().signature == Delivery.Signature.INVALID


@pytest.mark.parametrize(
    "provider, name",
    [("github", "push-branch-bad-signature"), ("bitbucket", "repo-push-bad-signature")],
)
def test_recorded_bad_signatures_are_401(client, make_repository, provider, name):
    _, _, secret = load_sample(provider, name)
    repository = make_repository(webhook_secret=secret, branch="")
    response = send(client, repository, provider, name)
    assert response.status_code == 401
    assert not SyncRun.objects.exists()


def test_wrong_gitlab_token_is_401_and_never_stored(client, make_repository):
    repository = make_repository(webhook_secret="the-right-token", branch="master")
    response = send(
        client, repository, "gitlab", "push-goplayground-token", **{"X-Gitlab-Token": "guess-123"}
    )
    assert response.status_code == 401
    delivery = only_delivery()
    stored = json.dumps(delivery.headers)
    assert "guess-123" not in stored and "the-right-token" not in stored
    assert delivery.headers.get("X-Gitlab-Token", "[removed]") == "[removed]"


def test_accepted_gitlab_token_is_never_stored(client, make_repository):
    repository = make_repository(webhook_secret="sampleToken!", branch="master")
    response = send(client, repository, "gitlab", "push-goplayground-token")
    assert response.status_code == 202
    assert "sampleToken!" not in json.dumps(only_delivery().headers)


def test_rejected_body_is_stored_truncated_with_size_and_hash(client, make_repository):
    repository = make_repository()
    body = json.dumps(push_payload(padding="x" * 20000)).encode()
    response = client.post(
        f"/hooks/{repository.slug}/",
        data=body,
        content_type="application/json",
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64},
    )
    assert response.status_code == 401
    delivery = only_delivery()
    assert len(delivery.body) == 4096 and delivery.body_truncated
    assert delivery.body_size == len(body)
    assert delivery.body_sha256 == hashlib.sha256(body).hexdigest()


def test_repository_without_secret_refuses_unsigned_deliveries(client, make_repository):
    repository = make_repository(webhook_secret="")
    response = post_github(client, repository, json.dumps(push_payload()).encode(), secret=None)
    assert response.status_code == 401
    assert "no webhook secret" in response.json()["reason"]


@pytest.mark.parametrize("how", ["setting", "repository"])
def test_unsigned_deliveries_when_allowed(client, make_repository, settings, how):
    settings.ALLOW_UNSIGNED_WEBHOOKS = how == "setting"
    repository = make_repository(webhook_secret="", allow_unsigned=how == "repository")
    response = post_github(client, repository, json.dumps(push_payload()).encode(), secret=None)
    assert response.status_code == 202, response.json()
    assert only_delivery().signature == Delivery.Signature.UNSIGNED_ALLOWED


def test_unknown_sender_is_401_when_a_secret_is_set(client, make_repository):
    repository = make_repository()
    response = client.post(f"/hooks/{repository.slug}/", data="{}", content_type="application/json")
    assert response.status_code == 401
    assert "which Git host" in response.json()["reason"]
    assert only_delivery().verdict == Delivery.Verdict.REJECTED


def test_malformed_json_is_400_with_a_message(client, make_repository):
    repository = make_repository()
    body = b'{"ref": "refs/heads/main", '
    response = post_github(client, repository, body)
    assert response.status_code == 400
    assert "JSON" in response.json()["reason"] or "json" in response.json()["reason"]
    assert only_delivery().signature == Delivery.Signature.VALID


def test_push_without_after_is_400_naming_the_field(client, make_repository):
    repository = make_repository()
    payload = push_payload()
    del payload["after"]
    response = signed_github(client, repository, payload)
    assert response.status_code == 400
    assert "after" in response.json()["reason"]


@override_settings(MAX_WEBHOOK_BYTES=1000)
def test_body_over_the_cap_is_413_from_content_length_before_reading(make_repository):
    repository = make_repository()

    class Unreadable(io.RawIOBase):
        def read(self, *args):
            raise AssertionError("the body must not be read")

    request = RequestFactory().post(
        f"/hooks/{repository.slug}/", data=b"", content_type="application/json"
    )
    request.META["CONTENT_LENGTH"] = "5000"
    request.META["wsgi.input"] = Unreadable()
    request._stream = Unreadable()
    request.META["HTTP_X_GITHUB_EVENT"] = "push"
    response = webhook(request, slug=repository.slug)
    assert response.status_code == 413
    delivery = only_delivery()
    assert delivery.status_code == 413 and delivery.body_size == 5000 and delivery.body == ""


def test_body_cap_is_enforced_while_reading_without_a_content_length():
    class Chunked:
        def __init__(self):
            self.META = {"wsgi.input_terminated": True, "wsgi.input": io.BytesIO(b"x" * 5000)}

        def read(self, size):
            return b""

    with pytest.raises(BodyTooLarge):
        read_capped_body(Chunked(), 1000)
    assert read_capped_body(Chunked(), 10000) == b"x" * 5000


@override_settings(MAX_WEBHOOK_BYTES=1000)
def test_body_over_the_cap_through_the_client_is_413(client, make_repository):
    repository = make_repository()
    response = post_github(client, repository, b"{" + b" " * 2000 + b"}", secret=None)
    assert response.status_code == 413
    assert only_delivery().verdict == Delivery.Verdict.REJECTED


def test_unknown_slug_is_404_json(client):
    response = client.post("/hooks/nope/", data="{}", content_type="application/json")
    assert response.status_code == 404
    assert response.json()["status"] == "error"
    assert not Delivery.objects.exists()


def test_get_is_405(client, make_repository):
    repository = make_repository()
    response = client.get(f"/hooks/{repository.slug}/")
    assert response.status_code == 405
    assert response["Allow"] == "POST"


def test_disabled_repository_records_and_ignores(client, make_repository):
    repository = make_repository(enabled=False)
    response = signed_github(client, repository, push_payload())
    assert response.status_code == 200
    assert "disabled" in response.json()["reason"]
    assert not SyncRun.objects.exists()


# --- the repository configured by the environment ------------------------------------------------


def test_default_branch_is_learned_from_the_payload(client, make_repository):
    repository = make_repository(branch="")
    response = signed_github(client, repository, push_payload(ref="refs/heads/main"))
    assert response.status_code == 202
    repository.refresh_from_db()
    assert repository.default_branch == "main"
    other = signed_github(client, repository, push_payload(ref="refs/heads/dev"), delivery="d-2")
    assert other.status_code == 200 and other.json()["status"] == "ignored"


def test_env_repository_is_created_and_served_at_api_endpoint(client, settings, tmp_path):
    from gitdeploy.environment import sync_environment_repository

    settings.GIT_URL = "https://github.com/octo/site.git"
    settings.REPO_DIR = str(tmp_path / "repo")
    settings.WEBHOOK_SECRET = TEST_SECRET
    settings.GIT_BRANCH = "main"
    repository = sync_environment_repository()
    assert repository.slug == "default" and repository.managed_by_env
    assert repository.name == "site"

    settings.GIT_BRANCH = "release"
    again = sync_environment_repository()
    assert again.pk == repository.pk and again.branch == "release"

    body = json.dumps(push_payload(ref="refs/heads/release")).encode()
    signature = "sha256=" + hmac.new(TEST_SECRET.encode(), body, hashlib.sha256).hexdigest()
    for path in ("/api/webhook", "/hooks/default/"):
        response = client.post(
            path,
            data=body,
            content_type="application/json",
            headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": signature},
        )
        assert response.status_code == 202, (path, response.content)


@pytest.mark.parametrize("slug", ["default", "docs-site"])
def test_hook_path_without_trailing_slash_is_served_not_redirected(client, make_repository, slug):
    # Git hosts do not follow a redirect on POST: /hooks/<slug> must answer like /hooks/<slug>/.
    repository = make_repository(slug=slug, webhook_secret="topsecret", branch="master")
    for n, path in enumerate([f"/hooks/{slug}", f"/hooks/{slug}/"]):
        delivery_id = {"X-GitHub-Delivery": f"delivery-{n}"}
        response = send(
            client, repository, "github", "push-branch-signed", path=path, **delivery_id
        )
        assert response.status_code == 202, (path, response.status_code, response.content)
        assert response.json()["status"] == "queued"
    assert Delivery.objects.filter(repository=repository, status_code=202).count() == 2
    assert SyncRun.objects.filter(repository=repository).count() == 1


def test_api_endpoint_serves_only_the_env_repository(client, make_repository):
    make_repository(slug="default")  # created in the admin, not by the environment
    response = client.post("/api/webhook", data="{}", content_type="application/json")
    assert response.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser's recursion limit
        b'{"ref": 5, "after": []}',
        b'{"ref": "refs/heads/main", "after": {"sha": 1}}',
        b"\xff\xfe not utf-8",
        b"null",
    ],
)
def test_hostile_but_signed_bodies_are_400_never_500(client, make_repository, body):
    repository = make_repository()
    response = post_github(client, repository, body)
    assert response.status_code == 400, response.content
    assert only_delivery().status_code == 400
