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
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["HEARTBEAT_EVERY", "KILL_GRACE", "OUTPUT_CAP", "Completed", "kill_group", "run"]

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


def run(
    argv: list[str],
    *,
    cwd: str | None,
    env: Mapping[str, str],
    timeout: float,
    heartbeat: Callable[[], None],
    merge_output: bool = False,
    output_cap: int = OUTPUT_CAP,
) -> Completed:
    """Runs argv in a new session with stdin closed, keeps the last output_cap bytes of its output,
    calls heartbeat about every HEARTBEAT_EVERY seconds while waiting, and kills the whole group
    past timeout (timed_out=True) or when heartbeat raises (the exception propagates)."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
        # A SIGTERM/SIGINT to the worker's process group must not reach the command.
        start_new_session=True,
    )
    out, err = _Tail(output_cap), _Tail(output_cap)
    readers = [threading.Thread(target=out.drain, args=(proc.stdout,), daemon=True)]
    if not merge_output:
        readers.append(threading.Thread(target=err.drain, args=(proc.stderr,), daemon=True))
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            heartbeat()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                kill_group(proc)
                break
            try:
                proc.wait(timeout=min(HEARTBEAT_EVERY, remaining))
                break
            except subprocess.TimeoutExpired:
                continue
    except BaseException:  # heartbeat raised (lease lost) or KeyboardInterrupt: leave no orphan
        kill_group(proc)
        raise
    finally:
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
