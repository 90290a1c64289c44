"""Receiving one webhook: inspect it, decide what it asks for, record it, answer.

The path of a delivery, each step in one place:

    views.webhook         reads the raw body (size-capped) and finds the Repository
    intake.inspect        providers: read the envelope, verify (one call: valid / invalid /
                          missing), parse the payload into an Event; nothing is written
    intake.decide         pure: the repository's settings + the inspection -> a Decision
                          (rejected / ignored / queue, with the reason and the HTTP status)
    intake.receive        one transaction: the default branch learned from the payload, the
                          redelivery look-up, SyncRun.request (queue or join), the Delivery row;
                          returns a Receipt (delivery, run, joined, HTTP status, JSON body).
                          On PostgreSQL a plain push (nothing to learn, not a redelivery of a
                          pending run) is one statement, SyncRun.record_push, with the
                          redelivery look-up in it: its own transaction, without BEGIN and
                          COMMIT round trips

The view renders the Receipt and decides nothing. The answer is only sent after the transaction
committed, so a 2xx never claims more than the database holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from gitdeploy import prebuilt, providers
from gitdeploy.models import Delivery, RejectionWindow, Repository, SyncRun

# A rejected request keeps only its first 4 KiB of body and of headers, so a flood of forged
# requests cannot fill the database; the size and the hash still identify it.
REJECTED_BODY_LIMIT = 4096
REJECTED_HEADERS_LIMIT = 4096
# The longest value an answer or a reason repeats from the request (a 1 MB ref must not come back
# as a 1 MB answer).
ECHO_LIMIT = 200
# PositiveBigIntegerField's ceiling: a Content-Length past it is still only "too large".
MAX_STORED_SIZE = 2**63 - 1

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
    # Set when the body could not be read (a malformed chunked encoding): why, for a 400.
    unreadable: str = ""


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
    # Fields of the event that held what the database cannot store (NUL, lone surrogates, values
    # longer than their column): they were made safe, and a ref among them is refused.
    unsafe_fields: tuple[str, ...] = ()
    unreadable: str = ""
    # A signed GitLab delivery's webhook-id (Standard Webhooks): receive() refuses its reuse.
    replay_key: str = ""


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
    """The recorded outcome and the answer sent to the Git host. ``delivery`` is None only for a
    rejected request past the flood limit (counted in a RejectionWindow, answered 429)."""

    delivery: Delivery | None
    run: SyncRun | None
    joined: bool
    status_code: int
    body: dict[str, Any]
    retry_after: int | None = None


def inspect(repository: Repository, incoming: IncomingWebhook) -> Inspection:
    """Verify, then (only if the delivery may be trusted) parse. Reads nothing from the body
    before the signature has been checked."""
    envelope = storable_envelope(providers.read_envelope(incoming.headers))
    if incoming.unreadable:
        return Inspection(envelope, Delivery.Signature.NOT_CHECKED, unreadable=incoming.unreadable)
    signature, signature_reason, replay_key = _verify(repository, envelope, incoming)
    trusted = signature in (Delivery.Signature.VALID, Delivery.Signature.UNSIGNED_ALLOWED)
    if incoming.declared_size is not None or not trusted or not envelope.provider:
        return Inspection(envelope, signature, signature_reason, None, "", incoming.declared_size)
    try:
        event = providers.parse(
            envelope, incoming.body, incoming.content_type, branch=repository.tracked_branch
        )
    except providers.BadPayload as exc:
        return Inspection(envelope, signature, signature_reason, None, exc.message)
    event, unsafe = storable_event(event)
    return Inspection(
        envelope, signature, signature_reason, event, unsafe_fields=unsafe, replay_key=replay_key
    )


def _verify(
    repository: Repository, envelope: providers.Envelope, incoming: IncomingWebhook
) -> tuple[str, str, str]:
    """(signature state, reason, replay key)."""
    if incoming.declared_size is not None:
        return Delivery.Signature.NOT_CHECKED, "", ""
    if repository.webhook_secret:
        if not envelope.provider:
            return Delivery.Signature.MISSING, UNKNOWN_HOST, ""
        verification = providers.verify(
            envelope, incoming.headers, incoming.body, repository.webhook_secret
        )
        return verification.state, verification.reason, verification.replay_key
    if repository.effective_allow_unsigned:
        return Delivery.Signature.UNSIGNED_ALLOWED, "", ""
    return (
        Delivery.Signature.MISSING,
        "this repository has no webhook secret, and unsigned deliveries are not allowed "
        "(set a secret, or ALLOW_UNSIGNED_WEBHOOKS=true on a private network)",
        "",
    )


def decide(repository: Repository, inspection: Inspection) -> Decision:
    """Pure: the same repository settings and inspection always give the same Decision."""
    rejected, ignored = Delivery.Verdict.REJECTED, Delivery.Verdict.IGNORED
    if inspection.unreadable:
        return Decision(rejected, inspection.unreadable, 400)
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

    if "ref" in inspection.unsafe_fields or "after" in inspection.unsafe_fields:
        return Decision(
            rejected,
            "the pushed ref or commit holds characters no Git ref or commit id contains "
            "(stored with them replaced)",
            400,
        )
    if event.kind == "ping":
        return Decision(ignored, event.reason or "ping", 200)
    if event.kind != "push":
        return Decision(
            ignored, event.reason or f"event {echo(inspection.envelope.event)!r} is not a push", 200
        )
    if not repository.enabled:
        return Decision(ignored, "repository is disabled", 200)
    if event.tag:
        return Decision(ignored, f"tag {echo(event.tag)!r}: only branch pushes deploy", 200)
    if not event.branch:
        return Decision(ignored, f"ref {echo(event.ref)!r} is not a branch", 200)
    # The payload may name the default branch for the first time; receive() stores it.
    tracked = repository.branch or event.default_branch or repository.default_branch
    if tracked and event.branch != tracked:
        return Decision(
            ignored,
            f"push to branch {echo(event.branch)!r}; this repository deploys {tracked!r}",
            200,
        )
    if event.deleted:
        return Decision(
            ignored,
            f"branch {echo(event.branch)!r} was deleted; the directory keeps its last commit",
            200,
        )
    reason = f"push to {echo(event.branch)!r} at {event.after[:12]}"
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
    if verdict == Delivery.Verdict.REJECTED:
        flooded = _count_if_flooding(repository, incoming.remote_addr, reason)
        if flooded is not None:
            return flooded
    # Nothing to check or write but the Delivery and the run it asks for.
    learned = _default_branch_to_learn(repository, inspection)
    alone = redelivery_of is None and not inspection.replay_key and not learned
    if alone and decision.wants_sync:
        recorded = _record_push_at_once(repository, incoming, inspection, decision)
        if recorded is not None:
            return recorded
    # One transaction, but for an ignored or rejected delivery with nothing else to write: its
    # INSERT is a transaction of its own, without BEGIN and COMMIT round trips.
    with contextlib.nullcontext() if alone and not decision.wants_sync else transaction.atomic():
        if inspection.replay_key and verdict != Delivery.Verdict.REJECTED:
            replayed = _replayed(repository, inspection.replay_key)
            if replayed:
                decision = Decision(Delivery.Verdict.REJECTED, replayed, 409)
                verdict, reason, status_code = decision.verdict, decision.reason, 409
        if learned:
            repository.learn_default_branch(learned)
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
                run, joined = SyncRun.request_tip(
                    repository,
                    trigger=SyncRun.Trigger.WEBHOOK,
                    commit=decision.commit,
                    label=_pusher_label(envelope, event),
                )
                if joined:
                    verdict = Delivery.Verdict.JOINED
                    reason = JOINED_REASON.format(run=run.pk)
        stored_reason = storable(reason, 2000)
        delivery = _new_delivery(
            repository, incoming, inspection, verdict, stored_reason, status_code, redelivery_of
        )
        delivery.sync_run = run
        delivery.response_body = answer(delivery, joined=joined, redelivery=redelivery)
        prebuilt.insert(delivery)  # Delivery.objects.create(), without compiling the INSERT
    return Receipt(delivery, run, joined, status_code, delivery.answer)


def answer(delivery: Delivery, *, joined: bool = False, redelivery: bool = False) -> dict:
    """What is answered for a delivery, stored with the row for the delivery page's Response tab
    (the answer's "delivery" is the row's own id: Delivery.answer puts it back). SyncRun.
    record_push's statement composes the same for a push that queued or joined a run."""
    body: dict[str, Any] = {"reason": delivery.reason}
    if delivery.sync_run is not None:
        body.update(
            status="duplicate" if redelivery else "queued",
            sync_run=delivery.sync_run.pk,
            joined=joined,
        )
    else:
        body["status"] = "ignored" if delivery.verdict == Delivery.Verdict.IGNORED else "rejected"
    return body


