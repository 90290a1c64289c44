"""gitdeploy.sync's one pass over the working tree: what it still finds and overwrites, what it
keeps, how many git processes an update costs, and that none of them is left running.

Real git against a file:// remote; no database.
"""

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from gitdeploy.sync import current_commit, valid_branch_name
from tests.gitservers import GIT_ENV, deploy, git


def head(path) -> str:
    return git("rev-parse", "HEAD", cwd=path)


@pytest.fixture
def deployed(remote, tmp_path):
    """A target at the remote's tip, with app.py and lib.py tracked beside README.md."""
    remote.commit({"app.py": "print(1)\n", "lib.py": "x = 1\n"}, "app")
    target = tmp_path / "site"
    deploy(remote.url, target)
    return target


# --------------------------------------------------------------------------------------------------
# (a) local edits to tracked files: listed in the log, overwritten


def test_an_edit_to_a_file_the_push_changes_is_listed_and_overwritten(remote, deployed):
    (deployed / "app.py").write_text("hot fix on the server\n")
    new = remote.commit({"app.py": "print(2)\n"}, "v2")

    result = deploy(remote.url, deployed)

    assert result.deployed_commit == new == head(deployed)
    assert (deployed / "app.py").read_text() == "print(2)\n"
    assert "Local changes to 1 tracked file(s) are overwritten:" in result.log
    assert " M app.py" in result.log


def test_an_edit_to_a_file_the_push_does_not_change_is_listed_and_overwritten(remote, deployed):
    (deployed / "lib.py").write_text("x = 'edited'\n")
    new = remote.commit({"app.py": "print(2)\n"}, "v2")

    result = deploy(remote.url, deployed)

    assert result.deployed_commit == new == head(deployed)
    assert (deployed / "lib.py").read_text() == "x = 1\n"
    assert "Local changes to 1 tracked file(s) are overwritten:" in result.log
    assert " M lib.py" in result.log


def test_deleted_and_staged_edits_are_listed_and_undone(remote, deployed):
    (deployed / "lib.py").unlink()
    (deployed / "README.md").write_text("staged edit\n")
    git("add", "README.md", cwd=deployed)
    remote.commit({"app.py": "print(2)\n"}, "v2")

    result = deploy(remote.url, deployed)

    assert (deployed / "lib.py").read_text() == "x = 1\n"
    assert (deployed / "README.md").read_text() == "hello\n"
    assert git("status", "--porcelain", "--untracked-files=no", cwd=deployed) == ""
    assert "Local changes to 2 tracked file(s) are overwritten:" in result.log
    assert " D lib.py" in result.log and " M README.md" in result.log


def test_edits_are_overwritten_when_the_commit_is_already_deployed(remote, deployed):
    (deployed / "lib.py").write_text("x = 'edited'\n")

    result = deploy(remote.url, deployed)

    assert result.previous_commit == result.deployed_commit
    assert (deployed / "lib.py").read_text() == "x = 1\n"
    assert " M lib.py" in result.log


def test_a_clean_tree_logs_no_local_changes(remote, deployed):
    remote.commit({"app.py": "print(2)\n"}, "v2")

    result = deploy(remote.url, deployed)

    assert "Local changes" not in result.log
    assert "$ git checkout --detach " in result.log


# --------------------------------------------------------------------------------------------------
# (b) untracked files are kept (unless clean_untracked)


def test_untracked_files_and_directories_are_kept(remote, deployed):
    (deployed / "uploads").mkdir()
    (deployed / "uploads" / "photo.jpg").write_text("jpg")
    (deployed / "notes.txt").write_text("mine")
    remote.commit({"app.py": "print(2)\n"}, "v2")

    result = deploy(remote.url, deployed)

    assert (deployed / "uploads" / "photo.jpg").read_text() == "jpg"
    assert (deployed / "notes.txt").read_text() == "mine"
    assert "Local changes" not in result.log


def test_an_untracked_file_in_the_way_of_a_new_one_is_overwritten_and_said(remote, deployed):
    # As before: the pushed commit wins. The log now says which file it was.
    (deployed / "new.txt").write_text("untracked")
    (deployed / "other.txt").write_text("kept")
    new = remote.commit({"new.txt": "tracked now\n"}, "adds new.txt")

    result = deploy(remote.url, deployed)

    assert result.deployed_commit == new == head(deployed)
    assert (deployed / "new.txt").read_text() == "tracked now\n"
    assert (deployed / "other.txt").read_text() == "kept"
    assert "new.txt" in result.log and "untracked" in result.log


# --------------------------------------------------------------------------------------------------
# (c) no git process outlives the sync


def git_processes_of(target: Path) -> list[str]:
    """Running git processes started by this test process or working in target (by cwd, argv or
    a GIT_DIR in their environment, which a detached `git gc` keeps)."""
    needle = str(target).encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        proc = Path("/proc") / pid
        try:
            if not (proc / "comm").read_text().startswith("git"):
                continue
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            mine = (
                ppid == os.getpid()
                or os.readlink(proc / "cwd").startswith(str(target))
                or needle in (proc / "cmdline").read_bytes()
                or needle in (proc / "environ").read_bytes()
            )
        except (OSError, ValueError):
            continue
        if mine:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid}: {argv}")
    return found


def test_no_git_process_is_left_running_after_a_sync(remote, tmp_path):
    target = tmp_path / "site"
    deploy(remote.url, target)
    assert git_processes_of(target) == []
    remote.commit({"README.md": "v2\n"}, "v2")
    deploy(remote.url, target)
    assert git_processes_of(target) == []
    deploy(remote.url, tmp_path / "atomic", deploy_mode="atomic")
    assert git_processes_of(tmp_path / "atomic") == []


