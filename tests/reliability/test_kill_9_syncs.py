"""kill -9 of the worker at chosen random moments across 20 syncs in each mode.

Each round pushes a commit (300 files of fresh random content plus a MANIFEST naming the round),
sends its webhook, kills the worker with SIGKILL at a moment drawn from a seeded random — during
the first clone, a fetch, the checkout (`git checkout` in place, `git worktree add` for a
release), the post-deploy command, or a plain random delay — and starts a new worker. The moment
is recognised from the command the worker has written down next to the repository's lock (see
process.GroupRecord), so every phase is covered whatever the machine's speed.

Checked:
- atomic: right after every kill, `current` points at a complete release (every file of the
  commit its MANIFEST names, nothing else);
- after each round settles: every run is in a final state, the directory (or `current`) is
  exactly the pushed tip (`git status` clean, HEAD the tip, every file of the tip's round);
- the post-deploy commands never overlapped (intervals from the timestamps they write).

Recovery: in three rounds out of four another push arrives right after the kill (a new webhook for
the same tip), so the new worker's execute_run recovers the lost run as soon as its lease expires;
in every fourth round nothing arrives and the new worker's monitor recovers it (up to 5 s later).

RELIABILITY_SEED replays a run (printed). KILL_ROUNDS sets the number of rounds: 20 by default on
PostgreSQL (CI's PostgreSQL pass), 8 on SQLite (whose pass repeats the same worker code)."""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from gitdeploy.models import SyncRun
from tests.conftest import is_sqlite
from tests.gitservers import git
from tests.reliability.stack import WorkerProcess, seed, wait_for
from tests.test_worker_processes import push_webhook

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.processes,
    pytest.mark.reliability,
    pytest.mark.timeout(600),
]


def rounds() -> int:
    return int(os.environ.get("KILL_ROUNDS") or (8 if is_sqlite() else 20))


FILES = 300
PHASES = ["fetch", "checkout", "post-deploy", "random"]

# Writes "<run id> <time>" every 0.05 s for 0.3 s: long enough to be killed in.
POST_DEPLOY = (
    'i=0; while [ $i -lt 6 ]; do echo "$GITDEPLOY_RUN_ID $(date +%s.%N)" >> "{stamps}"; '
    "sleep 0.05; i=$((i+1)); done"
)


def commit_files(rng: random.Random, round_no: int) -> dict[str, str]:
    files = {
        f"files/f{n:03}.txt": f"round {round_no}\n{rng.randbytes(1024).hex()}\n"
        for n in range(FILES)
    }
    files["MANIFEST"] = f"round {round_no}\n"
    return files


def check_tree(path: Path, expected_round: int | None = None) -> int:
    """path holds exactly one pushed commit: MANIFEST's round, every file of that round, no other
    file. Returns the round."""
    round_no = int((path / "MANIFEST").read_text().split()[1])
    if expected_round is not None:
        assert round_no == expected_round, f"{path} holds round {round_no}, not {expected_round}"
    names = sorted(p.name for p in (path / "files").iterdir())
    assert names == [f"f{n:03}.txt" for n in range(FILES)], f"{path}: files missing or extra"
    for name in names:
        first = (path / "files" / name).read_text().split("\n", 1)[0]
        assert first == f"round {round_no}", f"{path}/files/{name} is from {first}, not {round_no}"
    return round_no


def git_clean(path: Path, tip: str) -> None:
    assert git("rev-parse", "HEAD", cwd=path) == tip
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=path, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert status == "", f"{path} differs from {tip}:\n{status[:2000]}"


def deployed_dir(repository) -> Path:
    target = Path(repository.target_dir)
    return target / "current" if repository.deploy_mode == "atomic" else target


def overlaps(stamps: Path) -> list[tuple[int, int]]:
    spans: dict[int, list[float]] = {}
    for line in stamps.read_text().splitlines() if stamps.exists() else []:
        run_id, value = line.split()
        spans.setdefault(int(run_id), []).append(float(value))
    ordered = sorted((min(v), max(v), rid) for rid, v in spans.items())
    return [(a[2], b[2]) for a, b in zip(ordered, ordered[1:], strict=False) if b[0] <= a[1]]


def what_runs(record: Path) -> str:
    try:
        return json.loads(record.read_text()).get("what", "")
    except (OSError, ValueError):
        return ""


