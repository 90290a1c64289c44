"""Nothing the deployed application can write runs as the worker.

The application can write its own checkout, .git included (and, in atomic mode, the release store
beside it). The worker holds the Git token, the deploy key and the database credentials, so no
hook, fsmonitor, filter, transport override, include or alias planted there may take effect in any
git call the worker makes. Each test plants one such command, whose only effect would be to create
a marker file, syncs a new commit, and checks that the marker never appears.
"""

import stat
from pathlib import Path

import pytest

from tests.gitservers import deploy, git

LAYOUTS = ["inplace", "atomic"]


class Planted:
    """A deployed target and the repository git uses there, for planting commands into."""

    def __init__(self, target: Path, mode: str, marker: Path) -> None:
        self.target = target
        self.mode = mode
        self.marker = marker
        self.git_dir = target / ".git" if mode == "inplace" else target / ".gitdeploy" / "repo.git"

    @property
    def touch(self) -> str:
        return f"touch {self.marker}"

    def add_config(self, text: str) -> None:
        with open(self.git_dir / "config", "a") as config:
            config.write(text)

    def hook(self, name: str) -> None:
        hook = self.git_dir / "hooks" / name
        hook.parent.mkdir(exist_ok=True)
        hook.write_text(f"#!/bin/sh\n{self.touch}-{name}\ncat >/dev/null 2>&1 || true\n")
        hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def attributes(self, text: str) -> None:
        info = self.git_dir / "info"
        info.mkdir(exist_ok=True)
        (info / "attributes").write_text(text)

    def markers(self) -> list[str]:
        return sorted(p.name for p in self.marker.parent.glob(f"{self.marker.name}*"))


@pytest.fixture(params=LAYOUTS)
def planted(request, remote, tmp_path) -> Planted:
    """A first deploy done, then the next commit pushed: plant, then call sync_again()."""
    target = tmp_path / "site"
    deploy(remote.url, target, deploy_mode=request.param)
    remote.commit({"README.md": "v2\n", "new.txt": "new file\n"}, "v2")
    return Planted(target, request.param, tmp_path / "pwned")


def quoted(command: str) -> str:
    """A config value that keeps its ";" (outside quotes it would start a comment)."""
    return '"' + command.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sync_again(remote, planted: Planted, **options):
    result = deploy(remote.url, planted.target, deploy_mode=planted.mode, **options)
    assert result.deployed_commit == remote.tip()
    assert planted.markers() == [], "a planted command ran as the worker"
    return result


def test_hooks_are_never_run(remote, planted):
    for name in (
        "post-checkout",
        "reference-transaction",
        "post-index-change",
        "pre-auto-gc",
        "post-merge",
        "fsmonitor-watchman",
    ):
        planted.hook(name)
    # Make an automatic gc (and its pre-auto-gc hook) due after the fetch.
    planted.add_config("[gc]\n\tauto = 1\n\tautoPackLimit = 1\n")
    sync_again(remote, planted)


def test_hooks_path_in_the_config_is_ignored(remote, planted, tmp_path):
    hooks = tmp_path / "evil-hooks"
    hooks.mkdir()
    for name in ("post-checkout", "reference-transaction"):
        (hooks / name).write_text(f"#!/bin/sh\n{planted.touch}-{name}\n")
        (hooks / name).chmod(0o755)
    planted.add_config(f"[core]\n\thooksPath = {hooks}\n")
    sync_again(remote, planted)


def test_core_fsmonitor_is_never_run(remote, planted):
    planted.add_config(f"[core]\n\tfsmonitor = {planted.touch}\n")
    sync_again(remote, planted)


def test_a_smudge_filter_is_never_run(remote, planted):
    planted.attributes("* filter=evil\n")
    smudge, clean = quoted(f"{planted.touch}-smudge; cat"), quoted(f"{planted.touch}-clean; cat")
    planted.add_config(f'[filter "evil"]\n\tsmudge = {smudge}\n\tclean = {clean}\n')
    sync_again(remote, planted)


def test_a_process_filter_is_never_run(remote, planted):
    planted.attributes("* filter=evil\n")
    planted.add_config(f'[filter "evil"]\n\tprocess = {planted.touch}-process\n')
    sync_again(remote, planted)


