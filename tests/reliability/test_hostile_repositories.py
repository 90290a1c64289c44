"""Hostile repositories and values, both modes: shell metacharacters and HTML in the branch name,
commit messages and file names, and symlinks in the tree that point out of it. A push of such a
repository goes through the webhook and the worker's execute_run (the real sync, in process):

- nothing in a value runs (every payload would `touch` a file under pwned/);
- the post-deploy command sees the branch name exactly, through its environment;
- a sync never writes outside the target: a symlink to an outside directory replaced by a
  directory of the same name, and one to an outside file replaced by a file, leave the outside
  untouched;
- the landing page and the admin show the values escaped."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gitdeploy.models import SyncRun
from gitdeploy.worker import execute_run
from tests.gitservers import GIT_ENV, git
from tests.test_worker_processes import push_webhook

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reliability]


def tree_of(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): (os.readlink(p) if p.is_symlink() else
                                   p.read_text() if p.is_file() else "<dir>")
        for p in sorted(path.rglob("*"))
    }  # fmt: skip


@pytest.mark.parametrize("mode", ["inplace", "atomic"])
def test_hostile_names_and_symlinks_run_nothing_and_write_nothing_outside(
    mode, admin_client, client, make_repository, remote, settings, tmp_path, figures
):
    settings.LOCK_DIR = tmp_path / "locks"
    pwned = tmp_path / "pwned"
    pwned.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel.txt").write_text("outside\n")
    outside_before = tree_of(outside)
    seen = tmp_path / "seen"
    seen.mkdir()

    touch = f"touch${{IFS}}{pwned}/"
    branch = f"x$({touch}branch)`{touch}tick`<b>bold</b>;&|'\"{{a}}!"
    assert subprocess.run(["git", "check-ref-format", f"refs/heads/{branch}"]).returncode == 0
    message = f"$(touch {pwned}/msg) `touch {pwned}/tick` <script>alert('msg')</script>"
    names = [
        "$(touch pwned-file).txt", "`touch pwned-tick`.txt", "<img src=x onerror=alert(1)>.html",
        "-rf", "--help", "a;b|c&d", "new\nline.txt", " leading space", "ünïcödé.txt",
    ]  # fmt: skip
    files: dict[str, str | bytes | None] = {name: f"{name}\n" for name in names}
    remote.commit(files, message, branch=branch)
    work = remote.work
    # out-rel reaches tmp_path/outside from the deployed directory (a release is two levels down).
    up = "../../../" if mode == "atomic" else "../"
    for link, to in (("out-rel", f"{up}outside"), ("out-abs", str(outside)),
                     ("out-file", str(outside / "sentinel.txt"))):  # fmt: skip
        os.symlink(to, work / link)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
    first = git("rev-parse", "HEAD", cwd=work)

    repository = make_repository(
        clone_url=remote.url,
        branch=branch,
        deploy_mode=mode,
        post_deploy_command=f'printf "%s" "$GITDEPLOY_BRANCH" > "{seen}/branch"',
    )

    def deploy(tip: str, delivery: str) -> SyncRun:
        answer = push_webhook(client, repository, tip, delivery)
        assert answer["status"] == "queued", answer
        run = execute_run(answer["sync_run"], worker_id="hostile")
        assert run is not None
        run.refresh_from_db()
        assert run.status == SyncRun.Status.SUCCEEDED, run.log
        assert run.deployed_commit == tip
        return run

    run = deploy(first, "hostile-1")
    deployed = Path(repository.target_dir) / ("current" if mode == "atomic" else "")
    for name in names:
        assert (deployed / name).read_text() == f"{name}\n"
    assert os.readlink(deployed / "out-abs") == str(outside)  # a symlink, checked out as one
    assert (deployed / "out-rel").resolve() == outside  # it does lead out of the target
    assert (seen / "branch").read_text() == branch

    # The symlinks become a directory and a file of the same names: git must replace them, not
    # write through them.
    for link in ("out-abs", "out-file", "out-rel"):
        (work / link).unlink()
    (work / "out-abs").mkdir()
    (work / "out-abs" / "evil.txt").write_text("written through a symlink\n")
    (work / "out-file").write_text("overwritten through a symlink\n")
    (work / "out-rel").mkdir()
    (work / "out-rel" / "sentinel.txt").write_text("written through a symlink\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
    second = git("rev-parse", "HEAD", cwd=work)
    run = deploy(second, "hostile-2")
    deployed = Path(repository.target_dir) / ("current" if mode == "atomic" else "")
    assert (deployed / "out-abs" / "evil.txt").is_file() and not (deployed / "out-abs").is_symlink()
    assert (deployed / "out-file").read_text() == "overwritten through a symlink\n"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=deployed, env=GIT_ENV,
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert status == ""

    assert tree_of(outside) == outside_before, "a sync wrote outside the target"
    assert list(pwned.iterdir()) == [], "a value was run by a shell"
    for leftover in ("pwned-file", "pwned-tick"):
        assert not list(tmp_path.rglob(leftover)) and not os.path.exists(f"/{leftover}")

    pages = [
        client.get("/").content,
        admin_client.get(f"/admin/gitdeploy/syncrun/{run.pk}/change/").content,
        admin_client.get(f"/admin/gitdeploy/repository/{repository.pk}/change/").content,
        admin_client.get("/admin/gitdeploy/delivery/").content,
        admin_client.get(f"/admin/gitdeploy/delivery/{run.deliveries.first().pk}/change/").content,
    ]
    for page in pages:
        assert b"<b>bold</b>" not in page and b"<script>alert" not in page
        assert b"<img src=x" not in page
    assert any(b"&lt;b&gt;bold&lt;/b&gt;" in page for page in pages)
    figures(
        f"hostile repository ({mode}): {len(names)} hostile file names, 3 escaping symlinks, "
        f"$(...), backticks and HTML in the branch and messages: nothing ran, nothing written "
        f"outside the target, {len(pages)} pages escaped"
    )
