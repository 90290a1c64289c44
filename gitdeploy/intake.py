"""Receiving one webhook: inspect it, decide what it asks for, record it, answer.

The path of a delivery, each step in one place:

    views.webhook         reads the raw body (size-capped) and finds the Repository
    intake.inspect        providers: read the envelope, verify (one call: valid / invalid /
                          missing), parse the payload into an Event; nothing is written
    intake.decide         pure: the repository's settings + the inspection -> a Decision
                          (rejected / ignored / queue, with the reason and the HTTP status)
    intake.receive        one transaction: the default branch learned from the payload, the
                          redelivery look-up, SyncRun.request (queue or join), the Delivery row;
                          returns a Receipt (delivery, run, joined, HTTP status, JSON body)

The view renders the Receipt and decides nothing. The answer is only sent after the transaction
committed, so a 2xx never claims more than the database holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import transaction

from gitdeploy import providers
from gitdeploy.models import Delivery, Repository, SyncRun

# A rejected request keeps only its first 4 KiB, so a flood of forged requests cannot fill the
# database; the size and the hash still identify it.
REJECTED_BODY_LIMIT = 4096

UNKNOWN_HOST = (
    "cannot tell which Git host sent this: no X-GitHub-Event, X-Gitlab-Event, "
    "X-Gitea-Event/X-Forgejo-Event or X-Event-Key header"
)


@dataclasses.dataclass(frozen=True)
class IncomingWebhook:
    """What the view read from the request; everything else is decided from the Repository."""

    headers: Mapping[str, str]
    body: bytes
    content_type: str = ""
    remote_addr: str | None = None
    # Set when the body was refused for its size (413) and never read in full.
    declared_size: int | None = None


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What the request says about itself, read once. ``signature`` is a Delivery.Signature
    value; ``event`` is None when the payload was not parsed (refused before, or unparsable, in
    which case ``payload_error`` says why)."""

    envelope: providers.Envelope
    signature: str
    signature_reason: str = ""
    event: providers.Event | None = None
    payload_error: str = ""
    declared_size: int | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """What a delivery asks for. ``verdict`` is REJECTED, IGNORED or QUEUED: whether a queued
    request joins a run already queued is for SyncRun.request to say, inside receive()."""

    verdict: str
    reason: str
    status_code: int
    commit: str = ""

    @property
    def wants_sync(self) -> bool:
        return self.verdict == Delivery.Verdict.QUEUED


@dataclasses.dataclass(frozen=True)
class Receipt:
    """The recorded outcome and the answer sent to the Git host."""

    delivery: Delivery
    run: SyncRun | None
    joined: bool
    status_code: int
    body: dict[str, Any]


def inspect(repository: Repository, incoming: IncomingWebhook) -> Inspection:
    """Verify, then (only if the delivery may be trusted) parse. Reads nothing from the body
    before the signature has been checked."""
    envelope = providers.read_envelope(incoming.headers)
    signature, signature_reason = _verify(repository, envelope, incoming)
    trusted = signature in (Delivery.Signature.VALID, Delivery.Signature.UNSIGNED_ALLOWED)
    if incoming.declared_size is not None or not trusted or not envelope.provider:
        return Inspection(envelope, signature, signature_reason, None, "", incoming.declared_size)
    try:
        event = providers.parse(
            envelope, incoming.body, incoming.content_type, branch=repository.tracked_branch
        )
    except providers.BadPayload as exc:
        return Inspection(envelope, signature, signature_reason, None, exc.message)
    return Inspection(envelope, signature, signature_reason, event)


def _verify(
    repository: Repository, envelope: providers.Envelope, incoming: IncomingWebhook
) -> tuple[str, str]:
    if incoming.declared_size is not None:
        return Delivery.Signature.NOT_CHECKED, ""
    if repository.webhook_secret:
        if not envelope.provider:
            return Delivery.Signature.MISSING, UNKNOWN_HOST
        verification = providers.verify(
            envelope, incoming.headers, incoming.body, repository.webhook_secret
        )
        return verification.state, verification.reason
    if repository.effective_allow_unsigned:
        return Delivery.Signature.UNSIGNED_ALLOWED, ""
    return (
        Delivery.Signature.MISSING,
        "this repository has no webhook secret, and unsigned deliveries are not allowed "
        "(set a secret, or ALLOW_UNSIGNED_WEBHOOKS=true on a private network)",
    )


