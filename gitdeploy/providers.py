"""What a Git host sent: which host, is it authentic, and which ref moved to which commit.

Pure Python (stdlib and gitdeploy.redaction, which owns SECRET_HEADERS) so it can be tested
without Django. The webhook code calls, in order:

    envelope = read_envelope(request.headers)        # headers only, nothing trusted yet
    verification = verify(envelope, headers, body, secret)  # valid / invalid / missing + reason
    event = parse(envelope, body, content_type)       # raises BadPayload

Supported hosts: GitHub (and GitHub Enterprise Server), GitLab, Gitea / Forgejo / Gogs (all
"gitea"), Bitbucket Cloud (and Bitbucket Server / Data Center pushes, which use the same headers).

Signature choices:
- GitHub: only ``X-Hub-Signature-256`` (HMAC-SHA256) is accepted. The legacy ``X-Hub-Signature``
  (HMAC-SHA1) is refused: every GitHub.com and supported GitHub Enterprise Server delivery carries
  the SHA-256 header as well, so accepting SHA-1 would add a weaker second way in and nothing else.
- Gitea / Forgejo / Gogs: bare hex HMAC-SHA256 in ``X-Forgejo-Signature``, ``X-Gitea-Signature`` or
  ``X-Gogs-Signature`` (newer Gitea also sends ``X-Hub-Signature-256``, used as a fallback).
- Bitbucket Cloud and Server: ``X-Hub-Signature: sha256=<hex>``.
- GitLab: ``X-Gitlab-Token`` must equal the secret. A secret that is a signing token
  (``whsec_`` + base64 of the key) also accepts GitLab's signed deliveries, which follow the
  Standard Webhooks specification: ``webhook-signature: v1,<base64 HMAC-SHA256 of
  "{webhook-id}.{webhook-timestamp}.{body}">`` (several, space-separated: one must match), with
  ``webhook-timestamp`` at most 5 minutes from now. Which combinations verify:

      secret        webhook-signature sent        no webhook-signature
      whsec_...     it alone decides (must match   X-Gitlab-Token must equal the secret
                    and be in time; the token is
                    not consulted)
      plain token   ignored: X-Gitlab-Token must   X-Gitlab-Token must equal the secret
                    equal the secret

  A verified signature's ``webhook-id`` comes back as ``Verification.replay_key``: the caller
  refuses an id it has already accepted within the 5 minutes (a replay), which needs a database.
Every comparison goes through ``hmac.compare_digest``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gitdeploy.redaction import SECRET_HEADERS

__all__ = [
    "SECRET_HEADERS",
    "BadPayload",
    "Envelope",
    "Event",
    "Unauthorized",
    "WebhookError",
    "Verification",
    "parse",
    "read_envelope",
    "sanitize_headers",
    "verify",
]


class WebhookError(Exception):
    """A delivery we refuse. ``message`` is shown to the caller, so it never contains a secret."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Unauthorized(WebhookError):
    status = 401


class BadPayload(WebhookError):
    status = 400


# --- headers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    provider: str  # "github" | "gitlab" | "gitea" | "bitbucket" | "" (unknown)
    event: str  # the event name exactly as the host sent it
    delivery_id: str  # the host's id for this delivery ("" when it sends none)


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    # Django's request.headers is already case-insensitive, but tests and other callers pass plain
    # dicts with whatever casing the source used.
    return {str(name).lower(): str(value).strip() for name, value in headers.items()}


