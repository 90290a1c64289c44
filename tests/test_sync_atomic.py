"""DEPLOY_MODE=atomic: releases/<sha> worktrees, a relative `current` symlink switched at once."""

import os

import pytest

from gitdeploy.sync import SyncError, current_commit
from tests.gitservers import deploy, git


def releases(target):
    return sorted(p.name for p in (target / "releases").iterdir())


def test_first_deploy_makes_a_release_and_a_relative_current_link(remote, tmp_path):
    target = tmp_path / "volume"
    target.mkdir()  # an existing empty directory (a volume) is accepted
    sha = remote.tip()

    result = deploy(remote.url, target, deploy_mode="atomic")

    assert result.deployed_commit == sha
    assert result.deployed_path == str(target / "releases" / sha)
    assert os.readlink(target / "current") == f"releases/{sha}"
    assert (target / "current" / "README.md").read_text() == "hello\n"
    assert (
        git("rev-parse", "--is-bare-repository", cwd=target / ".gitdeploy" / "repo.git") == "true"
    )
    assert current_commit(str(target), "atomic") == sha
    assert not [n for n in os.listdir(target) if n.startswith("current.tmp")]


def test_new_commits_switch_current_and_old_releases_are_pruned(remote, tmp_path):
    target = tmp_path / "site"
    shas = [deploy(remote.url, target, deploy_mode="atomic", keep_releases=2).deployed_commit]
    for n in range(3):
        remote.commit({"README.md": f"v{n}\n"}, f"v{n}")
        result = deploy(remote.url, target, deploy_mode="atomic", keep_releases=2)
        assert result.previous_commit == shas[-1]
        shas.append(result.deployed_commit)

    assert os.readlink(target / "current") == f"releases/{shas[-1]}"
    assert (target / "current" / "README.md").read_text() == "v2\n"
    assert releases(target) == sorted(shas[-2:])
    worktrees = git("worktree", "list", "--porcelain", cwd=target / ".gitdeploy" / "repo.git")
    assert shas[0] not in worktrees and shas[-1] in worktrees


def test_roll_back_reuses_a_kept_release(remote, tmp_path):
    target = tmp_path / "site"
    old = deploy(remote.url, target, deploy_mode="atomic").deployed_commit
    remote.commit({"README.md": "v2\n"}, "v2")
    deploy(remote.url, target, deploy_mode="atomic")

    result = deploy(remote.url, target, deploy_mode="atomic", commit=old)

    assert "Reusing releases/" in result.log
    assert os.readlink(target / "current") == f"releases/{old}"
    assert (target / "current" / "README.md").read_text() == "hello\n"


def test_post_deploy_runs_in_the_new_release_before_the_switch(remote, tmp_path):
    target = tmp_path / "site"
    old = deploy(remote.url, target, deploy_mode="atomic").deployed_commit
    new = remote.commit({"README.md": "v2\n"}, "v2")

    deploy(
        remote.url,
        target,
        deploy_mode="atomic",
        post_deploy_command="pwd > ../../seen; readlink ../../current >> ../../seen",
    )

    seen = (target / "seen").read_text().splitlines()
    assert seen == [str(target / "releases" / new), f"releases/{old}"]


def test_post_deploy_failure_leaves_current_where_it_was(remote, tmp_path):
    target = tmp_path / "site"
    old = deploy(remote.url, target, deploy_mode="atomic").deployed_commit
    remote.commit({"README.md": "broken\n"}, "broken")

    with pytest.raises(SyncError) as caught:
        deploy(remote.url, target, deploy_mode="atomic", post_deploy_command="exit 7")

    assert caught.value.post_deploy_exit_code == 7
    assert not caught.value.retryable
    assert caught.value.deployed_commit == ""
    assert caught.value.previous_commit == old
    assert os.readlink(target / "current") == f"releases/{old}"
    assert (target / "current" / "README.md").read_text() == "hello\n"


def test_releases_of_failed_runs_are_pruned_by_a_later_success(remote, tmp_path):
    target = tmp_path / "site"
    old = deploy(remote.url, target, deploy_mode="atomic", keep_releases=1).deployed_commit
    for n in range(2):
        remote.commit({"README.md": f"bad{n}\n"}, f"bad{n}")
        with pytest.raises(SyncError):
            deploy(remote.url, target, deploy_mode="atomic", keep_releases=1,
                   post_deploy_command="false")  # fmt: skip
    newest = remote.commit({"README.md": "good\n"}, "good")
    deploy(remote.url, target, deploy_mode="atomic", keep_releases=1)

    assert releases(target) == [newest]
    assert old != newest


def test_foreign_directory_is_refused_in_atomic_mode(remote, tmp_path):
    target = tmp_path / "site"
    target.mkdir()
    (target / "index.html").write_text("x")

    with pytest.raises(SyncError) as caught:
        deploy(remote.url, target, deploy_mode="atomic")

    assert not caught.value.retryable
    assert os.listdir(target) == ["index.html"]


