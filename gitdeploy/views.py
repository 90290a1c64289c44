"""The webhook endpoint: read the request, make one call (intake.receive), render its Receipt.

Status codes are chosen for the Git host's delivery log: 2xx only when the delivery is recorded,
4xx when retrying cannot help, 503 when it can (the database was unreachable: redeliver later).
"""

import logging

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from gitdeploy import instrument, prebuilt
from gitdeploy.intake import IncomingWebhook, receive
from gitdeploy.models import Repository

logger = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024


try:  # what gunicorn raises from a malformed chunked body, read through wsgi.input
    from gunicorn.http.errors import ParseException as ServerParseError
except ImportError:  # another WSGI server
    ServerParseError = ValueError

# A body that cannot be read is the client's fault (400), never a 500.
UNREADABLE_BODY = (OSError, ValueError, ServerParseError)


class BodyTooLarge(Exception):
    def __init__(self, size: int):
        self.size = size


def read_capped_body(request, limit: int) -> bytes:
    """The raw body, refused from Content-Length before reading and enforced while reading (a
    chunked request has no Content-Length to trust)."""
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLarge(int(declared))
    stream = request
    if not declared.strip() and request.META.get("wsgi.input_terminated"):
        # A chunked request (gunicorn): Django would read nothing without a Content-Length, so
        # read the server's own terminated stream, still under the cap.
        stream = request.META["wsgi.input"]
    chunks, total = [], 0
    while True:
        chunk = stream.read(READ_CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(total)
        chunks.append(chunk)
    return b"".join(chunks)


def _json(status: int, payload: dict, **kwargs) -> JsonResponse:
    return JsonResponse(payload, status=status, **kwargs)


@csrf_exempt
@instrument.webhook
def webhook(request, slug: str, env_only: bool = False):
    if request.method != "POST":
        response = _json(405, {"status": "error", "reason": "webhooks are delivered with POST"})
        response["Allow"] = "POST"
        return response

    try:
        repository = _find_repository(slug)
    except DatabaseError:
        logger.exception("Database unreachable while receiving a webhook for %r", slug)
        return _database_unavailable()
    # API_ENDPOINT serves only the repository configured by the environment.
    if env_only and (repository is None or not repository.managed_by_env):
        return _json(
            404,
            {
                "status": "error",
                "reason": f"{settings.API_ENDPOINT} serves the repository configured by GIT_URL "
                "and REPO_DIR, and they are not set (or `manage.py migrate` has not run since)",
            },
        )
    if repository is None:
        return _json(404, {"status": "error", "reason": f"no repository {slug!r}"})

    declared_size, unreadable = None, ""
    try:
        body = read_capped_body(request, settings.MAX_WEBHOOK_BYTES)
    except BodyTooLarge as exc:
        body, declared_size = b"", exc.size
    except UNREADABLE_BODY as exc:
        body, unreadable = b"", f"the request body could not be read ({exc.__class__.__name__})"

    incoming = IncomingWebhook(
        headers=request.headers,
        body=body,
        content_type=request.META.get("CONTENT_TYPE", ""),
        remote_addr=request.META.get("REMOTE_ADDR") or None,
        declared_size=declared_size,
        unreadable=unreadable,
    )
    try:
        receipt = receive(repository, incoming)
    except DatabaseError:
        logger.exception("Database unreachable while recording a delivery for %r", slug)
        return _database_unavailable()
    instrument.delivery_received(repository, request.headers, receipt)
    response = _json(receipt.status_code, receipt.body)
    if receipt.retry_after is not None:
        response["Retry-After"] = str(receipt.retry_after)
    return response


def _find_repository(slug: str) -> Repository | None:
    """The first query of a request. A persistent connection the database dropped (a restart)
    fails here, on a read that is safe to repeat: once more on a new connection, rather than a
    health-check query before every request (CONN_HEALTH_CHECKS is off). A prebuilt statement:
    on every webhook, so not compiled each time."""
    try:
        return prebuilt.get(Repository, "slug", slug)
    except (OperationalError, InterfaceError):
        if connection.in_atomic_block:
            raise
        connection.close()
        return prebuilt.get(Repository, "slug", slug)


def _database_unavailable() -> JsonResponse:
    response = _json(
        503,
        {
            "status": "error",
            "reason": "the database is unavailable; nothing was recorded, redeliver later",
        },
    )
    response["Retry-After"] = "30"
    return response
