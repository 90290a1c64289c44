"""The landing page and the health/readiness probes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from gitdeploy.display import (
    commit_html,
    first_line,
    format_duration,
    live_commit_html,
    post_deploy_failed,
    repository_state,
)
from gitdeploy.models import Repository, SyncRun, WorkerHeartbeat

logger = logging.getLogger(__name__)


TIMELINE_LENGTH = 5


def recent_runs(repository_ids: list[int]) -> dict[int, list[SyncRun]]:
    """The last TIMELINE_LENGTH runs of each repository, in one query (a window function), so the
    landing page costs the same number of queries for one repository or fifty."""
    ranked = (
        SyncRun.objects.filter(repository_id__in=repository_ids)
        .annotate(
            rank=Window(
                RowNumber(),
                partition_by=[F("repository_id")],
                order_by=[F("queued_at").desc(), F("pk").desc()],
            )
        )
        .filter(rank__lte=TIMELINE_LENGTH)
        .order_by("repository_id", "rank")
    )
    runs: dict[int, list[SyncRun]] = {pk: [] for pk in repository_ids}
    for run in ranked:
        runs[run.repository_id].append(run)
    return runs


@require_GET
def landing(request):
    """What is live where, at a glance: for each enabled repository the commit on disk (with its
    subject, author and age), the status, the run in progress and the last runs. Anonymous
    visitors see the status and the commits; the directory, the error text (it may name paths)
    and the webhook URL are for signed-in staff only."""
    staff = request.user.is_active and request.user.is_staff
    # One query for every repository's status (RepositoryQuerySet.with_status), one for the
    # timelines: a constant number, whatever the number of repositories.
    rows = list(Repository.objects.filter(enabled=True).with_status().order_by("name"))
    timelines = recent_runs([row.pk for row in rows])
    repositories = []
    for row in rows:
        state, state_label = repository_state(row)
        run_id = row.active_run_id or row.last_run_id
        provider = row.provider_hint or ""
        # Only display-safe values reach the template: never the secret or the raw clone URL.
        repositories.append(
            {
                "name": row.name,
                "branch": row.tracked_branch,
                "state": state,
                "state_label": state_label,
                "run_url": run_admin_url(run_id),
                "run_id": run_id,
                "error": first_line(row.last_run_error or "") if state == "failed" else "",
                "live": live_commit_html(row),
                "deployed_at": row.live_finished_at,
                "post_deploy_failed": post_deploy_failed(row),
                "timeline": [
                    {
                        "id": run.pk,
                        "url": run_admin_url(run.pk),
                        "status": run.status,
                        "label": run.get_status_display(),
                        "trigger": run.get_trigger_display(),
                        "commit": commit_html(
                            row.clone_url, run.deployed_commit or run.requested_commit, provider
                        )
                        if (run.deployed_commit or run.requested_commit)
                        else "",
                        "subject": run.commit_subject,
                        "queued_at": run.queued_at,
                        "duration": format_duration(run.duration) if run.duration else "",
                        "live": run.pk == row.live_run_pk,
                    }
                    for run in timelines[row.pk]
                ],
                "target_dir": row.target_dir if staff else "",
                "webhook_url": request.build_absolute_uri(row.webhook_path()) if staff else "",
            }
        )
    contact_url = settings.CONTACT_URL
    return render(
        request,
        "gitdeploy/landing.html",
        {
            "repositories": repositories,
            "staff": staff,
            # A link only for a web address: an operator typo must not become a javascript: link.
            "contact_href": contact_url if contact_url.startswith(("https://", "http://")) else "",
        },
    )


def run_admin_url(run_id: int | None) -> str:
    return reverse("admin:gitdeploy_syncrun_change", args=[run_id]) if run_id else ""


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
