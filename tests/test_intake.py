"""intake.decide is pure (settings + inspection → Decision); intake.receive records and answers."""

import json

import pytest

from gitdeploy import intake, providers
from gitdeploy.models import Delivery, Repository, SyncRun
from tests.conftest import TEST_SECRET
from tests.test_webhook import push_payload, signed_github

PUSH = providers.Event(
    kind="push", ref="refs/heads/main", before="b" * 40, after="a" * 40, branch="main"
)


def inspection(event=PUSH, signature=Delivery.Signature.VALID, **fields):
    return intake.Inspection(
        envelope=providers.Envelope("github", "push", "d-1"),
        signature=signature,
        event=event,
        **fields,
    )


def repository(**fields):
    # Not saved: decide() must not need the database.
    values = {"name": "site", "slug": "site", "branch": "main", "webhook_secret": TEST_SECRET}
    values.update(fields)
    return Repository(**values)


def test_decide_queues_a_verified_push_to_the_tracked_branch_without_the_database():
    # No django_db mark: pytest-django raises on any query, so this also proves decide() is pure.
    decision = intake.decide(repository(), inspection())
    assert (decision.verdict, decision.status_code, decision.commit) == (
        Delivery.Verdict.QUEUED,
        202,
        "a" * 40,
    )
    assert decision.wants_sync


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (inspection(signature=Delivery.Signature.INVALID, signature_reason="bad"), (401, "bad")),
        (inspection(signature=Delivery.Signature.MISSING, signature_reason="none"), (401, "none")),
        (inspection(event=None, payload_error="not JSON"), (400, "not JSON")),
        (inspection(declared_size=10**9), (413, "over MAX_WEBHOOK_BYTES")),
    ],
)
def test_decide_rejects_with_the_reason_and_status(case, expected):
    decision = intake.decide(repository(), case)
    assert decision.verdict == Delivery.Verdict.REJECTED
    assert decision.status_code == expected[0] and expected[1] in decision.reason
    assert not decision.wants_sync


@pytest.mark.parametrize(
    ("event", "fields", "reason"),
    [
        (providers.Event(kind="ping", reason="ping"), {}, "ping"),
        (PUSH, {"enabled": False}, "repository is disabled"),
        (providers.Event(kind="push", ref="refs/tags/v1", tag="v1"), {}, "only branch pushes"),
        (providers.Event(kind="push", ref="refs/heads/dev", branch="dev"), {}, "deploys 'main'"),
        (
            providers.Event(kind="push", ref="refs/heads/main", branch="main", deleted=True),
            {},
            "was deleted",
        ),
    ],
)
def test_decide_ignores_what_does_not_deploy(event, fields, reason):
    decision = intake.decide(repository(**fields), inspection(event=event))
    assert (decision.verdict, decision.status_code) == (Delivery.Verdict.IGNORED, 200)
    assert reason in decision.reason


def test_decide_follows_the_default_branch_the_payload_names_first():
    event = providers.Event(
        kind="push", ref="refs/heads/trunk", branch="trunk", after="c" * 40, default_branch="trunk"
    )
    decision = intake.decide(repository(branch=""), inspection(event=event))
    assert decision.verdict == Delivery.Verdict.QUEUED


@pytest.mark.django_db
def test_receive_returns_one_receipt_the_view_renders(client, make_repository):
    repo = make_repository()
    first = signed_github(client, repo, push_payload(), delivery="r-1")
    joined = signed_github(client, repo, push_payload(after="c" * 40), delivery="r-2")
    again = signed_github(client, repo, push_payload(after="c" * 40), delivery="r-2")
    assert [first.status_code, joined.status_code, again.status_code] == [202, 202, 200]
    assert [r.json()["status"] for r in (first, joined, again)] == [
        "queued",
        "queued",
        "duplicate",
    ]
    assert [r.json()["joined"] for r in (first, joined, again)] == [False, True, True]
    run = SyncRun.objects.get()
    assert {r.json()["sync_run"] for r in (first, joined, again)} == {run.pk}
    verdicts = list(Delivery.objects.order_by("pk").values_list("verdict", "status_code"))
    assert verdicts == [("queued", 202), ("joined", 202), ("joined", 200)]


@pytest.mark.django_db
def test_receive_learns_the_default_branch_in_the_same_transaction(client, make_repository):
    repo = make_repository(branch="")
    payload = push_payload(ref="refs/heads/trunk")
    payload["repository"] = {"default_branch": "trunk", "full_name": "octo/site"}
    response = signed_github(client, repo, payload)
    assert response.status_code == 202, response.json()
    repo.refresh_from_db()
    assert repo.default_branch == "trunk"
    assert json.loads(Delivery.objects.get().body)["ref"] == "refs/heads/trunk"
