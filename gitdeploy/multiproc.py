"""Where each process's Prometheus values live, so that /metrics adds them up (multiprocess mode).

    METRICS_DIR (default <DATA_DIR>/metrics)
        web/                      gunicorn's workers: emptied by the master when it starts
                                  (gitdeploy.gunicorn_conf.on_starting); child_exit marks a dead
                                  worker's live gauges gone
        worker-<host>-<pid>/      one per `manage.py db_worker` process: made fresh by that
                                  process at start (project/settings.py), and the directories of
                                  this host's dead workers are removed then

prometheus-client picks multiprocess mode from PROMETHEUS_MULTIPROC_DIR when it is first imported,
so each process points that variable at its own directory before anything imports it. Any other
process (manage.py sync, a shell, the tests) keeps its values in memory. A dead worker's counters
go with its directory, as they would with a restart: Prometheus' rate() and increase() expect
counter resets.

Stdlib only: the gunicorn master and the settings use it before Django is set up.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
WEB = "web"
WORKER_PREFIX = "worker-"


def metrics_root(environ: dict[str, str] | None = None, base_dir: Path | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("METRICS_DIR"):
        return Path(env["METRICS_DIR"])
    data = env.get("DATA_DIR") or str((base_dir or Path(__file__).resolve().parent.parent) / "data")
    return Path(data) / "metrics"


def fresh(directory: Path) -> Path:
    """The directory, created and emptied (its owner is starting: old values are not its own)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


def use(directory: Path) -> None:
    """This process (and its children) write their values into ``directory``."""
    os.environ[ENV] = str(directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_worker_dir(root: Path) -> Path:
    """A db_worker's own directory, fresh; this host's dead workers' directories are removed."""
    host = socket.gethostname()
    root.mkdir(parents=True, exist_ok=True)
    prefix = f"{WORKER_PREFIX}{host}-"
    for entry in root.iterdir():
        pid = entry.name.removeprefix(prefix)
        if entry.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
    return fresh(root / f"{prefix}{os.getpid()}")


def value_files(root: Path) -> list[str]:
    """Every process's value files below the root (web/ and each worker's directory)."""
    return sorted(str(path) for path in root.glob("*/*.db"))
