"""What the worker tells the outside world about a run, around gitdeploy.worker.execute_run:

    run_started(run)     one log line; the Git host's deployment goes to "in progress", told on
                         a thread of its own while the sync goes on
    run_finished(run)    after SyncRun.finish is recorded: one log line, the metrics, then the
                         notifications and the host's deploy status (each bounded by
                         NOTIFY_TIMEOUT; what failed is logged and kept on the run)
    run_lost(run)        a run another worker's recovery marked failed ("worker lost")

Nothing here raises into the run: a report that fails is a line in the log, never a failed deploy.
The log lines carry the repository, run and delivery ids (gitdeploy.logs.context), so with
LOG_FORMAT=json each is a searchable field; django-tasks' own "state=SUCCESSFUL" line says only
that the task returned.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import threading
from collections.abc import Iterator

from django.conf import settings
from django.db import connections
from django.db.models import Value
from django.db.models.functions import Concat
from django.utils import timezone

from gitdeploy import hoststatus, logs, metrics, notify
from gitdeploy.models import SyncRun

logger = logging.getLogger("gitdeploy.runs")


def short(commit: str) -> str:
    return commit[:12]


def run_fields(run: SyncRun) -> dict:
    """The fields of a run's log lines (JSON keys with LOG_FORMAT=json). The delivery id is read
    once per run object: every line of the run asks for it."""
    if not hasattr(run, "_delivery_id"):
        run._delivery_id = (  # type: ignore[attr-defined]
            run.deliveries.exclude(delivery_id="")
            .order_by("-pk")
            .values_list("delivery_id", flat=True)
            .first()
        )
    delivery_id = run._delivery_id  # type: ignore[attr-defined]
    return {
        "repository": run.repository.slug,
        "run_id": run.pk,
        "delivery_id": delivery_id or "",
        "trigger": run.trigger,
        "attempt": run.attempt,
    }


@contextlib.contextmanager
def run_context(run: SyncRun) -> Iterator[None]:
    """Every line logged while the run executes names its repository, run and delivery."""
    fields = run_fields(run)
    with logs.context(
        repository=fields["repository"],
        run_id=fields["run_id"],
        delivery_id=fields["delivery_id"],
    ):
        yield


def run_started(run: SyncRun) -> None:
    """The start's log line now; the Git host's "in progress" (GitHub: a deployment and its
    status, two HTTPS calls of up to NOTIFY_TIMEOUT each, commonly a few hundred milliseconds)
    on a thread, so that the sync does not wait for the host's API. run_finished waits for that
    thread before it reports the result: the host hears the start first, and GitHub's result needs
    the deployment the start created."""
    try:
        with run_context(run):
            _log_start(run)
        target = hoststatus.target_for(run.repository)
        if target is None:
            return  # nothing to tell the host: no thread
    except Exception:
        logger.exception("sync run #%s: reporting its start failed", run.pk)
        return
    # A copy: the sync changes the run (its status, its commit) while the host is being told
    # that it started. The log context (contextvars) goes with it.
    telling = threading.Thread(
        target=contextvars.copy_context().run,
        args=(_tell_host_started, copy.copy(run), target),
        name=f"run-{run.pk}-started",
        daemon=True,  # a worker being stopped does not wait for a Git host
    )
    _telling_host[run.pk] = telling
    telling.start()


# The threads telling Git hosts that a run started, by run id, until run_finished collects them.
_telling_host: dict[int, threading.Thread] = {}


def _tell_host_started(run: SyncRun, target: hoststatus.Target) -> None:
    try:
        with run_context(run):
            record(run, hoststatus.started(run, target))
    except Exception:
        logger.exception("sync run #%s: reporting its start failed", run.pk)
    finally:
        connections.close_all()  # this thread's own (record's UPDATE)


def _host_told_started(run: SyncRun, *, wait: bool) -> None:
    """Waits (if asked) for the thread telling the host that `run` started: at most the two calls
    it makes, each bounded by NOTIFY_TIMEOUT."""
    telling = _telling_host.pop(run.pk, None)
    if telling is not None and wait:
        telling.join(timeout=2 * settings.NOTIFY_TIMEOUT + 1)


def _log_start(run: SyncRun) -> None:
    commit = short(run.requested_commit) or f"tip of {run.branch or 'the default branch'}"
    logger.info(
        "sync run #%s started: repository=%s trigger=%s commit=%s attempt=%s worker=%s",
        run.pk,
        run.repository.slug,
        run.trigger,
        commit,
        run.attempt,
        run.worker_id,
        extra={
            "event": "run_started",
            "trigger": run.trigger,
            "attempt": run.attempt,
            "commit": short(run.requested_commit),
        },
    )


def run_finished(run: SyncRun, *, network: bool = True) -> None:
    """``network`` is False when the worker is being stopped: only what costs nothing is done."""
    _host_told_started(run, wait=network)
    try:
        run.refresh_from_db()
        with run_context(run):
            _log_result(run)
            metrics.record_run(run)
            if network:
                record(run, notify.after_run(run) + hoststatus.finished(run))
    except Exception:
        logger.exception("sync run #%s: reporting its result failed", run.pk)


def record(run: SyncRun, outcomes: list[str]) -> None:
    """Keeps what was sent and what failed on the run (SyncRun.notifications), for the admin."""
    if not outcomes:
        return
    stamp = timezone.now().strftime("%H:%M:%S")
    text = "".join(f"{stamp} {line}\n" for line in outcomes)
    SyncRun.objects.filter(pk=run.pk).update(notifications=Concat("notifications", Value(text)))


def run_lost(run: SyncRun) -> None:
    run_finished(run)


def _log_result(run: SyncRun) -> None:
    duration = run.duration.total_seconds() if run.duration else None
    took = f"{duration:.2f}s" if duration is not None else "-"
    commit = short(run.deployed_commit or run.requested_commit)
    error = run.error.strip().splitlines()[0] if run.error.strip() else ""
    text = (
        f"sync run #{run.pk} {run.status}: repository={run.repository.slug} "
        f"trigger={run.trigger} commit={commit or '-'} "
        f"duration={took}"
    )
    if error:
        text += f" error={error}"
    level = logging.INFO if run.status == SyncRun.Status.SUCCEEDED else logging.ERROR
    logger.log(
        level,
        "%s",
        text,
        extra={
            "event": "run_finished",
            "trigger": run.trigger,
            "result": run.status,
            "commit": commit,
            "duration_seconds": duration,
            "error": error,
        },
    )