def plant_loose_objects(git_dir: Path, count: int = 30) -> None:
    """Enough loose objects under objects/17 for git to estimate more than gc.auto (6700) of
    them: the next fetch starts `git gc --auto`."""
    blobs, n = [], 0
    while len(blobs) < count:
        data = f"junk {n}\n".encode()
        n += 1
        if hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest().startswith("17"):
            blobs.append(data)
    for data in blobs:
        subprocess.run(
            ["git", "--git-dir", str(git_dir), "hash-object", "-w", "--stdin"],
            input=data, env=GIT_ENV, check=True, capture_output=True,
        )  # fmt: skip


def test_an_automatic_gc_runs_inside_the_sync_not_after_it(remote, tmp_path):
    # git's default detaches `gc --auto` from the fetch that starts it: it went on in the
    # background after the sync, holding the repository's locks into the next one.
    target = tmp_path / "site"
    deploy(remote.url, target)
    plant_loose_objects(target / ".git")
    new = remote.commit({"README.md": "v2\n"}, "v2")

    result = deploy(remote.url, target)

    assert result.deployed_commit == new
    assert git_processes_of(target) == [], "a git process outlived the sync"
    time.sleep(0.2)
    assert not (target / ".git" / "gc.pid").exists() or git_processes_of(target) == []


# --------------------------------------------------------------------------------------------------
# (d) how many git processes a sync starts


@pytest.fixture
def git_calls(tmp_path, monkeypatch):
    """Puts a `git` first on PATH that logs each call sync makes, then runs the real one. Returns
    a function giving the subcommands called since the last call."""
    real = shutil.which("git")
    assert real
    bin_dir, log = tmp_path / "bin", tmp_path / "git-calls.log"
    bin_dir.mkdir()
    wrapper = bin_dir / "git"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    seen = 0

    def calls() -> list[str]:
        nonlocal seen
        lines = log.read_text().splitlines() if log.exists() else []
        new, seen = lines[seen:], len(lines)
        return [subcommand(line.split()) for line in new]

    return calls


def subcommand(argv: list[str]) -> str:
    args = iter(argv)
    for arg in args:
        if arg in ("-c", "--git-dir", "--work-tree", "-C"):
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return "?"


# Each list is what the sync costs now. A new git call makes the test fail on purpose: it costs
# every deploy a process, so add it here only with a reason.
def test_an_update_in_place_is_two_git_processes(remote, deployed, git_calls):
    remote.commit({"app.py": "print(2)\n"}, "v2")

    deploy(remote.url, deployed)

    assert git_calls() == ["fetch", "checkout"]


def test_a_first_deploy_is_three_git_processes(remote, tmp_path, git_calls):
    deploy(remote.url, tmp_path / "site")

    assert git_calls() == ["init", "fetch", "checkout"]


def test_local_edits_cost_a_forced_checkout(remote, deployed, git_calls):
    (deployed / "lib.py").write_text("edited\n")  # a file the push does not change
    remote.commit({"app.py": "print(2)\n"}, "v2")
    deploy(remote.url, deployed)
    assert git_calls() == ["fetch", "checkout", "checkout"]

    (deployed / "app.py").write_text("edited\n")  # a file the push changes: checkout refuses
    remote.commit({"app.py": "print(3)\n"}, "v3")
    deploy(remote.url, deployed)
    assert git_calls() == ["fetch", "checkout", "status", "checkout"]


def test_an_atomic_release_is_two_git_processes(remote, tmp_path, git_calls):
    target = tmp_path / "site"
    deploy(remote.url, target, deploy_mode="atomic")
    git_calls()
    remote.commit({"app.py": "print(2)\n"}, "v2")

    deploy(remote.url, target, deploy_mode="atomic")

    assert git_calls() == ["fetch", "worktree"]


# --------------------------------------------------------------------------------------------------
# What replaced a git process: reading refs from files, checking a branch name in Python


def test_current_commit_follows_a_symbolic_head_to_a_packed_ref(remote, tmp_path):
    # An operator's own clone: HEAD names a branch, and `git pack-refs` moved it to packed-refs.
    target = tmp_path / "site"
    git("clone", "-q", remote.url, target)
    git("pack-refs", "--all", cwd=target)
    assert not (target / ".git" / "refs" / "heads" / "main").exists()

    assert current_commit(str(target), "inplace") == remote.tip()
    result = deploy(remote.url, target)
    assert result.previous_commit == remote.tip()


def test_current_commit_of_an_unborn_head_is_empty(tmp_path):
    git("init", "-q", tmp_path / "site")
    assert current_commit(str(tmp_path / "site"), "inplace") == ""


NAMES = [
    "main", "feature/x", "release-1.2", "a.b", "ünïcode", "@", "x@y",
    "", "-x", "/x", "x/", "x//y", "x.", ".x", "x/.y", "x.lock", "x/y.lock", "x..y", "x@{y",
    "x y", "x~1", "x^", "x:y", "x?", "x*", "x[y", "x\\y", "x\x01", "x\x7f",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_branch_names_are_checked_as_git_checks_them(name):
    by_git = subprocess.run(
        ["git", "check-ref-format", f"refs/heads/{name}"], env=GIT_ENV, capture_output=True
    ).returncode == 0 and not name.startswith("-")
    assert valid_branch_name(name) is by_git