def wait_for_phase(record: Path, phase: str, first: bool, timeout: float = 20) -> bool:
    wanted = {
        "fetch": ("git fetch",),
        "checkout": ("git checkout", "git worktree"),
        "post-deploy": ("the post-deploy command",),
    }[phase]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        what = what_runs(record)
        if what in wanted and not (phase == "checkout" and what == "git worktree" and first):
            return True
        time.sleep(0.002)
    return False


@pytest.mark.parametrize("mode", ["inplace", "atomic"])
def test_kill_9_at_random_moments_never_leaves_a_mixed_directory(
    mode, client, make_repository, remote, subprocess_env, tmp_path, figures
):
    kill_seed = seed(f"kill -9 ({mode})")
    rng = random.Random(kill_seed)
    stamps = tmp_path / "post-deploy-stamps"
    repository = make_repository(
        clone_url=remote.url,
        deploy_mode=mode,
        keep_releases=3,
        post_deploy_command=POST_DEPLOY.format(stamps=stamps),
    )
    record = Path(subprocess_env["LOCK_DIR"]) / f"repository-{repository.pk}.lock.command"
    env = {**subprocess_env, "SYNC_LEASE_SECONDS": "2", "SYNC_RETRY_BACKOFF": "1"}
    logs = tmp_path / "workers.log"
    # The worker deploys a repository that has never synced as soon as it starts, maybe before
    # round 0's commit: the tip it finds then must be a whole round too, or the check after the
    # first kill finds `current` at a commit without a MANIFEST (CI, 2026-11-26).
    remote.commit(commit_files(rng, -1), "before round 0")
    worker = WorkerProcess(env, "w0", logs)
    killed_in: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    count = rounds()
    # Every phase as often as the others, in a seeded order; the first sync is the clone.
    phases = (PHASES * count)[: count - 1]
    rng.shuffle(phases)
    phases.insert(0, "clone")
    try:
        for round_no in range(count):
            tip = remote.commit(commit_files(rng, round_no), f"round {round_no}")
            phase = phases[round_no]
            extra = rng.uniform(0, 0.05)
            delay = rng.uniform(0, 2.0)
            push_webhook(client, repository, tip, f"kill-{mode}-{round_no}")
            if phase == "random":
                time.sleep(delay)
                seen = what_runs(record) or "idle or between commands"
            else:
                wanted = "fetch" if phase == "clone" else phase
                if not wait_for_phase(record, wanted, first=round_no == 0):
                    pytest.fail(f"round {round_no}: never saw {phase}\n{worker.output()[-3000:]}")
                time.sleep(extra)
                seen = what_runs(record) or "idle or between commands"
            worker.kill()
            killed_in[f"{phase}: {seen}" if phase == "random" else phase] += 1
            if mode == "atomic" and os.path.lexists(deployed_dir(repository)):
                check_tree(deployed_dir(repository))  # the switch is atomic: never a mix
            worker = WorkerProcess(env, f"w{round_no + 1}", logs)
            if round_no % 4 != 3:
                push_webhook(client, repository, tip, f"kill-{mode}-{round_no}-again")

            def settled(tip=tip):
                if SyncRun.objects.filter(repository=repository).active().exists():
                    return False
                return SyncRun.objects.filter(deployed_commit=tip, status="succeeded").exists()

            wait_for(settled, 90, f"round {round_no} to settle\n{worker.output()[-3000:]}", 0.1)
            check_tree(deployed_dir(repository), round_no)
            git_clean(deployed_dir(repository), tip)
    finally:
        worker.kill()

    runs = SyncRun.objects.filter(repository=repository)
    statuses = collections.Counter(runs.values_list("status", flat=True))
    lost = runs.filter(error__startswith=SyncRun.WORKER_LOST).count()
    assert not runs.active().exists()
    assert overlaps(stamps) == [], "two post-deploy commands ran at once"
    ended = sum("Ended " in log for log in runs.values_list("log", flat=True))
    figures(
        f"kill -9 ({mode}): {count} rounds in {time.monotonic() - started:.0f}s; kills by phase "
        f"{dict(sorted(killed_in.items()))}; runs {dict(statuses)}, {lost} lost and recovered, "
        f"{ended} orphaned command(s) ended by the next run; seed {kill_seed}"
    )
    if mode == "atomic":
        releases = sorted(os.listdir(Path(repository.target_dir) / "releases"))
        assert len(releases) <= 3 + 1, releases
