"""gunicorn's hooks, imported by the project's gunicorn.conf.py (wherever gunicorn serves
gitdeploy: `make run`, the image).

- on_starting / child_exit: the web's Prometheus values live in METRICS_DIR/web, emptied when the
  master starts and pointed at by PROMETHEUS_MULTIPROC_DIR for the workers it forks; a worker that
  exits has its live gauges marked dead (gitdeploy.multiproc).
- post_worker_init: what a worker loaded at start (Django, the project, their modules: ~75,000
  objects) is frozen out of the garbage collector's full collections. Each of those scanned them
  all, 20-50 ms with the GIL held, every few seconds under load: every request in flight
  waited (bench/run.py, BENCHMARKS.md).
- logger_class: with LOG_FORMAT=json, gunicorn's own lines and its access log are JSON objects
  like the application's (gitdeploy.logs), the access log with its fields (method, path, status,
  duration, ...) as keys. In either format a request whose client left before the answer is
  logged with status 499, not the 500 gunicorn gives it.

Loaded by gunicorn's master before Django is set up: stdlib and gunicorn only.
"""

from __future__ import annotations

import copy
import gc
import logging

from gunicorn import glogging

from gitdeploy import logs, multiproc
from gitdeploy.gunicorn_worker import client_gone

# nginx's status for a request whose client closed the connection before the answer.
CLIENT_CLOSED_REQUEST = 499


def on_starting(server) -> None:
    multiproc.use(multiproc.fresh(multiproc.metrics_root() / multiproc.WEB))


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker) -> None:
    # gunicorn calls this once the worker has loaded the application, before it serves. The
    # frozen objects are still freed by reference counting; only cycles among them would stay,
    # and objects loaded at start live as long as the worker anyway.
    gc.freeze()
    worker.log.info(
        "froze %d objects loaded at start out of the garbage collector's scans",
        gc.get_freeze_count(),
    )


class GunicornLogger(glogging.Logger):
    def setup(self, cfg) -> None:
        super().setup(cfg)
        self.json = logs.log_format() == "json"
        if self.json:
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    handler.setFormatter(logs.JsonFormatter())

    def access(self, resp, req, environ, request_time) -> None:
        if client_gone.get() and getattr(resp, "sent", None) == 0:
            # Not answered because the client left (project.asgi): gunicorn's 500 is not ours.
            resp = copy.copy(resp)
            resp.status = CLIENT_CLOSED_REQUEST
        if not self.json:
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        method, path = environ.get("REQUEST_METHOD", "-"), environ.get("PATH_INFO", "")
        self.access_log.log(
            logging.INFO,
            "%s %s %s",
            method,
            path,
            status,
            extra={
                "method": method,
                "path": path,
                "query": environ.get("QUERY_STRING", ""),
                "status": int(status) if str(status).isdigit() else status,
                # A timedelta from the sync worker, seconds + microseconds from the asgi one.
                "duration_ms": round(
                    (request_time.seconds + request_time.microseconds / 1e6) * 1000, 3
                ),
                "bytes": getattr(resp, "sent", None),
                "remote_addr": environ.get("REMOTE_ADDR", ""),
                "user_agent": environ.get("HTTP_USER_AGENT", ""),
            },
        )


logger_class = GunicornLogger
