"""What counts as a secret, and how it is hidden: the one owner of that rule.

Everything that shows or stores text a credential could reach (the sync log and its errors, the
worker's run log, the admin, the landing page, stored webhook headers, the environment handed to
git and to the post-deploy command) asks this module, so there is one list of secret variables,
one list of secret headers and one minimum length, not five that drift apart.

Standard library only: the sync, the webhook providers and the Django side all import it.

    secrets = collect_secrets(token, webhook_secret, *environ_secrets(), urls=[clone_url])
    line = redact(line, secrets)          # every secret (and its %-encoded form) -> ***
    shown = redact_url(clone_url)         # https://***@host/path for display
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = [
    "GIT_LOCATION_VARIABLES",
    "MASK",
    "MIN_SECRET_LENGTH",
    "SECRET_HEADERS",
    "collect_secrets",
    "environ_secrets",
    "is_secret_variable",
    "redact",
    "redact_url",
    "scrubbed_environ",
    "split_credentials",
]

MASK = "***"

# The shortest value hidden as a secret. A shorter one ("git", "main", "deploy") is a word logs are
# made of: replacing it would garble every line and protect nothing, since a credential that short
# can be guessed anyway; real tokens are 20 characters or more. 8 is the strictest cut-off any of
# the old copies of this rule used for stored text (the admin's), so nothing that was hidden on a
# page becomes visible; the sync's copies used 6 (environment values) and 12 (a token given as the
# user name of an HTTPS URL), and every value the suite hides is at least 9 characters long.
MIN_SECRET_LENGTH = 8

# Request headers whose values are credentials (GitLab's token, HTTP auth, cookies): stored
# deliveries show that one was sent, never its value.
SECRET_HEADERS: frozenset[str] = frozenset(
    {"x-gitlab-token", "authorization", "cookie", "proxy-authorization"}
)

# Environment variables never handed to the post-deploy command (nor to git), and whose values are
# hidden in every log line: our own secrets and anything that looks like one. NAME_FILE variants
# (Docker secrets) only name a path, but the command has no business reading them either.
_SECRET_VARIABLE = re.compile(
    r"^(?:GIT_TOKEN|WEBHOOK_SECRET|SECRET_KEY|DATABASE_URL|GITDEPLOY_GIT_.*)(?:_FILE)?$"
    r"|(?:TOKEN|SECRET|SECRET_KEY|PASSWORD|PASSWD|_DSN)(?:_FILE)?$",
    re.IGNORECASE,
)

# Inherited variables that would point git at another repository, config, transport or credential
# prompt than the one the worker chose. Not secrets, but dropped from the same environment.
GIT_LOCATION_VARIABLES: frozenset[str] = frozenset(
    {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "GIT_CEILING_DIRECTORIES",
        "GIT_CONFIG",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_EXEC_PATH",
    }
)

# scheme://userinfo@ — userinfo up to the first "/" (or whitespace/quote) before an "@".
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"<>]+)@")


def _worth_hiding(value: str) -> bool:
    return len(value) >= MIN_SECRET_LENGTH


# --------------------------------------------------------------------------------------------------
# Which values are secrets


def split_credentials(url: str) -> tuple[str, str, str]:
    """(url without credentials, username, password), the last two percent-decoded.

    Only HTTP(S) URLs lose their user name (it may be a token); ssh://user:pass@host keeps its
    user, which is public, and loses the password. Other forms (scp-like git@host:path, paths) are
    returned unchanged with no credentials.
    """
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url, "", ""
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    if parts.scheme.lower() in ("http", "https"):
        return urlunsplit(parts._replace(netloc=hostport)), unquote(user), unquote(password)
    if has_password:  # ssh://user:pass@host -> ssh://user@host (BatchMode never uses a password)
        return (
            urlunsplit(parts._replace(netloc=f"{user}@{hostport}")),
            unquote(user),
            unquote(password),
        )
    return url, unquote(user), ""


def _url_secret(url: str) -> str:
    """The credential a clone URL carries: its password, or for HTTP(S) without a password the user
    name (https://TOKEN@host is how GitHub and GitLab tokens are often written)."""
    try:
        _clean, user, password = split_credentials(url)
        scheme = urlsplit(url).scheme.lower()
    except ValueError:  # not a URL at all (an unbalanced "[" in the host, ...)
        return ""
    if password:
        return password
    return user if scheme in ("http", "https") else ""


def collect_secrets(*values: str | None, urls: Iterable[str] = ()) -> tuple[str, ...]:
    """The secrets to hide: the given values and the credential of each URL, each at least
    MIN_SECRET_LENGTH long, without duplicates, longest first (so a secret that contains another
    is replaced whole)."""
    candidates = [value or "" for value in values] + [_url_secret(url) for url in urls if url]
    unique = {value for value in candidates if _worth_hiding(value)}
    return tuple(sorted(unique, key=lambda value: (-len(value), value)))


def is_secret_variable(name: str) -> bool:
    """True for an environment variable that holds (or names the file of) a secret."""
    return bool(_SECRET_VARIABLE.search(name))


def environ_secrets(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The values of the secret variables of an environment (pass them to collect_secrets)."""
    return [value for name, value in environ.items() if value and is_secret_variable(name)]


def scrubbed_environ(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """A copy of environ fit for git and the post-deploy command: no secret variables, and none that
    would redirect git to another repository, config or credential prompt."""
    return {
        name: value
        for name, value in environ.items()
        if not is_secret_variable(name) and name not in GIT_LOCATION_VARIABLES
    }


# --------------------------------------------------------------------------------------------------
# Hiding them


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replaces every secret (as written, and percent-encoded as it appears inside a URL) by ***,
    then strips user:pass@ (or any HTTP(S) user@) from every URL in the text.

    Values shorter than MIN_SECRET_LENGTH are not replaced, whoever passes them.
    """

    def strip_userinfo(match: re.Match[str]) -> str:
        scheme, userinfo = match["scheme"], match["userinfo"]
        # ssh://git@host keeps its (public) user; a password, or any HTTP(S) userinfo (tokens are
        # often sent as the user name), goes.
        if ":" in userinfo or scheme.lower().startswith(("http", "ftp")):
            return scheme
        return match[0]

    for secret in sorted({s for s in secrets if s and _worth_hiding(s)}, key=len, reverse=True):
        for form in {secret, quote(secret, safe="")}:
            text = text.replace(form, MASK)
    return _URL_USERINFO.sub(strip_userinfo, text)


def redact_url(url: str) -> str:
    """A clone URL fit for display: user info (tokens, passwords) replaced by '***'."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.scheme and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit((parts.scheme, f"{MASK}@{host}", parts.path, parts.query, parts.fragment))
    return url
