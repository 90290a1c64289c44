"""The middleware chain as gunicorn's asgi worker runs it (project/asgi.py).

Django runs a middleware that is not async-capable in a thread, and turns everything below it back
into async code: WhiteNoise's stock middleware made every request cross between the event loop
and a thread several more times (a webhook cost 18 ms instead of 12). Our StaticFilesMiddleware
keeps the chain async; static files are still served, under ASGI and under WSGI.
"""

import logging

import pytest
from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIHandler
from django.test import AsyncClient, RequestFactory

from gitdeploy.middleware import StaticFilesMiddleware


def test_no_middleware_forces_the_async_chain_through_a_thread(caplog, settings):
    settings.DEBUG = True  # Django logs each adaptation only with DEBUG on
    assert "whitenoise.middleware.WhiteNoiseMiddleware" not in settings.MIDDLEWARE
    assert "gitdeploy.middleware.StaticFilesMiddleware" in settings.MIDDLEWARE
    with caplog.at_level(logging.DEBUG, logger="django.request"):
        ASGIHandler()  # loads the middleware for the async path, as project.asgi does
    # Django says "Synchronous handler adapted for middleware ..." for each sync-only one.
    adapted = [r.getMessage() for r in caplog.records if "adapted" in r.getMessage()]
    assert adapted == []


def test_the_stock_whitenoise_middleware_would_have(caplog, settings):
    """The check above can fail: with WhiteNoise's own middleware, Django adapts."""
    settings.DEBUG = True
    settings.MIDDLEWARE = [
        "whitenoise.middleware.WhiteNoiseMiddleware"
        if name.endswith("StaticFilesMiddleware")
        else name
        for name in settings.MIDDLEWARE
    ]
    with caplog.at_level(logging.DEBUG, logger="django.request"):
        ASGIHandler()
    assert any("WhiteNoiseMiddleware" in r.getMessage() for r in caplog.records)


@pytest.mark.django_db
def test_static_files_are_served_on_the_async_path():
    def fetch(url):
        response = async_to_sync(AsyncClient().get)(url)
        body = b"".join(response.streaming_content) if response.status_code == 200 else b""
        response.close()
        return response, body

    for url in ["/static/gitdeploy/site.css", "/static/admin/css/base.css"]:
        response, body = fetch(url)
        assert response.status_code == 200, url
        assert response["Content-Type"].startswith("text/css"), url
        assert body.strip(), url
    missing, _ = fetch("/static/gitdeploy/no-such-file.css")
    assert missing.status_code == 404


@pytest.mark.django_db
def test_other_requests_pass_through_on_the_async_path():
    response = async_to_sync(AsyncClient().get)("/api/health")
    assert response.status_code == 200


@pytest.mark.django_db
def test_under_wsgi_it_is_whitenoise_as_is(client):
    response = client.get("/static/gitdeploy/site.css")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/css")
    response.close()
    assert client.get("/api/health").status_code == 200


def test_with_autorefresh_files_are_found_on_disk_at_each_request(settings):
    """DEBUG's autorefresh looks each file up on disk (in a thread, off the event loop)."""
    settings.WHITENOISE_AUTOREFRESH = True
    settings.WHITENOISE_USE_FINDERS = True

    async def inner(request):
        return "passed through"

    middleware = StaticFilesMiddleware(inner)
    assert middleware.async_mode and middleware.autorefresh
    assert middleware.files == {}, "nothing indexed at start: found on request"
    response = async_to_sync(middleware)(RequestFactory().get("/static/gitdeploy/site.css"))
    assert response.status_code == 200
    response.close()
    assert async_to_sync(middleware)(RequestFactory().get("/hooks/site")) == "passed through"
