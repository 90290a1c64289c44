"""The landing page and the health/readiness probes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from gitdeploy.display import commit_html
from gitdeploy.models import Repository, SyncRun, WorkerHeartbeat

logger = logging.getLogger(__name__)


@require_GET
def landing(request):
    repositories = []
    # One query for every repository's status (RepositoryQuerySet.with_status).
    for repository in Repository.objects.filter(enabled=True).with_status().order_by("name"):
        last_run = None
        if repository.last_run_id:
            last_run = {
                "status": repository.last_run_status,
                "label": SyncRun.Status(repository.last_run_status).label,
                "queued_at": repository.last_run_queued_at,
            }
        # Only display-safe values reach the template: never the secret or the raw clone URL.
        repositories.append(
            {
                "name": repository.name,
                "branch": repository.tracked_branch,
                "target_dir": repository.target_dir,
                "deployed_commit": (
                    commit_html(
                        repository.clone_url,
                        repository.deployed_commit,
                        repository.provider_hint or "",
                    )
                    if repository.deployed_commit
                    else ""
                ),
                "deployed_at": repository.deployed_at,
                "last_run": last_run,
                "webhook_url": request.build_absolute_uri(repository.webhook_path()),
            }
        )
    contact_url = settings.CONTACT_URL
    return render(
        request,
        "gitdeploy/landing.html",
        {
            "repositories": repositories,
            # A link only for a web address: an operator typo must not become a javascript: link.
            "contact_href": contact_url if contact_url.startswith(("https://", "http://")) else "",
        },
    )


@never_cache
@require_GET
def health(request):
    # Liveness: no database access, so a slow database never gets the container restarted.
    return HttpResponse("OK\n", content_type="text/plain; charset=utf-8")


def _check(ok: bool, detail: str) -> dict:
    return {"ok": ok, "detail": detail}


def check_database() -> dict:
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means "not ready", never a 500
        logger.warning("readiness: database unreachable: %s", exc.__class__.__name__)
        return _check(False, f"database unreachable ({exc.__class__.__name__})")
    return _check(True, "reachable")


def check_target_dir(target_dir: str) -> dict:
    """Writable, or creatable: the nearest existing parent is a writable directory."""
    if not target_dir:
        return _check(False, "no target directory configured")
    path = Path(target_dir)
    if not path.is_absolute():
        return _check(False, "not an absolute path")
    if path.exists():
        if not path.is_dir():
            return _check(False, "exists and is not a directory")
        if os.access(path, os.W_OK | os.X_OK):
            return _check(True, "writable")
        return _check(False, "not writable")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return _check(True, f"can be created (in {parent})")
    return _check(False, f"cannot be created ({parent} is not writable)")


def check_worker() -> dict:
    heartbeat = WorkerHeartbeat.latest()
    if heartbeat is None:
        return _check(False, "no worker has ever been seen")
    age = (timezone.now() - heartbeat.seen_at).total_seconds()
    if age > settings.WORKER_HEARTBEAT_MAX_AGE:
        return _check(
            False,
            f"last worker seen {age:.0f} s ago (more than {settings.WORKER_HEARTBEAT_MAX_AGE:g} s)",
        )
    return _check(True, f"seen {age:.0f} s ago")


@never_cache
@require_GET
def ready(request):
    """Readiness: one entry per check; 200 only when every check passes."""
    checks = {"database": check_database()}
    if checks["database"]["ok"]:
        try:
            for repository in Repository.objects.filter(enabled=True).order_by("slug"):
                checks[f"target_dir:{repository.slug}"] = check_target_dir(repository.target_dir)
            checks["worker"] = check_worker()
        except Exception as exc:  # the database went away between the checks
            logger.warning("readiness: query failed: %s", exc.__class__.__name__)
            checks["database"] = _check(False, f"query failed ({exc.__class__.__name__})")
    else:
        checks["worker"] = _check(False, "not checked: the database is unreachable")
    ok = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ok" if ok else "fail", "checks": checks}, status=200 if ok else 503
    )
