"""gitdeploy.sync in place: clone, update, force push, roll back, local edits, foreign directories.

Real git against real remotes (file://, git daemon); no database.
"""

import os
import subprocess
import time
from pathlib import Path

import pytest

from gitdeploy.sync import SyncError, current_commit
from tests.gitservers import GIT_ENV, Remote, deploy, git, run_git_daemon

# Fixtures (remote, git_daemon, hung_server, ...) come from tests.gitservers, loaded as a plugin
# by tests/conftest.py.


def head(path) -> str:
    return git("rev-parse", "HEAD", cwd=path)


def test_first_deploy_clones_into_a_missing_directory(remote, tmp_path):
    target = tmp_path / "site"
    result = deploy(remote.url, target)

    assert result.previous_commit == ""
    assert result.deployed_commit == remote.tip() == head(target)
    assert result.branch == "main"
    assert result.deployed_path == str(target)
    assert (target / "README.md").read_text() == "hello\n"
    assert current_commit(str(target), "inplace") == remote.tip()
    assert git("config", "remote.origin.url", cwd=target) == remote.url


def test_existing_empty_directory_is_cloned_into_and_kept(remote, tmp_path):
    # A Docker volume's mount point: it exists, it is empty, and it must stay the same directory.
    target = tmp_path / "volume"
    target.mkdir()
    inode = target.stat().st_ino

    deploy(remote.url, target)

    assert target.stat().st_ino == inode
    assert (target / "README.md").exists()


def test_clone_over_git_daemon(remote, git_daemon, tmp_path):
    result = deploy(git_daemon.url_for(remote), tmp_path / "site")
    assert result.deployed_commit == remote.tip()


def test_update_fetches_only_the_branch_and_moves_to_its_tip(remote, tmp_path):
    target = tmp_path / "site"
    first = deploy(remote.url, target).deployed_commit
    remote.commit({"other.txt": "x"}, "on another branch", branch="other")
    second = remote.commit({"README.md": "v2\n", "app.py": "print(2)\n"}, "v2", branch="main")

    result = deploy(remote.url, target)

    assert (result.previous_commit, result.deployed_commit) == (first, second)
    assert head(target) == second
    assert (target / "README.md").read_text() == "v2\n"
    refs = git("for-each-ref", "--format=%(refname)", "refs/remotes", cwd=target).split()
    assert refs == ["refs/remotes/origin/main"]
    assert "pull" not in result.log and "merge" not in result.log


def test_force_push_is_followed(remote, tmp_path):
    target = tmp_path / "site"
    base = remote.tip()
    remote.commit({"doomed.txt": "x"}, "will be rewritten")
    deploy(remote.url, target)
    remote.force_push_to(base)
    rewritten = remote.commit({"new.txt": "y"}, "rewritten history")

    result = deploy(remote.url, target)

    assert result.deployed_commit == rewritten == head(target)
    assert not (target / "doomed.txt").exists()
    assert (target / "new.txt").exists()


def test_roll_back_to_an_exact_commit(remote, tmp_path):
    target = tmp_path / "site"
    old = remote.tip()
    new = remote.commit({"README.md": "v2\n"}, "v2")
    deploy(remote.url, target)

    result = deploy(remote.url, target, commit=old)

    assert (result.previous_commit, result.deployed_commit) == (new, old)
    assert head(target) == old
    assert (target / "README.md").read_text() == "hello\n"


def test_roll_back_on_a_shallow_clone_fetches_the_missing_commit(remote, tmp_path):
    target = tmp_path / "site"
    old = remote.tip()
    for n in range(3):
        remote.commit({"README.md": f"v{n}\n"}, f"v{n}")
    deploy(remote.url, target, depth=1)
    assert git("rev-list", "--count", "HEAD", cwd=target) == "1"
    assert (target / ".git" / "shallow").exists()

    result = deploy(remote.url, target, depth=1, commit=old)

    assert result.deployed_commit == old == head(target)
    assert (target / "README.md").read_text() == "hello\n"


def test_roll_back_on_a_shallow_clone_deepens_when_the_server_refuses_a_sha(remote, tmp_path):
    # Protocol v0 servers only hand out advertised refs: fetching the commit by id fails, so the
    # history is deepened instead.
    target = tmp_path / "site"
    old = remote.tip()
    remote.commit({"README.md": "v1\n"}, "v1")
    deploy(remote.url, target, depth=1)
    git("config", "protocol.version", "0", cwd=target)

    result = deploy(remote.url, target, depth=1, commit=old)

    assert result.deployed_commit == old == head(target)
    assert "fetching the full history" in result.log


def test_unknown_commit_is_refused_and_nothing_moves(remote, tmp_path):
    target = tmp_path / "site"
    deployed = deploy(remote.url, target).deployed_commit

    with pytest.raises(SyncError) as caught:
        deploy(remote.url, target, commit="0123456789abcdef0123456789abcdef01234567")

    assert not caught.value.retryable
    assert "not found" in caught.value.message
    assert head(target) == deployed


