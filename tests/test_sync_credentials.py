"""Private repositories: HTTPS token through askpass, credentials in the URL, SSH deploy keys.

The token must reach git and nothing else: not the log, not an error, not .git/config, not argv.
"""

import time
from urllib.parse import urlsplit

import pytest

from gitdeploy.sync import SyncError
from tests.gitservers import HTTP_PASSWORD, HTTP_USER, deploy, git


def with_user(url: str, userinfo: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{userinfo}@{parts.netloc}").geturl()


def assert_secret_nowhere(secret: str, *texts: str, target=None) -> None:
    for text in texts:
        assert secret not in text
    if target is not None:
        for path in target.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def test_right_token_clones_and_is_kept_out_of_logs_and_config(remote, http_server, tmp_path):
    target = tmp_path / "site"
    url = with_user(http_server.url_for(remote), HTTP_USER)

    result = deploy(url, target, token=HTTP_PASSWORD)
    new = remote.commit({"README.md": "v2\n"}, "v2")
    second = deploy(url, target, token=HTTP_PASSWORD)

    assert result.deployed_commit != new
    assert second.deployed_commit == new == head(target)
    assert_secret_nowhere(HTTP_PASSWORD, result.log, second.log, target=target)
    assert any(r["authorization"] for r in http_server.requests)


def head(path):
    return git("rev-parse", "HEAD", cwd=path)


def test_credentials_in_the_clone_url_are_stripped_from_config_and_log(
    remote, http_server, tmp_path
):
    target = tmp_path / "site"
    url = with_user(http_server.url_for(remote), f"{HTTP_USER}:{HTTP_PASSWORD}")

    result = deploy(url, target)

    assert result.deployed_commit == remote.tip()
    assert git("config", "remote.origin.url", cwd=target) == http_server.url_for(remote)
    assert_secret_nowhere(HTTP_PASSWORD, result.log, target=target)
    # The same repository with and without credentials in the URL is the same repository.
    again = deploy(with_user(http_server.url_for(remote), HTTP_USER), target, token=HTTP_PASSWORD)
    assert again.previous_commit == again.deployed_commit


@pytest.mark.parametrize("token", ["wrong-token-0123456789", ""], ids=["wrong", "absent"])
def test_wrong_or_absent_token_fails_fast_without_a_prompt(remote, http_server, tmp_path, token):
    target = tmp_path / "site"
    url = with_user(http_server.url_for(remote), HTTP_USER)
    start = time.monotonic()
    lines = []

    with pytest.raises(SyncError) as caught:
        deploy(url, target, token=token, git_timeout=20, lines=lines)

    assert time.monotonic() - start < 10
    assert caught.value.retryable
    assert (
        "Authentication failed" in caught.value.message or "could not read" in caught.value.message
    )
    if token:
        assert_secret_nowhere(token, caught.value.message, "\n".join(lines))
    assert not target.exists()


def test_ssh_deploy_key_with_accept_new(remote, ssh_server, tmp_path):
    target = tmp_path / "site"
    url = ssh_server.url_for(remote)
    ssh_server.client_key.chmod(0o644)  # as a Docker secret often is: ssh would refuse it as is

    first = deploy(url, target, ssh_key_file=str(ssh_server.client_key))
    known_hosts = target / ".git" / "gitdeploy_known_hosts"
    assert known_hosts.read_text().startswith(f"[127.0.0.1]:{ssh_server.port} ")
    new = remote.commit({"README.md": "v2\n"}, "v2")
    # Second run: the host key is now known and checked.
    second = deploy(url, target, ssh_key_file=str(ssh_server.client_key))

    assert first.deployed_commit != second.deployed_commit == new == head(target)


def test_ssh_with_a_known_hosts_file_refuses_an_unknown_host(remote, ssh_server, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")

    with pytest.raises(SyncError) as caught:
        deploy(
            ssh_server.url_for(remote),
            tmp_path / "site",
            ssh_key_file=str(ssh_server.client_key),
            ssh_known_hosts_file=str(known_hosts),
        )

    assert "Host key verification failed" in caught.value.message
    assert known_hosts.read_text() == ""


def test_an_operators_clone_with_a_token_in_origin_is_adopted_and_cleaned(
    remote, http_server, tmp_path
):
    target = tmp_path / "site"
    clean_url = http_server.url_for(remote)
    git("clone", "-q", with_user(clean_url, f"{HTTP_USER}:{HTTP_PASSWORD}"), target)
    assert HTTP_PASSWORD in (target / ".git" / "config").read_text()

    result = deploy(with_user(clean_url, HTTP_USER), target, token=HTTP_PASSWORD)

    assert result.previous_commit == result.deployed_commit == remote.tip()
    assert git("config", "remote.origin.url", cwd=target) == clean_url
    assert_secret_nowhere(HTTP_PASSWORD, result.log, target=target)


def test_a_missing_ssh_key_is_a_clear_error(remote, ssh_server, tmp_path):
    with pytest.raises(SyncError) as caught:
        deploy(ssh_server.url_for(remote), tmp_path / "site", ssh_key_file=str(tmp_path / "nokey"))
    assert not caught.value.retryable
    assert "nokey" in caught.value.message
