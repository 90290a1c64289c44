"""repository_lock: one sync at a time per repository, across threads and processes."""

import subprocess
import sys
import threading
import time

from gitdeploy.sync import repository_lock


def test_second_holder_waits_and_heartbeats(tmp_path):
    lock_path = str(tmp_path / "locks" / "repo.lock")
    events, beats = [], []
    acquired = threading.Event()

    def second() -> None:
        with repository_lock(lock_path, heartbeat=lambda: beats.append(1), poll=0.05):
            events.append("second")
            acquired.set()

    with repository_lock(lock_path):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(1.3)
        events.append("first done")
    assert acquired.wait(5)
    thread.join(5)

    assert events == ["first done", "second"]
    assert beats


def test_the_lock_holds_across_processes_and_dies_with_its_holder(tmp_path):
    lock_path = str(tmp_path / "repo.lock")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, fcntl; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); sys.stdin.read()",
            lock_path,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    got = threading.Event()

    def take() -> None:
        with repository_lock(lock_path, poll=0.05):
            got.set()

    thread = threading.Thread(target=take)
    thread.start()
    assert not got.wait(0.5)
    holder.kill()  # a killed worker leaves no stale lock behind
    holder.wait()
    assert got.wait(5)
    thread.join(5)
