"""What a repository may point at: a clone URL git may use safely and a target directory no other
sync, nor gitdeploy's own data, shares. Pure functions; Repository.clean() calls them.

A relative target directory makes every sync fail (and with it /api/ready, for the whole service);
a target inside DATA_DIR or another repository's directory lets one sync overwrite the database or
the other checkout. git's `ext::` and `fd::` transports run commands, and a URL or host that begins
with '-' is read as an option by git or ssh: both would run commands as the worker.
"""

import os
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

URL_SCHEMES = ("https", "http", "ssh", "git", "file")
# git's `<transport>::<address>` syntax (ext::, fd::, remote helpers).
TRANSPORT_PREFIX = re.compile(r"^[A-Za-z0-9+.-]+::")
# git's scp-like syntax, user@host:path. The user is required, so `ext:...`-like strings and Windows
# drive letters never match; the path must not begin with ':' (git would see `host::...`).
SCP_LIKE = re.compile(r"^[A-Za-z0-9._~%+][A-Za-z0-9._~%+-]*@[A-Za-z0-9][A-Za-z0-9.-]*:[^:]")

ALLOWED = "an https://, http://, ssh://, git:// or file:// URL, or user@host:path (scp-like SSH)"


def clone_url_problem(url: str) -> str | None:
    """Why git must not be given this clone URL, or None when it may."""
    if not url:
        return None  # the field's own "required" error says it
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return "A clone URL cannot contain spaces or control characters."
    if url.startswith("-"):
        return "A clone URL cannot begin with '-': git would read it as an option."
    if TRANSPORT_PREFIX.match(url):
        return f"git's '{url.split('::', 1)[0]}::' transport syntax runs commands: use {ALLOWED}."
    if "://" in url:
        try:
            parts = urlsplit(url)
        except ValueError:
            return f"This is not a valid URL: use {ALLOWED}."
        if parts.scheme not in URL_SCHEMES:
            return f"git may not use '{parts.scheme}://' here: use {ALLOWED}."
        if parts.scheme == "file":
            return None if parts.path not in ("", "/") else "A file:// URL needs a path."
        user, _, host = parts.netloc.rpartition("@")
        if not host or not parts.hostname:
            return "This URL has no host."
        if user.startswith("-") or host.startswith("-"):
            return "A user or host beginning with '-' would be read as an ssh option."
        return None
    if SCP_LIKE.match(url):
        return None
    return f"Use {ALLOWED}."


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def _overlap(path: Path, other: Path) -> str | None:
    if path == other:
        return "is"
    if path.is_relative_to(other):
        return "is inside"
    if other.is_relative_to(path):
        return "contains"
    return None


def target_dir_problem(
    target: str,
    *,
    data_dir: str | os.PathLike,
    lock_dir: str | os.PathLike,
    others: Iterable[tuple[str, str]],
) -> str | None:
    """Why a sync must not write to `target`, or None when it may. `others` holds (name,
    target_dir) of every other repository."""
    if not target:
        return None  # the field's own "required" error says it
    if not os.path.isabs(target):
        return (
            "Enter an absolute path (starting with /): a relative one depends on the worker's "
            "working directory, and every sync would fail."
        )
    path = _real(target)
    if path.parent == path:
        return "The root directory cannot be a target."
    for label, protected in (("DATA_DIR", data_dir), ("LOCK_DIR", lock_dir)):
        how = _overlap(path, _real(protected))
        if how:
            return (
                f"This directory {how} gitdeploy's {label} ({_real(protected)}), which holds its "
                "database or locks: choose one outside it."
            )
    for name, other_target in others:
        if not other_target or not os.path.isabs(other_target):
            continue
        how = _overlap(path, _real(other_target))
        if how:
            how = "is already" if how == "is" else how
            return (
                f"This directory {how} the target of repository '{name}' ({other_target}): "
                "two syncs would overwrite each other."
            )
    return None
