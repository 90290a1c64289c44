"""Real processes for the reliability suite: gunicorn serving the project, raw HTTP requests to
it, `manage.py db_worker`, and the seed every randomised test prints (RELIABILITY_SEED)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PROJECT_ROOT
from tests.gitservers import free_port


def seed(name: str) -> int:
    """RELIABILITY_SEED when set (to replay a failure), else a fresh one; printed either way."""
    value = int(os.environ.get("RELIABILITY_SEED") or random.SystemRandom().randrange(2**32))
    print(f"{name}: RELIABILITY_SEED={value}")
    return value


@dataclass
class Gunicorn:
    port: int
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def gunicorn(env: dict, log: Path, workers: int = 1) -> Iterator[Gunicorn]:
    port = free_port()
    with open(log, "wb") as out:
        # As gitdeploy serves itself: gunicorn.conf.py in the project directory.
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn")],
            cwd=PROJECT_ROOT,
            env={**env, "WEB_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(workers)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Gunicorn(port, proc, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("gunicorn did not start:\n" + server.output()) from None
                time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def http_request(port: int, raw: bytes, timeout: float = 20) -> Answer:
    """Sends the bytes as they are; reads the whole answer (the request says Connection: close).
    The sending side stays open, as a Git host's does: under ASGI, a client that half-closes is a
    client that went away, and Django drops its request."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(raw)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split(" ", 2)[1]), headers, body)


def post(port: int, path: str, headers: dict[str, str], body: bytes, timeout: float = 20) -> Answer:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return http_request(port, head.encode("latin-1") + b"\r\n" + body, timeout)


class WorkerProcess:
    """`manage.py db_worker` with its output in a file."""

    def __init__(self, env: dict, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "db_worker", "--worker-id", name],
                cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def wait_for(predicate, timeout: float = 60.0, message: str = "condition", interval: float = 0.05):
    """predicate()'s first true value, polled every `interval` seconds; AssertionError (naming
    `message`) after `timeout`. The one such helper of the test suite."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
