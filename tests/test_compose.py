"""The Docker stack, proven without a Docker engine.

The compose file is validated against the Compose Specification's JSON Schema and then checked for
what the schema cannot see (ports, volumes, ordering, variables). The wiring test runs the web and
worker services' own entrypoint and command on the host, with the environment compose would give
them, and sends a signed push through the whole chain: gunicorn → Delivery → queue → worker → git.
"""

import hashlib
import hmac
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = PROJECT_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
SCHEMA_FILE = PROJECT_ROOT / "tests" / "fixtures" / "compose-spec" / "compose-spec.json"
IN_CI = os.environ.get("CI", "").lower() == "true"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME; $$ is "$".
VARIABLE_RE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
ENV_LINE_RE = re.compile(r"^(?P<comment>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


# --- Reading the stack's files, the way compose and Docker read them ---------------------------


def parse_env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(active, documented): active lines are what compose passes on; `# NAME=default` lines only
    document a default. Anything else must be a comment or blank, or the file does not parse."""
    active: dict[str, str] = {}
    documented: dict[str, str] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), start=1):
        stripped = line.strip()
        match = ENV_LINE_RE.match(stripped)
        if match:
            name, value = match["name"], match["value"]
            assert name not in documented, f".env.example:{number}: {name} listed twice"
            documented[name] = value
            if not match["comment"]:
                assert not value.startswith(("'", '"')), f".env.example:{number}: no quotes"
                active[name] = value
        else:
            assert stripped == "" or stripped.startswith("#"), (
                f".env.example:{number} is neither NAME=value nor a comment: {line!r}"
            )
    return active, documented


def interpolate(value, variables: dict[str, str]):
    """Compose's variable interpolation, applied to every string of the parsed file."""
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"]
        current = variables.get(name)
        if op in (":-", ":?"):
            missing = not current
        else:
            missing = current is None
        if op and op.endswith("-") and missing:
            return arg
        if op and op.endswith("?") and missing:
            raise AssertionError(f"${{{name}}} is required: {arg}")
        return current or ""

    return VARIABLE_RE.sub(substitute, value)


def used_variables(text: str) -> list[tuple[str, str | None]]:
    """(name, operator) of every variable the compose file interpolates."""
    return [
        (m["braced"] or m["bare"], m["op"]) for m in VARIABLE_RE.finditer(text) if not m["escaped"]
    ]


def load_compose(variables: dict[str, str] | None = None) -> dict:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    if variables is None:
        variables, _ = parse_env_example()
    return interpolate(raw, variables)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#") and not pending:
            continue
        if line.strip().startswith("#"):
            continue  # a comment inside a continued instruction
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def duration_seconds(value: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def settings_variables() -> set[str]:
    """Every environment variable project/settings.py reads, including NAME_FILE for env_str."""
    source = (PROJECT_ROOT / "project" / "settings.py").read_text()
    names = set(re.findall(r"os\.environ\.get\(\s*\"([A-Z][A-Z0-9_]*)\"", source))
    names |= set(re.findall(r"env_(?:bool|int|float|list)\(\s*\"([A-Z][A-Z0-9_]*)\"", source))
    for name in re.findall(r"env_str\(\s*\"([A-Z][A-Z0-9_]*)\"", source):
        names |= {name, f"{name}_FILE"}
    return names


# --- The compose file --------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification():
    schema = json.loads(SCHEMA_FILE.read_text())
    # The schema declares draft-07 (as "https://json-schema.org/draft-07/schema", without the "#"
    # that jsonschema's lookup expects).
    assert "draft-07" in schema["$schema"]
    validator_class = jsonschema.Draft7Validator
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    for label, document in (
        ("as written", yaml.safe_load(COMPOSE_FILE.read_text())),
        ("after interpolation with .env.example", load_compose()),
    ):
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        assert not errors, f"{label}:\n" + "\n".join(
            f"  {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_every_compose_variable_has_a_default_or_is_in_env_example():
    _, documented = parse_env_example()
    undefined = sorted(
        {
            name
            for name, op in used_variables(COMPOSE_FILE.read_text())
            if not (op and op.endswith("-")) and name not in documented
        }
    )
    assert not undefined, f"set a default (${{NAME:-x}}) or list in .env.example: {undefined}"
    listed = {name for name, _ in used_variables(COMPOSE_FILE.read_text())}
    assert listed - set(documented) == set(), "document every compose variable in .env.example"


def test_env_example_lists_every_variable_settings_reads():
    _, documented = parse_env_example()
    missing = sorted(settings_variables() - set(documented))
    assert not missing, f"add to docker/.env.example: {missing}"


def test_env_example_leaves_every_optional_setting_at_its_default():
    # An active `NAME=` line with an empty value would override a non-empty default (TIME_ZONE=""
    # breaks Django); only the values a server must set are active, and they start empty.
    active, _ = parse_env_example()
    assert set(active) == {"SECRET_KEY", "WEBHOOK_SECRET", "GIT_URL", "POSTGRES_PASSWORD"}
    assert all(value == "" for value in active.values())


def test_web_and_worker_share_the_seed_repo_volume():
    services = load_compose()["services"]
    for name in ("web", "worker"):
        assert "../repo:/app/repo" in services[name]["volumes"], name
        assert services[name]["image"] == services["web"]["image"]
        assert services[name]["build"] == {
            "context": "..",
            "dockerfile": "docker/Dockerfile",
            "args": services[name]["build"]["args"],
        }


def test_web_publishes_the_seed_ports():
    web = load_compose()["services"]["web"]
    assert {"8880:8880", "80:8880"} <= set(web["ports"])
    assert web["command"] == ["gunicorn"]  # gunicorn.conf.py, bound to WEB_BIND
    assert dockerfile_env()["WEB_BIND"] == "0.0.0.0:8880"


def test_plain_http_is_never_published_on_443():
    services = load_compose()["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            published, _, target = str(port).rpartition(":")
            if published.endswith("443"):
                assert name == "caddy" and target.startswith("443"), (name, port)


def test_caddy_is_optional_behind_the_https_profile():
    services = load_compose()["services"]
    assert services["caddy"]["profiles"] == ["https"]
    assert all("profiles" not in services[name] for name in ("db", "web", "worker"))
    assert "DOMAIN" in services["caddy"]["environment"]
    caddyfile = (DOCKER_DIR / "Caddyfile").read_text()
    assert "{$DOMAIN" in caddyfile and "reverse_proxy web:8880" in caddyfile


def test_services_start_in_order_on_a_healthy_database():
    services = load_compose()["services"]
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert re.fullmatch(r"postgres:\d+(\.\d+)?(-[a-z0-9]+)?", services["db"]["image"])
    for name in ("web", "worker"):
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy", name
    # web migrates before it becomes healthy; the worker starts after that.
    assert services["worker"]["depends_on"]["web"]["condition"] == "service_healthy"
    assert services["web"]["environment"]["RUN_MIGRATIONS"] == "true"
    assert services["worker"]["environment"]["RUN_MIGRATIONS"] == "false"


def test_worker_outlives_a_slow_sync_on_stop():
    worker = load_compose()["services"]["worker"]
    grace = duration_seconds(worker["stop_grace_period"])
    # POST_DEPLOY_TIMEOUT and GIT_TIMEOUT default to 600 s (project/settings.py).
    source = (PROJECT_ROOT / "project" / "settings.py").read_text()
    for name in ("POST_DEPLOY_TIMEOUT", "GIT_TIMEOUT"):
        default = re.search(rf'env_float\("{name}",\s*([\d.]+)', source)
        assert default, name
        assert grace > float(default[1]), f"stop_grace_period {grace} s <= {name}"
    assert worker["init"] is True
    assert worker["command"][:3] == ["python", "manage.py", "db_worker"]


def test_every_service_reads_env_file_optionally():
    services = load_compose()["services"]
    for name in ("web", "worker"):
        assert services[name]["env_file"] == [{"path": ".env", "required": False}], name


def test_deploy_key_reaches_only_the_worker_read_only():
    services = load_compose()["services"]
    assert "./secrets:/run/secrets/gitdeploy:ro" in services["worker"]["volumes"]
    assert not any("secrets" in v for v in services["web"]["volumes"])
    assert (DOCKER_DIR / "secrets" / ".gitignore").read_text().splitlines()[1:] == [
        "*",
        "!.gitignore",
    ]


# --- The image -------------------------------------------------------------------------------


def test_dockerfile_builds_a_pinned_non_root_image_with_a_healthcheck():
    instructions = dockerfile_instructions()
    by_keyword: dict[str, list[str]] = {}
    for keyword, arguments in instructions:
        by_keyword.setdefault(keyword, []).append(arguments)
    (base,) = by_keyword["FROM"]
    assert re.fullmatch(r"python:3\.1[12]\.\d+-slim(-[a-z]+)?", base), base
    user = by_keyword["USER"][-1]
    assert user not in {"root", "0"} and not user.startswith("0:")
    assert "8880" in by_keyword["EXPOSE"]
    healthcheck = by_keyword["HEALTHCHECK"][-1]
    assert "healthcheck.py" in healthcheck
    assert "/api/health" in (DOCKER_DIR / "healthcheck.py").read_text()
    runs = " ".join(by_keyword["RUN"])
    assert "--no-install-recommends" in runs and "rm -rf /var/lib/apt/lists/*" in runs
    assert "git openssh-client" in runs
    assert "pip install --no-cache-dir -r requirements/base.txt" in runs
    assert "collectstatic --noinput" in runs
    assert "chown gitdeploy:gitdeploy /app/repo /app/data" in runs
    assert json.loads(by_keyword["ENTRYPOINT"][-1]) == ["/app/docker/entrypoint.sh"]
    cmd = json.loads(by_keyword["CMD"][-1])
    assert cmd == load_compose()["services"]["web"]["command"]
    # The throwaway collectstatic key must not become part of the image's environment.
    assert "SECRET_KEY" not in dockerfile_env()


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_image():
    patterns = {
        line.strip()
        for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (
        ".venv",
        "data/",
        "*.sqlite3",
        "repo/",
        ".git",
        "test-output/",
        "staticfiles/",
    ):
        assert required in patterns, required
    assert {"**/.env", "docker/secrets/"} <= patterns


def _shellcheck_or_skip() -> str:
    path = shutil.which("shellcheck")
    if path is None:
        if IN_CI:
            pytest.fail("shellcheck is not installed (CI=true): apt-get install -y shellcheck")
        pytest.skip("shellcheck is not installed")
    return path


@pytest.mark.parametrize("script", ["entrypoint.sh", "install-docker.sh"])
def test_shell_scripts_pass_shellcheck(script):
    shellcheck = _shellcheck_or_skip()
    result = subprocess.run(
        [shellcheck, "--shell=sh", "--severity=style", str(DOCKER_DIR / script)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_run_lines_pass_shellcheck(tmp_path):
    shellcheck = _shellcheck_or_skip()
    runs = [args for keyword, args in dockerfile_instructions() if keyword == "RUN"]
    script = tmp_path / "run-lines.sh"
    script.write_text("#!/bin/sh\n" + "\n".join(runs) + "\n")
    result = subprocess.run(
        [shellcheck, "--shell=sh", str(script)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_executable():
    for script in ("entrypoint.sh", "install-docker.sh"):
        assert os.access(DOCKER_DIR / script, os.X_OK), script


# --- The wiring: web and worker run as compose would run them, on the host ---------------------

WEBHOOK_TEST_SECRET = "compose-wiring-webhook-secret"
POSTGRES_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
# Where the image's paths land on the host: volumes and build output in tmp_path, the code in the
# project itself.
CONTAINER_VOLUMES = ("/app/repo", "/app/data", "/app/staticfiles")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def git(*args, cwd=None) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Compose Test",
        "GIT_AUTHOR_EMAIL": "compose@example.com",
        "GIT_COMMITTER_NAME": "Compose Test",
        "GIT_COMMITTER_EMAIL": "compose@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
    }
    result = subprocess.run(
        ["git", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, f"git {args}: {result.stderr}"
    return result.stdout.strip()


@pytest.fixture
def compose_database():
    """A fresh database on the local Postgres, standing in for the compose `db` service."""
    psycopg = pytest.importorskip("psycopg")
    from psycopg import sql

    try:
        admin = psycopg.connect(**POSTGRES_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = f"Postgres on 127.0.0.1:5432 (user postgres) is unreachable: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    name = f"gitdeploy_compose_{uuid.uuid4().hex[:12]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgres://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.close()


def host_path(value: str, tmp_path: Path) -> str:
    for volume in CONTAINER_VOLUMES:
        if value == volume or value.startswith(volume + "/"):
            return str(tmp_path / "volumes") + value
    if value.startswith("/app/"):
        return str(PROJECT_ROOT / value.removeprefix("/app/"))
    return value


def service_environment(service: dict, tmp_path: Path, overrides: dict[str, str]) -> dict:
    """What the container's environment would be: image ENV < env_file (.env) < environment:."""
    active, documented = parse_env_example()
    env = {
        key: value
        for key, value in os.environ.items()
        # The developer's own settings must not leak in and make the test pass by accident.
        if key not in documented and key not in {"DJANGO_SETTINGS_MODULE", "GIT_DIR"}
    }
    env.update(dockerfile_env())
    env.update(active)
    env.update({key: str(value) for key, value in service["environment"].items()})
    env = {key: host_path(value, tmp_path) for key, value in env.items()}
    env.update(overrides)
    return env


def run_build_collectstatic(tmp_path: Path) -> Path:
    """The Dockerfile's collectstatic steps (up to collectstatic itself), with /app/... mapped."""
    (run,) = [a for k, a in dockerfile_instructions() if k == "RUN" and "collectstatic" in a]
    steps = [step.strip() for step in run.split("&&")]
    steps = steps[: next(i for i, step in enumerate(steps) if "collectstatic" in step) + 1]
    script = " && ".join(steps)
    for path in ("/app/staticfiles",):
        script = script.replace(path, host_path(path, tmp_path))
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "SECRET_KEY"}}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        ["sh", "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return Path(host_path("/app/staticfiles", tmp_path))


def start_service(name: str, command: list[str], env: dict, tmp_path: Path):
    (entrypoint,) = [
        json.loads(args) for keyword, args in dockerfile_instructions() if keyword == "ENTRYPOINT"
    ]
    script = host_path(entrypoint[0], tmp_path)
    log = (tmp_path / f"{name}.log").open("wb")
    process = subprocess.Popen(
        ["sh", script, *entrypoint[1:], *command],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    process.log_path = tmp_path / f"{name}.log"
    return process


def logs(*processes) -> str:
    return "\n".join(
        f"--- {p.log_path.name} (exit {p.poll()}) ---\n{p.log_path.read_text()[-6000:]}"
        for p in processes
    )


def wait_for(condition, timeout: float, processes, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                pytest.fail(
                    f"{process.log_path.stem} exited while waiting for {what}\n" + logs(*processes)
                )
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n" + logs(*processes))


def http_get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def signed_github_push(url: str, secret: str, after: str, clone_url: str) -> tuple[int, str]:
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": after,
            "created": True,
            "deleted": False,
            "forced": False,
            "repository": {
                "full_name": "octo/site",
                "clone_url": clone_url,
                "default_branch": "main",
            },
            "pusher": {"name": "octo", "email": "octo@example.com"},
            "head_commit": {"id": after, "message": "v1"},
        }
    ).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/compose-test",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": f"sha256={signature}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def stop(process, timeout: float) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
    return process.returncode


@pytest.mark.processes
def test_signed_push_reaches_the_checkout_through_web_and_worker(tmp_path, compose_database):
    import psycopg

    origin = tmp_path / "origin.git"
    work = tmp_path / "work"
    git("init", "--bare", "--initial-branch=main", origin)
    git("init", "--initial-branch=main", work)
    (work / "index.html").write_text("<h1>v1</h1>\n")
    git("add", "index.html", cwd=work)
    git("commit", "-m", "v1", cwd=work)
    git("push", origin, "main", cwd=work)
    sha = git("rev-parse", "HEAD", cwd=work)

    # What `docker build` does: static files collected with a throwaway key and no database.
    static_root = run_build_collectstatic(tmp_path)
    manifest = json.loads((static_root / "staticfiles.json").read_text())
    assert "admin/css/base.css" in manifest["paths"]

    port = free_port()
    # The bind mount exists (and is empty) before the container starts, as ../repo does.
    repo_dir = Path(host_path("/app/repo", tmp_path))
    repo_dir.mkdir(parents=True)
    services = load_compose()["services"]
    overrides = {
        "DATABASE_URL": compose_database,
        "GIT_URL": origin.as_uri(),
        "WEBHOOK_SECRET": WEBHOOK_TEST_SECRET,
        "SECRET_KEY": "compose-wiring-test-secret-key-0123456789-abcdefghij",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GIT_TERMINAL_PROMPT": "0",
        "DB_WAIT_TIMEOUT": "20",
        "MIGRATION_WAIT_TIMEOUT": "40",
    }
    web_command = list(services["web"]["command"])
    web_env = service_environment(services["web"], tmp_path, overrides)
    web_env["WEB_BIND"] = f"127.0.0.1:{port}"  # the image's 0.0.0.0:8880, on a free port here
    worker_env = service_environment(services["worker"], tmp_path, overrides)
    assert web_env["REPO_DIR"] == worker_env["REPO_DIR"] == str(repo_dir)

    # Both start at once, as `docker compose up` would once db is healthy: web migrates, the
    # worker waits for the migrations instead of racing them.
    web = start_service("web", web_command, web_env, tmp_path)
    worker = start_service("worker", services["worker"]["command"], worker_env, tmp_path)
    processes = (web, worker)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get_ok(f"{base}/api/health"), 45, processes, "web's /api/health")
        # whitenoise serves the build's hashed files.
        css = manifest["paths"]["admin/css/base.css"]
        assert http_get_ok(f"{base}/static/{css}"), f"/static/{css}\n" + logs(*processes)

        endpoint = web_env.get("API_ENDPOINT", "/api/webhook")
        status, answer = signed_github_push(
            base + endpoint, WEBHOOK_TEST_SECRET, sha, origin.as_uri()
        )
        assert status == 202, f"webhook answered {status}: {answer}\n" + logs(*processes)

        def synced():
            with psycopg.connect(compose_database, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT status, deployed_commit, error FROM gitdeploy_syncrun"
                    " ORDER BY id DESC LIMIT 1"
                ).fetchone()
            if row and row[0] == "failed":
                pytest.fail(f"SyncRun failed: {row[2]}\n" + logs(*processes))
            head = subprocess.run(
                ["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
            return row is not None and row[0] == "succeeded" and row[1] == sha and head == sha

        wait_for(synced, 60, processes, f"the checkout and the SyncRun at {sha[:12]}")
        assert (repo_dir / "index.html").read_text() == "<h1>v1</h1>\n"
    finally:
        exit_codes = {p.log_path.stem: stop(p, 20) for p in processes}
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # our own session, started above
                process.wait(5)
    assert exit_codes == {"web": 0, "worker": 0}, "SIGTERM must stop both cleanly\n" + logs(
        *processes
    )