def test_a_release_store_killed_between_init_and_remote_add_is_adopted(remote, tmp_path):
    target = tmp_path / "volume"
    store = target / ".gitdeploy" / "repo.git"
    store.parent.mkdir(parents=True)
    git("init", "-q", "--bare", str(store))

    result = deploy(remote.url, target, deploy_mode="atomic")

    assert result.deployed_commit == remote.tip()
    assert os.readlink(target / "current") == f"releases/{remote.tip()}"
    assert git("config", "remote.origin.url", cwd=store) == remote.url


def test_a_release_store_without_origin_but_with_commits_is_still_refused(remote, tmp_path):
    target = tmp_path / "site"
    store = target / ".gitdeploy" / "repo.git"
    git("clone", "-q", "--bare", remote.url, str(store))
    git("remote", "remove", "origin", cwd=store)

    with pytest.raises(SyncError) as caught:
        deploy(remote.url, target, deploy_mode="atomic")

    assert "holds a clone of (no origin)" in caught.value.message
    assert not (target / "releases").exists()


def leave_a_killed_worktree_add(target, sha):
    """What a `git worktree add` SIGKILLed in its first steps leaves in the store: its worktree
    directory in the store, created and locked ("initializing"), with no HEAD yet and no release
    directory. `git worktree prune` keeps a locked one, and the next `worktree add` of the same
    release then names its own directory `<sha>1`."""
    stale = target / ".gitdeploy" / "repo.git" / "worktrees" / sha
    stale.mkdir(parents=True)
    (stale / "locked").write_text("initializing\n")


def test_a_killed_worktree_add_never_costs_the_live_release(remote, tmp_path):
    """A release made beside the leftovers of a killed `worktree add` was not recognised by the
    next run of the same commit (a redelivery, a retry, a redeploy), which removed it as
    incomplete while `current` pointed at it: the site was gone until `worktree add` had
    finished, and for good if the worker died meanwhile."""
    target = tmp_path / "site"
    deploy(remote.url, target, deploy_mode="atomic")
    sha = remote.commit({"README.md": "v2\n"}, "v2")
    leave_a_killed_worktree_add(target, sha)

    first = deploy(remote.url, target, deploy_mode="atomic")
    assert first.deployed_commit == sha
    live = target / "releases" / sha
    before = (live.stat().st_ino, (live / "README.md").stat().st_ino)

    again = deploy(remote.url, target, deploy_mode="atomic")

    assert "Reusing releases/" in again.log and "Removing incomplete" not in again.log, again.log
    assert (live.stat().st_ino, (live / "README.md").stat().st_ino) == before
    assert (target / "current" / "README.md").read_text() == "v2\n"
    store = target / ".gitdeploy" / "repo.git"
    assert sorted(os.listdir(store / "worktrees")) == sorted(releases(target))


def test_a_release_whose_store_directory_has_another_name_is_reused(remote, tmp_path):
    """A release made before that fix, whose worktree directory in the store is `<sha>1` beside
    the killed one's `<sha>`: the store's own record (its gitdir file) says which release each
    directory serves, so the live release is reused, not removed."""
    target = tmp_path / "site"
    deploy(remote.url, target, deploy_mode="atomic")
    sha = remote.commit({"README.md": "v2\n"}, "v2")
    store = target / ".gitdeploy" / "repo.git"
    leave_a_killed_worktree_add(target, sha)
    live = target / "releases" / sha
    git("fetch", "-q", remote.url, "main", cwd=store)
    git("worktree", "add", "-q", "--detach", str(live), sha, cwd=store)
    assert (store / "worktrees" / f"{sha}1").is_dir()
    deploy(remote.url, target, deploy_mode="atomic", commit=sha)
    before = (live.stat().st_ino, (live / "README.md").stat().st_ino)

    again = deploy(remote.url, target, deploy_mode="atomic", commit=sha)

    assert "Reusing releases/" in again.log and "Removing incomplete" not in again.log
    assert (live.stat().st_ino, (live / "README.md").stat().st_ino) == before
    assert os.readlink(target / "current") == f"releases/{sha}"


def test_a_killed_worktree_adds_leftovers_go_with_the_next_deploy(remote, tmp_path):
    """A commit whose `worktree add` was killed and that is never deployed again: its locked
    directory in the store would outlive every `worktree prune`. The next deploy removes it, and
    keeps a worktree directory locked for any other reason."""
    target = tmp_path / "site"
    deploy(remote.url, target, deploy_mode="atomic")
    abandoned = remote.commit({"README.md": "never deployed\n"}, "abandoned")
    leave_a_killed_worktree_add(target, abandoned)
    worktrees = target / ".gitdeploy" / "repo.git" / "worktrees"
    (worktrees / "kept").mkdir()
    (worktrees / "kept" / "locked").write_text("on a removable disk\n")
    remote.commit({"README.md": "v3\n"}, "v3")

    deploy(remote.url, target, deploy_mode="atomic")

    assert not (worktrees / abandoned).exists()
    assert (worktrees / "kept" / "locked").exists()
    assert sorted(os.listdir(worktrees)) == sorted([*releases(target), "kept"])