def test_upload_pack_and_receive_pack_overrides_are_never_run(remote, planted):
    planted.add_config(
        f'[remote "origin"]\n\tuploadpack = {quoted(f"{planted.touch}-upload; git-upload-pack")}\n'
        f"\treceivepack = {quoted(f'{planted.touch}-receive; git-receive-pack')}\n"
    )
    sync_again(remote, planted)


def test_an_include_is_never_read(remote, planted, tmp_path):
    included = tmp_path / "included.cfg"
    included.write_text(
        f'[filter "evil"]\n\tsmudge = {quoted(f"{planted.touch}-include; cat")}\n'
        f'[remote "origin"]\n\tuploadpack = {quoted(f"{planted.touch}-upload; git-upload-pack")}\n'
    )
    planted.attributes("* filter=evil\n")
    planted.add_config(
        f'[include]\n\tpath = {included}\n[includeIf "gitdir:/"]\n\tpath = {included}\n'
    )
    sync_again(remote, planted)


def test_aliases_never_replace_a_command(remote, planted):
    planted.add_config(
        "[alias]\n"
        + "".join(
            f"\t{name} = !{planted.touch}-{name}\n"
            for name in ("fetch", "checkout", "status", "rev-parse", "worktree", "clean", "remote")
        )
    )
    sync_again(remote, planted, clean_untracked=True)


def test_the_config_keeps_what_the_worker_needs(remote, planted):
    planted.add_config(f"[core]\n\tfsmonitor = {planted.touch}\n[protocol]\n\tversion = 2\n")
    sync_again(remote, planted)

    config = git("config", "--file", planted.git_dir / "config", "--list")
    assert "fsmonitor" not in config
    assert f"remote.origin.url={remote.url}" in config
    assert "protocol.version=2" in config


def test_core_ssh_command_is_never_run(remote, ssh_server, tmp_path):
    target = tmp_path / "site"
    url = ssh_server.url_for(remote)
    key = str(ssh_server.client_key)
    deploy(url, target, ssh_key_file=key)
    marker = tmp_path / "pwned"
    with open(target / ".git" / "config", "a") as config:
        config.write(f"[core]\n\tsshCommand = {quoted(f'touch {marker}; ssh')}\n")
    new = remote.commit({"README.md": "v2\n"}, "v2")

    result = deploy(url, target, ssh_key_file=key)

    assert result.deployed_commit == new
    assert not marker.exists()
    assert "sshcommand" not in (target / ".git" / "config").read_text().lower()


def test_a_worktree_config_is_never_read(remote, planted):
    planted.add_config(
        "[core]\n\trepositoryformatversion = 1\n[extensions]\n\tworktreeConfig = true\n"
    )
    smudge = quoted(f"{planted.touch}-worktree; cat")
    (planted.git_dir / "config.worktree").write_text(f'[filter "evil"]\n\tsmudge = {smudge}\n')
    planted.attributes("* filter=evil\n")
    sync_again(remote, planted)


def test_the_owned_config_is_read_back_by_git_as_written(tmp_path):
    from gitdeploy.sync import _owned_entries, _parse_config, _render_config

    url = 'https://host/a;b#c "quoted" \\ back/repo.git'
    text = (
        "[core]\n\trepositoryFormatVersion = 1 ; a comment\n\tbare\n"
        "[extensions]\n\tobjectFormat = sha1\n"
        '[remote "origin"]\n\tpromisor = true\n\tpartialclonefilter = "blob:none"\n'
        "[protocol]\n\tversion = 0 # another\n"
        "[filter.evil]\n\tsmudge = touch x\n"
        '[url "https://evil/"]\n\tinsteadOf = https://host/\n'
    )
    owned = _owned_entries(_parse_config(text), url)
    (tmp_path / "config").write_text(_render_config(owned))

    listed = git("config", "--file", tmp_path / "config", "--list").splitlines()
    assert sorted(listed) == sorted(
        [
            "core.repositoryformatversion=1",
            "core.bare=true",
            "extensions.objectformat=sha1",
            "remote.origin.promisor=true",
            "remote.origin.partialclonefilter=blob:none",
            "protocol.version=0",
            "remote.origin.fetch=+refs/heads/*:refs/remotes/origin/*",
            f"remote.origin.url={url}",
        ]
    )
