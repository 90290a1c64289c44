"""gitdeploy.redaction: what counts as a secret (one cut-off, URL credentials, the environment's
secret variables, secret headers) and how it is hidden. Pure functions; no git, no database."""

from urllib.parse import quote

import pytest

from gitdeploy import providers, redaction
from gitdeploy.redaction import (
    MIN_SECRET_LENGTH,
    collect_secrets,
    environ_secrets,
    is_secret_variable,
    redact,
    redact_url,
    scrubbed_environ,
    split_credentials,
)

# --- hiding ---------------------------------------------------------------------------------------


def test_redact_strips_url_credentials_and_secrets():
    text = "fetch https://bob:hunter2@example.com/x.git and http://tok3n@h/y token=abc123XYZ ok"
    out = redact(text, ["abc123XYZ"])
    assert out == "fetch https://example.com/x.git and http://h/y token=*** ok"
    assert redact("ssh://git@host/x.git", []) == "ssh://git@host/x.git"
    assert redact("ssh://git:pw@host/x.git", []) == "ssh://host/x.git"


def test_a_secret_containing_another_is_replaced_whole():
    assert redact("a=long-secret-value-2", ["secret-value", "long-secret-value-2"]) == "a=***"


def test_a_percent_encoded_secret_is_hidden_in_both_forms():
    secret = "p@ss/w0rd+more"
    encoded = quote(secret, safe="")
    assert encoded == "p%40ss%2Fw0rd%2Bmore"
    text = f"as typed {secret}; in a query ?token={encoded}"
    assert redact(text, [secret]) == "as typed ***; in a query ?token=***"


def test_a_percent_encoded_password_in_a_clone_url_is_collected_decoded():
    url = "https://bob:p%40ss%2Fw0rd%2Bmore@example.com/x.git"
    assert collect_secrets(urls=[url]) == ("p@ss/w0rd+more",)
    assert "w0rd" not in redact(f"error: {url} and p@ss/w0rd+more", collect_secrets(urls=[url]))


# --- one cut-off ----------------------------------------------------------------------------------


def test_one_minimum_length_for_every_secret():
    just_long_enough = "x" * MIN_SECRET_LENGTH
    too_short = "y" * (MIN_SECRET_LENGTH - 1)
    assert collect_secrets(just_long_enough, too_short) == (just_long_enough,)
    # Whoever passes a short value to redact directly gets the same rule.
    assert redact(f"{just_long_enough} {too_short}", [just_long_enough, too_short]) == (
        f"*** {too_short}"
    )
    # URL credentials and environment values go through the same cut-off.
    assert collect_secrets(urls=[f"https://u:{too_short}@h/r.git"]) == ()
    assert collect_secrets(*environ_secrets({"GIT_TOKEN": too_short})) == ()


def test_short_words_are_never_masked():
    # A value like "git" or "deploy" would garble every line and hide nothing.
    assert redact("git fetch; deploy main", ["git", "deploy", "main", ""]) == (
        "git fetch; deploy main"
    )


def test_collect_secrets_dedupes_and_sorts_longest_first():
    secrets = collect_secrets(
        "webhook-secret-1",
        None,
        "",
        "a-much-longer-git-token-value",
        "webhook-secret-1",
        urls=["https://x-access-token:a-much-longer-git-token-value@github.com/o/r.git"],
    )
    assert secrets == ("a-much-longer-git-token-value", "webhook-secret-1")


# --- URL forms ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("https://deploy:ghp_T0KENinsideTheUrl@github.com/o/r.git", "ghp_T0KENinsideTheUrl"),
        # Without a password, an HTTP(S) user name is the token (https://TOKEN@host).
        ("https://ghp_T0KENasTheUserName@github.com/o/r.git", "ghp_T0KENasTheUserName"),
        ("http://glpat-T0kenAsUser@gitlab.local/o/r.git", "glpat-T0kenAsUser"),
        ("ssh://deployer:a-password-here@host/r.git", "a-password-here"),
    ],
)
def test_the_credential_of_a_clone_url_is_collected(url, secret):
    assert collect_secrets(urls=[url]) == (secret,)


