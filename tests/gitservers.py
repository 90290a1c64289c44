"""Real git remotes and servers on 127.0.0.1 for tests (nothing mocked).

Use from any test file:

    from tests.gitservers import *  # noqa: F403  (or import the fixtures you need by name)

Fixtures
    remote          a bare repository (tmp_path/"remote"/"repo.git", default branch "main") with one
                    commit; Remote.commit({...}, "message") -> sha, Remote.force_push_to(sha), .url
    git_daemon      git://127.0.0.1:<port>/ serving tmp_path/"remote" -> GitDaemon(.url_for(remote))
    http_server     smart HTTP (git-http-backend) with Basic auth USER/PASSWORD serving
                    tmp_path/"remote"  -> HttpGitServer(.url_for(remote), .requests)
    ssh_server      sshd on 127.0.0.1 with its own host key and a client deploy key
                    -> SshServer(.url_for(remote), .client_key); skips when /usr/sbin/sshd is absent
    hung_server     a TCP port that accepts connections and never answers -> port number

The context managers behind them (run_git_daemon, run_http_server, run_sshd, run_hung_server) can be
used directly when a test needs a server outside a fixture's lifetime. Every server is stopped at
teardown; every start waits until its port accepts connections.

Environment: all git commands here run with GIT_TERMINAL_PROMPT=0 and without user/system config.
Needs the Debian packages git (with /usr/lib/git-core/git-http-backend) and, for ssh_server,
openssh-server + openssh-client.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hmac
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gitdeploy.sync import SyncResult, SyncSpec, sync

__all__ = [
    "GIT_ENV",
    "HTTP_PASSWORD",
    "HTTP_USER",
    "Remote",
    "git",
    "git_daemon",
    "free_port",
    "hung_server",
    "http_server",
    "remote",
    "run_git_daemon",
    "run_http_server",
    "run_hung_server",
    "run_sshd",
    "ssh_server",
    "wait_for_port",
    "deploy",
]

HTTP_USER = "deployer"
HTTP_PASSWORD = "s3cr3t-T0KEN-for-tests-0123456789"  # long and unique, so a leak is easy to find
SSHD = "/usr/sbin/sshd"
HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"

GIT_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
    "LC_ALL": "C",
}


def git(*args: str | os.PathLike, cwd: str | os.PathLike | None = None) -> str:
    """Runs git (test-side, no credentials), returns stdout stripped; raises on failure."""
    result = subprocess.run(
        ["git", *map(str, args)],
        cwd=cwd,
        env=GIT_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(f"git {args} failed: {result.stderr}")
    return result.stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------------------------------
# The remote repository


class Remote:
    """A bare repository plus a scratch clone used to make commits and push them."""

    def __init__(self, root: Path, name: str = "repo.git", branch: str = "main") -> None:
        self.root = root  # the directory servers export (base path / project root)
        self.name = name
        self.path = root / name
        self.work = root.parent / f"{name}.work"
        git("init", "-q", "--bare", "-b", branch, self.path)
        # Like GitHub/GitLab: partial clone filters allowed (for GIT_FILTER tests).
        git("config", "uploadpack.allowFilter", "true", cwd=self.path)
        git("init", "-q", "-b", branch, self.work)
        git("remote", "add", "origin", self.path, cwd=self.work)
        self.branch = branch

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def commit(
        self,
        files: dict[str, str | bytes | None],
        message: str = "change",
        branch: str | None = None,
    ) -> str:
        """Writes files (None deletes), commits on branch (default: the remote's default branch),
        pushes, returns the commit's sha."""
        branch = branch or self.branch
        self._switch(branch)
        for name, content in files.items():
            path = self.work / name
            if content is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def _switch(self, branch: str) -> None:
        current = subprocess.run(
            ["git", "symbolic-ref", "--short", "HEAD"],
            cwd=self.work,
            env=GIT_ENV,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if current == branch:
            return
        exists = subprocess.run(
            ["git", "rev-parse", "--verify", "-q", f"refs/heads/{branch}"],
            cwd=self.work,
            env=GIT_ENV,
            capture_output=True,
        ).returncode
        git("checkout", "-q", *([] if exists == 0 else ["-b"]), branch, cwd=self.work)

    def force_push_to(self, sha: str, branch: str | None = None) -> None:
        """Moves branch on the remote to sha (a force push), and the scratch clone with it."""
        branch = branch or self.branch
        self._switch(branch)
        git("reset", "-q", "--hard", sha, cwd=self.work)
        git("push", "-q", "--force", "origin", f"{sha}:refs/heads/{branch}", cwd=self.work)

    def set_default_branch(self, branch: str) -> None:
        git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=self.path)

    def tip(self, branch: str | None = None) -> str:
        return git("rev-parse", f"refs/heads/{branch or self.branch}", cwd=self.path)


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    """A bare repo at tmp_path/"remote"/"repo.git" whose branch main has one commit (README.md)."""
    root = tmp_path / "remote"
    root.mkdir()
    repo = Remote(root)
    repo.commit({"README.md": "hello\n"}, "initial commit")
    return repo


# --------------------------------------------------------------------------------------------------
# git daemon


class GitDaemon:
    def __init__(self, port: int) -> None:
        self.port = port
        self.base_url = f"git://127.0.0.1:{port}"

    def url_for(self, repo: Remote) -> str:
        return f"{self.base_url}/{repo.name}"


@contextlib.contextmanager
def run_git_daemon(base_path: Path) -> Iterator[GitDaemon]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--export-all",
            f"--base-path={base_path}",
            f"--port={port}",
            "--listen=127.0.0.1",
            "--reuseaddr",
            "--informative-errors",
            str(base_path),
        ],
        env=GIT_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=proc)
        yield GitDaemon(port)
    finally:
        _stop(proc)


