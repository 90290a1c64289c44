"""What the web process records around the webhook view (views.webhook is wrapped by `webhook`):

- the log context: every line logged while a delivery is handled names the repository slug and the
  host's delivery id (JSON fields with LOG_FORMAT=json);
- the request's metrics: its latency, and the delivery's provider and verdict (gitdeploy.metrics).
"""

from __future__ import annotations

import functools
import logging
import time

from gitdeploy import logs, metrics, providers

logger = logging.getLogger("gitdeploy.deliveries")


def webhook(view):
    @functools.wraps(view)
    def observed(request, slug: str, *args, **kwargs):
        envelope = providers.read_envelope(request.headers)
        started = time.perf_counter()
        with logs.context(repository=slug, delivery_id=envelope.delivery_id[:200]):
            response = view(request, slug, *args, **kwargs)
        _observe(response.status_code, time.perf_counter() - started)
        return response

    return observed


def delivery_received(repository, headers, receipt) -> None:
    """One line per delivery that reached a repository: what was decided and why."""
    delivery = receipt.delivery
    verdict = delivery.verdict if delivery is not None else "rejected"
    provider = (
        delivery.provider if delivery is not None else providers.read_envelope(headers).provider
    )
    metrics.count_delivery(repository.slug, provider, verdict)
    logger.log(
        logging.WARNING if verdict == "rejected" else logging.INFO,
        "delivery %s: %s (%s): %s",
        verdict,
        provider or "unknown host",
        receipt.status_code,
        receipt.body.get("reason", ""),
        extra={
            "event": "delivery",
            "provider": provider,
            "verdict": verdict,
            "status": receipt.status_code,
            "sync_run": receipt.run.pk if receipt.run is not None else None,
        },
    )


def _observe(status_code: int, seconds: float) -> None:
    metrics.observe_webhook_request(status_code, seconds)