def _first(h: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = h.get(name, "")
        if value:
            return value
    return ""


# Order matters: Gitea and Forgejo also send X-Gogs-Event and X-GitHub-Event (with X-GitHub-Delivery
# and, in newer versions, X-Hub-Signature-256) so that GitHub receivers work with them. Their own
# headers must win, otherwise a Gitea push would be checked against GitHub's rules.
_DETECTION = (
    # provider, event headers, delivery-id headers
    ("gitea", ("x-forgejo-event", "x-gitea-event"), ("x-forgejo-delivery", "x-gitea-delivery")),
    ("gitea", ("x-gogs-event",), ("x-gogs-delivery",)),
    ("gitlab", ("x-gitlab-event",), ("x-gitlab-event-uuid", "idempotency-key")),
    # Bitbucket Cloud sends X-Request-UUID; Bitbucket Server / Data Center sends X-Request-Id.
    ("bitbucket", ("x-event-key",), ("x-request-uuid", "x-request-id")),
    ("github", ("x-github-event",), ("x-github-delivery",)),
)


def read_envelope(headers: Mapping[str, str]) -> Envelope:
    """Tell the host, event and delivery id from the headers alone (nothing is verified yet)."""
    h = _lower(headers)
    for provider, event_headers, delivery_headers in _DETECTION:
        event = _first(h, *event_headers)
        if event:
            return Envelope(provider, event, _first(h, *delivery_headers))
    return Envelope("", "", "")


# --- verification ---------------------------------------------------------------------------------

_GITEA_SIGNATURES = ("x-forgejo-signature", "x-gitea-signature", "x-gogs-signature")

_SIGNATURE_HEADERS = {
    # Every header that carries a signature or token for that host, whether or not we accept it.
    "github": ("x-hub-signature-256", "x-hub-signature"),
    "gitea": (*_GITEA_SIGNATURES, "x-hub-signature-256"),
    "bitbucket": ("x-hub-signature",),
    "gitlab": ("x-gitlab-token", "webhook-signature"),
}


# The signature states; gitdeploy.models.Delivery.Signature stores the same values.
VALID, INVALID, MISSING = "valid", "invalid", "missing"


@dataclass(frozen=True)
class Verification:
    """The answer of verify(): ``state`` is VALID, INVALID (a signature or token was sent and is
    wrong) or MISSING (none was sent); ``reason`` says why it is not valid, never with a secret."""

    state: str
    reason: str = ""
    # The webhook-id of a verified Standard Webhooks signature (GitLab's signing token): accepted
    # once within REPLAY_WINDOW seconds.
    replay_key: str = ""

    @property
    def valid(self) -> bool:
        return self.state == VALID


def verify(
    envelope: Envelope,
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    *,
    now: float | None = None,
) -> Verification:
    """Whether the delivery was signed (or carries the token) with ``secret``, in one call.

    ``body`` must be the raw request body, byte for byte: the HMAC covers exactly what was sent.
    An empty secret never verifies anything (an HMAC keyed with "" is not a secret); callers that
    allow unsigned deliveries do not call this function. ``now`` (Unix seconds, default the
    clock) is what a signed timestamp is compared with.
    """
    h = _lower(headers)
    sent = any(h.get(name) for name in _SIGNATURE_HEADERS.get(envelope.provider, ()))
    if envelope.provider == "gitlab" and h.get("webhook-signature") and is_signing_token(secret):
        try:
            webhook_id = check_standard_webhook(h, body, secret, now=now)
        except Unauthorized as exc:
            return Verification(INVALID, exc.message)
        return Verification(VALID, replay_key=webhook_id)
    try:
        _check_signature(envelope.provider, h, body, secret)
    except Unauthorized as exc:
        return Verification(INVALID if sent else MISSING, exc.message)
    return Verification(VALID)


# --- Standard Webhooks (GitLab's signing token) --------------------------------------------------

SIGNING_TOKEN_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
# A signed timestamp further than this from now is refused (the specification's tolerance), and a
# webhook-id is accepted once within it.
REPLAY_WINDOW = 300


def is_signing_token(secret: str) -> bool:
    return secret.startswith(SIGNING_TOKEN_PREFIX)


def signing_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` signing token (base64 padding optional)."""
    encoded = secret.removeprefix(SIGNING_TOKEN_PREFIX).strip()
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise Unauthorized(
            "the repository's secret starts with whsec_ but the rest is not base64: it is not "
            "a signing token as GitLab shows it"
        ) from None
    if not key:
        raise Unauthorized("the repository's signing token (whsec_...) is empty")
    return key


def check_standard_webhook(
    h: Mapping[str, str], body: bytes, secret: str, *, now: float | None = None
) -> str:
    """Checks webhook-id / webhook-timestamp / webhook-signature (lower-cased header names) against
    a ``whsec_`` signing token; returns the webhook-id, or raises Unauthorized saying why."""
    webhook_id, stamp = h.get("webhook-id", ""), h.get("webhook-timestamp", "")
    if not webhook_id or not stamp:
        raise Unauthorized("webhook-signature was sent without webhook-id and webhook-timestamp")
    if not stamp.isascii() or not stamp.isdigit():
        raise Unauthorized("webhook-timestamp is not a Unix time in seconds")
    skew = int(stamp) - (time.time() if now is None else now)
    if abs(skew) > REPLAY_WINDOW:
        when = "in the past" if skew < 0 else "in the future"
        raise Unauthorized(
            f"webhook-timestamp is {abs(skew):.0f} s {when}, more than {REPLAY_WINDOW // 60} "
            "minutes from now: a replayed delivery, or a clock that is wrong"
        )
    key = signing_key(secret)
    signed = webhook_id.encode("utf-8", "surrogateescape") + b"." + stamp.encode() + b"." + body
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    for entry in h["webhook-signature"].split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue  # v1a (asymmetric) and unknown versions: not for a shared key
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, given):
            return webhook_id
    raise Unauthorized("webhook-signature does not match the body and the signing token")


def _check_signature(provider: str, h: Mapping[str, str], body: bytes, secret: str) -> None:
    """Raises Unauthorized with the reason unless the signature or token matches."""
    if not secret:
        raise Unauthorized("no webhook secret is configured, so no signature can be checked")
    key = secret.encode("utf-8")

    if provider == "github":
        sent = h.get("x-hub-signature-256", "")
        if not sent:
            if h.get("x-hub-signature"):
                raise Unauthorized(
                    "missing X-Hub-Signature-256 header (the legacy SHA-1 X-Hub-Signature is "
                    "not accepted)"
                )
            raise Unauthorized("missing X-Hub-Signature-256 header")
        _check_hmac(
            "X-Hub-Signature-256", _strip_sha256_prefix("X-Hub-Signature-256", sent), key, body
        )
    elif provider == "gitea":
        for name in _GITEA_SIGNATURES:
            if h.get(name):
                _check_hmac(_display(name), h[name], key, body)
                return
        if h.get("x-hub-signature-256"):
            sent = _strip_sha256_prefix("X-Hub-Signature-256", h["x-hub-signature-256"])
            _check_hmac("X-Hub-Signature-256", sent, key, body)
            return
        raise Unauthorized("missing X-Gitea-Signature (or X-Forgejo-Signature) header")
    elif provider == "bitbucket":
        sent = h.get("x-hub-signature", "")
        if not sent:
            raise Unauthorized("missing X-Hub-Signature header")
        _check_hmac("X-Hub-Signature", _strip_sha256_prefix("X-Hub-Signature", sent), key, body)
    elif provider == "gitlab":
        if "x-gitlab-token" not in h:
            if h.get("webhook-signature"):
                raise Unauthorized(
                    "webhook-signature needs the signing token (whsec_...) as the repository's "
                    "secret; with a secret token, X-Gitlab-Token is required"
                )
            if is_signing_token(secret):
                raise Unauthorized("missing webhook-signature (or X-Gitlab-Token) header")
            raise Unauthorized("missing X-Gitlab-Token header")
        if not _token_matches(h["x-gitlab-token"], key):
            raise Unauthorized("X-Gitlab-Token does not match the secret")
    else:
        raise Unauthorized(
            "cannot tell which Git host sent this (no X-GitHub-Event, X-Gitlab-Event, "
            "X-Gitea-Event/X-Forgejo-Event or X-Event-Key header), so its signature cannot be "
            "checked"
        )


def _display(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def _strip_sha256_prefix(header: str, value: str) -> str:
    algorithm, sep, digest = value.partition("=")
    if not sep or algorithm.strip().lower() != "sha256":
        raise Unauthorized(f"{header} must look like 'sha256=<hex digest>'")
    return digest


def _check_hmac(header: str, sent: str, key: bytes, body: bytes) -> None:
    expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode("ascii")
    # Compare bytes: compare_digest refuses non-ASCII str, and a header may contain anything.
    given = sent.strip().lower().encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(expected, given):
        raise Unauthorized(f"{header} signature does not match the body and the secret")


def _token_matches(sent: str, key: bytes) -> bool:
    matched = hmac.compare_digest(sent.encode("utf-8", "surrogateescape"), key)
    # Under WSGI a header value is latin-1-decoded bytes: a non-ASCII token arrives as mojibake.
    # Comparing its raw bytes too lets such a token match the UTF-8 secret it was typed as.
    try:
        raw = sent.encode("latin-1")
    except UnicodeEncodeError:
        return matched
    return hmac.compare_digest(raw, key) or matched


# --- payload --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    kind: str  # "push" | "ping" | "other"
    ref: str = ""
    before: str = ""
    after: str = ""  # the commit the ref now points to ("" for a deletion)
    branch: str = ""  # set when ref is refs/heads/<branch>
    tag: str = ""  # set when ref is refs/tags/<tag>
    deleted: bool = False
    default_branch: str = ""  # the repository's default branch when the payload names it
    pusher: str = ""  # informational
    repository: str = ""  # full name, informational
    reason: str = ""  # why a ping/other is not a push (also notes a likely test delivery)


_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 repositories
_ZERO_ID = re.compile(r"0{40}|0{64}")


def parse(envelope: Envelope, body: bytes, content_type: str, *, branch: str = "") -> Event:
    """Turn a verified delivery into an Event. Raises BadPayload saying what is wrong.

    ``branch`` (optional) is the branch the caller deploys: when one delivery moves several refs
    (Bitbucket groups them), the change to that branch is reported rather than the last one.
    """
    payload = _load(body, content_type)
    provider, name = envelope.provider, envelope.event
    if provider == "github":
        return _github(name, payload)
    if provider == "gitea":
        return _gitea(name, payload)
    if provider == "gitlab":
        return _gitlab(name, payload)
    if provider == "bitbucket":
        return _bitbucket(name, payload, branch)
    return Event("other", reason="unknown Git host: no recognised event header")


def _load(body: bytes, content_type: str) -> dict[str, Any]:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        # GitHub's "application/x-www-form-urlencoded" content type: the JSON is in `payload=`.
        try:
            fields = urllib.parse.parse_qs(
                body.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=100
            )
        except ValueError as exc:
            raise BadPayload(f"form-encoded body cannot be decoded: {exc}") from None
        if "payload" not in fields:
            raise BadPayload("form-encoded body has no 'payload' field")
        document: str | bytes = fields["payload"][0]
    else:
        document = body
    if not document:
        raise BadPayload("body is empty; expected a JSON object")
    try:
        payload = json.loads(document)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and bytes that are not UTF-8/16/32.
        raise BadPayload(f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadPayload(f"JSON body must be an object, not {_json_type(payload)}")
    return payload


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _get(payload: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(payload, dict):
            return None
        payload = payload.get(key)
    return payload


def _text(payload: Any, *path: str) -> str:
    value = _get(payload, *path)
    return value if isinstance(value, str) else ""


def _push(
    ref: Any,
    before: Any,
    after: Any,
    *,
    what: str,
    deleted: bool = False,
    reason: str = "",
    **info: str,
) -> Event:
    """Validate a push's ref and commit, and classify the ref. ``what`` names the payload in error
    messages. The commit is checked to be a full object id: it is all the worker takes from us."""
    if not isinstance(ref, str) or not ref:
        raise BadPayload(f"{what}: no ref (expected a string like 'refs/heads/main')")
    if not deleted:
        if after is None or after == "":
            raise BadPayload(f"{what}: no 'after' commit for ref {ref!r}")
        if not isinstance(after, str) or not _OBJECT_ID.fullmatch(after.lower()):
            raise BadPayload(f"{what}: 'after' is not a commit id: {str(after)[:80]!r}")
        after = after.lower()
        deleted = bool(_ZERO_ID.fullmatch(after))
    before = before.lower() if isinstance(before, str) else ""
    if not _OBJECT_ID.fullmatch(before):
        before = ""
    branch = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else ""
    tag = ref.removeprefix("refs/tags/") if ref.startswith("refs/tags/") else ""
    return Event(
        "push",
        ref=ref,
        before=before,
        after="" if deleted else after,
        branch=branch,
        tag=tag,
        deleted=deleted,
        reason=reason,
        **info,
    )


def _test_delivery(before: Any, after: Any) -> str:
    """A note when before == after: hosts never report a ref update that changes nothing, but
    Gogs, old Gitea and GitLab's "Test" button send the branch tip as both. It is still treated
    as a push: deploying the branch tip again is harmless."""
    if isinstance(before, str) and before and before == after:
        return "before == after: probably a test delivery; deploying the branch tip anyway"
    return ""


def _github(name: str, payload: dict[str, Any]) -> Event:
    # Old (form-encoded era) payloads have no full_name, only repository.owner.name and .name.
    owner = _text(payload, "repository", "owner", "login") or _text(
        payload, "repository", "owner", "name"
    )
    repo = _text(payload, "repository", "name")
    info: dict[str, Any] = {
        "repository": _text(payload, "repository", "full_name")
        or (f"{owner}/{repo}" if owner and repo else repo),
        "default_branch": _text(payload, "repository", "default_branch")
        or _text(payload, "repository", "master_branch"),
    }
    if name == "ping":
        return Event("ping", reason="GitHub ping (the webhook was created or pinged)", **info)
    if name != "push":
        return Event("other", reason=f"event {name!r} is not a push", **info)
    pusher = _text(payload, "pusher", "name") or _text(payload, "sender", "login")
    return _push(
        payload.get("ref"),
        payload.get("before"),
        payload.get("after"),
        what="GitHub push payload",
        pusher=pusher,
        **info,
    )


def _gitea(name: str, payload: dict[str, Any]) -> Event:
    info: dict[str, Any] = {
        "repository": _text(payload, "repository", "full_name"),
        "default_branch": _text(payload, "repository", "default_branch"),
    }
    if name != "push":
        # `create` / `delete` are sent next to the `push` for the same ref; the push is enough.
        return Event("other", reason=f"event {name!r} is not a push", **info)
    before, after = payload.get("before"), payload.get("after")
    if isinstance(after, str) and _ZERO_ID.fullmatch(after) and before == after:
        # Gitea's "Test Delivery" (routers/web/repo/setting/webhook.go TestWebhook) sends a fake
        # commit ("This is a fake commit for webhook push test") as both before and after: all
        # zeros, which no real push has (a deletion keeps a real `before`). Older Gitea did so only
        # for an empty repository and otherwise sent the branch tip, as Gogs does (see
        # _test_delivery). Forgejo inherited this code from Gitea; it sends the same headers.
        return Event(
            "ping",
            ref=_text(payload, "ref"),
            reason="Gitea/Forgejo test delivery (fake all-zero commit)",
            **info,
        )
    pusher = (
        _text(payload, "pusher", "login")
        or _text(payload, "pusher", "username")
        or _text(payload, "sender", "login")
    )
    return _push(
        payload.get("ref"),
        before,
        after,
        what="Gitea push payload",
        reason=_test_delivery(before, after),
        pusher=pusher,
        **info,
    )


_GITLAB_PUSH_KINDS = {"push", "tag_push"}


def _gitlab(name: str, payload: dict[str, Any]) -> Event:
    info: dict[str, Any] = {
        "repository": _text(payload, "project", "path_with_namespace")
        or _text(payload, "repository", "name"),
        "default_branch": _text(payload, "project", "default_branch"),
    }
    kind = _text(payload, "object_kind") or _text(payload, "event_name")
    if name in ("Push Hook", "Tag Push Hook"):
        pass
    elif name == "System Hook" and kind in _GITLAB_PUSH_KINDS:
        pass  # instance-wide system hooks send the same push payload
    elif name == "System Hook":
        return Event("other", reason=f"GitLab system hook {kind!r} is not a push", **info)
    else:
        return Event("other", reason=f"event {name!r} is not a push", **info)

    # The "Test" button (Push events) sends the last three commits of the default branch as a
    # push from the oldest to the newest: it cannot be told from a real push, and deploying the
    # default branch tip again is harmless.
    before, after = payload.get("before"), payload.get("after")
    deleted = isinstance(after, str) and bool(_ZERO_ID.fullmatch(after.lower()))
    # For an annotated tag `after` is the tag object; checkout_sha is the commit it points to.
    # For branches they are equal; a deletion has checkout_sha null.
    checkout_sha = payload.get("checkout_sha")
    commit = checkout_sha if isinstance(checkout_sha, str) and checkout_sha else after
    return _push(
        payload.get("ref"),
        before,
        commit,
        what="GitLab push payload",
        deleted=deleted,
        reason=_test_delivery(before, after),
        pusher=_text(payload, "user_username") or _text(payload, "user_name"),
        **info,
    )


def _bitbucket(name: str, payload: dict[str, Any], branch: str) -> Event:
    if name == "repo:push":
        return _bitbucket_cloud(payload, branch)
    if name == "repo:refs_changed":
        return _bitbucket_server(payload, branch)
    repository = _text(payload, "repository", "full_name")
    if name == "diagnostics:ping":
        return Event("ping", reason="Bitbucket test connection", repository=repository)
    return Event("other", reason=f"event {name!r} is not a push", repository=repository)


def _pick(changes: list[tuple[str, str, Any]], branch: str) -> Any:
    """Choose one change of a multi-ref push: (kind, name, change) triples in payload order.

    The tracked branch's change if the caller named it; else the last branch change (a push that
    moves several branches is rare; the last one is what Bitbucket lists as most recent); else
    the last tag change, which the caller will ignore as a tag.
    """
    if branch:
        for kind, name, change in reversed(changes):
            if kind == "branch" and name == branch:
                return change
    for wanted in ("branch", "tag"):
        for kind, _name, change in reversed(changes):
            if kind == wanted:
                return change
    return None


def _bitbucket_cloud(payload: dict[str, Any], branch: str) -> Event:
    what = "Bitbucket repo:push payload"
    changes = _get(payload, "push", "changes")
    if not isinstance(changes, list) or not changes:
        raise BadPayload(f"{what}: no push.changes list")
    info: dict[str, Any] = {
        "repository": _text(payload, "repository", "full_name"),
        "default_branch": _text(payload, "repository", "mainbranch", "name"),
        "pusher": _text(payload, "actor", "nickname")
        or _text(payload, "actor", "username")
        or _text(payload, "actor", "display_name"),
    }
    # A change's `new` is the ref after the push (null when deleted), `old` before (null when
    # created). Either names the ref: type "branch", "tag" or "annotated_tag".
    candidates = []
    for change in changes:
        side = _get(change, "new") or _get(change, "old")
        kind = _text(side, "type")
        kind = "tag" if kind == "annotated_tag" else kind
        if kind in ("branch", "tag") and _text(side, "name"):
            candidates.append((kind, _text(side, "name"), change))
    change = _pick(candidates, branch)
    if change is None:
        raise BadPayload(f"{what}: no change names a branch or tag (push.changes[].new/old)")
    new, old = change.get("new"), change.get("old")
    side = new or old
    prefix = "refs/heads/" if _text(side, "type") == "branch" else "refs/tags/"
    return _push(
        prefix + _text(side, "name"),
        _text(old, "target", "hash"),
        _get(new, "target", "hash"),
        what=what,
        deleted=new is None,
        **info,
    )


def _bitbucket_server(payload: dict[str, Any], branch: str) -> Event:
    what = "Bitbucket Server repo:refs_changed payload"
    changes = payload.get("changes")
    if not isinstance(changes, list) or not changes:
        raise BadPayload(f"{what}: no changes list")
    project, slug = (
        _text(payload, "repository", "project", "key"),
        _text(payload, "repository", "slug"),
    )
    info: dict[str, Any] = {
        "repository": f"{project}/{slug}" if project and slug else slug,
        "pusher": _text(payload, "actor", "name") or _text(payload, "actor", "displayName"),
    }
    candidates = []
    for change in changes:
        kind = {"BRANCH": "branch", "TAG": "tag"}.get(_text(change, "ref", "type"), "")
        if kind:
            candidates.append((kind, _text(change, "ref", "displayId"), change))
    change = _pick(candidates, branch)
    if change is None:
        raise BadPayload(f"{what}: no change names a branch or tag (changes[].ref)")
    return _push(
        _text(change, "ref", "id") or _text(change, "refId"),
        change.get("fromHash"),
        change.get("toHash"),
        what=what,
        deleted=_text(change, "type") == "DELETE",
        **info,
    )


# --- storing headers ------------------------------------------------------------------------------


def sanitize_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy fit for the database: secret-bearing values replaced by "[removed]" (so an operator
    can still see that one was sent)."""
    return {
        str(name): "[removed]" if str(name).lower() in SECRET_HEADERS else str(value)
        for name, value in headers.items()
    }
