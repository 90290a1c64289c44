"""The post-deploy command: where and with what environment it runs, output, exit code, timeout."""

import os
import time

import pytest

from gitdeploy.process import OUTPUT_CAP
from gitdeploy.sync import SyncError
from tests.gitservers import deploy, git


def test_runs_in_the_target_with_gitdeploy_variables_and_without_secrets(
    remote, tmp_path, monkeypatch
):
    monkeypatch.setenv("GIT_TOKEN", "env-token-abcdef")
    monkeypatch.setenv("WEBHOOK_SECRET", "env-webhook-secret")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:dbpass@db/x")
    monkeypatch.setenv("PLAIN_SETTING", "kept")
    target = tmp_path / "site"
    first = deploy(remote.url, target).deployed_commit
    new = remote.commit({"README.md": "v2\n"}, "v2")

    result = deploy(
        remote.url,
        target,
        post_deploy_command="pwd > ../pd.txt; env | sort >> ../pd.txt; echo done",
        post_deploy_env={"GITDEPLOY_REPOSITORY": "site", "GITDEPLOY_RUN_ID": "42"},
    )

    out = (tmp_path / "pd.txt").read_text().splitlines()
    assert out[0] == str(target)
    env = dict(line.split("=", 1) for line in out[1:] if "=" in line)
    assert env["GITDEPLOY_BRANCH"] == "main"
    assert env["GITDEPLOY_COMMIT"] == new
    assert env["GITDEPLOY_PREVIOUS_COMMIT"] == first
    assert env["GITDEPLOY_REPOSITORY"] == "site" and env["GITDEPLOY_RUN_ID"] == "42"
    assert env["PLAIN_SETTING"] == "kept"
    for secret in ("GIT_TOKEN", "WEBHOOK_SECRET", "DATABASE_URL", "GITDEPLOY_GIT_PASSWORD"):
        assert secret not in env
    assert result.post_deploy_exit_code == 0
    assert "done" in result.log
    # Secrets of our own environment never reach the log either.
    assert "env-token-abcdef" not in result.log


def test_runs_in_its_own_session(remote, tmp_path):
    # A SIGTERM/SIGINT to the worker's process group must not reach git or the command.
    result = deploy(
        remote.url,
        tmp_path / "site",
        post_deploy_command="python3 -c 'import os; print(\"sid\", os.getsid(0))'",
    )
    assert f"sid {os.getsid(0)}" not in result.log
    assert "sid " in result.log


def test_failure_is_not_retryable_and_records_the_exit_code(remote, tmp_path):
    target = tmp_path / "site"
    new = remote.tip()
    lines = []

    with pytest.raises(SyncError) as caught:
        deploy(
            remote.url,
            target,
            lines=lines,
            post_deploy_command="echo building; echo boom >&2; exit 3",
        )

    error = caught.value
    assert not error.retryable
    assert error.post_deploy_exit_code == 3
    assert "exit code 3" in error.message
    log = "\n".join(lines)
    assert "building" in log and "boom" in log
    # In place, the tree has moved already: the error says so.
    assert error.deployed_commit == new == git("rev-parse", "HEAD", cwd=target)


def test_timeout_kills_the_whole_process_group(remote, tmp_path):
    pid_file = tmp_path / "child.pid"
    start = time.monotonic()

    with pytest.raises(SyncError) as caught:
        deploy(
            remote.url,
            tmp_path / "site",
            post_deploy_command=f"sleep 60 & echo $! > {pid_file}; wait",
            post_deploy_timeout=1,
        )

    assert time.monotonic() - start < 8
    assert not caught.value.retryable
    assert "timed out after 1s" in caught.value.message
    assert caught.value.post_deploy_exit_code is not None
    assert caught.value.post_deploy_exit_code < 0  # killed by a signal
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 3
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.05)  # reaped by init a moment later
    status = ""
    if os.path.exists(f"/proc/{child}"):
        status = open(f"/proc/{child}/stat").read().split()[2]
    assert status in ("", "Z")  # gone (or a zombie waiting for init)


def test_heartbeat_while_the_command_runs(remote, tmp_path):
    from gitdeploy.sync import SyncSpec, sync

    beats = []
    sync(
        SyncSpec(
            clone_url=remote.url,
            branch="main",
            target_dir=str(tmp_path / "site"),
            post_deploy_command="sleep 3",
        ),
        heartbeat=lambda: beats.append(time.monotonic()),
    )
    assert len(beats) >= 3
    assert max(b - a for a, b in zip(beats, beats[1:], strict=False)) <= 2


def test_output_is_capped_keeping_the_tail(remote, tmp_path):
    result = deploy(
        remote.url,
        tmp_path / "site",
        post_deploy_command="head -c 1572864 /dev/zero | tr '\\0' a; echo; echo THE-END",
    )
    assert "THE-END" in result.log
    assert "post-deploy output truncated" in result.log
    assert OUTPUT_CAP <= len(result.log) < OUTPUT_CAP + 10_000


def test_secrets_in_the_output_are_redacted(remote, http_server, tmp_path):
    from tests.gitservers import HTTP_PASSWORD, HTTP_USER

    url = http_server.url_for(remote).replace("http://", f"http://{HTTP_USER}@")
    result = deploy(
        url,
        tmp_path / "site",
        token=HTTP_PASSWORD,
        post_deploy_command=f"echo leaked {HTTP_PASSWORD} https://a:b@example.com/",
    )
    assert HTTP_PASSWORD not in result.log
    assert "leaked *** https://example.com/" in result.log


def test_git_and_the_command_run_at_a_lower_priority(remote, tmp_path, monkeypatch):
    """SyncSpec.niceness (the worker's SYNC_NICENESS): on a busy machine the web answers the Git
    host before a deploy gets the CPU. Every git command is lowered (observed as it is set), and
    the command reports its own niceness."""
    from gitdeploy import process

    lowered = []
    real_lower = process.lower

    def observed(pid, niceness):
        lowered.append(niceness)
        real_lower(pid, niceness)

    monkeypatch.setattr(process, "lower", observed)
    result = deploy(remote.url, tmp_path / "site", niceness=6, post_deploy_command="nice")
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 6)
    assert f"\n{expected}\n" in f"\n{result.log}\n"
    git_commands = result.log.count("\n$ git ") + result.log.startswith("$ git ")
    assert git_commands >= 2 and lowered == [6] * len(lowered)
    assert len(lowered) >= git_commands + 1  # the quiet ones too, and the command


def test_without_niceness_nothing_is_lowered(remote, tmp_path, monkeypatch):
    from gitdeploy import process

    monkeypatch.setattr(process, "lower", lambda pid, niceness: pytest.fail("lowered"))
    result = deploy(remote.url, tmp_path / "site", post_deploy_command="nice")
    assert f"\n{os.getpriority(os.PRIO_PROCESS, 0)}\n" in f"\n{result.log}\n"
