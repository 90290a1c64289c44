"""Prometheus metrics: what is counted where, and GET /metrics.

Counted by the web process (gitdeploy.instrument, around views.webhook):
    gitdeploy_webhook_deliveries_total{repository, provider, verdict}
    gitdeploy_webhook_request_duration_seconds{status}               histogram
Counted by the worker (gitdeploy.reporting, after SyncRun.finish):
    gitdeploy_sync_runs_total{repository, status}                     succeeded / failed
    gitdeploy_sync_duration_seconds{repository, status}               histogram
    gitdeploy_post_deploy_failures_total{repository}
Read from the database when scraped (one truth for every process, right after a restart too):
    gitdeploy_sync_runs_active{repository, status}                    queued / running now
    gitdeploy_last_successful_sync_timestamp_seconds{repository}
    gitdeploy_database_up

Labels stay bounded: repository slugs, providers, verdicts, statuses; never commits, branches or
addresses. Each process writes its values to its own directory under METRICS_DIR
(gitdeploy.multiproc); /metrics adds up every directory's files.

Access: with METRICS_TOKEN set, a matching `Authorization: Bearer <token>` is required; without
it, only requests from the loopback interface are answered.
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, Max
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from gitdeploy import multiproc
from gitdeploy.models import Repository, SyncRun

DELIVERIES = Counter(
    "gitdeploy_webhook_deliveries",
    "Webhook deliveries that reached a repository, by what was decided.",
    ["repository", "provider", "verdict"],
)
WEBHOOK_LATENCY = Histogram(
    "gitdeploy_webhook_request_duration_seconds",
    "Time to answer a webhook request, by HTTP status.",
    ["status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
SYNC_RUNS = Counter(
    "gitdeploy_sync_runs",
    "Finished sync runs, by repository and final status.",
    ["repository", "status"],
)
SYNC_DURATION = Histogram(
    "gitdeploy_sync_duration_seconds",
    "Duration of finished sync runs (started to finished), by repository and final status.",
    ["repository", "status"],
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800),
)
POST_DEPLOY_FAILURES = Counter(
    "gitdeploy_post_deploy_failures",
    "Runs whose post-deploy command exited non-zero or timed out.",
    ["repository"],
)


def count_delivery(repository: str, provider: str, verdict: str) -> None:
    DELIVERIES.labels(repository, provider or "unknown", verdict).inc()


def observe_webhook_request(status_code: int, seconds: float) -> None:
    WEBHOOK_LATENCY.labels(str(status_code)).observe(seconds)


def record_run(run: SyncRun) -> None:
    """A run that finished (succeeded or failed; superseded runs never started)."""
    if run.status not in (SyncRun.Status.SUCCEEDED, SyncRun.Status.FAILED):
        return
    slug = run.repository.slug
    SYNC_RUNS.labels(slug, run.status).inc()
    if run.duration is not None:
        SYNC_DURATION.labels(slug, run.status).observe(run.duration.total_seconds())
    if run.post_deploy_exit_code not in (None, 0) or (
        run.status == SyncRun.Status.FAILED and "post-deploy command timed out" in run.error
    ):
        POST_DEPLOY_FAILURES.labels(slug).inc()


class DatabaseCollector:
    """Gauges read from the database at scrape time, so they are right whichever process did the
    work, and after any restart."""

    def collect(self):
        up = GaugeMetricFamily(
            "gitdeploy_database_up", "1 if /metrics could read the database just now."
        )
        active = GaugeMetricFamily(
            "gitdeploy_sync_runs_active",
            "Sync runs queued or running now, by repository.",
            labels=["repository", "status"],
        )
        last = GaugeMetricFamily(
            "gitdeploy_last_successful_sync_timestamp_seconds",
            "When the repository's last successful sync finished (Unix time).",
            labels=["repository"],
        )
        try:
            slugs = dict(Repository.objects.values_list("pk", "slug"))
            counts = {
                (row["repository"], row["status"]): row["n"]
                for row in SyncRun.objects.active()
                .values("repository", "status")
                .annotate(n=Count("pk"))
            }
            latest = (
                SyncRun.objects.filter(status=SyncRun.Status.SUCCEEDED)
                .values("repository")
                .annotate(at=Max("finished_at"))
            )
        except DatabaseError:
            up.add_metric([], 0)
            yield up
            return
        for pk, slug in sorted(slugs.items(), key=lambda item: item[1]):
            for status in (SyncRun.Status.QUEUED, SyncRun.Status.RUNNING):
                active.add_metric([slug, status], counts.get((pk, status), 0))
        for row in latest:
            if row["at"] is not None and row["repository"] in slugs:
                last.add_metric([slugs[row["repository"]]], row["at"].timestamp())
        up.add_metric([], 1)
        yield from (up, active, last)


class _Files:
    """Every process's value files under METRICS_DIR, added up (web/ and each worker's)."""

    def collect(self):
        return MultiProcessCollector.merge(
            multiproc.value_files(settings.METRICS_DIR), accumulate=True
        )


class _InProcess:
    """Without multiprocess mode (manage.py runserver, the tests): this process's own values."""

    def collect(self):
        return REGISTRY.collect()


def exposition() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Files() if multiproc.ENV in os.environ else _InProcess())
    registry.register(DatabaseCollector())
    return generate_latest(registry)


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def view(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), token.encode()
        ):
            response = HttpResponse("a bearer token is required (METRICS_TOKEN)\n", status=401)
            response["WWW-Authenticate"] = 'Bearer realm="gitdeploy metrics"'
            return response
    elif not _loopback(request.META.get("REMOTE_ADDR", "")):
        return HttpResponse(
            "/metrics answers only loopback requests while METRICS_TOKEN is unset\n", status=403
        )
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
