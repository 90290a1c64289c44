"""Running one command for the worker: new session, process-group kill, output tail, heartbeat.

Standard library only; gitdeploy.sync runs git and the post-deploy command through run().

Why our own subprocess runner and not GitPython (or subprocess.run) for the commands that touch the
network or the working tree: we need, together, a timeout that kills the whole process group (git
spawns git-remote-http, ssh, upload-pack, ...; a post-deploy command spawns a build tool's
workers), a new session so a SIGTERM sent to the worker's process group does not kill git half-way
through a checkout, bounded memory for a command that prints gigabytes, and heartbeats while we
wait (the worker renews its lease from them). GitPython's execute() and subprocess.run() give none
of these together.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "HEARTBEAT_EVERY",
    "KILL_GRACE",
    "OUTPUT_CAP",
    "Completed",
    "GroupRecord",
    "kill_group",
    "run",
]

OUTPUT_CAP = 1024 * 1024  # bytes of output kept per stream (the tail)
HEARTBEAT_EVERY = 1.0  # seconds between heartbeat() calls while a command runs (contract: <= 2 s)
KILL_GRACE = 2.0  # SIGTERM, then SIGKILL after this many seconds


@dataclass(frozen=True)
class Completed:
    returncode: int  # negative (-signal) when killed
    stdout: bytes  # with merge_output, stdout and stderr interleaved
    stderr: bytes
    timed_out: bool
    dropped: int  # bytes dropped from the head of the output to keep it under the cap


class _Tail:
    """Keeps the last `cap` bytes read from a pipe."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.dropped = 0

    def drain(self, stream) -> None:
        try:
            while chunk := stream.read1(65536):
                self.data += chunk
                if len(self.data) > self.cap:
                    cut = len(self.data) - self.cap
                    del self.data[:cut]
                    self.dropped += cut
        except (OSError, ValueError):
            pass


def kill_group(proc: subprocess.Popen, grace: float = KILL_GRACE) -> None:
    """SIGTERM to the process's whole group, SIGKILL after `grace` seconds if it is still there.

    The command runs in its own session, so its pid is its process group id: this reaches every
    child it started (git-remote-http, ssh, a build tool's workers, ...).
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------------------------------
# A command that outlives its worker
#
# The command runs in a session of its own, so a SIGTERM to the worker does not reach it; when the
# worker dies by SIGKILL (or the OOM killer) nothing kills it either, and the run is recovered and
# started again by another worker while the orphan (a slow post-deploy command, a git fetch) still
# runs: two post-deploy commands for one repository at once. So a command run under a repository's
# lock is written down next to the lock file (GroupRecord): its process group, its leader's start
# time (a pid alone may have been reused) and a marker in its environment. Whoever next takes the
# lock ends that group (SIGTERM, then SIGKILL) before it starts anything; a command that finished
# is struck off, so what it deliberately left running in the background is not touched (a timeout
# would not touch it either: only the group is ours).
#
# The command is only let go once it is written down: it starts behind a gate (a /bin/sh reading
# one line from its stdin) that the worker opens after the record is on disk; a worker killed in
# between closes the pipe, and the gate exits without running anything.

MARKER_VARIABLE = "GITDEPLOY_COMMAND_ID"
_GATE = 'IFS= read -r _ || exit 125; exec "$@" </dev/null'
_ENDED_WITHIN = 10.0  # seconds a SIGKILLed group is given to disappear


@dataclass(frozen=True)
class _Proc:
    pid: int
    pgid: int
    start: int  # clock ticks after boot: with the pid, names one process for this boot


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _stat(pid: int | str) -> _Proc | None:
    """pid's process group and start time; None when it is gone (or a zombie: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return _Proc(int(pid), int(fields[2]), int(fields[19]))


def _group_members(pgid: int) -> list[_Proc]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (proc := _stat(name)) is not None and proc.pgid == pgid:
            found.append(proc)
    return found