@pytest.mark.parametrize(
    "url",
    [
        "ssh://deploy-user-name@host/r.git",  # an ssh user is public
        "git@github.com:acme/site.git",  # scp-like: no credential
        "https://github.com/acme/site.git",
        "file:///srv/git/site.git",
        "/srv/git/site.git",
        "https://[not-a-host@example.com/x.git",  # not a URL: nothing to take, no crash
        "",
    ],
)
def test_urls_without_a_credential_give_none(url):
    assert collect_secrets(urls=[url]) == ()


def test_split_credentials():
    assert split_credentials("https://u:p%40ss@host/r.git") == ("https://host/r.git", "u", "p@ss")
    assert split_credentials("https://tok3n@host/r.git") == ("https://host/r.git", "tok3n", "")
    assert split_credentials("ssh://git:pw@host/r.git") == ("ssh://git@host/r.git", "git", "pw")
    assert split_credentials("ssh://git@host/r.git") == ("ssh://git@host/r.git", "git", "")
    assert split_credentials("git@host:r.git") == ("git@host:r.git", "", "")


def test_redact_url_for_display():
    assert redact_url("https://deploy:T0KEN@github.com/acme/site.git") == (
        "https://***@github.com/acme/site.git"
    )
    assert redact_url("https://github.com/acme/site.git") == "https://github.com/acme/site.git"
    assert redact_url("git@github.com:acme/site.git") == "git@github.com:acme/site.git"
    assert redact_url("https://[broken") == "***"


# --- the environment ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "GIT_TOKEN",
        "GIT_TOKEN_FILE",
        "WEBHOOK_SECRET",
        "SECRET_KEY",
        "DATABASE_URL",
        "GITDEPLOY_GIT_PASSWORD",
        "GITHUB_TOKEN",
        "aws_secret",
        "POSTGRES_PASSWORD_FILE",
        "SENTRY_DSN",
        "MYSQL_PASSWD",
    ],
)
def test_secret_variables(name):
    assert is_secret_variable(name)


@pytest.mark.parametrize("name", ["PATH", "HOME", "GIT_BRANCH", "PLAIN_SETTING", "TOKENIZER"])
def test_plain_variables(name):
    assert not is_secret_variable(name)


def test_scrubbed_environ_drops_secrets_and_git_locations():
    environ = {
        "PATH": "/usr/bin",
        "PLAIN_SETTING": "kept",
        "GIT_TOKEN": "env-token-abcdef",
        "DATABASE_URL": "postgres://u:dbpass@db/x",
        "GIT_DIR": "/elsewhere/.git",
        "GIT_CONFIG_PARAMETERS": "'core.hookspath'='/tmp/evil'",
        "GIT_SSH_COMMAND": "evil",
        "SSH_ASKPASS": "/tmp/evil",
    }
    assert scrubbed_environ(environ) == {"PATH": "/usr/bin", "PLAIN_SETTING": "kept"}


def test_scrubbed_environ_defaults_to_the_process_environment(monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", "env-webhook-secret")
    monkeypatch.setenv("PLAIN_SETTING", "kept")
    scrubbed = scrubbed_environ()
    assert scrubbed["PLAIN_SETTING"] == "kept" and "WEBHOOK_SECRET" not in scrubbed


def test_environ_secrets_are_the_values_of_secret_variables(monkeypatch):
    monkeypatch.setenv("GIT_TOKEN", "env-token-abcdef")
    monkeypatch.setenv("PLAIN_SETTING", "not-a-secret-value")
    assert "env-token-abcdef" in environ_secrets()
    assert "not-a-secret-value" not in environ_secrets()
    assert environ_secrets({"GIT_TOKEN": "", "X_PASSWORD": "pw-value-123"}) == ["pw-value-123"]


# --- headers --------------------------------------------------------------------------------------


def test_secret_headers():
    assert redaction.SECRET_HEADERS == {
        "x-gitlab-token",
        "authorization",
        "cookie",
        "proxy-authorization",
    }
    assert providers.SECRET_HEADERS is redaction.SECRET_HEADERS  # providers uses this one list
