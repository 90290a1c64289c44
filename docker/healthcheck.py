"""The image's HEALTHCHECK: GET /api/health on the local gunicorn, exit 0 when it answers 200.

Django refuses a Host header that is not in ALLOWED_HOSTS (400), so the probe presents the first
allowed host instead of 127.0.0.1; with HTTPS=true /api/health is exempt from the HTTPS redirect.
"""

import os
import sys
import urllib.request

port = os.environ.get("HEALTHCHECK_PORT", "8880")
allowed = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "*").split(",") if h.strip()]
host = allowed[0].lstrip(".") if allowed and allowed[0] != "*" else "localhost"
request = urllib.request.Request(f"http://127.0.0.1:{port}/api/health", headers={"Host": host})
try:
    with urllib.request.urlopen(request, timeout=4) as response:  # noqa: S310 - fixed local URL
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"healthcheck: {exc}", file=sys.stderr)
    sys.exit(1)