# Why a push joined the queued run; {run} is its id.
JOINED_REASON = (
    "joined sync run #{run}, which is queued and will deploy the branch tip as fetched when it "
    "starts"
)


def _default_branch_to_learn(repository: Repository, inspection: Inspection) -> str:
    """The default branch a push names, when the repository does not know it yet (receive()
    stores it); "" otherwise, and when the name had to be cut to fit (not a branch then)."""
    event = inspection.event
    if event is None or event.kind != "push" or "default_branch" in inspection.unsafe_fields:
        return ""
    return event.default_branch if event.default_branch != repository.default_branch else ""


def _record_push_at_once(
    repository: Repository, incoming: IncomingWebhook, inspection: Inspection, decision: Decision
) -> Receipt | None:
    """A push on PostgreSQL with nothing else to write: the redelivery look-up, the run's
    join-or-insert, its task and the Delivery in one statement that is its own transaction
    (SyncRun.record_push): one round trip where a transaction takes six, and the share lock a
    join takes on the queued run is held for one statement. None when _record's transaction is
    needed instead (SQLite, a redelivery of a pending run, a queued roll back)."""
    envelope = inspection.envelope
    if connection.vendor != "postgresql":
        return None
    delivery = _new_delivery(
        repository,
        incoming,
        inspection,
        Delivery.Verdict.QUEUED,
        storable(decision.reason, 2000),
        decision.status_code,
    )
    recorded = SyncRun.record_push(
        delivery,
        trigger=SyncRun.Trigger.WEBHOOK,
        commit=decision.commit,
        label=_pusher_label(envelope, inspection.event),
        joined_reason=JOINED_REASON,
    )
    if recorded is None:
        return None
    run, joined = recorded
    # What the statement stored, set on the instance as _record's transaction sets it.
    if joined:
        delivery.verdict = Delivery.Verdict.JOINED
        delivery.reason = JOINED_REASON.format(run=run.pk)
    delivery.response_body = answer(delivery, joined=joined)
    return Receipt(delivery, run, joined, delivery.status_code, delivery.answer)


