"""Telling people about a run: a JSON POST to NOTIFY_WEBHOOK_URL and an email to NOTIFY_EMAILS.

    occasion(run)    "failed", "recovered" (the first success after a failure) or "" (quiet)
    after_run(run)   sends what the occasion calls for; returns one line per channel
                     ("webhook: sent (HTTP 200)", "email: failed: ...") for SyncRun.notifications

Who is told and when:
- a failed run, unless a retry of it is already queued (the last attempt speaks for the request:
  SYNC_RETRIES failed fetches are one message, not four);
- the first successful run after a failed one ("recovered");
- nothing for a success after a success, nor for a superseded run.

Called by the worker (gitdeploy.reporting) after SyncRun.finish is recorded. Each send is bounded by
NOTIFY_TIMEOUT; a failure is logged and returned, never raised. The webhook URL is a credential
(Slack's and Mattermost's carry their key in the path): it is read here, in the worker, from
NOTIFY_WEBHOOK_URL or NOTIFY_WEBHOOK_URL_FILE, and never logged or stored.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from django.conf import settings
from django.core import mail
from django.urls import reverse

from gitdeploy.models import SyncRun
from project.env import env_str

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 20


def occasion(run: SyncRun) -> str:
    if run.status == SyncRun.Status.FAILED:
        if SyncRun.objects.filter(retry_of=run).exists():
            return ""  # a retry of the same request is queued: it reports
        return "failed"
    if run.status == SyncRun.Status.SUCCEEDED:
        before = (
            SyncRun.objects.filter(
                repository=run.repository_id,
                status__in=[SyncRun.Status.SUCCEEDED, SyncRun.Status.FAILED],
                finished_at__lte=run.finished_at,
            )
            .exclude(pk=run.pk)
            .order_by("-finished_at", "-pk")
            .values_list("status", flat=True)
            .first()
        )
        return "recovered" if before == SyncRun.Status.FAILED else ""
    return ""


def run_url(run: SyncRun) -> str:
    """The run's page in the admin, absolute when PUBLIC_URL is set."""
    path = reverse("admin:gitdeploy_syncrun_change", args=[run.pk])
    return settings.PUBLIC_URL.rstrip("/") + path if settings.PUBLIC_URL else path


def message(run: SyncRun, kind: str) -> dict:
    """The webhook's JSON body; ``text`` is what Slack and Mattermost incoming webhooks show."""
    repository = run.repository
    commit = run.deployed_commit or run.requested_commit
    url = run_url(run)
    error = run.error.strip()
    if kind == "failed":
        headline = f"gitdeploy: {repository.slug} failed to deploy"
        headline += f" {commit[:12]}" if commit else f" {run.branch or 'the branch tip'}"
        headline += f" (run #{run.pk})"
        if error:
            headline += f": {error.splitlines()[0][:300]}"
    else:
        headline = (
            f"gitdeploy: {repository.slug} deployed {commit[:12]} again after a failure "
            f"(run #{run.pk})"
        )
    text = f"{headline}\n{url}" if url.startswith("http") else headline
    log_lines = run.log.rstrip("\n").splitlines()
    return {
        "text": text,
        "event": kind,
        "repository": repository.slug,
        "repository_name": repository.name,
        "status": run.status,
        "run_id": run.pk,
        "run_url": url,
        "trigger": run.trigger,
        "branch": run.branch,
        "commits": {
            "requested": run.requested_commit,
            "deployed": run.deployed_commit,
            "previous": run.previous_commit,
        },
        "error": error,
        "log_tail": "\n".join(log_lines[-LOG_TAIL_LINES:]),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def after_run(run: SyncRun) -> list[str]:
    kind = occasion(run)
    if not kind:
        return []
    body = message(run, kind)
    outcomes = []
    url = env_str("NOTIFY_WEBHOOK_URL")
    if url:
        outcomes.append(_attempt("webhook", lambda: send_webhook(url, body)))
    if settings.NOTIFY_EMAILS:
        outcomes.append(_attempt("email", lambda: send_email(settings.NOTIFY_EMAILS, body)))
    return outcomes


def _attempt(channel: str, send) -> str:
    try:
        detail = send()
    except Exception as exc:  # any failure to notify is reported, never raised into the run
        reason = describe(exc)
        logger.warning("notification by %s failed: %s", channel, reason)
        return f"{channel}: failed: {reason}"
    return f"{channel}: sent ({detail})"


def describe(exc: BaseException) -> str:
    """A failure in words that never repeat a URL (the webhook URL is a credential)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, TimeoutError):
        return f"{exc.reason}"
    if isinstance(exc, TimeoutError | urllib.error.URLError):
        return f"no answer within {settings.NOTIFY_TIMEOUT:g} s"
    return f"{exc.__class__.__name__}: {exc}"[:300]


def send_webhook(url: str, body: dict) -> str:
    status, _answer = post_json(url, body)
    return f"HTTP {status}"


def post_json(
    url: str, body: dict, headers: dict[str, str] | None = None, timeout: float | None = None
) -> tuple[int, dict]:
    """POSTs JSON, bounded by NOTIFY_TIMEOUT; returns (status, the JSON answer or {}). Raises
    urllib's HTTPError for a 4xx/5xx answer, URLError/TimeoutError when there is none."""
    if not url.lower().startswith(("https://", "http://")):
        raise ValueError("the URL must start with http:// or https://")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "gitdeploy", **(headers or {})},
    )
    with urllib.request.urlopen(  # noqa: S310
        request, timeout=timeout or settings.NOTIFY_TIMEOUT
    ) as answer:
        raw = answer.read(1024 * 1024)
        try:
            document = json.loads(raw) if raw else {}
        except ValueError:
            document = {}
        return answer.status, document if isinstance(document, dict) else {}


def send_email(recipients: list[str], body: dict) -> str:
    subject = body["text"].splitlines()[0].removeprefix("gitdeploy: ")
    lines = [
        body["text"],
        "",
        f"Repository: {body['repository']}",
        f"Status:     {body['status']}",
        f"Run:        #{body['run_id']} ({body['trigger']})",
        f"Commit:     {body['commits']['deployed'] or body['commits']['requested'] or '-'}",
        f"Previous:   {body['commits']['previous'] or '-'}",
    ]
    if body["error"]:
        lines += ["", "Error:", body["error"]]
    if body["log_tail"]:
        lines += ["", "End of the log:", body["log_tail"]]
    # The password is read here, in the worker (EMAIL_HOST_PASSWORD or its _FILE).
    options: dict[str, Any] = {"timeout": settings.NOTIFY_TIMEOUT}
    if password := env_str("EMAIL_HOST_PASSWORD"):
        options["password"] = password
    connection = mail.get_connection(**options)
    sent = mail.send_mail(
        f"[gitdeploy] {subject}"[:200],
        "\n".join(lines) + "\n",
        None,  # DEFAULT_FROM_EMAIL
        recipients,
        connection=connection,
    )
    return f"{sent} message to {len(recipients)} recipient(s)"
