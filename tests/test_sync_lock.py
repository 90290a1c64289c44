"""repository_lock: one sync at a time per repository, across threads and processes."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

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


# A holder of the lock that runs one command under it and waits: the test kills it with SIGKILL,
# as the kernel or an operator kills a worker, and its command lives on as an orphan.
HOLDER = """
import sys
from gitdeploy import process
from gitdeploy.sync import repository_lock
with repository_lock(sys.argv[1]) as held:
    print("locked", flush=True)
    process.run(["/bin/sh", "-c", sys.argv[2]], cwd=None, env={"PATH": "/usr/bin:/bin"},
                timeout=600, heartbeat=lambda: None, record=held.record, what="the test command")
"""


def start_holder(lock_path: str, command: str) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, lock_path, command],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for_file(path, timeout=10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written")


def test_the_next_holder_ends_the_command_a_killed_holder_left_running(tmp_path):
    lock_path = str(tmp_path / "repo.lock")
    pids = tmp_path / "pids"
    # A shell and a child of it (the build tool of a post-deploy command): both must end.
    holder = start_holder(lock_path, f'sleep 300 & echo "$$ $!" > {pids}; wait')
    shell, child = map(int, wait_for_file(pids).split())
    holder.kill()
    holder.wait()
    assert running(shell) and running(child), "the orphan outlives its holder"

    started = time.monotonic()
    with repository_lock(lock_path) as held:
        assert not running(shell) and not running(child)
        assert "Ended the test command" in held.ended and "SIGTERM" in held.ended
    assert time.monotonic() - started < 5
    assert not os.path.exists(f"{lock_path}.command")
    with repository_lock(lock_path) as held:  # struck off: nothing to end the second time
        assert held.ended == ""


def test_a_command_that_ignores_sigterm_is_killed(tmp_path):
    lock_path = str(tmp_path / "repo.lock")
    pids = tmp_path / "pids"
    holder = start_holder(lock_path, f"trap '' TERM; echo $$ > {pids}; while :; do sleep 0.1; done")
    shell = int(wait_for_file(pids))
    holder.kill()
    holder.wait()
    with repository_lock(lock_path) as held:
        assert not running(shell)
        assert "SIGKILL" in held.ended


def test_a_finished_command_and_what_it_left_in_the_background_are_not_touched(tmp_path):
    lock_path = str(tmp_path / "repo.lock")
    pids = tmp_path / "pids"
    # The command returns at once, leaving a daemon behind (started with setsid, as servers are).
    holder = start_holder(lock_path, f"setsid sleep 300 >/dev/null 2>&1 & echo $! > {pids}")
    daemon = int(wait_for_file(pids))
    deadline = time.monotonic() + 10
    while os.path.exists(f"{lock_path}.command") and time.monotonic() < deadline:
        time.sleep(0.02)
    holder.kill()
    holder.wait()
    try:
        with repository_lock(lock_path) as held:
            assert held.ended == ""
        assert running(daemon)
    finally:
        os.kill(daemon, signal.SIGKILL)


def test_a_record_whose_process_id_was_reused_is_not_acted_on(tmp_path):
    lock_path = str(tmp_path / "repo.lock")
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        # Written down as if our command had had the stranger's pid, but it started earlier.
        from gitdeploy import process

        record = process.GroupRecord(f"{lock_path}.command")
        record.write(stranger.pid, "not-its-marker", "an old command")
        with open(record.path) as f:
            text = f.read()
        with open(record.path, "w") as f:
            f.write(text.replace('"start": ', '"start": 1'))
        with repository_lock(lock_path) as held:
            assert held.ended == ""
        assert stranger.poll() is None
        assert not os.path.exists(record.path)
    finally:
        stranger.kill()
        stranger.wait()


def test_a_holder_killed_before_its_command_was_written_down_runs_nothing(tmp_path):
    """The gate: a command only starts once it is written down."""
    from gitdeploy import process

    marker = tmp_path / "ran"

    class Dying(process.GroupRecord):
        def write(self, pid, marker, what):
            raise OSError("disk full")

    with pytest.raises(OSError):
        process.run(
            ["/bin/sh", "-c", f"touch {marker}"],
            cwd=None,
            env={"PATH": "/usr/bin:/bin"},
            timeout=10,
            heartbeat=lambda: None,
            record=Dying(str(tmp_path / "r")),
        )
    time.sleep(0.3)
    assert not marker.exists()


def test_a_record_from_another_pid_namespace_is_reported_once_and_not_acted_on(tmp_path):
    from gitdeploy import process

    lock_path = str(tmp_path / "repo.lock")
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        record = process.GroupRecord(f"{lock_path}.command")
        record.write(stranger.pid, "marker", "the post-deploy command")
        with open(record.path) as f:
            text = f.read()
        with open(record.path, "w") as f:
            f.write(text.replace('"pid_namespace": "', '"pid_namespace": "other-'))
        with repository_lock(lock_path) as held:
            assert "another pid namespace" in held.ended
        with repository_lock(lock_path) as held:
            assert held.ended == ""
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
