"""Benchmarks: gitdeploy through its real path (a signed webhook to gunicorn, the worker, git) on
PostgreSQL, beside plain git in the same run. Prints figures; asserts nothing (shared, noisy
machines: compare the ratios measured in one run, not figures across runs).

    make bench                      # or: .venv/bin/python bench/run.py
    BENCH_QUICK=1 make bench        # what CI runs: every benchmark, smaller and shorter

What it measures (each section prints one block):
  deploy   push -> deployed on a generated repository (BENCH_FILES files, BENCH_COMMITS commits,
           cached in bench/.cache/): send a signed webhook -> the run succeeded with HEAD at the
           commit. Beside it, in the same rounds and in rotated order, the floor (`git fetch` +
           `git reset --hard` in a clone) and the seed app's delete-and-clone. Ratios per round.
  pickup   queued -> started of those runs (the LISTEN/NOTIFY wake-up).
  ack      wrk -c16 with a signed 8.5 KB push, each request its own delivery id (the signature
           covers the body only, so one body is signed once), with 2 then 4 gunicorn workers,
           beside a trivial app on the same gunicorn settings; again with 2 workers while the
           worker is stopped (the web alone, with no git on the same cores); the lost count (a
           2xx without its Delivery row), the repository at the tip afterwards, no run left.
  burst    N commits then N concurrent webhooks; and M pushes in 5 s while the post-deploy
           command takes 1 s: syncs executed and failed, the most git processes seen at once
           for the repository, the final commit.
  memory   peak RSS (VmHWM) of the gunicorn workers and of the worker.
  idle     a worker with nothing to do: its CPU and the database's transactions per minute.

Knobs (environment): BENCH_QUICK=1, BENCH_FILES, BENCH_COMMITS, BENCH_ROUNDS, BENCH_WRK_SECONDS,
BENCH_BURST, BENCH_FLOOD, BENCH_IDLE_SECONDS, BENCH_ONLY=deploy,ack,burst (a
subset; memory and idle always run), BENCH_KEEP=1 (keep the logs), BENCH_TRACE=1 (each
round's timeline), BENCH_POSTGRES (server URL, default
postgres://postgres@127.0.0.1:5432; the bench creates and drops its own database there).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import hashlib
import hmac
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0", "false")


def knob(name: str, full: int, quick: int) -> int:
    return int(os.environ.get(name, quick if QUICK else full))


FILES = knob("BENCH_FILES", 20000, 2000)
COMMITS = knob("BENCH_COMMITS", 1000, 100)
ROUNDS = knob("BENCH_ROUNDS", 10, 3)
WRK_SECONDS = knob("BENCH_WRK_SECONDS", 10, 3)
BURST = knob("BENCH_BURST", 30, 10)
FLOOD = knob("BENCH_FLOOD", 100, 30)
FLOOD_SECONDS = 5.0
IDLE_SECONDS = knob("BENCH_IDLE_SECONDS", 60, 10)
SECTIONS = set(os.environ.get("BENCH_ONLY", "deploy,ack,burst").split(","))
POSTGRES = os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432").rstrip("/")
SECRET = "bench-webhook-secret-0123456789"  # noqa: S105 - the bench's own repository
SLUG = "bench"

GIT_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}


def git(*args, cwd=None, input_=None) -> str:
    return (
        subprocess.run(
            ["git", *map(str, args)],
            cwd=cwd,
            env=GIT_ENV,
            input=input_,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .strip()
    )


def say(text: str = "") -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------------------------------
# The repository: generated once per size with fast-import, cached


def path_of(n: int) -> str:
    return f"src/d{n // 200:03}/f{n:05}.txt"


def blob(data: bytes) -> bytes:
    return b"data %d\n%s\n" % (len(data), data)


def cached_repository(files: int, commits: int) -> Path:
    """A bare repository: one commit with `files` files, then commits-1 commits of 5 files each."""
    target = CACHE / f"repo-{files}x{commits}.git"
    if (target / "bench-complete").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="repo-", dir=CACHE))
    say(f"generating a {files}-file, {commits}-commit repository in {target} (cached)")
    git("init", "-q", "--bare", "-b", "main", tmp)
    stream = subprocess.Popen(
        ["git", "fast-import", "--quiet"], cwd=tmp, env=GIT_ENV, stdin=subprocess.PIPE
    )
    assert stream.stdin
    write = stream.stdin.write
    rng = random.Random(1)
    when = 1_700_000_000
    write(b"commit refs/heads/main\ncommitter bench <bench@example.com> %d +0000\n" % when)
    write(blob(b"initial") + b"")
    for n in range(files):
        write(b"M 100644 inline %s\n" % path_of(n).encode())
        write(blob(f"file {n}\n".encode() + b"x" * 60 * 20))
    for c in range(1, commits):
        write(
            b"commit refs/heads/main\ncommitter bench <bench@example.com> %d +0000\n" % (when + c)
        )
        write(blob(f"commit {c}".encode()))
        for _ in range(5):
            n = rng.randrange(files)
            write(b"M 100644 inline %s\n" % path_of(n).encode())
            write(blob(f"file {n} commit {c}\n".encode() + b"y" * 60 * 20))
    stream.stdin.close()
    if stream.wait() != 0:
        raise SystemExit("git fast-import failed")
    git("--git-dir", tmp, "gc", "-q")
    (tmp / "bench-complete").write_text("")
    with contextlib.suppress(OSError):  # another bench made it meanwhile: keep theirs
        tmp.rename(target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


class Remote:
    """A bare copy of the cached repository that the bench pushes to (by moving refs/heads/main
    to commits it made with fast-import: what a push leaves behind, without a work tree)."""

    def __init__(self, base: Path, files: int, commits: int) -> None:
        self.path = base / "remote.git"
        self.files = files
        git("clone", "-q", "--bare", "--local", cached_repository(files, commits), self.path)
        self.url = f"file://{self.path}"
        self.made = 0

    def tip(self) -> str:
        return git("--git-dir", self.path, "rev-parse", "refs/heads/main")

    def make_commits(self, count: int) -> list[str]:
        """count new commits on top of main, not yet on main (see push)."""
        marks = self.path / "bench-marks"
        lines = [b"reset refs/bench/next\nfrom %s\n\n" % self.tip().encode()]
        for i in range(count):
            self.made += 1
            lines.append(b"commit refs/bench/next\nmark :%d\n" % (i + 1))
            lines.append(b"committer bench <bench@example.com> %d +0000\n" % time.time())
            lines.append(blob(f"bench push {self.made}".encode()))
            for n in random.sample(range(self.files), 3):
                lines.append(b"M 100644 inline %s\n" % path_of(n).encode())
                lines.append(blob(f"file {n} push {self.made}\n".encode() + b"z" * 600))
        git(
            "--git-dir",
            self.path,
            "fast-import",
            "--quiet",
            f"--export-marks={marks}",
            input_=b"".join(lines),
        )
        found = dict(line.split() for line in marks.read_text().splitlines())
        return [found[f":{i + 1}"] for i in range(count)]

    def push(self, sha: str) -> None:
        git("--git-dir", self.path, "update-ref", "refs/heads/main", sha)


# --------------------------------------------------------------------------------------------------
# Processes


def autogroup() -> str:
    """Whether the kernel schedules sessions as groups (every git command runs in a session of
    its own, lowered as a session: process.lower)."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as enabled:
            if enabled.read().strip() != "1":
                return "off"
        # Read empty where this session is in the default group (no session groups made).
        with open("/proc/self/autogroup") as own_group:
            return "on" if own_group.read().strip() else "on, but not for this session"
    except OSError:
        return "absent"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process {proc.args} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