def _carries(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{MARKER_VARIABLE}={marker}".encode() in f.read().split(b"\0")
    except OSError:
        return False


class GroupRecord:
    """The command running under a repository's lock, written down in a file next to the lock
    (the lock's holder writes it, and only while it holds the lock). See "A command that outlives
    its worker" above."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, pid: int, marker: str, what: str) -> None:
        leader = _stat(pid)
        record = {
            "pgid": pid,  # a new session's leader: its pid is its group's id
            "start": leader.start if leader else 0,
            "marker": marker,
            "boot": _boot_id(),
            "pid_namespace": _pid_namespace(),
            "worker_pid": os.getpid(),
            "what": what,
        }
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def end_leftover(self, grace: float = KILL_GRACE) -> str:
        """Ends the command a previous holder of the lock left running (it died with it still
        going), and strikes it off. Returns what was done, for the run's log ("" when nothing
        was left). Call it holding the lock."""
        try:
            with open(self.path) as f:
                record = json.load(f)
            pgid, start, marker = int(record["pgid"]), int(record["start"]), str(record["marker"])
            what = str(record.get("what", "a command"))
        except FileNotFoundError:
            return ""
        except (OSError, ValueError, KeyError, TypeError):
            self.clear()  # unreadable: not ours to act on
            return ""
        if record.get("boot") != _boot_id():
            self.clear()  # the machine restarted since: nothing of that boot runs
            return ""
        if record.get("pid_namespace") != _pid_namespace():
            # Another container sharing LOCK_DIR (or this one before a restart, which ended all
            # of its processes): its pids are not ours to see or signal. Said once.
            self.clear()
            return (
                f"{what} (process group {pgid}) was left by a worker in another pid namespace; "
                "it cannot be checked from here"
            )
        members = _group_members(pgid)
        leader = next((p for p in members if p.pid == pgid), None)
        ours = (leader is not None and leader.start == start) or any(
            _carries(p.pid, marker) for p in members
        )
        if not members or not ours:
            self.clear()  # it ended with its worker, or the id now belongs to someone else
            return ""
        began = time.monotonic()
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, _ENDED_WITHIN)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            deadline = time.monotonic() + wait
            while _group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _group_members(pgid):
                self.clear()
                return (
                    f"Ended {what} (process group {pgid}, {len(members)} process(es)) that a "
                    f"lost worker (pid {record.get('worker_pid')}) left running: "
                    f"{signal.Signals(sig).name}, {time.monotonic() - began:.1f}s"
                )
        raise OSError(f"{what} (process group {pgid}) a lost worker left still runs after SIGKILL")


class _ExitWatch:
    """Waits for a child to end and is woken the moment it does.

    Popen.wait(timeout=...) polls, sleeping 0.5 ms, 1 ms, 2 ms, ... up to 50 ms between checks, so
    a 30 ms git command was seen to cost 60 ms: 10-45 ms per command, several commands per sync.
    A pidfd (Linux 5.3+) becomes readable when the process exits, so poll() returns then. Where
    there is none (another OS, an old kernel, a seccomp profile refusing it), Popen's polling."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.pidfd = -1
        self.poller: select.poll | None = None
        with contextlib.suppress(AttributeError, OSError):
            # The child is not reaped before we wait for it, so its pid is still its own here
            # (a zombie at worst): the pidfd names this process and no other.
            self.pidfd = os.pidfd_open(proc.pid)
            self.poller = select.poll()
            self.poller.register(self.pidfd, select.POLLIN)

    def wait(self, seconds: float) -> bool:
        """True once the process has ended (not yet reaped), False after `seconds` without."""
        if self.poller is None:
            try:
                self.proc.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                return False
            return True
        return bool(self.poller.poll(max(0, int(seconds * 1000))))

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def lower(pid: int, niceness: int) -> None:
    """Lowers process pid's scheduling priority by niceness below this process's (19 at most). A
    process that has already ended, or a system that refuses, leaves it as it is.

    A process that leads its own session (run() starts every command so) is lowered as a session
    too. Where the kernel groups processes by session for scheduling (autogroup, on by default in
    Debian's and Ubuntu's kernels when the process is not in a container's CPU cgroup), a nice
    value weighs a process only against the others of its session: git alone in its session got
    as much CPU as the whole web. Its session's own nice (/proc/PID/autogroup) weighs it against
    the web's. The file is only written for a session leader, whose session is its own and not
    the worker's."""
    with contextlib.suppress(OSError):
        target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + niceness)
        os.setpriority(os.PRIO_PROCESS, pid, target)
        if os.getsid(pid) == pid:
            with open(f"/proc/{pid}/autogroup", "w") as autogroup:
                autogroup.write(str(target))


