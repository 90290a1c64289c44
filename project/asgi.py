"""The ASGI entry point gunicorn serves (its `asgi` worker class; see gunicorn.conf.py).

Why ASGI for a service whose views are all synchronous: slow clients. A synchronous worker reads
a request's headers and body itself, so 200 connections trickling headers keep every worker busy
and the webhook unreachable (seen: 60 s). The asyncio worker reads requests on its event loop,
where a slow connection costs a few kilobytes, and Django runs the view only once the request is
complete. That holds with `make run HOST=0.0.0.0` too, where no proxy stands in front.

Django's ASGI handler reads the whole body before the view runs, with no cap, so BodyLimit stops
reading past MAX_WEBHOOK_BYTES: the view then answers 413 and records the delivery, as it does
under WSGI.
"""

import os

import django
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


class OneThreadASGIHandler(ASGIHandler):
    """Django's handler runs each request's synchronous code in a thread of its own (a
    ThreadSensitiveContext per request), and database connections belong to a thread: every
    request opened a new connection (a webhook took 37 ms instead of 10). Without that context all
    of a process's synchronous code runs on asgiref's one shared thread, so the connection
    persists (CONN_MAX_AGE) as under a synchronous worker, while the event loop still reads the
    requests."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        await self.handle(scope, receive, send)


django.setup(set_prefix=False)
django_application = OneThreadASGIHandler()


class BodyLimit:
    """Reads at most `limit` + 1 bytes of a request body (nothing when Content-Length already
    says it is too large), so an endless or huge body never reaches memory or disk. The view
    sees a body over the limit and refuses it (413), with the Delivery recorded."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"").strip()
        # Too large by its own Content-Length: not a byte is read; the view refuses it from the
        # header, as under WSGI.
        budget = -1 if declared.isdigit() and int(declared) > self.limit else self.limit + 1
        ended = False

        async def capped_receive():
            nonlocal budget, ended
            while ended:
                # After the body Django only listens for the disconnect; what is left of an
                # oversized body is read and dropped, never kept.
                message = await receive()
                if message["type"] != "http.request":
                    return message
            if budget < 0:
                ended = True
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] != "http.request":
                return message
            body = message.get("body", b"")
            if len(body) >= budget or not message.get("more_body", False):
                ended = True
                return {"type": "http.request", "body": body[:budget], "more_body": False}
            budget -= len(body)
            return message

        return await self.app(scope, capped_receive, send)


def _limit() -> int:
    from django.conf import settings

    return settings.MAX_WEBHOOK_BYTES


application = BodyLimit(django_application, _limit())