class Processes:
    """Every process the bench starts, stopped by pid."""

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base = base
        self.env = env
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen:
        log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115 - the process keeps it
        proc = subprocess.Popen(
            argv, cwd=ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.procs.append(proc)
        return proc

    def gunicorn(self, app: str, workers: int, port: int) -> subprocess.Popen:
        # As gitdeploy serves itself: the project's gunicorn.conf.py (read from the working
        # directory), the app named here.
        proc = self.start(
            f"gunicorn-{port}",
            [str(Path(sys.executable).parent / "gunicorn"), app],
            WEB_CONCURRENCY=str(workers),
            WEB_BIND=f"127.0.0.1:{port}",
        )
        wait_for_port(port, proc)
        # Workers load the application after the port opens: warm every one of them up before
        # anything is measured (wrk spreads its connections over all of them).
        probe = "/api/health" if app.startswith("project.") else "/"
        subprocess.run(
            ["wrk", "-t1", "-c8", "-d2s", f"http://127.0.0.1:{port}{probe}"],
            capture_output=True,
            check=False,
        )
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)


def children(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """A process's CPU time; with_children adds its children's that it waited for (the worker's
    git processes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu() -> float:
    """CPU time of the PostgreSQL server's processes now running (the bench's connections live
    through a wrk run, so the difference over one is the server's work for it)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    total += cpu_seconds(int(entry.name))
    return total


class GitWatcher(threading.Thread):
    """Samples /proc every few milliseconds for git processes working on `target` (by cwd, argv
    or GIT_DIR in their environment): the most seen at once, and of those, not started by git."""

    def __init__(self, target: Path) -> None:
        super().__init__(daemon=True)
        self.needle = str(target).encode()
        self.stopped = threading.Event()
        self.most = self.most_top = 0

    def sample(self) -> tuple[int, int]:
        found: dict[int, int] = {}
        for entry in filter(str.isdigit, os.listdir("/proc")):
            proc = f"/proc/{entry}"
            try:
                with open(f"{proc}/comm", "rb") as comm:
                    if not comm.read().startswith(b"git"):
                        continue
                with open(f"{proc}/cmdline", "rb") as cmd, open(f"{proc}/environ", "rb") as env:
                    cwd = os.readlink(f"{proc}/cwd").encode()
                    if not (
                        cwd.startswith(self.needle)
                        or self.needle in cmd.read()
                        or self.needle in env.read()
                    ):
                        continue
                with open(f"{proc}/stat") as stat:
                    found[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
        top = sum(1 for ppid in found.values() if ppid not in found)
        return len(found), top

    def run(self) -> None:
        while not self.stopped.is_set():
            every, top = self.sample()
            self.most, self.most_top = max(self.most, every), max(self.most_top, top)
            time.sleep(0.003)

    def stop(self) -> tuple[int, int]:
        self.stopped.set()
        self.join()
        return self.most, self.most_top


# --------------------------------------------------------------------------------------------------
# Webhooks


def push_body(sha: str) -> bytes:
    fixture = ROOT / "tests" / "fixtures" / "webhooks" / "github" / "push-branch-signed.json"
    payload = json.loads(fixture.read_text())
    payload.update(ref="refs/heads/main", after=sha)
    payload["repository"]["default_branch"] = "main"
    return json.dumps(payload).encode()


def signature(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def send_push(port: int, sha: str, delivery: str) -> dict:
    body = push_body(sha)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST",
            f"/hooks/{SLUG}/",
            body=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": signature(body),
            },
        )
        response = conn.getresponse()
        answer = json.loads(response.read() or b"{}")
    finally:
        conn.close()
    if response.status not in (200, 202):
        raise SystemExit(f"webhook answered {response.status}: {answer}")
    return answer


WRK_SCRIPT = """
local body = [==[%(body)s]==]
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
function init(args)
  counter = 0
  codes = {}
end
function request()
  counter = counter + 1
  return wrk.format("POST", "%(path)s", {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "push",
    ["X-Hub-Signature-256"] = "%(signature)s",
    ["X-GitHub-Delivery"] = string.format("%(prefix)s-%%d-%%d", tid, counter),
  }, body)
end
function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
end
function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("codes")) do totals[status] = (totals[status] or 0) + n end
  end
  for status, n in pairs(totals) do io.write(string.format("status %%d %%d\\n", status, n)) end
  for _, p in ipairs({50, 99}) do
    io.write(string.format("p%%d_us %%d\\n", p, latency:percentile(p)))
  end
end
"""


def connections_per_process(port: int, pids: list[int]) -> str:
    """How wrk's connections are spread over the server's worker processes `pids`, most first
    ("9/7", "16/0"; "?" without `ss`). gunicorn's workers share one listening socket, and
    whichever wakes first accepts every connection waiting: keep-alive connections stay where
    they landed, so one worker may serve all sixteen while the other idles. The figures swing
    with it (seen here: 190/s with 16/0, 360/s with 8/8, same code), hence printed beside them."""
    try:
        out = subprocess.run(
            ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"
    counts = dict.fromkeys(pids, 0)
    for pid in re.findall(r"pid=(\d+)", out):
        if int(pid) in counts:
            counts[int(pid)] += 1
    return "/".join(str(n) for n in sorted(counts.values(), reverse=True)) or "?"


def run_wrk(
    base: Path, port: int, path: str, sha: str, prefix: str, pids: list[int] | None = None
) -> dict[str, Any]:
    body = push_body(sha)
    script = base / f"{prefix}.lua"
    script.write_text(
        WRK_SCRIPT
        % {
            "body": body.decode(),
            "path": path,
            "signature": signature(body),
            "prefix": prefix,
        }
    )
    wrk = subprocess.Popen(
        ["wrk", "-t2", "-c16", f"-d{WRK_SECONDS}s", "-s", str(script), f"http://127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(min(1.0, WRK_SECONDS / 2))
    spread = connections_per_process(port, pids) if pids else "?"
    out, _ = wrk.communicate()
    if wrk.returncode:
        raise SystemExit(f"wrk failed ({wrk.returncode}):\n{out}")
    codes = {int(s): int(n) for s, n in re.findall(r"^status (\d+) (\d+)$", out, re.M)}
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p50, p99 = (int(re.findall(rf"^p{p}_us (\d+)$", out, re.M)[0]) / 1000 for p in (50, 99))
    return {
        "spread": spread,
        "rate": float(rate[1]) if rate else 0.0,
        "ok": sum(n for s, n in codes.items() if 200 <= s < 300),
        "other": sum(n for s, n in codes.items() if not 200 <= s < 300),
        "p50": p50,
        "p99": p99,
    }


# --------------------------------------------------------------------------------------------------
# The bench


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:  # noqa: C901 - one story, top to bottom
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk; `make bench` does it)")
    base = Path(tempfile.mkdtemp(prefix="gitdeploy-bench-"))
    database = f"gitdeploy_bench_{os.getpid()}"
    import psycopg

    admin = psycopg.connect(f"{POSTGRES}/postgres", autocommit=True)
    admin.execute(f"CREATE DATABASE {database}")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "BENCH_"))},
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DATABASE_URL": f"{POSTGRES}/{database}",
        "SECRET_KEY": "bench-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        "DATA_DIR": str(base / "data"),
        "LOCK_DIR": str(base / "locks"),
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django_tasks_db.models import DBTaskResult

    from gitdeploy.models import Delivery, Repository, SyncRun

    processes = Processes(base, env)
    try:
        call_command("migrate", verbosity=0)
        remote = Remote(base, FILES, COMMITS)
        target = base / "target"
        repository = Repository.objects.create(
            name=SLUG,
            slug=SLUG,
            clone_url=remote.url,
            branch="main",
            target_dir=str(target),
            webhook_secret=SECRET,
        )
        load = os.getloadavg()
        say(
            f"bench {datetime.datetime.now().isoformat(timespec='seconds')} "
            f"host={platform.node()} cpus={os.cpu_count()} "
            f"load={load[0]:.2f},{load[1]:.2f},{load[2]:.2f} quick={int(QUICK)} "
            f"git={git('--version').split()[-1]} python={platform.python_version()} "
            f"autogroup={autogroup()}"
        )
        say(f"repository files={FILES} commits={COMMITS}; database postgresql ({database})")

        worker = processes.start("worker", [sys.executable, "manage.py", "db_worker"])
        port = free_port()
        web = processes.gunicorn("project.asgi:application", 2, port)

        def deploy(sha: str, delivery: str) -> SyncRun:
            t0 = time.time()
            answer = send_push(port, sha, delivery)
            run_id = answer["sync_run"]
            while True:
                run = SyncRun.objects.get(pk=run_id)
                if run.is_finished:
                    break
                # The figures come from the run's own timestamps, so this poll need not be
                # tight: every 2 ms it took a good part of a core from the worker it measured.
                time.sleep(0.025)
            if run.status != SyncRun.Status.SUCCEEDED or current_head(target) != sha:
                raise SystemExit(f"bench sync failed ({run.status}):\n{run.log}")
            run.bench_ms = (run.finished_at.timestamp() - t0) * 1000  # type: ignore[attr-defined]
            if os.environ.get("BENCH_TRACE"):
                queued, started = (
                    (moment.timestamp() - t0) * 1000 for moment in (run.queued_at, run.started_at)
                )
                say(f"  trace: queued +{queued:.1f} started +{started:.1f} ms")
            return run

        # ---- deploy: push -> deployed, beside the floor and the seed, rotated
        deploy(remote.tip(), "warm-up")  # the first deploy clones
        web_rss: list[float] = []
        if "deploy" in SECTIONS:
            floor, seed = base / "floor", base / "seed"
            git("clone", "-q", remote.url, floor)

            def timed(*commands: list[str]) -> float:
                t0 = time.perf_counter()
                for argv in commands:
                    subprocess.run(argv, env=GIT_ENV, check=True, capture_output=True)
                return (time.perf_counter() - t0) * 1000

            def floor_once(sha: str) -> float:
                return timed(
                    ["git", "-C", str(floor), "fetch", "-q", "origin", "main"],
                    ["git", "-C", str(floor), "reset", "-q", "--hard", "FETCH_HEAD"],
                )

            def seed_once(sha: str) -> float:
                t0 = time.perf_counter()
                shutil.rmtree(seed, ignore_errors=True)
                return (time.perf_counter() - t0) * 1000 + timed(
                    ["git", "clone", "-q", "--branch", "main", remote.url, str(seed)]
                )

            pickups: list[float] = []
            # The two halves of a pick-up, by the task row's started_at (stamped as the worker
            # claims the task): queued -> task claimed (the push's statement and commit, the
            # NOTIFY, the wake-up), task claimed -> run started (the claim's round trip, the
            # task's bookkeeping, the repository's lock file).
            halves: list[tuple[float, float]] = []

            def gitdeploy_once(sha: str) -> float:
                run = deploy(sha, f"round-{sha}")
                pickups.append((run.started_at - run.queued_at).total_seconds() * 1000)
                task = DBTaskResult.objects.filter(args_kwargs__args__0=run.pk).first()
                if task is not None and task.started_at is not None:
                    halves.append(
                        (
                            (task.started_at - run.queued_at).total_seconds() * 1000,
                            (run.started_at - task.started_at).total_seconds() * 1000,
                        )
                    )
                return run.bench_ms  # type: ignore[attr-defined]

            systems = {"gitdeploy": gitdeploy_once, "floor": floor_once, "seed": seed_once}
            times: dict[str, list[float]] = {name: [] for name in systems}
            ratios: dict[str, list[float]] = {"gitdeploy": [], "seed": []}
            for r in range(ROUNDS):
                names = list(systems)
                names = names[r % 3 :] + names[: r % 3]
                this_round = {}
                for name in names:
                    (sha,) = remote.make_commits(1)
                    remote.push(sha)
                    this_round[name] = systems[name](sha)
                    times[name].append(this_round[name])
                for name in ratios:
                    ratios[name].append(this_round[name] / this_round["floor"])
            say(f"\n[deploy] push -> deployed, {ROUNDS} rounds, rotated (ms: median min max)")
            for name, values in times.items():
                say(f"  {name:<10} {median(values):7.1f} {min(values):7.1f} {max(values):7.1f}")
            for name, values in ratios.items():
                say(
                    f"  {name}/floor per round: median {median(values):.2f} "
                    f"min {min(values):.2f} max {max(values):.2f}"
                )
            say(
                f"[pickup] queued -> started: median {median(pickups):.1f} ms, "
                f"max {max(pickups):.1f} ms"
            )
            if halves:
                say(
                    f"  queued -> task claimed: median {median([h[0] for h in halves]):.1f} ms; "
                    f"task claimed -> run started: median {median([h[1] for h in halves]):.1f} ms"
                )

        # ---- ack throughput, beside a trivial app on the same gunicorn settings
        if "ack" in SECTIONS:
            say(
                f"\n[ack] wrk -t2 -c16 -d{WRK_SECONDS}s, signed {len(push_body('0' * 40))} B push, "
                "unique delivery ids"
            )
            one_by_one = []
            for i in range(20):
                t0 = time.perf_counter()
                send_push(port, remote.tip(), f"one-by-one-{i}")
                one_by_one.append((time.perf_counter() - t0) * 1000)
            say(f"  one request at a time: median {median(one_by_one):.1f} ms")
            settle(SyncRun, repository)

            def ack(workers: int, prefix: str) -> tuple[dict[str, Any], float, int]:
                """wrk against a fresh gunicorn: the figures, web CPU per answer, rows stored;
                where the cores went (app["cores"])."""
                nonlocal web
                processes.stop(web)
                web = processes.gunicorn("project.asgi:application", workers, port)
                web_workers = children(web.pid)
                first_run = SyncRun.objects.order_by("-pk").values_list("pk", flat=True).first()
                web_cpu = sum(cpu_seconds(pid) for pid in web_workers)
                worker_cpu = cpu_seconds(worker.pid, with_children=True)
                worker_own = cpu_seconds(worker.pid)
                database_cpu = postgres_cpu()
                app = run_wrk(base, port, f"/hooks/{SLUG}/", remote.tip(), prefix, web_workers)
                answered = max(1.0, app["ok"] + app["other"])
                worker_cpu = cpu_seconds(worker.pid, with_children=True) - worker_cpu
                worker_own = cpu_seconds(worker.pid) - worker_own
                database_cpu = postgres_cpu() - database_cpu
                web_total = sum(cpu_seconds(pid) for pid in web_workers) - web_cpu
                web_cpu = web_total / answered
                syncs = SyncRun.objects.filter(
                    pk__gt=first_run or 0, started_at__isnull=False
                ).count()
                app["cores"] = (
                    f"cores used over the run: web {web_total / WRK_SECONDS:.2f}, PostgreSQL "
                    f"{database_cpu / WRK_SECONDS:.2f} ({database_cpu * 1000 / answered:.1f} ms "
                    f"per request), worker with git {worker_cpu / WRK_SECONDS:.2f} "
                    f"(its own Python {worker_own / WRK_SECONDS:.2f}; {syncs} syncs)"
                )
                web_rss.extend(peak_rss_mb(pid) for pid in children(web.pid))
                rows = Delivery.objects.filter(delivery_id__startswith=f"{prefix}-").count()
                return app, web_cpu, rows

            def figures(app: dict[str, Any], web_cpu: float, rows: int) -> str:
                return (
                    f"{app['rate']:.0f}/s p50 {app['p50']:.1f} ms p99 {app['p99']:.1f} ms "
                    f"(2xx {app['ok']:.0f}, other {app['other']:.0f}, rows {rows}, "
                    f"lost {max(0, int(app['ok']) - rows)}; web CPU {web_cpu * 1000:.1f} ms "
                    f"per request; connections per web worker {app['spread']})"
                )

            for workers in (2, 4):
                measured = ack(workers, f"wrk{workers}")
                trivial_port = free_port()
                trivial = processes.gunicorn(
                    "bench.trivial_asgi:application", workers, trivial_port
                )
                plain = run_wrk(base, trivial_port, "/", remote.tip(), f"trivial{workers}")
                processes.stop(trivial)
                say(
                    f"  {workers} workers: gitdeploy {figures(*measured)} | trivial app "
                    f"{plain['rate']:.0f}/s p50 {plain['p50']:.1f} ms p99 {plain['p99']:.1f} ms"
                )
                say(f"    {measured[0]['cores']}")
            # The same with the worker stopped (SIGSTOP, well within its lease): nothing syncs and
            # every push joins the one queued run. What the web alone answers on this machine,
            # without git checking out 20,000 files on the same two cores after every claim.
            settle(SyncRun, repository)
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                measured = ack(2, "wrk2alone")
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            say(f"  2 workers, the worker stopped (nothing syncing): {figures(*measured)}")
            say(f"    {measured[0]['cores']}")
            settled = settle(SyncRun, repository)
            say(
                f"  afterwards: HEAD at the tip {current_head(target) == remote.tip()}, "
                f"runs left queued/running {settled}"
            )

        # ---- bursts
        if "burst" in SECTIONS:
            say("\n[burst]")
            for label, count, spread, command in (
                (f"{BURST} commits then {BURST} concurrent webhooks", BURST, 0.0, ""),
                (
                    f"{FLOOD} pushes in {FLOOD_SECONDS:g} s, post-deploy 1 s",
                    FLOOD,
                    FLOOD_SECONDS,
                    "sleep 1",
                ),
            ):
                Repository.objects.filter(pk=repository.pk).update(post_deploy_command=command)
                shas = remote.make_commits(count)
                first_run = (
                    SyncRun.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
                )
                watcher = GitWatcher(target)
                watcher.start()
                t0 = time.monotonic()
                if spread:
                    for i, sha in enumerate(shas):
                        time.sleep(max(0.0, t0 + i * spread / count - time.monotonic()))
                        remote.push(sha)
                        send_push(port, sha, f"flood-{i}")
                else:
                    remote.push(shas[-1])
                    with concurrent.futures.ThreadPoolExecutor(count) as pool:
                        sends = [
                            pool.submit(send_push, port, sha, f"burst-{i}")
                            for i, sha in enumerate(shas)
                        ]
                        for sent in sends:
                            sent.result()
                left = settle(SyncRun, repository)
                elapsed = time.monotonic() - t0
                most, most_top = watcher.stop()
                runs = SyncRun.objects.filter(repository=repository, pk__gt=first_run)
                executed = runs.exclude(started_at=None).count()
                failed = runs.filter(status=SyncRun.Status.FAILED).count()
                say(
                    f"  {label}: {executed} syncs executed, {failed} failed, {left} left; "
                    f"most git processes at once {most} ({most_top} not started by git); "
                    f"final commit is the last {current_head(target) == shas[-1]}; "
                    f"{elapsed:.1f} s"
                )
            Repository.objects.filter(pk=repository.pk).update(post_deploy_command="")

        # ---- memory, idle
        web_rss += [peak_rss_mb(pid) for pid in children(web.pid)]
        say("\n[memory] peak RSS (VmHWM)")
        say(
            f"  web workers max {max(web_rss):.1f} MB; worker {peak_rss_mb(worker.pid):.1f} MB "
            f"(repository of {FILES} files)"
        )
        lingering = [
            pid
            for pid in children(worker.pid)
            if Path(f"/proc/{pid}/comm").read_text()[:3] == "git"
        ]
        say(f"  git processes the worker left running: {len(lingering)}")
        processes.stop(web)
        # A backend reports its transaction counts within 10 s of going idle: wait out those of
        # the benchmarks above, so they are not counted as the idle worker's.
        time.sleep(12)
        before = (transactions(admin, database), cpu_seconds(worker.pid), time.monotonic())
        time.sleep(IDLE_SECONDS)
        after = (transactions(admin, database), cpu_seconds(worker.pid), time.monotonic())
        minutes = (after[2] - before[2]) / 60
        say(
            f"\n[idle] worker over {IDLE_SECONDS} s: "
            f"{(after[0] - before[0]) / minutes:.0f} transactions/min (pg_stat_database), "
            f"CPU {(after[1] - before[1]) / minutes:.2f} s/min "
            f"({(after[1] - before[1]) / (after[2] - before[2]) * 100:.2f} % of a core)"
        )
    finally:
        processes.stop_all()
        from django.db import connections

        connections.close_all()
        admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.close()
        if os.environ.get("BENCH_KEEP"):
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def current_head(target: Path) -> str:
    with contextlib.suppress(OSError):
        return (target / ".git" / "HEAD").read_text().strip()
    return ""


def settle(SyncRun, repository, timeout: float = 120) -> int:  # noqa: N803 - the model class
    """Waits until the repository has no queued or running run; returns how many are left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = SyncRun.objects.filter(repository=repository).active().count()
        if not left:
            return 0
        time.sleep(0.05)
    return left


def transactions(admin, database: str) -> int:
    admin.execute("SELECT pg_stat_clear_snapshot()")
    row = admin.execute(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", [database]
    ).fetchone()
    return int(row[0]) if row else 0


if __name__ == "__main__":
    main()