def run(
    argv: list[str],
    *,
    cwd: str | None,
    env: Mapping[str, str],
    timeout: float,
    heartbeat: Callable[[], None],
    merge_output: bool = False,
    output_cap: int = OUTPUT_CAP,
    record: GroupRecord | None = None,
    what: str = "",
    niceness: int = 0,
) -> Completed:
    """Runs argv in a new session with stdin closed, keeps the last output_cap bytes of its output,
    calls heartbeat about every HEARTBEAT_EVERY seconds while waiting, and kills the whole group
    past timeout (timed_out=True) or when heartbeat raises (the exception propagates).

    niceness: how much lower than this process's the command's scheduling priority is (its
    children inherit it). Set from here once the command is started, which costs one system call
    where a preexec_fn would make Python fork the worker's whole memory instead of vfork. The
    command waits behind a gate (a shell reading one line) until it is set, so it never runs a
    moment at this process's priority: a short command could otherwise finish before it.

    With a record (the caller holds the repository's lock), the command's group is written down
    before it starts and struck off once it has ended, so that the lock's next holder can end it
    if this process dies meanwhile (GroupRecord); `what` names it there."""
    env = dict(env)
    stdin, gate, marker = subprocess.DEVNULL, -1, ""
    if record is not None:
        marker = secrets.token_hex(16)
        env[MARKER_VARIABLE] = marker
        what = what or os.path.basename(argv[0])
    if record is not None or niceness:
        stdin, gate = os.pipe()
        argv = ["/bin/sh", "-c", _GATE, "gitdeploy-gate", *argv]
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
            # A SIGTERM/SIGINT to the worker's process group must not reach the command.
            start_new_session=True,
        )
    except BaseException:
        if gate >= 0:
            os.close(gate)
        raise
    finally:
        if gate >= 0:
            os.close(stdin)
    if gate >= 0:
        try:
            if niceness:
                lower(proc.pid, niceness)
            if record is not None:
                record.write(proc.pid, marker, what)
            os.write(gate, b"go\n")  # lowered and written down: the gate lets the command start
        except BaseException:
            kill_group(proc)
            raise
        finally:
            os.close(gate)
    out, err = _Tail(output_cap), _Tail(output_cap)
    readers = [threading.Thread(target=out.drain, args=(proc.stdout,), daemon=True)]
    if not merge_output:
        readers.append(threading.Thread(target=err.drain, args=(proc.stderr,), daemon=True))
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    timed_out = False
    exited = _ExitWatch(proc)
    try:
        while True:
            heartbeat()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                kill_group(proc)
                break
            if exited.wait(min(HEARTBEAT_EVERY, remaining)):
                proc.wait()  # it has ended: reap it (returns at once)
                break
    except BaseException:  # heartbeat raised (lease lost) or KeyboardInterrupt: leave no orphan
        kill_group(proc)
        raise
    finally:
        exited.close()
        if record is not None and proc.returncode is not None:
            record.clear()  # ended (and reaped): nothing of it is the next holder's to end
        # A background process started by the command may keep the pipe open; do not wait for it.
        for reader in readers:
            reader.join(timeout=2)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
    return Completed(
        proc.returncode, bytes(out.data), bytes(err.data), timed_out, out.dropped + err.dropped
    )