def decide(repository: Repository, inspection: Inspection) -> Decision:
    """Pure: the same repository settings and inspection always give the same Decision."""
    rejected, ignored = Delivery.Verdict.REJECTED, Delivery.Verdict.IGNORED
    if inspection.declared_size is not None:
        return Decision(
            rejected,
            f"body of {inspection.declared_size} bytes is over MAX_WEBHOOK_BYTES "
            f"({settings.MAX_WEBHOOK_BYTES})",
            413,
        )
    if inspection.signature in (Delivery.Signature.INVALID, Delivery.Signature.MISSING):
        return Decision(rejected, inspection.signature_reason, 401)
    if not inspection.envelope.provider:  # unsigned deliveries allowed, but from whom?
        return Decision(rejected, UNKNOWN_HOST, 400)
    event = inspection.event
    if event is None:
        return Decision(rejected, inspection.payload_error, 400)

    if event.kind == "ping":
        return Decision(ignored, event.reason or "ping", 200)
    if event.kind != "push":
        return Decision(
            ignored, event.reason or f"event {inspection.envelope.event!r} is not a push", 200
        )
    if not repository.enabled:
        return Decision(ignored, "repository is disabled", 200)
    if event.tag:
        return Decision(ignored, f"tag {event.tag!r}: only branch pushes deploy", 200)
    if not event.branch:
        return Decision(ignored, f"ref {event.ref!r} is not a branch", 200)
    # The payload may name the default branch for the first time; receive() stores it.
    tracked = repository.branch or event.default_branch or repository.default_branch
    if tracked and event.branch != tracked:
        return Decision(
            ignored, f"push to branch {event.branch!r}; this repository deploys {tracked!r}", 200
        )
    if event.deleted:
        return Decision(
            ignored,
            f"branch {event.branch!r} was deleted; the directory keeps its last commit",
            200,
        )
    reason = f"push to {event.branch!r} at {event.after[:12]}"
    if not tracked:
        reason += " (the remote's default branch is not known yet: the worker resolves it)"
    return Decision(Delivery.Verdict.QUEUED, reason, 202, commit=event.after)


def receive(repository: Repository, incoming: IncomingWebhook) -> Receipt:
    """Inspect, decide and record one webhook request in one transaction. The Delivery row (and
    the SyncRun it asks for) is committed before this returns."""
    inspection = inspect(repository, incoming)
    return _record(repository, incoming, inspection, decide(repository, inspection))


class CannotRedeliver(Exception):
    """A stored delivery that Redeliver will not replay; the message says why, for a person."""


def redeliver(original: Delivery) -> Receipt:
    """Replay a stored delivery (the admin's Redeliver, like a Git host's): the same decision
    path as receive(), recorded as a new Delivery pointing at the original.

    Only a delivery that was accepted (its signature was checked when it arrived) and stored
    whole can be replayed. Its signature is not checked again: secret headers (GitLab's token)
    are not stored, and the secret may have been replaced since; a person with the permission
    to deploy asked for it instead. Everything else (the branch, the event, the repository being
    enabled, a run still pending for the same delivery id) is decided again, as now."""
    if original.verdict == Delivery.Verdict.REJECTED:
        raise CannotRedeliver(
            f"Delivery #{original.pk} was rejected: only an accepted delivery can be redelivered."
        )
    if original.body_truncated or not original.provider:
        raise CannotRedeliver(
            f"Delivery #{original.pk} was not stored whole: it cannot be replayed."
        )
    repository = original.repository
    incoming = IncomingWebhook(
        headers={str(k): str(v) for k, v in (original.headers or {}).items()},
        body=original.body.encode("utf-8"),
        content_type=original.content_type,
        remote_addr=None,
    )
    envelope = providers.read_envelope(incoming.headers)
    try:
        event = providers.parse(
            envelope, incoming.body, incoming.content_type, branch=repository.tracked_branch
        )
        inspection = Inspection(envelope, Delivery.Signature.NOT_CHECKED, "", event)
    except providers.BadPayload as exc:
        inspection = Inspection(envelope, Delivery.Signature.NOT_CHECKED, "", None, exc.message)
    return _record(
        repository, incoming, inspection, decide(repository, inspection), redelivery_of=original
    )