def test_option_like_commit_never_reaches_git(remote, tmp_path):
    with pytest.raises(SyncError) as caught:
        deploy(remote.url, tmp_path / "site", commit="--upload-pack=touch /tmp/pwned")
    assert not caught.value.retryable
    assert "not a commit id" in caught.value.message


def test_blank_branch_means_the_remotes_default_branch(remote, tmp_path):
    trunk = remote.commit({"trunk.txt": "t"}, "on trunk", branch="trunk")
    remote.set_default_branch("trunk")

    result = deploy(remote.url, tmp_path / "site", branch="")

    assert result.branch == "trunk"
    assert result.deployed_commit == trunk
    assert "default branch is trunk" in result.log


def test_depth_makes_a_shallow_clone(remote, tmp_path):
    remote.commit({"a": "1"}, "second")
    target = tmp_path / "site"
    deploy(remote.url, target, depth=1)
    assert git("rev-parse", "--is-shallow-repository", cwd=target) == "true"
    assert git("rev-list", "--count", "HEAD", cwd=target) == "1"


def test_filter_makes_a_partial_clone(remote, tmp_path):
    remote.commit({"big.bin": os.urandom(4096)}, "blob")
    remote.commit({"big.bin": None}, "drop it")
    target = tmp_path / "site"
    deploy(remote.url, target, filter="blob:none")

    assert git("config", "remote.origin.promisor", cwd=target) == "true"
    assert git("config", "remote.origin.partialclonefilter", cwd=target) == "blob:none"
    missing = git("rev-list", "--objects", "--all", "--missing=print", cwd=target)
    assert "?" in missing  # the old blob was never downloaded
    assert (target / "README.md").read_text() == "hello\n"


def test_local_edits_are_overwritten_and_listed(remote, tmp_path):
    target = tmp_path / "site"
    deploy(remote.url, target)
    (target / "README.md").write_text("edited on the server\n")

    result = deploy(remote.url, target)

    assert (target / "README.md").read_text() == "hello\n"
    assert "overwritten" in result.log
    assert " M README.md" in result.log


def test_untracked_files_are_kept_by_default(remote, tmp_path):
    target = tmp_path / "site"
    deploy(remote.url, target)
    (target / "uploads").mkdir()
    (target / "uploads" / "photo.jpg").write_text("jpg")

    deploy(remote.url, target)

    assert (target / "uploads" / "photo.jpg").exists()


def test_clean_untracked_removes_untracked_but_keeps_ignored_files(remote, tmp_path):
    remote.commit({".gitignore": "*.log\n.env\n"}, "ignore")
    target = tmp_path / "site"
    deploy(remote.url, target)
    (target / "stray.txt").write_text("x")
    (target / "tmpdir").mkdir()
    (target / "tmpdir" / "f").write_text("x")
    (target / "app.log").write_text("log")
    (target / ".env").write_text("SECRET=1")

    result = deploy(remote.url, target, clean_untracked=True)

    assert not (target / "stray.txt").exists()
    assert not (target / "tmpdir").exists()
    assert (target / "app.log").exists() and (target / ".env").exists()
    assert "Removing stray.txt" in result.log


def snapshot(path):
    return sorted(
        (str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"") for p in path.rglob("*")
    )


def test_foreign_directory_is_refused_untouched(remote, tmp_path):
    target = tmp_path / "site"
    target.mkdir()
    (target / "index.html").write_text("somebody else's site")
    (target / "data").mkdir()
    before = snapshot(target)

    with pytest.raises(SyncError) as caught:
        deploy(remote.url, target)

    assert not caught.value.retryable
    assert "not a git clone" in caught.value.message
    assert snapshot(target) == before


def test_clone_of_another_repository_is_refused_untouched(remote, tmp_path):
    other_root = tmp_path / "other"
    other_root.mkdir()
    other = Remote(other_root, "other.git")
    other.commit({"x": "other"}, "other")
    target = tmp_path / "site"
    deploy(other.url, target)
    before = snapshot(target)

    with pytest.raises(SyncError) as caught:
        deploy(remote.url, target)

    assert not caught.value.retryable
    assert "holds a clone of" in caught.value.message and other.url in caught.value.message
    assert snapshot(target) == before


def test_stale_locks_of_a_killed_git_are_removed(remote, tmp_path):
    target = tmp_path / "site"
    deploy(remote.url, target)
    new = remote.commit({"README.md": "v2\n"}, "v2")
    (target / ".git" / "index.lock").write_text("")
    (target / ".git" / "refs" / "remotes" / "origin" / "main.lock").write_text("")

    result = deploy(remote.url, target)

    assert result.deployed_commit == new
    assert not (target / ".git" / "index.lock").exists()
    assert "Removed stale lock .git/index.lock" in result.log
    assert "Removed stale lock .git/refs/remotes/origin/main.lock" in result.log