def _new_delivery(
    repository: Repository,
    incoming: IncomingWebhook,
    inspection: Inspection,
    verdict: str,
    stored_reason: str,
    status_code: int,
    redelivery_of: Delivery | None = None,
) -> Delivery:
    """The Delivery row for a request, not saved; a rejected one keeps only the start of its body
    and headers. The run and the answer are the caller's to set."""
    envelope, event = inspection.envelope, inspection.event
    return Delivery(
        repository=repository,
        remote_addr=incoming.remote_addr or None,
        provider=envelope.provider,
        event=envelope.event,
        delivery_id=envelope.delivery_id,
        webhook_id=inspection.replay_key,
        content_type=storable(incoming.content_type, 200),
        headers=_stored_headers(incoming, keep_all=verdict != Delivery.Verdict.REJECTED),
        **_stored_body(incoming, keep_all=verdict != Delivery.Verdict.REJECTED),
        ref=event.ref if event else "",
        before=event.before if event else "",
        after=event.after if event else "",
        signature=inspection.signature,
        verdict=verdict,
        reason=stored_reason,
        status_code=status_code,
        redelivery_of=redelivery_of,
    )


def _replayed(repository: Repository, webhook_id: str) -> str:
    """Why a signed delivery is a replay: its webhook-id was accepted within the signature's
    tolerance (older ones fail the timestamp check). "" when it is new. The repository's row lock
    makes two copies arriving at once see each other."""
    Repository.objects.select_for_update(no_key=True).filter(pk=repository.pk).first()
    since = timezone.now() - datetime.timedelta(seconds=providers.REPLAY_WINDOW)
    earlier = (
        Delivery.objects.filter(
            repository=repository, webhook_id=webhook_id, received_at__gte=since
        )
        .exclude(verdict=Delivery.Verdict.REJECTED)
        .order_by("pk")
        .first()
    )
    if earlier is None:
        return ""
    return (
        f"webhook-id {echo(webhook_id)!r} was already accepted at {earlier.received_at:%H:%M:%S} "
        f"(delivery #{earlier.pk}): a signed delivery is accepted once within "
        f"{providers.REPLAY_WINDOW // 60} minutes"
    )


