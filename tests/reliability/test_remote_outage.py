"""The remote goes down and comes back: a real worker retries with backoff, the deployed directory
is not touched while the remote is away, and the sync succeeds once it is back. The remote is a
`git daemon` stopped and started again on the same port."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from gitdeploy.models import SyncRun, WorkerHeartbeat
from tests.gitservers import GIT_ENV, free_port, git, wait_for_port
from tests.reliability.stack import WorkerProcess, wait_for
from tests.test_worker_processes import deployed_repository, push_webhook  # noqa: F401 - fixture

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.processes,
    pytest.mark.reliability,
    pytest.mark.timeout(240),
]


class Daemon:
    """git daemon on a fixed port, so the clone URL stays the same across a stop and a start."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["git", "daemon", "--export-all", f"--base-path={self.base}", f"--port={self.port}",
             "--listen=127.0.0.1", "--reuseaddr", str(self.base)],
            env=GIT_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def snapshot(path: Path) -> dict[str, tuple[float, bytes]]:
    """Every file under path (not .git's) with its mtime and content: any write shows."""
    found = {}
    for item in sorted(path.rglob("*")):
        relative = item.relative_to(path)
        if relative.parts[0] in (".git", ".gitdeploy") or item.is_dir():
            continue
        stat = item.lstat()
        found[str(relative)] = (stat.st_mtime, item.read_bytes() if item.is_file() else b"")
    return found


@pytest.mark.parametrize("mode", ["inplace", "atomic"])
def test_the_remote_down_then_up_is_retried_with_backoff_and_the_directory_kept(
    mode,
    client,
    deployed_repository,  # noqa: F811 - the fixture
    remote,
    subprocess_env,
    tmp_path,
    figures,
):
    daemon = Daemon(remote.root)
    daemon.start()
    # Deployed once already: the worker has no initial sync that could race the test's pushes.
    repository = deployed_repository(
        clone_url=f"git://127.0.0.1:{daemon.port}/{remote.name}", deploy_mode=mode
    )
    env = {**subprocess_env, "SYNC_RETRIES": "5", "SYNC_RETRY_BACKOFF": "1", "GIT_TIMEOUT": "20"}
    worker = WorkerProcess(env, "outage", tmp_path / "worker.log")
    try:
        wait_for(WorkerHeartbeat.latest, 30, "the worker's heartbeat")
        first = remote.commit({"site.txt": "v1\n"}, "v1")
        push_webhook(client, repository, first, "outage-1")
        wait_for(lambda: SyncRun.objects.filter(deployed_commit=first).exists(), 60, "v1")
        target = Path(repository.target_dir)
        before = snapshot(target)

        daemon.stop()
        second = remote.commit({"site.txt": "v2\n"}, "v2")
        outage_began = time.monotonic()
        push_webhook(client, repository, second, "outage-2")
        # Two failed attempts (the first and its retry 1 s later), then the remote comes back.
        failed = wait_for(
            lambda: (
                SyncRun.objects.filter(status="failed").count() >= 2
                and list(SyncRun.objects.filter(status="failed").order_by("pk"))
            ),
            60,
            "two failed attempts",
        )
        assert snapshot(target) == before, "the directory was touched while the remote was down"
        daemon.start()
        outage = time.monotonic() - outage_began
        done = wait_for(
            lambda: SyncRun.objects.filter(deployed_commit=second, status="succeeded").first(),
            90,
            f"the sync after the remote came back\n{worker.output()[-3000:]}",
        )
    finally:
        worker.kill()
        daemon.stop()

    attempts = list(SyncRun.objects.filter(pk__gte=failed[0].pk).order_by("pk"))
    assert [run.status for run in attempts][-1] == "succeeded"
    assert all(run.status == "failed" for run in attempts[:-1])
    for run in attempts[:-1]:
        assert "git fetch failed" in run.error, run.error
    # Backoff: each retry waits twice as long as the one before (SYNC_RETRY_BACKOFF=1: 1 s, 2 s...).
    waits = [
        (later.run_after - earlier.finished_at).total_seconds()
        for earlier, later in zip(attempts, attempts[1:], strict=False)
    ]
    assert all(w > 0 for w in waits), waits
    assert all(b > a * 1.5 for a, b in zip(waits, waits[1:], strict=False)), waits
    assert done.attempt == len(attempts) > 2
    deployed = target / "current" if mode == "atomic" else target
    assert (deployed / "site.txt").read_text() == "v2\n"
    assert git("status", "--porcelain", cwd=deployed) == ""
    figures(
        f"remote outage ({mode}): down {outage:.1f}s, {len(attempts) - 1} failed attempt(s), "
        f"retry waits {[round(w, 1) for w in waits]}s, deployed on attempt {done.attempt}"
    )