def _record(
    repository: Repository,
    incoming: IncomingWebhook,
    inspection: Inspection,
    decision: Decision,
    *,
    redelivery_of: Delivery | None = None,
) -> Receipt:
    envelope, event = inspection.envelope, inspection.event
    verdict, reason, status_code = decision.verdict, decision.reason, decision.status_code
    run: SyncRun | None = None
    joined = redelivery = False
    with transaction.atomic():
        if event is not None and event.kind == "push" and event.default_branch:
            repository.learn_default_branch(event.default_branch)
        if decision.wants_sync:
            run = _active_run_of_earlier_delivery(repository, envelope.delivery_id)
            if run is not None:
                redelivery = joined = True
                verdict, status_code = Delivery.Verdict.JOINED, 200
                reason = (
                    f"redelivery of {envelope.delivery_id}: sync run #{run.pk} it started is "
                    f"still {run.status}"
                )
            else:
                run, joined = SyncRun.request(
                    repository,
                    trigger=SyncRun.Trigger.WEBHOOK,
                    commit=decision.commit,
                    label=_pusher_label(envelope, event),
                )
                if joined:
                    verdict = Delivery.Verdict.JOINED
                    reason = (
                        f"joined sync run #{run.pk}, which is queued and will deploy the branch "
                        "tip as fetched when it starts"
                    )
        delivery = Delivery.objects.create(
            repository=repository,
            remote_addr=incoming.remote_addr or None,
            provider=envelope.provider,
            event=envelope.event[:100],
            delivery_id=envelope.delivery_id[:200],
            content_type=incoming.content_type[:200],
            headers=providers.sanitize_headers(incoming.headers),
            **_stored_body(incoming, keep_all=verdict != Delivery.Verdict.REJECTED),
            ref=(event.ref if event else "")[:500],
            before=(event.before if event else "")[:64],
            after=(event.after if event else "")[:64],
            signature=inspection.signature,
            verdict=verdict,
            reason=reason,
            status_code=status_code,
            sync_run=run,
            redelivery_of=redelivery_of,
        )
        body: dict[str, Any] = {"delivery": delivery.pk, "reason": reason}
        if run is not None:
            body.update(
                status="duplicate" if redelivery else "queued", sync_run=run.pk, joined=joined
            )
        else:
            body["status"] = "ignored" if verdict == Delivery.Verdict.IGNORED else "rejected"
        # Exactly what is answered, for the delivery page's Response tab.
        delivery.response_body = body
        delivery.save(update_fields=["response_body"])
    return Receipt(delivery, run, joined, status_code, body)


def _active_run_of_earlier_delivery(repository: Repository, delivery_id: str) -> SyncRun | None:
    """A redelivery (same provider delivery id) joins the run the original fed while that run is
    still pending; once it has finished, a redelivery is how users retry, so it asks again."""
    if not delivery_id:
        return None
    earlier_run_id = (
        Delivery.objects.filter(
            repository=repository, delivery_id=delivery_id, sync_run__isnull=False
        )
        .order_by("-pk")
        .values_list("sync_run_id", flat=True)
        .first()
    )
    if earlier_run_id is None:
        return None
    return SyncRun.objects.active().filter(pk=earlier_run_id).first()


def _pusher_label(envelope: providers.Envelope, event: providers.Event | None) -> str:
    who = event.pusher if event else ""
    host = envelope.provider or "webhook"
    return (f"{who} via {host}" if who else host)[:200]


def _stored_body(incoming: IncomingWebhook, *, keep_all: bool) -> dict[str, Any]:
    body = incoming.body
    size = incoming.declared_size if incoming.declared_size is not None else len(body)
    kept = body if keep_all else body[:REJECTED_BODY_LIMIT]
    # Postgres text cannot hold NUL; the hash is of the bytes as received.
    text = kept.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return {
        "body": text,
        "body_size": size,
        "body_sha256": hashlib.sha256(body).hexdigest() if incoming.declared_size is None else "",
        "body_truncated": len(kept) < size,
    }