def _count_if_flooding(
    repository: Repository, remote_addr: str | None, reason: str
) -> Receipt | None:
    """Past REJECTED_DELIVERIES_PER_MINUTE rejected deliveries from one source in this minute, the
    request is only counted (one RejectionWindow row per source and minute) and answered 429."""
    now = timezone.now()
    minute = now.replace(second=0, microsecond=0)
    recent = Delivery.objects.filter(
        repository=repository,
        remote_addr=remote_addr or None,
        verdict=Delivery.Verdict.REJECTED,
        received_at__gte=minute,
    )
    limit = settings.REJECTED_DELIVERIES_PER_MINUTE
    if recent[:limit].count() < limit:
        return None
    with transaction.atomic():
        window, _ = RejectionWindow.objects.get_or_create(
            repository=repository, remote_addr=remote_addr or None, minute=minute
        )
        RejectionWindow.objects.filter(pk=window.pk).update(
            count=F("count") + 1, last_reason=storable(reason, 2000)
        )
    retry_after = 60 - now.second
    return Receipt(
        None,
        None,
        False,
        429,
        {
            "status": "rejected",
            "reason": f"more than {limit} rejected deliveries from this address this minute; "
            f"counted, not recorded one by one (last: {echo(reason)})",
        },
        retry_after=retry_after,
    )


def _stored_headers(incoming: IncomingWebhook, *, keep_all: bool) -> dict[str, str]:
    """The headers as received, secrets removed, values made storable; a rejected delivery keeps
    at most REJECTED_HEADERS_LIMIT characters of them (and says how many it dropped)."""
    headers = providers.sanitize_headers(incoming.headers)
    kept: dict[str, str] = {}
    budget = REJECTED_HEADERS_LIMIT
    for name, value in headers.items():
        name, value = storable(name, 200), storable(value)
        if not keep_all:
            if budget <= 0:
                kept["X-Gitdeploy-Headers-Dropped"] = str(len(headers) - len(kept))
                break
            value = value[: max(budget - len(name), 0)]
            budget -= len(name) + len(value)
        kept[name] = value
    return kept


def _active_run_of_earlier_delivery(repository: Repository, delivery_id: str) -> SyncRun | None:
    """A redelivery (same provider delivery id) joins the run the original fed while that run is
    still pending; once it has finished, a redelivery is how users retry, so it asks again. One
    query on the (repository, delivery_id) index."""
    if not delivery_id:
        return None
    # On every push, so narrow: one column through the index, and written once (compiling the
    # queryset took a tenth of a webhook's CPU). The run itself is read only for a redelivery.
    with prebuilt.cursor() as cursor:
        cursor.execute(
            _active_run_sql(connection.alias, connection.vendor),
            [repository.pk, delivery_id, SyncRun.Status.QUEUED, SyncRun.Status.RUNNING],
        )
        row = cursor.fetchone()
    return SyncRun.objects.active().filter(pk=row[0]).first() if row is not None else None