def test_lock_of_a_running_git_is_left_alone(remote, tmp_path):
    target = tmp_path / "site"
    deploy(remote.url, target)
    lock = target / ".git" / "index.lock"
    lock.write_text("")
    # A git process working in the directory (waiting on stdin, like a slow command would).
    busy = subprocess.Popen(
        ["git", "cat-file", "--batch"], cwd=target, env=GIT_ENV, stdin=subprocess.PIPE
    )
    try:
        while Path(f"/proc/{busy.pid}/comm").read_text().strip() != "git":
            time.sleep(0.01)  # Popen may return a moment before the kernel shows the new name
        with pytest.raises(SyncError) as caught:
            deploy(remote.url, target)
    finally:
        busy.kill()
        busy.wait()

    assert caught.value.retryable
    assert f"pid {busy.pid}" in caught.value.message
    assert lock.exists()


def test_remote_down_is_retryable_and_leaves_the_last_good_commit(remote, tmp_path):
    target = tmp_path / "site"
    with run_git_daemon(remote.root) as daemon:
        url = daemon.url_for(remote)
        good = deploy(url, target).deployed_commit
    remote.commit({"README.md": "never arrives\n"}, "v2")

    with pytest.raises(SyncError) as caught:
        deploy(url, target)

    assert caught.value.retryable
    assert caught.value.previous_commit == good
    assert "git fetch failed" in caught.value.message or "ls-remote" in caught.value.message
    assert head(target) == good == current_commit(str(target), "inplace")
    assert (target / "README.md").read_text() == "hello\n"


def test_git_timeout_kills_a_hung_remote(hung_server, tmp_path):
    target = tmp_path / "site"
    beats = []
    start = time.monotonic()
    from gitdeploy.sync import SyncSpec, sync

    with pytest.raises(SyncError) as caught:
        sync(
            SyncSpec(
                clone_url=f"git://127.0.0.1:{hung_server}/repo.git",
                branch="main",
                target_dir=str(target),
                git_timeout=2,
            ),
            heartbeat=lambda: beats.append(time.monotonic()),
        )

    assert time.monotonic() - start < 10
    assert caught.value.retryable
    assert "timed out after 2s" in caught.value.message
    assert len(beats) >= 2
    assert max(b - a for a, b in zip(beats, beats[1:], strict=False)) <= 2
    # The first deploy failed before anything was fetched: no half-made clone is left behind.
    assert not target.exists()
    assert not live_processes_mentioning(f"127.0.0.1:{hung_server}")


def live_processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(pid))
    return found


def test_branch_missing_on_the_remote_is_not_retryable(remote, tmp_path):
    with pytest.raises(SyncError) as caught:
        deploy(remote.url, tmp_path / "site", branch="nope")
    assert not caught.value.retryable
    assert "couldn't find remote ref" in caught.value.message


def test_relative_target_is_refused(remote):
    with pytest.raises(SyncError):
        deploy(remote.url, "relative/site")


def test_file_system_errors_become_sync_errors(remote, tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SyncError) as caught:
        deploy(remote.url, tmp_path / "a-file" / "site")
    assert not caught.value.retryable
    assert "NotADirectoryError" in caught.value.message


def test_a_first_deploy_killed_between_init_and_remote_add_is_adopted(remote, tmp_path):
    # What `kill -9` after `git init` leaves in a volume: a repository with no origin, no object.
    target = tmp_path / "volume"
    target.mkdir()
    git("init", "-q", str(target))

    result = deploy(remote.url, target)

    assert result.deployed_commit == remote.tip() == head(target)
    assert git("config", "remote.origin.url", cwd=target) == remote.url
    assert "Adopting the empty repository" in result.log


def test_a_repository_without_origin_but_with_commits_is_still_refused(remote, tmp_path):
    target = tmp_path / "site"
    target.mkdir()
    git("init", "-q", str(target))
    (target / "notes.txt").write_text("mine")
    git("add", "notes.txt", cwd=target)
    git("commit", "-q", "-m", "someone's own work", cwd=target)
    before = snapshot(target)

    with pytest.raises(SyncError) as caught:
        deploy(remote.url, target)

    assert not caught.value.retryable
    assert "holds a clone of (no origin)" in caught.value.message
    assert snapshot(target) == before


def test_an_empty_repository_beside_other_files_is_still_refused(remote, tmp_path):
    # No commit, but files of somebody's that a checkout could overwrite.
    target = tmp_path / "site"
    target.mkdir()
    git("init", "-q", str(target))
    (target / "README.md").write_text("not yours")

    with pytest.raises(SyncError) as caught:
        deploy(remote.url, target)

    assert "holds a clone of (no origin)" in caught.value.message
    assert (target / "README.md").read_text() == "not yours"
