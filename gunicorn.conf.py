"""gunicorn's settings wherever gitdeploy is served (`make run`, the image): the web server's
command line is written here and nowhere else. gunicorn reads ./gunicorn.conf.py from its working
directory, so plain `gunicorn` in the project directory starts the service.

- gunicorn's `asgi` worker class serving project.asgi: requests are read on an event loop, so
  slow or stalled clients cost memory, not workers (project/asgi.py says why, and caps the body);
  gitdeploy.gunicorn_worker's subclass of it, which shares connections fairly between workers.
- WEB_BIND (default 127.0.0.1:8880), WEB_CONCURRENCY (2 processes), WEB_TIMEOUT (30 s) from the
  environment at start, never baked into the image.
- X-Forwarded-* is trusted only from FORWARDED_ALLOW_IPS (default: loopback); the compose stack
  sets it for its caddy proxy.
- gitdeploy.gunicorn_conf's hooks: JSON access and error logs with LOG_FORMAT=json, the web's
  Prometheus directory (emptied at start, dead workers marked), and what a worker loaded at start
  kept out of the garbage collector's full scans.
"""

import os

from gitdeploy.gunicorn_conf import (  # noqa: F401
    child_exit,
    logger_class,
    on_starting,
    post_worker_init,
)

wsgi_app = "project.asgi:application"
worker_class = "gitdeploy.gunicorn_worker.FairASGIWorker"
# The stdlib's loop, which that worker's acceptor serves; gunicorn would pick uvloop were it
# installed, whose loop takes no acceptor of ours.
asgi_loop = "asyncio"
bind = [os.environ.get("WEB_BIND", "127.0.0.1:8880")]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
accesslog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
timeout = int(os.environ.get("WEB_TIMEOUT", "30"))
# Below compose's default 10 s stop grace period, so in-flight deliveries finish before SIGKILL.
graceful_timeout = 8
