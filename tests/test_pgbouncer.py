"""Behind a real PgBouncer in transaction mode that keeps no prepared statements (Debian's 1.18
knows none, and each server connection is reset after every transaction): the web and the worker
prepare a statement, lose it, run it again unprepared and stop preparing, with no delivery lost
and no run missed. `.ci/run` installs pgbouncer; without it, skipped."""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from django.db import connection

from gitdeploy.models import Delivery, SyncRun
from tests.reliability.stack import gunicorn
from tests.test_connection_keeper import push
from tests.test_worker_processes import start_worker  # noqa: F401 - the fixture

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.processes,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL pooler"),
    pytest.mark.skipif(
        shutil.which("pgbouncer") is None, reason="pgbouncer is absent: apt-get install pgbouncer"
    ),
]

LOST = "a prepared statement was lost between statements"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def pgbouncer():
    """A PgBouncer in transaction mode in front of the test database's server; yields its port."""
    settings = connection.settings_dict
    port = free_port()
    # Readable by the user pgbouncer runs as (it will not run as root).
    home = Path(tempfile.mkdtemp(prefix="gitdeploy-pgbouncer-"))
    home.chmod(0o777)
    user = settings.get("USER") or "postgres"
    (home / "users.txt").write_text(f'"{user}" ""\n')
    (home / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={settings.get('HOST') or '127.0.0.1'} port={settings.get('PORT') or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {home / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 4\n"
        # What a pool shared by other clients looks like to ours: a statement prepared in one
        # transaction is gone in the next.
        "server_reset_query = DEALLOCATE ALL\nserver_reset_query_always = 1\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
    )
    for path in home.iterdir():
        path.chmod(0o644)
    argv = ["pgbouncer", str(home / "pgbouncer.ini")]
    if os.geteuid() == 0:
        argv[1:1] = ["-u", "postgres"]
    log = open(home / "pgbouncer.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((home / "pgbouncer.log").read_text())
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def test_pushes_and_syncs_through_a_pooler_that_keeps_no_prepared_statements(
    subprocess_env,
    make_repository,
    remote,
    start_worker,  # noqa: F811 - the fixture imported above
    pgbouncer,
    tmp_path,
):
    settings = connection.settings_dict
    pooled = (
        f"postgres://{settings.get('USER') or 'postgres'}@127.0.0.1:{pgbouncer}/{settings['NAME']}"
    )
    env = {**subprocess_env, "DATABASE_URL": pooled, "WORKER_POLL_SECONDS": "1"}
    repository = make_repository(clone_url=remote.url, default_branch="main")
    worker = start_worker(**env)
    with gunicorn(env, tmp_path / "gunicorn.log", workers=1) as server:
        for n in range(1, 4):
            push(server.port, repository, f"d-{n}")
            # Each push's run is claimed and synced (the worker's claim statement, prepared and
            # then lost, included) before the next.
            deadline = time.monotonic() + 60
            while SyncRun.objects.filter(status__in=["queued", "running"]).exists():
                assert time.monotonic() < deadline, worker.output()
                time.sleep(0.2)
        web_log = server.output()
    assert Delivery.objects.count() == 3
    statuses = list(SyncRun.objects.values_list("status", flat=True))
    assert statuses and set(statuses) == {SyncRun.Status.SUCCEEDED}, worker.output()
    assert web_log.count(LOST) == 1, web_log
    assert " 500 " not in web_log and "Traceback" not in web_log, web_log
    worker_log = worker.output()
    assert worker_log.count(LOST) == 1, worker_log
    assert "Traceback" not in worker_log, worker_log
