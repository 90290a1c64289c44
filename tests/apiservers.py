"""Servers on 127.0.0.1 that record what gitdeploy sends: an HTTP API and an SMTP server.

    api_server     ApiServer: .url, .on(method, path_regex, answer), .requests (each a Request)
                   answer: (status, json) or a function Request -> (status, json); unknown
                   routes get 404 {"message": "Not Found"}, as GitHub answers
    smtp_server    Inbox: .host, .port, .messages (email.message.Message, with "X-Rcpt-To"
                   holding the envelope recipients)

Both stop at teardown. The SMTP server is aiosmtpd (requirements/test.txt).
"""

from __future__ import annotations

import contextlib
import email
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.gitservers import free_port, wait_for_port

__all__ = ["ApiServer", "Inbox", "Request", "api_server", "smtp_server", "wait_until"]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: object = None


@dataclass
class ApiServer:
    url: str
    requests: list[Request] = field(default_factory=list)
    routes: list[tuple[str, re.Pattern, object]] = field(default_factory=list)

    def on(self, method: str, path: str, answer) -> None:
        """Answer requests whose path fully matches the regex ``path`` (newest route wins)."""
        self.routes.insert(0, (method, re.compile(path), answer))

    def find(self, method: str, path: str) -> list[Request]:
        pattern = re.compile(path)
        return [r for r in self.requests if r.method == method and pattern.fullmatch(r.path)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: ApiServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            document = json.loads(body) if body else None
        except ValueError:
            document = None
        request = Request(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            body,
            document,
        )
        self.api.requests.append(request)
        status, answer = 404, {"message": "Not Found"}
        for method, pattern, route in self.api.routes:
            if method == self.command and pattern.fullmatch(self.path.split("?", 1)[0]):
                result = route(request) if callable(route) else route
                status, answer = result
                break
        payload = json.dumps(answer).encode()
        with contextlib.suppress(OSError):  # a client that gave up waiting (a timeout test)
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format, *args) -> None:  # quiet
        pass


@contextlib.contextmanager
def run_api_server() -> Iterator[ApiServer]:
    api = ApiServer(url="")
    handler = type("Handler", (_Handler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        wait_for_port(server.server_address[1])
        yield api
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api_server() -> Iterator[ApiServer]:
    with run_api_server() as api:
        yield api


class Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        self.host = "127.0.0.1"
        self.port = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        message = email.message_from_bytes(envelope.content)
        message["X-Rcpt-To"] = ", ".join(envelope.rcpt_tos)
        self.messages.append(message)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[Inbox]:
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    inbox.port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, message: str = "it"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
