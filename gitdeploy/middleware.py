"""Middleware of our own. Only one: WhiteNoise, made usable from Django's async request path."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise's middleware, async-capable.

    Served by gunicorn's asgi worker (project/asgi.py), Django runs the middleware chain on the
    event loop. WhiteNoise's middleware is synchronous only, so Django ran it in a thread and
    turned everything below it back into async code with async_to_sync: every request crossed
    between the event loop and the thread several times (a webhook cost 18 ms instead of 12).
    Here a request for anything but a static file passes straight through on the event loop, and
    only a static file is looked up and opened in a thread. Under WSGI it is WhiteNoise as is.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        super().__init__(get_response)
        self.async_mode = iscoroutinefunction(self.get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.async_mode:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        if self.autorefresh:
            # DEBUG: files are looked for on disk at every request (WHITENOISE_ROOT may hold
            # files at any path), so off the event loop.
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)  # a dict built at start
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)
