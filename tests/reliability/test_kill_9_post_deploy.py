"""Issue 11, item 5: after a kill -9 of the worker, the post-deploy command it was running must
not overlap with the one the recovered run starts. A real `manage.py db_worker` is killed with
SIGKILL during a slow post-deploy command; a second worker recovers the run. Each command writes
timestamps as it goes, and the two commands' intervals must not overlap.

(Before: the orphan went on writing for its whole 30 s while the recovered run's command ran
beside it; with the default 30 s lease any command over 30 s overlapped.)"""

from __future__ import annotations

import signal

import pytest

from gitdeploy.models import SyncRun, WorkerHeartbeat
from tests.test_worker_processes import (  # noqa: F401 - fixtures
    deployed_repository,
    head,
    push_webhook,
    start_worker,
    wait_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]

# Writes "<run id> <time>" every 0.1 s, as many times as {ticks} says when it starts, then
# "<run id> end".
SLOW_COMMAND = (
    'n=$(cat "{ticks}"); i=0; while [ $i -lt $n ]; do '
    'echo "$GITDEPLOY_RUN_ID $(date +%s.%N)" >> "{log}"; sleep 0.1; i=$((i+1)); done; '
    'echo "$GITDEPLOY_RUN_ID end" >> "{log}"'
)


def intervals(log_path) -> dict[int, tuple[float, float, bool]]:
    """run id -> (first stamp, last stamp, reached the end)."""
    seen: dict[int, list[float]] = {}
    ended = set()
    for line in log_path.read_text().splitlines():
        run_id, value = line.split()
        if value == "end":
            ended.add(int(run_id))
        else:
            seen.setdefault(int(run_id), []).append(float(value))
    return {rid: (min(v), max(v), rid in ended) for rid, v in seen.items()}


def test_the_orphaned_post_deploy_command_is_ended_before_the_recovered_run_starts_another(
    client,
    deployed_repository,  # noqa: F811 - the fixture
    remote,
    start_worker,  # noqa: F811 - the fixture
    tmp_path,
    figures,
):
    stamps, ticks = tmp_path / "stamps.log", tmp_path / "ticks"
    ticks.write_text("300\n")  # the first command would run for 30 s or more
    # Deployed once already, so the worker has no initial sync to run: the push's run is the one
    # killed and recovered.
    repository = deployed_repository(
        clone_url=remote.url, post_deploy_command=SLOW_COMMAND.format(log=stamps, ticks=ticks)
    )
    lease = {"SYNC_LEASE_SECONDS": "2"}
    victim = start_worker("victim", **lease)
    wait_for(WorkerHeartbeat.latest, timeout=30, message="the victim's heartbeat")
    tip = remote.commit({"app.txt": "v2\n"}, "v2")
    answer = push_webhook(client, repository, tip, "delivery-orphan")
    wait_for(lambda: stamps.exists() and len(stamps.read_text().splitlines()) >= 5,
             timeout=60, message="the post-deploy command to run")  # fmt: skip

    victim.stop(signal.SIGKILL)
    ticks.write_text("20\n")  # the recovered run's command: 2 s
    rescuer = start_worker("rescuer", **lease)
    fresh = wait_for(
        lambda: (
            SyncRun.objects.filter(retry_of_id=answer["sync_run"])
            .exclude(status__in=[SyncRun.Status.QUEUED, SyncRun.Status.RUNNING])
            .first()
        ),
        timeout=90,
        message="the recovered run to finish",
    )
    assert fresh.status == SyncRun.Status.SUCCEEDED, fresh.log + rescuer.output()
    assert head(repository.target_dir) == tip

    found = intervals(stamps)
    lost_first, lost_last, lost_ended = found[answer["sync_run"]]
    new_first, new_last, new_ended = found[fresh.pk]
    gap = new_first - lost_last
    figures(
        f"orphan ran {lost_last - lost_first:.2f}s, killed; recovered command started "
        f"{gap:.2f}s after the orphan's last write (overlap {max(-gap, 0):.2f}s)"
    )
    assert not lost_ended, "the orphaned command was ended, not left to finish"
    assert new_ended
    assert gap > 0, f"the two post-deploy commands overlapped by {-gap:.2f}s"
    assert "Ended the post-deploy command" in fresh.log, fresh.log
