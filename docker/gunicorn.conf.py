"""Gunicorn settings for the image; the bind address stays on the command line (docker-compose.yml).

Equivalent to `--workers ${WEB_CONCURRENCY:-2} --access-logfile - --forwarded-allow-ips=*`, read
from the container's environment at start rather than baked into the image.
"""

import os

# JSON access and error logs with LOG_FORMAT=json; the metrics directory's hooks.
from gitdeploy.gunicorn_conf import child_exit, logger_class, on_starting  # noqa: F401

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
accesslog = "-"
# The only client that reaches gunicorn with X-Forwarded-* headers is the caddy proxy on the compose
# network; without a proxy those headers only matter when HTTPS=true, which presumes one.
forwarded_allow_ips = "*"
# Webhook requests are short; a hung worker is recycled after 30 s instead of holding a slot.
timeout = int(os.environ.get("WEB_TIMEOUT", "30"))
# Below compose's default 10 s stop grace period, so in-flight deliveries finish before SIGKILL.
graceful_timeout = 8
