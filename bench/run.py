"""Benchmarks: how fast a queued run is picked up, and how a whole deploy compares with git itself.

Prints figures, asserts nothing (the machines are shared and noisy). The baseline is measured in
the same run: the same incremental update done with plain `git fetch` + `git checkout`.

    .venv/bin/python bench/run.py            # SQLite in a temporary directory
    DATABASE_URL=postgres://... .venv/bin/python bench/run.py
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "10"))


def git(*args, cwd=None):
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_remote(base: Path) -> tuple[Path, Path]:
    bare, work = base / "remote.git", base / "remote.work"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("init", "-q", "-b", "main", str(work))
    git("-C", str(work), "config", "user.email", "bench@example.com")
    git("-C", str(work), "config", "user.name", "bench")
    git("-C", str(work), "remote", "add", "origin", str(bare))
    # A repository of some size: 300 files.
    for n in range(300):
        (work / f"file{n:03}.txt").write_text(f"line {n}\n" * 50)
    commit(work, "initial")
    return bare, work


def commit(work: Path, message: str) -> str:
    (work / "counter.txt").write_text(f"{message}\n")
    git("-C", str(work), "add", "-A")
    git("-C", str(work), "commit", "-q", "-m", message)
    git("-C", str(work), "push", "-q", "origin", "HEAD:refs/heads/main")
    return git("-C", str(work), "rev-parse", "HEAD")


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="gitdeploy-bench-"))
    os.environ.setdefault("SECRET_KEY", "bench-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz")
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    os.environ["DATA_DIR"] = str(base / "data")
    os.environ["LOCK_DIR"] = str(base / "locks")
    using_postgres = bool(os.environ.get("DATABASE_URL"))
    if not using_postgres:
        os.environ["DATABASE_URL"] = f"sqlite:///{base / 'data' / 'bench.sqlite3'}"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    from gitdeploy.models import Repository, SyncRun

    call_command("migrate", verbosity=0)
    bare, work = make_remote(base)
    slug = f"bench-{os.getpid()}"
    repository = Repository.objects.create(
        name=slug,
        slug=slug,
        clone_url=f"file://{bare}",
        branch="main",
        target_dir=str(base / "checkout"),
        webhook_secret="bench",
    )
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "db_worker", "--verbosity", "0"],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pickups, deploys, baselines = [], [], []
    try:

        def deploy_once(message: str) -> tuple[float, float]:
            commit(work, message)
            started = timezone.now()
            run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.CLI)
            while True:
                run.refresh_from_db()
                if run.is_finished:
                    break
                time.sleep(0.005)
            if run.status != SyncRun.Status.SUCCEEDED:
                raise SystemExit(f"bench sync failed:\n{run.log}")
            return (
                (run.started_at - started).total_seconds(),
                (run.finished_at - started).total_seconds(),
            )

        deploy_once("warm-up")  # the first run clones
        baseline_clone = base / "baseline"
        git("clone", "-q", f"file://{bare}", str(baseline_clone))
        for n in range(ROUNDS):
            pickup, total = deploy_once(f"round {n}")
            pickups.append(pickup)
            deploys.append(total)
            commit(work, f"baseline {n}")
            t0 = time.perf_counter()
            git(
                "-C",
                str(baseline_clone),
                "fetch",
                "-q",
                "origin",
                "+refs/heads/main:refs/remotes/origin/main",
            )
            git("-C", str(baseline_clone), "checkout", "-q", "-f", "--detach", "origin/main")
            baselines.append(time.perf_counter() - t0)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)

    database = "postgresql" if using_postgres else "sqlite"
    pickup_ms = statistics.median(pickups) * 1000
    deploy_ms = statistics.median(deploys) * 1000
    git_ms = statistics.median(baselines) * 1000
    print(f"bench database={database} rounds={ROUNDS}")
    print(f"pickup_latency_ms median={pickup_ms:.1f} max={max(pickups) * 1000:.1f} target<100")
    print(f"deploy_ms median={deploy_ms:.1f} (request -> succeeded, incremental update)")
    print(f"git_fetch_checkout_ms median={git_ms:.1f} (baseline: the same update with plain git)")
    print(f"deploy_over_git_ratio={deploy_ms / git_ms:.2f}")


if __name__ == "__main__":
    main()