@functools.cache
def _active_run_sql(alias: str, vendor: str) -> str:
    """Delivery.objects.filter(repository=, delivery_id=, sync_run__status__in=[queued, running])
    .order_by("-sync_run_id").values_list("sync_run_id").first(), as SQL."""
    deliveries, runs = prebuilt.table(Delivery).table, prebuilt.table(SyncRun).table
    run_id = prebuilt.quoted(Delivery, "sync_run")
    return (
        # Names come from _meta; every value is a parameter.
        f"SELECT {deliveries}.{run_id} FROM {deliveries} INNER JOIN {runs} "  # noqa: S608
        f"ON ({deliveries}.{run_id} = {runs}.{prebuilt.quoted(SyncRun, 'id')}) "
        f"WHERE {deliveries}.{prebuilt.quoted(Delivery, 'repository')} = %s "
        f"AND {deliveries}.{prebuilt.quoted(Delivery, 'delivery_id')} = %s "
        f"AND {runs}.{prebuilt.quoted(SyncRun, 'status')} IN (%s, %s) "
        f"ORDER BY {deliveries}.{run_id} DESC LIMIT 1"
    )


def _pusher_label(envelope: providers.Envelope, event: providers.Event | None) -> str:
    who = event.pusher if event else ""
    host = envelope.provider or "webhook"
    return (f"{who} via {host}" if who else host)[:200]


def _stored_body(incoming: IncomingWebhook, *, keep_all: bool) -> dict[str, Any]:
    body = incoming.body
    size = incoming.declared_size if incoming.declared_size is not None else len(body)
    size = min(size, MAX_STORED_SIZE)
    kept = body if keep_all else body[:REJECTED_BODY_LIMIT]
    # Postgres text cannot hold NUL; the hash is of the bytes as received.
    text = kept.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return {
        "body": text,
        "body_size": size,
        "body_sha256": hashlib.sha256(body).hexdigest() if incoming.declared_size is None else "",
        "body_truncated": len(kept) < size,
    }


# --- values the database can store ---------------------------------------------------------------


def storable(value: str, limit: int | None = None) -> str:
    """Text PostgreSQL can store: NUL and lone surrogates replaced by U+FFFD, cut to `limit`."""
    text = _UNSTORABLE.sub("\ufffd", value)
    return text[:limit] if limit is not None else text


# NUL (PostgreSQL text cannot hold it) and lone surrogates (UTF-8 cannot encode them; JSON's
# "\ud800" escape produces one).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def echo(value: str) -> str:
    """A request's value as a reason repeats it: at most ECHO_LIMIT characters."""
    return value if len(value) <= ECHO_LIMIT else value[:ECHO_LIMIT] + "…"


def storable_envelope(envelope: providers.Envelope) -> providers.Envelope:
    return providers.Envelope(
        provider=envelope.provider,
        event=storable(envelope.event, 100),
        delivery_id=storable(envelope.delivery_id, 200),
    )


# Column lengths of the Delivery and Repository fields the event's values go into.
_EVENT_LIMITS = {
    "ref": 500,
    "before": 64,
    "after": 64,
    "branch": 255,
    "tag": 255,
    "default_branch": 255,
    "pusher": 150,
    "repository": 500,
    "reason": 1000,
}


def storable_event(event: providers.Event) -> tuple[providers.Event, tuple[str, ...]]:
    """The event with every text field storable, and the names of the fields that had to change."""
    changes: dict[str, Any] = {}
    for name, limit in _EVENT_LIMITS.items():
        value = getattr(event, name)
        safe = storable(value, limit)
        if safe != value:
            changes[name] = safe
    if not changes:
        return event, ()
    return dataclasses.replace(event, **changes), tuple(changes)


def warm_up() -> None:
    """What the first webhook of a web process would otherwise do on its way (about 90 ms of it
    here): import and validate the task, build the hot path's statements, load the URL
    resolver. Called as the process starts; opens no database connection."""
    from django.urls import resolve

    from gitdeploy import models

    models._new_task_row()  # imports and validates the task (models._run_sync_backend)
    alias, vendor = connection.alias, connection.vendor
    if vendor == "postgresql":
        models._push_statement(alias, vendor)
    _active_run_sql(alias, vendor)
    for model in (Repository, Delivery, SyncRun):
        prebuilt.table(model)
    resolve("/hooks/warm-up/")
