"""The compose stack run for real: the real docker/Dockerfile and docker/docker-compose.yml on a
Docker engine, driven the way docs/ec2.md tells a user to drive them. Run by tests/compose/run.sh
(`make compose-test`), which provides the engine and the stand-in base images.

What it proves, one numbered assertion each (see the summary it prints):
  1. the image builds, runs as uid 1000 and its HEALTHCHECK passes;
  2. `up -d` from a fresh .env made from .env.example: db, web healthy, superuser, worker running;
  3. a signed GitHub push lands the commit in ../repo, owned by the documented host user;
  4. private repositories: token file in docker/secrets/ (GIT_TOKEN_FILE), and a deploy key;
  5. `restart db` while pushes stream in: only 202/200/503, every 2xx recorded, no restarts;
  cpu. on a busy core the worker's container (git, the post-deploy command) yields to web's;
  6. `stop worker` lets a slow post-deploy command finish; a killed worker's run is recovered;
  7. the https profile with DOMAIN=localhost (Caddy's internal CA);
  8. `down -v` leaves nothing behind.
What it does not prove: the official base images' exact contents (python, postgres and caddy are
Debian-built stand-ins, see tests/compose/images/), nor Compose v2 itself when only Debian's
docker-compose 1.29 is available (it then reads a mechanically converted copy, see
compose1_copy()).

Standard library plus PyYAML (from requirements/test.txt). Every wait is bounded; on a failed
assertion the containers' logs are printed. Exit status 1 when any assertion failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PROJECT = os.environ.get("COMPOSE_TEST_PROJECT", "gitdeploy-compose-test")
IMAGE = "gitdeploy:local"  # GITDEPLOY_IMAGE's default in docker-compose.yml
APP_UID = APP_GID = 1000  # the host user docs/ec2.md names (ec2-user / ubuntu)
TOKEN_USER = "deployer"
GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Compose Test",
    "GIT_AUTHOR_EMAIL": "compose-test@example.com",
    "GIT_COMMITTER_NAME": "Compose Test",
    "GIT_COMMITTER_EMAIL": "compose-test@example.com",
    "LC_ALL": "C",
}
RESULTS: dict[str, str] = {}


class Failed(AssertionError):
    pass


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(
    cmd, *, cwd=None, env=None, timeout=300, check=True, input=None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True, input=input
    )
    if check and result.returncode != 0:
        raise Failed(
            f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
            f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}"
        )
    return result


def wait_for(what: str, probe, timeout: float, interval: float = 0.5):
    """probe() returns a true value when done; the last error or value is reported on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - reported below
            last = f"{exc.__class__.__name__}: {exc}"
        time.sleep(interval)
    raise Failed(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def check(condition, message: str) -> None:
    if not condition:
        raise Failed(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - what a published port binds
        except OSError:
            return False
        return True


# --- HTTP ------------------------------------------------------------------------------------


class _LoopbackHTTPS(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 whatever the host name resolves to; SNI and verification use the name."""

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def request(
    method, url_port, path, *, body=b"", headers=None, host="localhost", tls_ca=None, timeout=10
):
    """(status, headers, body) of one request to 127.0.0.1:port, presenting Host `host`."""
    if tls_ca:
        conn = _LoopbackHTTPS(
            host, url_port, timeout=timeout, context=ssl.create_default_context(cafile=tls_ca)
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def github_push(
    port, secret, sha, *, ref="refs/heads/main", event="push", tls_ca=None, host="localhost"
):
    """A GitHub delivery signed with X-Hub-Signature-256; returns (status, delivery id, body)."""
    payload = {
        "ref": ref,
        "before": "0" * 40,
        "after": sha,
        "repository": {"name": "app", "full_name": "example/app", "default_branch": "main"},
        "pusher": {"name": "compose-test"},
        "zen": "Keep it logically awesome." if event == "ping" else None,
    }
    body = json.dumps(payload).encode()
    delivery = str(uuid.uuid4())
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    status, _, answer = request(
        "POST",
        port,
        "/api/webhook",
        body=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature,
            "User-Agent": "GitHub-Hookshot/compose-test",
        },
        tls_ca=tls_ca,
        host=host,
    )
    return status, delivery, answer


# --- git on the host: the "Git host" the test pushes to ---------------------------------------


class Upstream:
    """A bare repository under the git server's /srv/git, committed to from a work tree here."""

    def __init__(self, git_dir: Path, name: str):
        self.bare = git_dir / f"{name}.git"
        self.work = git_dir.parent / f"work-{name}"
        self.count = 0
        run(["git", "init", "-q", "--bare", "-b", "main", str(self.bare)], env=GIT_ENV)
        run(["git", "init", "-q", "-b", "main", str(self.work)], env=GIT_ENV)
        self.git("remote", "add", "origin", str(self.bare))

    def git(self, *args) -> str:
        return run(["git", "-C", str(self.work), *args], env=GIT_ENV).stdout.strip()

    def commit(self, files: dict[str, str | None] | None = None, message: str = "") -> str:
        self.count += 1
        files = files if files is not None else {}
        files.setdefault("VERSION", f"{self.count}\n")
        for name, content in files.items():
            path = self.work / name
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(content)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message or f"commit {self.count}")
        self.git("push", "-q", "origin", "HEAD:main")
        return self.git("rev-parse", "HEAD")


# --- compose ----------------------------------------------------------------------------------


def compose_command() -> tuple[list[str], bool]:
    """(argv prefix, is_v2). Compose v2 reads the production file as it is."""
    if run(["docker", "compose", "version"], check=False).returncode == 0:
        return ["docker", "compose"], True
    if shutil.which("docker-compose"):
        return ["docker-compose"], False
    raise Failed("no Compose: neither `docker compose` nor `docker-compose` runs")


def compose1_copy(docker_dir: Path) -> Path:
    """Debian's docker-compose 1.29 refuses exactly two v2 features of docker-compose.yml. A copy
    beside it (same relative paths) with those rewritten mechanically, nothing else changed:
      - the top-level `name:` is dropped (the test passes the project name with -p anyway);
      - `env_file: [{path: .env, required: false}]` becomes `env_file: [.env]` (the test always
        writes .env, so "optional" and "required" behave the same).
    YAML anchors and merge keys are resolved by the round trip; the values are untouched."""
    source = docker_dir / "docker-compose.yml"
    data = yaml.safe_load(source.read_text())
    data.pop("name", None)
    for service in data["services"].values():
        if "env_file" in service:
            service["env_file"] = [
                item["path"] if isinstance(item, dict) else item for item in service["env_file"]
            ]
    target = docker_dir / "docker-compose.compose1.yml"
    target.write_text(
        "# Generated by tests/compose/stack_test.py from docker-compose.yml for Compose 1.29\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    return target


class Stack:
    """One checkout of the project (a copy of the work tree, as a user's clone) and its stack."""

    def __init__(self, base: Path, label: str):
        self.label = label
        self.base = base
        self.dir = base / label / "gitdeploy"
        self.docker_dir = self.dir / "docker"
        self.repo_dir = self.dir / "repo"
        self.env_file = self.docker_dir / ".env"
        files = run(
            ["git", "-C", str(ROOT), "ls-files", "-z", "-co", "--exclude-standard"], env=GIT_ENV
        ).stdout.split("\0")
        for name in filter(None, files):
            source = ROOT / name
            if source.is_file():
                target = self.dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        shutil.copy2(HERE / "docker-compose.test.yml", self.docker_dir / "docker-compose.test.yml")
        self.argv, is_v2 = compose_command()
        main = self.docker_dir / "docker-compose.yml"
        if not is_v2:
            main = compose1_copy(self.docker_dir)
        self.argv += [
            "-p",
            PROJECT,
            "-f",
            str(main),
            "-f",
            str(self.docker_dir / "docker-compose.test.yml"),
        ]
        self.env: dict[str, str] = {}
        self.extra_env = {
            "COMPOSE_TEST_GIT_DIR": str(base / "git"),
            "COMPOSE_TEST_AUTH_DIR": str(base / "auth"),
        }

    # The user's steps from docs/ec2.md §3 ------------------------------------------------------

    def configure(self, values: dict[str, str]) -> None:
        """cp .env.example .env, then set values the way a user edits the file: an existing
        `NAME=` or `# NAME=default` line is replaced, anything else is appended."""
        lines = (self.docker_dir / ".env.example").read_text().splitlines()
        pending = dict(values)
        out = []
        for line in lines:
            stripped = line.lstrip("# ").strip()
            name = stripped.split("=", 1)[0] if "=" in stripped else ""
            if name in pending and (line.startswith(f"{name}=") or line.startswith(f"# {name}=")):
                out.append(f"{name}={pending.pop(name)}")
            else:
                out.append(line)
        out += [f"{name}={value}" for name, value in pending.items()]
        self.env_file.write_text("\n".join(out) + "\n")
        self.env_file.chmod(0o600)
        self.env = dict(values)

    def make_repo_dir(self) -> None:
        """`mkdir -p ../repo` as the host user (uid 1000), as the docs say."""
        self.repo_dir.mkdir(exist_ok=True)
        os.chown(self.repo_dir, APP_UID, APP_GID)

    # Running compose ---------------------------------------------------------------------------

    def compose(self, *args, timeout=300, check=True) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.extra_env}
        env.pop("COMPOSE_PROFILES", None)  # .env decides, as it does for a user
        return run([*self.argv, *args], cwd=self.docker_dir, env=env, timeout=timeout, check=check)

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        check(cid, f"no container for service {service}")
        return cid

    def inspect(self, service: str) -> dict:
        return json.loads(run(["docker", "inspect", self.container(service)]).stdout)[0]

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        return state.get("Health", {}).get("Status", state["Status"])

    def psql(self, sql: str) -> list[list[str]]:
        out = self.compose(
            "exec",
            "-T",
            "db",
            "psql",
            "-U",
            "gitdeploy",
            "-d",
            "gitdeploy",
            "-tAF",
            "\t",
            "-c",
            sql,
        ).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def logs(self) -> None:
        print(f"\n----- container logs ({self.label}) -----", flush=True)
        result = self.compose("logs", "--no-color", "--tail", "150", timeout=60, check=False)
        print(result.stdout[-40000:], result.stderr[-2000:], flush=True)
        with contextlib.suppress(Exception):
            for row in self.psql(
                "SELECT id, status, trigger, requested_commit, error, right(log, 1500)"
                " FROM gitdeploy_syncrun ORDER BY id DESC LIMIT 3"
            ):
                print("SyncRun", " | ".join(row), flush=True)
        for service in ("db", "web", "worker", "caddy", "gitserver"):
            with contextlib.suppress(Exception):
                info = self.inspect(service)
                state, health = info["State"], info["State"].get("Health", {})
                print(
                    f"{service}: {state['Status']} restarts={info['RestartCount']} "
                    f"health={health.get('Status', '-')} "
                    f"{[entry.get('Output', '')[-300:] for entry in health.get('Log', [])[-2:]]}",
                    flush=True,
                )
        print("----- end of logs -----\n", flush=True)

    def up(self, *args, timeout=600) -> None:
        started = time.monotonic()
        self.compose("up", "-d", *args, timeout=timeout)
        say(f"`up -d` returned after {time.monotonic() - started:.0f} s")

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "30", timeout=300, check=False)


def assertion(number: str, title: str):
    """Record an assertion's outcome; the first failure in a stack aborts that stack."""

    class Section:
        def __enter__(self):
            say(f"--- {number}. {title}")

        def __exit__(self, kind, exc, tb):
            if exc is None:
                RESULTS.setdefault(number, "passed")
                say(f"    {number} passed")
                return False
            RESULTS[number] = f"FAILED: {title}"
            say(f"    {number} FAILED: {exc}")
            if not isinstance(exc, Failed):
                traceback.print_exception(kind, exc, tb)
            return False

    return Section()


# --- the stacks -------------------------------------------------------------------------------


def base_settings(git_url: str, web_port: int, http_port: int) -> dict[str, str]:
    return {
        # The first block of docs/ec2.md §3, generated as the docs say.
        "SECRET_KEY": secrets.token_urlsafe(50),
        "WEBHOOK_SECRET": secrets.token_urlsafe(32),
        "GIT_URL": git_url,
        "POSTGRES_PASSWORD": secrets.token_urlsafe(32),
        "DJANGO_SUPERUSER_USERNAME": "admin",
        "DJANGO_SUPERUSER_EMAIL": "admin@example.com",
        "DJANGO_SUPERUSER_PASSWORD": secrets.token_urlsafe(16),
        "ALLOWED_HOSTS": "localhost,127.0.0.1",
        # Test-only: web ports on loopback (the docs' 8880 and 80 may be taken on a CI machine).
        "WEB_PORT": f"127.0.0.1:{web_port}",
        "WEB_HTTP_PORT": f"127.0.0.1:{http_port}",
        # A post-deploy command whose duration the pushed commit chooses (file .slow, seconds).
        # A failing one when it has a .fail file.
        "POST_DEPLOY_COMMAND": 'test ! -f .slow || sleep "$(cat .slow)"; test ! -f .fail',
        # A killed worker's run is recovered once its lease expires: keep that short here.
        "SYNC_LEASE_SECONDS": "6",
    }


def wait_healthy_stack(stack: Stack, timeout: float = 240) -> None:
    def probe():
        states = {s: stack.health(s) for s in ("db", "web", "worker")}
        bad = {s: st for s, st in states.items() if st in ("exited", "dead", "unhealthy")}
        if bad:
            raise Failed(f"a service is down: {states}")
        return (
            states if states == {"db": "healthy", "web": "healthy", "worker": "running"} else None
        )

    states = wait_for("db healthy, web healthy, worker running", probe, timeout, interval=1)
    say(f"    services: {states}")


def head_of(repo_dir: Path) -> str:
    result = run(
        ["git", "-c", "safe.directory=*", "-C", str(repo_dir), "rev-parse", "HEAD"],
        env=GIT_ENV,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def wait_deployed(stack: Stack, sha: str, timeout: float = 60) -> float:
    started = time.monotonic()
    wait_for(f"../repo at {sha[:12]}", lambda: head_of(stack.repo_dir) == sha, timeout, 0.2)
    return time.monotonic() - started


def check_owned_by_host_user(path: Path) -> None:
    wrong = []
    for entry in [path, *path.rglob("*")]:
        info = entry.lstat()
        if (info.st_uid, info.st_gid) != (APP_UID, APP_GID):
            wrong.append(f"{entry} {info.st_uid}:{info.st_gid}")
    check(not wrong, f"not owned by {APP_UID}:{APP_GID}: {wrong[:5]} ({len(wrong)} in all)")


def run_row(stack: Stack, sha: str) -> dict[str, str]:
    check(sha.isalnum(), "not a commit id")
    columns = (
        "id, status, trigger, deployed_commit, coalesce(post_deploy_exit_code::text, ''), error"
    )
    where = f"requested_commit = '{sha}' OR deployed_commit = '{sha}'"
    query = f"SELECT {columns} FROM gitdeploy_syncrun WHERE {where} ORDER BY id DESC"  # noqa: S608
    rows = stack.psql(query + " LIMIT 1")
    if not rows:
        return {}
    keys = ("id", "status", "trigger", "deployed_commit", "exit_code", "error")
    return dict(zip(keys, rows[0], strict=False))


def ready(port: int) -> tuple[int, dict]:
    status, _, body = request("GET", port, "/api/ready")
    return status, json.loads(body)


def push_among_slow_clients(port: int, secret: str, sha: str, clients: int = 200) -> float:
    """Issue 11: slow clients took the synchronous workers down. Opens `clients` connections that
    send a header line a second and never finish, then times a signed push."""
    connections, stop = [], threading.Event()
    for _ in range(clients):
        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        connection.sendall(b"POST /api/webhook HTTP/1.1\r\nHost: localhost\r\n")
        connections.append(connection)

    def trickle() -> None:
        while not stop.wait(1.0):
            for connection in connections:
                with contextlib.suppress(OSError):
                    connection.sendall(b"X-Slow: 1\r\n")

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        time.sleep(2)
        started = time.monotonic()
        status, _, answer = github_push(port, secret, sha)
        took = time.monotonic() - started
        check(status == 202, f"push among slow clients answered {status}: {answer[:200]!r}")
        return took
    finally:
        stop.set()
        trickler.join(5)
        for connection in connections:
            connection.close()


def worker_cpu_share(stack: Stack, seconds: float = 3.0) -> float:
    """A busy loop in web's container and one in the worker's, both on one core: the worker's
    share of the CPU time the two got (its cpu_shares against web's)."""
    # Both pin themselves to the lowest core their container may use: the same one.
    busy = (
        "import os, time; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        f"end = time.monotonic() + {seconds}\n"
        "while time.monotonic() < end: pass\n"
        "print(time.process_time())"
    )
    env = {**os.environ, **stack.extra_env}
    env.pop("COMPOSE_PROFILES", None)
    loops = {
        service: subprocess.Popen(
            [*stack.argv, "exec", "-T", service, "python", "-c", busy],
            cwd=stack.docker_dir,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for service in ("web", "worker")
    }
    cpu = {}
    for service, loop in loops.items():
        out, _ = loop.communicate(timeout=seconds + 60)
        check(loop.returncode == 0, f"the busy loop in {service} exited {loop.returncode}")
        cpu[service] = float(out)
    return cpu["worker"] / (cpu["web"] + cpu["worker"])


def check_initial_state(stack: Stack, web_port: int, tip: str) -> None:
    """The state after `up -d` and before any push, as docs/ec2.md §4 describes it: the worker
    deploys the branch tip at once (an "initial" sync, no push needed), /api/ready is ok and the
    landing page shows the commit."""
    took = wait_deployed(stack, tip, 60)
    say(f"    initial sync deployed {tip[:12]} without a push ({took:.1f} s after the check began)")
    wait_for(
        "the initial run recorded as succeeded",
        lambda: (
            stack.psql("SELECT trigger, status FROM gitdeploy_syncrun")
            == [["initial", "succeeded"]]
        ),
        20,
    )
    status, body = wait_for("/api/ready 200", lambda: (r := ready(web_port))[0] == 200 and r, 60)
    check(body["status"] == "ok", f"/api/ready: {body}")
    status, _, page = request("GET", web_port, "/")
    check(
        status == 200 and tip[:7].encode() in page,
        f"landing page after the initial sync: {status}",
    )


def image_checks(workdir: Path) -> None:
    with assertion("1", "docker/Dockerfile builds; uid 1000; HEALTHCHECK passes"):
        started = time.monotonic()
        build_args = [f"--build-arg=APP_UID={APP_UID}", f"--build-arg=APP_GID={APP_GID}"]
        build = ["docker", "build", "--network=host", "-f", "docker/Dockerfile", *build_args]
        run([*build, "-t", IMAGE, "."], cwd=workdir, timeout=900)
        say(f"    built {IMAGE} in {time.monotonic() - started:.0f} s")
        info = json.loads(run(["docker", "image", "inspect", IMAGE]).stdout)[0]
        say(f"    image size: {info['Size'] / 1e6:.0f} MB")
        uid = run(["docker", "run", "--rm", "--entrypoint", "id", IMAGE, "-u"]).stdout.strip()
        gid = run(["docker", "run", "--rm", "--entrypoint", "id", IMAGE, "-g"]).stdout.strip()
        check((uid, gid) == (str(APP_UID), str(APP_GID)), f"image runs as {uid}:{gid}")
        check(info["Config"].get("Healthcheck", {}).get("Test"), "the image has no HEALTHCHECK")
        # The image's own HEALTHCHECK command, probed every 2 s instead of 30 s to save time.
        name = f"{PROJECT}-healthcheck"
        run(["docker", "rm", "-f", name], check=False)
        label = f"--label=com.docker.compose.project={PROJECT}"  # removed by run.sh if left over
        secret_key = f"SECRET_KEY={secrets.token_urlsafe(50)}"
        options = ["--health-interval=2s", "-e", secret_key, "-e", "RUN_MIGRATIONS=true"]
        run(["docker", "run", "-d", "--name", name, label, *options, IMAGE])
        try:

            def healthy():
                state = json.loads(run(["docker", "inspect", name]).stdout)[0]["State"]
                if state["Status"] != "running":
                    raise Failed(f"container {state['Status']}")
                return state["Health"]["Status"] == "healthy"

            try:
                wait_for("the image's HEALTHCHECK to pass", healthy, 90, 1)
            except Failed:
                print(run(["docker", "logs", name], check=False).stderr[-5000:])
                raise
        finally:
            run(["docker", "rm", "-f", name], check=False)


def public_stack(workdir: Path, upstream_dir: Path) -> None:
    stack = Stack(workdir, "public")
    upstream = Upstream(upstream_dir, "app")
    first = upstream.commit({"README.md": "hello from the compose test\n"}, "first")
    web_port, http_port = free_port(), free_port()
    stack.configure(base_settings("git://gitserver/app.git", web_port, http_port))
    stack.make_repo_dir()
    secret = stack.env["WEBHOOK_SECRET"]
    try:
        with assertion(
            "2", "up -d from a fresh .env: db healthy, web healthy (migrated), worker running"
        ):
            stack.up()
            wait_healthy_stack(stack)
            users = stack.psql("SELECT username FROM auth_user WHERE is_superuser")
            check(users == [["admin"]], f"superuser from DJANGO_SUPERUSER_*: {users}")
            migrated = stack.psql("SELECT count(*) FROM django_migrations WHERE app = 'gitdeploy'")
            check(int(migrated[0][0]) > 0, "gitdeploy's migrations are not applied")

        with assertion(
            "3", "a signed GitHub push lands in ../repo, owned by uid 1000, within seconds"
        ):
            check_initial_state(stack, web_port, first)
            # GitHub's ping when the webhook is added: 200, recorded as ignored, no sync.
            status, ping, answer = github_push(web_port, secret, first, event="ping")
            check(status == 200, f"ping answered {status}: {answer[:300]!r}")
            rows = stack.psql(
                f"SELECT verdict FROM gitdeploy_delivery WHERE delivery_id = '{ping}'"  # noqa: S608
            )
            check(rows == [["ignored"]], f"the ping's Delivery row: {rows}")
            runs = stack.psql("SELECT count(*) FROM gitdeploy_syncrun")
            check(runs == [["1"]], f"a ping started a sync: {runs}")
            # The first push, on the seed port and on the docs' plain-HTTP port.
            pushed = upstream.commit({"pushed.txt": "first push\n"}, "first push")
            status, delivery, answer = github_push(web_port, secret, pushed)
            check(status == 202, f"push answered {status}: {answer[:300]!r}")
            took = wait_deployed(stack, pushed, 30)
            say(f"    deployed {pushed[:12]} {took:.1f} s after the 202")
            check(took < 10, f"the first deploy took {took:.1f} s")
            check(
                (stack.repo_dir / "README.md").read_text() == "hello from the compose test\n",
                "content",
            )
            check_owned_by_host_user(stack.repo_dir)
            second = upstream.commit({"app.txt": "second\n"})
            status, _, answer = github_push(http_port, secret, second)
            check(status == 202, f"push on WEB_HTTP_PORT answered {status}")
            wait_deployed(stack, second, 30)
            check_owned_by_host_user(stack.repo_dir)
            wait_for(
                "the run recorded as succeeded",
                lambda: run_row(stack, second).get("status") == "succeeded",
                20,
            )
            rows = stack.psql(
                "SELECT status_code, verdict FROM gitdeploy_delivery"  # noqa: S608 - a uuid4
                f" WHERE delivery_id = '{delivery}'"
            )
            check(rows and rows[0][0] == "202", f"Delivery row of the first push: {rows}")
            status, _, page = request("GET", web_port, "/")
            check(
                status == 200 and second[:7].encode() in page,
                "landing page does not show the deployed commit",
            )
            status, body = ready(web_port)
            check(status == 200 and body["status"] == "ok", f"/api/ready after the deploy: {body}")

            # A failed run (the post-deploy command fails): what `docker compose logs worker` shows
            # (docs/ec2.md §8), and the run's own log in the database (the admin's Sync runs).
            failing = upstream.commit({".fail": "1\n"}, "post-deploy fails")
            since = str(int(time.time()) - 1)
            check(github_push(web_port, secret, failing)[0] == 202, "push not accepted")
            wait_for(
                "the run to fail",
                lambda: run_row(stack, failing).get("status") == "failed",
                30,
            )
            row = run_row(stack, failing)
            say(f"    failed run: exit code {row['exit_code']}, error {row['error']!r}")
            check(row["exit_code"] == "1", f"post-deploy exit code of the failed run: {row}")
            shown = run(["docker", "logs", "--since", since, stack.container("worker")])
            worker_log = shown.stdout + shown.stderr
            say("    `docker compose logs worker` for it:\n" + worker_log.rstrip())
            check(
                f"sync run #{row['id']} failed" in worker_log,
                "the worker's log does not say the run failed",
            )
            current = upstream.commit({".fail": None}, "post-deploy fixed")
            check(github_push(web_port, secret, current)[0] == 202, "push not accepted")
            wait_deployed(stack, current, 30)

        with assertion(
            "slow", "200 clients trickling headers to the published port: a signed push still lands"
        ):
            took = push_among_slow_clients(web_port, secret, upstream.commit())
            say(f"    signed push answered in {took * 1000:.0f} ms with 200 slow clients open")
            check(took < 10, f"the push took {took:.1f} s among slow clients (was > 60 s)")

        with assertion("cpu", "on a busy core the worker's container yields to web's"):
            worker_share = worker_cpu_share(stack)
            say(f"    the worker's share of one busy core against web: {worker_share:.0%}")
            check(worker_share < 0.35, f"the worker took {worker_share:.0%} of the core")

        with assertion(
            "5", "restart db while signed pushes stream in: 202 or 503 only, every 2xx recorded"
        ):
            before = {s: stack.inspect(s)["State"]["StartedAt"] for s in ("web", "worker")}
            answers: list[tuple[int, str, str]] = []
            stop = threading.Event()

            def stream():
                while not stop.is_set():
                    sha = upstream.commit()
                    try:
                        status, delivery, _ = github_push(web_port, secret, sha)
                    except OSError as exc:
                        answers.append((0, "", f"{exc.__class__.__name__}: {exc}"))
                    else:
                        answers.append((status, delivery, sha))
                    time.sleep(0.1)

            sender = threading.Thread(target=stream, daemon=True)
            sender.start()
            time.sleep(2)
            stack.compose("restart", "db", timeout=120)
            say("    db restarted")
            wait_for("db healthy again", lambda: stack.health("db") == "healthy", 90, 1)
            time.sleep(3)
            stop.set()
            sender.join(30)
            codes = sorted({status for status, _, _ in answers})
            say(
                f"    {len(answers)} pushes, answers {codes}, "
                f"{sum(1 for s, _, _ in answers if s == 503)} × 503"
            )
            check(
                set(codes) <= {202, 503},
                f"unexpected answers: {[a for a in answers if a[0] not in (202, 503)][:5]}",
            )
            accepted = [delivery for status, delivery, _ in answers if 200 <= status < 300]
            recorded = {row[0] for row in stack.psql("SELECT delivery_id FROM gitdeploy_delivery")}
            missing = [d for d in accepted if d not in recorded]
            check(not missing, f"{len(missing)} answered 2xx without a Delivery row: {missing[:3]}")
            after = {s: stack.inspect(s)["State"]["StartedAt"] for s in ("web", "worker")}
            restarts = {s: stack.inspect(s)["RestartCount"] for s in ("web", "worker")}
            check(restarts == {"web": 0, "worker": 0}, f"restarts: {restarts}")
            check(before == after, f"web or worker was restarted: {before} → {after}")
            current = upstream.commit({"after-restart.txt": "ok\n"})
            status, _, _ = github_push(web_port, secret, current)
            check(status == 202, f"push after the db restart answered {status}")
            wait_deployed(stack, current, 60)
            wait_for(
                "/api/ready 200 after the db restart", lambda: ready(web_port)[0] == 200, 60, 1
            )

        with assertion(
            "6",
            "stop worker lets a slow post-deploy command finish; a killed worker's run recovers",
        ):
            # Longer than Docker's default 10 s stop timeout: only stop_grace_period lets it finish.
            slow = upstream.commit({".slow": "16\n"}, "slow post-deploy")
            check(github_push(web_port, secret, slow)[0] == 202, "push not accepted")
            wait_deployed(stack, slow, 30)  # checked out: the post-deploy command is sleeping now
            started = time.monotonic()
            stack.compose("stop", "worker", timeout=720)
            took = time.monotonic() - started
            row = run_row(stack, slow)
            say(f"    `stop worker` took {took:.1f} s; run: {row}")
            check(
                row.get("status") == "succeeded" and row.get("exit_code") == "0",
                f"run after stop: {row}",
            )
            check(took > 11, f"stop returned after {took:.1f} s: it did not wait for the sync")
            stack.compose("start", "worker")
            killed = upstream.commit({".slow": "30\n"}, "killed mid-sync")
            check(github_push(web_port, secret, killed)[0] == 202, "push not accepted")
            wait_deployed(stack, killed, 30)
            wait_for(
                "the run to be running",
                lambda: run_row(stack, killed).get("status") == "running",
                10,
            )
            killed_id = run_row(stack, killed)["id"]
            stack.compose("kill", "worker")
            say(f"    worker killed mid-sync (SIGKILL), run #{killed_id} left running")
            stack.compose("start", "worker")
            final = upstream.commit(
                {".slow": None, "final.txt": "after the kill\n"}, "after the kill"
            )

            def killed_run_status():
                where = f"id = {int(killed_id)}"
                rows = stack.psql(f"SELECT status, error FROM gitdeploy_syncrun WHERE {where}")  # noqa: S608
                return rows[0] if rows and rows[0][0] != "running" else None

            status, error = wait_for("the killed run to be recovered", killed_run_status, 120, 1)
            retry = run_row(stack, killed)
            say(f"    run #{killed_id} recovered as {status} ({error}); then {retry}")
            check(
                github_push(web_port, secret, final)[0] in (200, 202),
                "push after the kill not accepted",
            )
            wait_deployed(stack, final, 120)
            wait_for(
                "the last run succeeded",
                lambda: run_row(stack, final).get("status") == "succeeded",
                60,
            )
            stuck = stack.psql("SELECT id FROM gitdeploy_syncrun WHERE status = 'running'")
            check(not stuck, f"runs left running: {stuck}")
    except Exception:
        stack.logs()
        raise
    finally:
        stack.down()
        check_nothing_left()


def private_stack(workdir: Path, upstream_dir: Path) -> None:
    """docs/ec2.md "Private repositories": an HTTPS token, then (a fresh server) a deploy key."""
    token = (workdir / "auth" / "password").read_text().strip()
    upstream = Upstream(upstream_dir, "private")
    failed = None
    for case in ("token", "deploy key"):
        try:
            private_case(workdir, upstream, token, case)
        except Failed as exc:
            failed = failed or exc
    if failed:
        raise failed


def private_case(workdir: Path, upstream: Upstream, token: str, case: str) -> None:
    stack = Stack(workdir, f"private-{case.replace(' ', '-')}")
    secrets_dir = stack.docker_dir / "secrets"
    web_port, http_port = free_port(), free_port()
    if case == "token":
        git_url = "http://gitserver:8080/private.git"
        (secrets_dir / "git_token").write_text(token + "\n")
        settings = {"GIT_TOKEN_FILE": "/run/secrets/gitdeploy/git_token"}
    else:
        git_url = "ssh://git@gitserver/srv/git/private.git"
        key = secrets_dir / "deploy_key"
        # As docs/ec2.md says: ssh-keygen -t ed25519 -N '' -C gitdeploy@<host> -f secrets/deploy_key
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gitdeploy@test", "-f"]
        run([*keygen, str(key)])
        host_key = (workdir / "auth" / "ssh_host_ed25519_key.pub").read_text().split()
        (secrets_dir / "known_hosts").write_text(f"gitserver {host_key[0]} {host_key[1]}\n")
        shutil.copy(key.with_suffix(".pub"), workdir / "auth" / "authorized_keys")
        settings = {
            "GIT_SSH_KEY_FILE": "/run/secrets/gitdeploy/deploy_key",
            "GIT_SSH_KNOWN_HOSTS_FILE": "/run/secrets/gitdeploy/known_hosts",
        }
    # Written by the host user with chmod 600, as the docs say.
    for path in secrets_dir.iterdir():
        if path.name != ".gitignore":
            path.chmod(0o600)
            os.chown(path, APP_UID, APP_GID)
    stack.configure({**base_settings(git_url, web_port, http_port), **settings})
    stack.make_repo_dir()
    try:
        with assertion("4", f"private repository ({case}): the stack comes up and deploys"):
            stack.up()
            wait_healthy_stack(stack)
            sha = upstream.commit({"secret.txt": f"only with the {case}\n"})
            status, _, answer = github_push(web_port, stack.env["WEBHOOK_SECRET"], sha)
            check(status == 202, f"push answered {status}: {answer[:300]!r}")
            wait_deployed(stack, sha, 30)
            check_owned_by_host_user(stack.repo_dir)
            logs = stack.compose("logs", "--no-color").stdout
            check(token not in logs, "the token appears in the containers' logs")
            runs = stack.psql(
                f"SELECT count(*) FROM gitdeploy_syncrun WHERE log LIKE '%{token}%'"  # noqa: S608
            )
            check(runs == [["0"]], "the token appears in a SyncRun's log")
        if case == "token":
            change_postgres_password(stack, upstream)
    except Exception:
        stack.logs()
        raise
    finally:
        stack.down()
        check_nothing_left()


def change_postgres_password(stack: Stack, upstream: Upstream) -> None:
    """docs/ec2.md "Day-to-day": a new POSTGRES_PASSWORD is set in the database first (the volume
    keeps the one from the first `up`), then in .env; `up -d` and everything works again."""
    with assertion("docs", "changing POSTGRES_PASSWORD the way docs/ec2.md says"):
        new = secrets.token_urlsafe(32)
        stack.compose(
            "exec", "-T", "db", "psql", "-U", "gitdeploy", "-d", "gitdeploy",
            "-c", f"ALTER USER gitdeploy PASSWORD '{new}'",
        )  # fmt: skip
        stack.configure({**stack.env, "POSTGRES_PASSWORD": new})
        stack.up()
        wait_healthy_stack(stack)
        web_port = int(stack.env["WEB_PORT"].rpartition(":")[2])
        sha = upstream.commit({"after-password-change.txt": "ok\n"})
        status, _, _ = github_push(web_port, stack.env["WEBHOOK_SECRET"], sha)
        check(status == 202, f"push after the password change answered {status}")
        wait_deployed(stack, sha, 30)


def https_stack(workdir: Path, upstream_dir: Path) -> None:
    """docs/ec2.md §5 with DOMAIN=localhost: Caddy's internal CA instead of Let's Encrypt."""
    stack = Stack(workdir, "https")
    upstream = Upstream(upstream_dir, "https")
    for port in (80, 443, 8880, 8080):
        check(port_is_free(port), f"port {port} is taken on this machine: the https test needs it")
    settings = base_settings("git://gitserver/https.git", 8880, 8080)
    settings.update(
        {
            "COMPOSE_PROFILES": "https",
            "DOMAIN": "localhost",
            "HTTPS": "true",
            "ALLOWED_HOSTS": "localhost",
            "CSRF_TRUSTED_ORIGINS": "https://localhost",
            "WEB_PORT": "127.0.0.1:8880",
            "WEB_HTTP_PORT": "127.0.0.1:8080",
        }
    )
    stack.configure(settings)
    stack.make_repo_dir()
    initial = upstream.commit({"tls.txt": "initial\n"}, "initial")
    ca = workdir / "caddy-root.crt"
    try:
        with assertion(
            "7", "https profile: HTTPS landing page and webhook, HTTP redirects, web on 127.0.0.1"
        ):
            stack.up()
            wait_healthy_stack(stack)
            check(stack.inspect("caddy")["State"]["Status"] == "running", "caddy is not running")
            bindings = stack.inspect("web")["HostConfig"]["PortBindings"]
            hosts = {b["HostIp"] for entries in bindings.values() for b in entries}
            check(hosts == {"127.0.0.1"}, f"web ports are bound to {hosts}: {bindings}")

            def fetch_ca():
                cert = stack.compose(
                    "exec",
                    "-T",
                    "caddy",
                    "cat",
                    "/data/caddy/pki/authorities/local/root.crt",
                    check=False,
                ).stdout
                if "BEGIN CERTIFICATE" in cert:
                    ca.write_text(cert)
                    return True
                return False

            wait_for("Caddy's internal CA", fetch_ca, 60, 1)
            status, _, page = wait_for(
                "the landing page over HTTPS",
                lambda: (r := request("GET", 443, "/", tls_ca=ca))[0] == 200 and r,
                60,
                1,
            )
            wait_deployed(stack, initial, 60)  # the initial sync, at start
            status, _, page = request("GET", 443, "/", tls_ca=ca)
            check(initial[:7].encode() in page, "landing page over HTTPS")
            # A sync started by hand, as docs/ec2.md §4 says.
            first = upstream.commit({"tls.txt": "first, by hand\n"})
            shown = stack.compose("exec", "-T", "worker", "python", "manage.py", "sync", "default")
            check(first in shown.stdout + shown.stderr, "manage.py sync did not print the commit")
            wait_deployed(stack, first, 5)
            check_owned_by_host_user(stack.repo_dir)
            sha = upstream.commit({"tls.txt": "over https\n"})
            status, _, answer = github_push(443, stack.env["WEBHOOK_SECRET"], sha, tls_ca=ca)
            check(status == 202, f"signed webhook over HTTPS answered {status}: {answer[:300]!r}")
            wait_deployed(stack, sha, 30)
            status, headers, _ = request("GET", 80, "/api/webhook")
            location = headers.get("Location", "")
            check(
                status in (301, 302, 307, 308) and location.startswith("https://localhost"),
                f"plain HTTP on port 80 answered {status} {location!r}",
            )
            status, _, page = request("GET", 443, "/", tls_ca=ca)
            check(
                status == 200 and sha[:7].encode() in page,
                "the landing page over HTTPS shows the commit",
            )
    except Exception:
        stack.logs()
        raise
    finally:
        stack.down()
        check_nothing_left()


def check_nothing_left() -> None:
    with assertion("8", "down -v leaves nothing running"):
        label = f"label=com.docker.compose.project={PROJECT}"
        for kind in ("container", "volume", "network"):
            args = ["docker", kind, "ls", "-q", "--filter", label] + (
                ["-a"] if kind == "container" else []
            )
            left = run(args).stdout.split()
            check(not left, f"{kind}s left after down -v: {left}")


STACKS = {"public": public_stack, "private": private_stack, "https": https_stack}


def main() -> int:
    """Arguments: the stacks to run (default: all of them, in order)."""
    chosen = sys.argv[1:] or list(STACKS)
    unknown = set(chosen) - set(STACKS)
    if unknown:
        print(f"unknown stacks {sorted(unknown)}; choose from {list(STACKS)}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="gitdeploy-compose-"))
    os.chmod(workdir, 0o755)  # noqa: S103 - the containers' users traverse it to the mounts
    upstream_dir = workdir / "git"
    upstream_dir.mkdir()
    auth = workdir / "auth"
    auth.mkdir()
    (auth / "password").write_text(secrets.token_urlsafe(24) + "\n")
    (auth / "authorized_keys").write_text("")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(auth / "ssh_host_ed25519_key")])
    started = time.monotonic()
    try:
        image_checks(Stack(workdir, "build").dir)
        if RESULTS.get("1") == "passed":
            for name in chosen:
                try:
                    STACKS[name](workdir, upstream_dir)
                except Failed:
                    pass  # recorded and explained by its assertion
                except Exception:  # noqa: BLE001 - a bug in the test itself: say so, go on
                    traceback.print_exc()
                    RESULTS.setdefault(f"{name} stack", "FAILED: error in the test")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n==> compose-test summary", flush=True)
    numbers = sorted(set("12345678" if chosen == list(STACKS) else "") | set(RESULTS))
    for number in numbers:
        print(f"  {number}: {RESULTS.get(number, 'not run')}")
    print(f"  stacks: {' '.join(chosen)}; {time.monotonic() - started:.0f} s")
    failed = [n for n in numbers if RESULTS.get(n, "not run") != "passed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