@pytest.fixture
def git_daemon(remote: Remote) -> Iterator[GitDaemon]:
    with run_git_daemon(remote.root) as daemon:
        yield daemon


# --------------------------------------------------------------------------------------------------
# Smart HTTP with Basic auth


class HttpGitServer:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.port = server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict] = server.requests  # type: ignore[attr-defined]

    def url_for(self, repo: Remote) -> str:
        return f"{self.base_url}/{repo.name}"


class _GitHttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep pytest output quiet
        pass

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            # git sends pushes and big fetch negotiations chunked; CGI needs a plain body.
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self):
        server = self.server
        auth = self.headers.get("Authorization", "")
        server.requests.append({"path": self.path, "authorization": bool(auth)})
        body = self._read_body()
        user = ""
        if server.auth is not None:
            expected = "Basic " + base64.b64encode(":".join(server.auth).encode()).decode()
            if not hmac.compare_digest(auth.encode(), expected.encode()):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            user = server.auth[0]
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(server.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_USER": user or "anonymous",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "GATEWAY_INTERFACE": "CGI/1.1",
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        result = subprocess.run(
            [HTTP_BACKEND], input=body, env=env, capture_output=True, timeout=60, check=False
        )
        head, sep, payload = result.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, _, payload = result.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@contextlib.contextmanager
def run_http_server(
    project_root: Path, auth: tuple[str, str] | None = (HTTP_USER, HTTP_PASSWORD)
) -> Iterator[HttpGitServer]:
    """git-http-backend behind a threaded http.server; auth=None serves without authentication."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GitHttpHandler)
    server.daemon_threads = True
    server.project_root = project_root  # type: ignore[attr-defined]
    server.auth = auth  # type: ignore[attr-defined]
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        wait_for_port(server.server_address[1])
        yield HttpGitServer(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def http_server(remote: Remote) -> Iterator[HttpGitServer]:
    """Serves remote.root over smart HTTP; Basic auth HTTP_USER / HTTP_PASSWORD required."""
    with run_http_server(remote.root) as server:
        yield server


# --------------------------------------------------------------------------------------------------
# sshd


class SshServer:
    def __init__(self, port: int, client_key: Path, user: str) -> None:
        self.port = port
        self.client_key = client_key
        self.user = user

    def url_for(self, repo: Remote) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{repo.path}"


@contextlib.contextmanager
def run_sshd(directory: Path) -> Iterator[SshServer]:
    """sshd -D on a loopback port, its own host key, one authorized client key (no passphrase)."""
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        pytest.skip(f"{SSHD} or ssh is absent: apt-get install -y openssh-server openssh-client")
    directory.mkdir(parents=True, exist_ok=True)
    host_key, client_key = directory / "host_key", directory / "client_key"
    for key in (host_key, client_key):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            check=True,
            capture_output=True,
        )
    authorized = directory / "authorized_keys"
    shutil.copy(f"{client_key}.pub", authorized)
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"PidFile {directory / 'sshd.pid'}\nAuthorizedKeysFile {authorized}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nAcceptEnv GIT_PROTOCOL\nPermitRootLogin prohibit-password\n"
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=proc)
        yield SshServer(port, client_key, pwd.getpwuid(os.getuid()).pw_name)
    finally:
        _stop(proc)


@pytest.fixture
def ssh_server(remote: Remote, tmp_path: Path) -> Iterator[SshServer]:
    with run_sshd(tmp_path / "sshd") as server:
        yield server


# --------------------------------------------------------------------------------------------------
# A server that never answers


@contextlib.contextmanager
def run_hung_server() -> Iterator[int]:
    """Accepts TCP connections and never sends a byte; yields the port."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                accepted.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        listener.close()


@pytest.fixture
def hung_server() -> Iterator[int]:
    with run_hung_server() as port:
        yield port


# --------------------------------------------------------------------------------------------------
# Calling gitdeploy.sync from tests


@dataclasses.dataclass(frozen=True)
class Deployed(SyncResult):
    """A SyncResult, and the lines sync handed to its log callable, joined (sync keeps no log)."""

    log: str = ""


def deploy(clone_url: str, target: str | os.PathLike, *, lines: list[str] | None = None, **options):
    """sync(SyncSpec(clone_url, branch "main" unless given, target, **options)) with a short
    git_timeout; returns the result with its log. Pass `lines` to keep the log of a sync that
    raises."""
    options.setdefault("branch", "main")
    options.setdefault("git_timeout", 30)
    lines = [] if lines is None else lines
    result = sync(
        SyncSpec(clone_url=clone_url, target_dir=str(target), **options), log=lines.append
    )
    return Deployed(**dataclasses.asdict(result), log="\n".join(lines))
