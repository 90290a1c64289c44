"""The sync room: bring a target directory to one exact commit with git, then run the post-deploy
command. Plain values in (SyncSpec), a SyncResult out, SyncError on failure.

Owns the two layouts, the git steps they share (resolve the branch, fetch, pick the commit, adopt
an existing clone, move a working tree) and the post-deploy command. It may import only
gitdeploy.process (running a command), gitdeploy.redaction (what a secret is) and the standard
library. No Django and no ORM: the worker owns the database side and calls sync() while holding
repository_lock().

Cost: an update in place is two git processes, `fetch` and `checkout`, and one pass over the
working tree (the checkout's); refs and HEAD are read from their files (_read_ref), and local
edits are reported by the checkout itself (see move_worktree). Every git process it starts has
exited when sync() returns: nothing is left running in the background (see _PINNED_CONFIG).

Nothing in the target directory runs as the worker: see "The repository's own configuration is
not trusted" below.

Layouts
  inplace  the target directory is a normal clone; its working tree is moved to the commit with
           `git checkout -f --detach <sha>` (never pull/merge, so force pushes just work).
  atomic   <target>/.gitdeploy/repo.git is a bare store; every commit gets its own worktree at
           <target>/releases/<sha>; <target>/current is a RELATIVE symlink (releases/<sha>) switched
           with os.replace() after the post-deploy command succeeded in the new release.

The log: sync keeps no copy of it. Each line is redacted once, here (sync knows the credentials:
the token, the clone URL's, the environment's and SyncSpec.secrets), and handed to the caller's
`log` callable, which can store it as it is.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import re
import secrets as _random
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from gitdb import GitDB
from gitdb.exc import BadObject

from gitdeploy import process
from gitdeploy.redaction import (
    collect_secrets,
    environ_secrets,
    redact,
    scrubbed_environ,
    split_credentials,
)

# Username given to the HTTPS server with GIT_TOKEN when the clone URL names none. GitHub accepts it
# for app and personal tokens; GitLab, Gitea/Forgejo accept any username with a personal token.
DEFAULT_HTTP_USERNAME = "x-access-token"
# Transports git may use: blocks ext:: (runs any command) and fd:: even if a URL asks for them.
ALLOWED_PROTOCOLS = "file:git:http:https:ssh"

# git errors that no retry can fix: the remote path is not a repository, the branch does not
# exist. A person has to change the configuration first.
_PERMANENT_GIT_ERRORS = (
    "does not appear to be a git repository",
    "not a git repository",
    "couldn't find remote ref",
)
_ABBREV_SHA = re.compile(r"^[0-9a-f]{4,64}$")
_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_LOOSE_FANOUT = re.compile(r"^[0-9a-f]{2}$")

_ASKPASS_SCRIPT = """#!/bin/sh
# Written by gitdeploy for one sync; the secret itself only lives in git's environment.
case "$1" in
  Username*|username*) printf '%s\\n' "$GITDEPLOY_GIT_USERNAME" ;;
  *) printf '%s\\n' "$GITDEPLOY_GIT_PASSWORD" ;;
esac
"""


def _no_heartbeat() -> None:
    pass


def _discard(line: str) -> None:
    pass


@dataclass(frozen=True)
class SyncSpec:
    clone_url: str
    branch: str
    target_dir: str
    commit: str = ""
    deploy_mode: str = "inplace"
    keep_releases: int = 5
    depth: int = 0
    filter: str = ""
    clean_untracked: bool = False
    post_deploy_command: str = ""
    post_deploy_timeout: float = 600
    post_deploy_env: Mapping[str, str] = field(default_factory=dict)
    git_timeout: float = 600
    # How much lower than the worker's git's and the post-deploy command's scheduling priority is:
    # on a busy machine the web answers the Git host's webhooks (which time out) before a deploy
    # (which a later push joins) gets the CPU. It costs nothing on an idle one.
    niceness: int = 0
    token: str = ""
    ssh_key_file: str = ""
    ssh_known_hosts_file: str = ""
    # Other secret values the caller knows (webhook secrets, ...): redacted from every log line and
    # error like the token, so the caller's log sink can store lines as it receives them.
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyncResult:
    branch: str  # the branch deployed (the remote's default branch when SyncSpec.branch was "")
    previous_commit: str  # what was deployed before, "" on a first deploy
    deployed_commit: str
    post_deploy_exit_code: int | None  # None when there is no post-deploy command
    # inplace: the target directory; atomic: <target>/releases/<sha> (what `current` now points to).
    deployed_path: str


class SyncError(Exception):
    """A sync that did not complete. Every field is always set; the message is already redacted.

    message: what went wrong, one line (also the exception's str()).
    retryable: True when trying again later may work (remote down, auth refused, timeout, another
        git process busy in the directory); False for problems that need a person (foreign
        directory, unknown commit or branch, post-deploy failure).
    previous_commit: what was deployed when the run started, "" if nothing was.
    deployed_commit: the commit this run moved the target directory to before it failed (inplace
        post-deploy failure); "" when the run did not move it (atomic: `current` did not switch).
    post_deploy_exit_code: the command's exit status; negative (-signal) when killed on timeout;
        None when the command did not run.
    """

    message: str
    retryable: bool
    previous_commit: str
    deployed_commit: str
    post_deploy_exit_code: int | None

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        previous_commit: str = "",
        deployed_commit: str = "",
        post_deploy_exit_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.previous_commit = previous_commit
        self.deployed_commit = deployed_commit
        self.post_deploy_exit_code = post_deploy_exit_code


# --------------------------------------------------------------------------------------------------
# Public helpers: current_commit, repository_lock


def _secrets_of(spec: SyncSpec) -> tuple[str, ...]:
    return collect_secrets(spec.token, *spec.secrets, *environ_secrets(), urls=[spec.clone_url])


def _comparable_url(url: str) -> str:
    clean = split_credentials(url.strip())[0]
    parts = urlsplit(clean)
    if parts.scheme:
        clean = urlunsplit(parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower()))
    return clean.rstrip("/")


def current_commit(target_dir: str, deploy_mode: str) -> str:
    """The commit deployed in target_dir, "" if nothing is deployed yet (or it is not ours).
    Read from files, without running git."""
    if deploy_mode == "atomic":
        link = os.path.join(target_dir, "current")
        if not os.path.islink(link):
            return ""
        name = os.path.basename(os.readlink(link).rstrip("/"))
        return name if _FULL_SHA.match(name) else ""
    dot_git = os.path.join(target_dir, ".git")
    if not os.path.isdir(dot_git) or os.path.islink(dot_git):
        return ""
    return _read_ref(dot_git, dot_git, "HEAD") or ""


def _read_ref(git_dir: str, common_dir: str, name: str) -> str | None:
    """The object id `name` (HEAD, or a full ref name) points to, read from the files git keeps it
    in: HEAD in git_dir, refs loose or in packed-refs in common_dir; symbolic refs are followed.
    "" when it does not exist (an unborn HEAD), None when the files do not say (anything unusual:
    a symlink, a reftable repository, an unreadable file), for the caller to ask git instead."""
    for _depth in range(5):
        base = git_dir if name == "HEAD" else common_dir
        try:
            # O_NOFOLLOW: a symlink planted as a ref is not read through (git would be asked).
            fd = os.open(os.path.join(base, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as file:
                value = file.read(512).decode("ascii", "replace").strip()
        except FileNotFoundError:
            return _packed_ref(common_dir, name)
        except (OSError, ValueError):
            return None
        if _FULL_SHA.match(value):
            return value
        if not value.startswith("ref: refs/"):
            return None
        name = value[len("ref: ") :]
        if ".." in name or name.endswith("/"):
            return None
    return None


def _packed_ref(common_dir: str, name: str) -> str | None:
    if name == "HEAD" or os.path.exists(os.path.join(common_dir, "reftable")):
        return None
    try:
        with open(os.path.join(common_dir, "packed-refs"), "rb") as file:
            for line in file:
                sha, _, ref = line.decode("utf-8", "surrogateescape").rstrip("\n").partition(" ")
                if ref == name and _FULL_SHA.match(sha):
                    return sha
    except FileNotFoundError:
        return ""
    except OSError:
        return None
    return ""


@dataclass(frozen=True)
class CommitInfo:
    subject: str
    author: str
    committed_at: datetime.datetime | None


def commit_info(target_dir: str, deploy_mode: str, sha: str) -> CommitInfo | None:
    """Subject, author and commit time of sha in the deployed repository; None if unreadable.

    Read-only and in pure Python: gitdb reads the one commit object (loose or packed) from the
    repository's object store. No git process, so nothing configured in the target directory
    (which the application can write) runs, and none is left behind."""
    if not sha or not _FULL_SHA.match(sha):
        return None
    if deploy_mode == "atomic":
        repo_path = os.path.join(target_dir, ".gitdeploy", "repo.git")
    else:
        repo_path = os.path.join(target_dir, ".git")
    objects = os.path.join(repo_path, "objects")
    if not os.path.isdir(objects):
        return None
    try:
        stream = GitDB(objects).stream(bytes.fromhex(sha))
        if stream.type != b"commit":
            return None
        raw = stream.read()
    except (BadObject, ValueError, OSError, KeyError, AssertionError):
        return None
    headers, _, message = raw.partition(b"\n\n")
    author, committed_at = "", None
    for line in headers.split(b"\n"):
        key, _, value = line.partition(b" ")
        if key == b"author":
            author = value.rsplit(b" <", 1)[0].decode("utf-8", "replace")
        elif key == b"committer":
            committed_at = _git_time(value)
    subject = message.split(b"\n", 1)[0].decode("utf-8", "replace")
    return CommitInfo(
        subject=subject.replace("\x00", ""),
        author=author.replace("\x00", ""),
        committed_at=committed_at,
    )


def _git_time(identity: bytes) -> datetime.datetime | None:
    """The time of a git identity line's tail: `Name <email> 1700000000 +0100`."""
    try:
        seconds, offset = identity.rsplit(b"> ", 1)[1].split()
        sign = -1 if offset.startswith(b"-") else 1
        minutes = int(offset[1:3]) * 60 + int(offset[3:5])
        zone = datetime.timezone(datetime.timedelta(minutes=sign * minutes))
        return datetime.datetime.fromtimestamp(int(seconds), tz=zone)
    except (IndexError, ValueError):
        return None


@dataclass
class HeldLock:
    """What repository_lock yields. `record` is where each command run under the lock is written
    down (pass the lock to sync()); `ended` says what the taker had to end first: the command a
    holder killed with kill -9 left running ("" when there was none), for the run's log."""

    record: process.GroupRecord
    ended: str = ""


@contextlib.contextmanager
def repository_lock(
    lock_path: str, *, heartbeat: Callable[[], None] | None = None, poll: float = 0.2
) -> Iterator[HeldLock]:
    """Exclusive OS lock (flock) on lock_path, which must live OUTSIDE the target directory.

    Blocks until acquired, calling heartbeat (about once a second) while waiting. The kernel drops
    the lock when the process dies, so a killed worker never leaves a stale lock behind; but the
    commands it ran live in sessions of their own and outlive it: the one it was running, written
    down next to the lock (<lock_path>.command), is ended before this returns, so no two git or
    post-deploy commands of one repository ever run at once (see process.GroupRecord).
    """
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        last_beat = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                due = time.monotonic() - last_beat >= process.HEARTBEAT_EVERY
                if heartbeat is not None and due:
                    heartbeat()
                    last_beat = time.monotonic()
                time.sleep(poll)
        held = HeldLock(process.GroupRecord(f"{lock_path}.command"))
        held.ended = held.record.end_leftover()
        yield held
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


# --------------------------------------------------------------------------------------------------
# The repository's own configuration is not trusted
#
# The deployed application can write its checkout, .git included (and the release store beside
# it), while the worker that runs git holds the Git token, the deploy key and the database
# credentials. So nothing named by the repository may run as the worker. Three layers:
#
# 1. _PINNED_CONFIG is given with -c to every git call. Command-line config overrides every file
#    and arrives with argv, so no rewrite of .git/config can race it. It covers each key that
#    names a program directly: hooks (core.hooksPath), core.fsmonitor, core.sshCommand (for SSH
#    URLs GIT_SSH_COMMAND, which beats it, is ours too), core.askPass, credential helpers, and
#    origin's uploadpack / receivepack. GIT_ALLOW_PROTOCOL keeps ext:: out; fetches never recurse
#    into submodules (a submodule's own config would be read).
# 2. The worker owns the repository's config file: before every git call in a repository it is
#    reduced to the keys the worker needs (_OWNED_KEYS: repository format, origin, partial clone,
#    protocol version) and rewritten when anything else is in it. That is what stops keys that
#    cannot be pinned because their names are open-ended: filter.<any>.smudge/clean/process (named
#    by .gitattributes or info/attributes, which the application can write), include / includeIf
#    (which could bring any key back), alias.<any>, url.<any>.insteadOf, http.<url>.*, and
#    extensions.worktreeConfig (config.worktree). An allowlist, not a blocklist: a key a future git
#    learns is dropped, not trusted. Neither `-c include.path=` nor overriding filter.<name>.* can
#    do this generically, and the worker does not need anything else in that file.
# 3. git is always told which repository to use (--git-dir, --work-tree, GIT_COMMON_DIR): never
#    discovered from a `.git` file or symlink, a `commondir` file or core.worktree, all of which
#    the application could point at a repository of its own making.
#
# What remains: a process of the application that rewrites .git/config in the few milliseconds
# between our rewrite and git reading it could get a filter or an include read by that one git
# call (layer 1 still keeps hooks, fsmonitor and transports out). Closing that needs the git
# directory out of the application's reach: another uid, or a mount it cannot write.
_PINNED_CONFIG = [
    # A Docker volume is often owned by another uid than the worker's; git's ownership check would
    # refuse it. We only ever run git in the directory the operator configured, and layers 1-3
    # above are what that check protects against.
    "-c", "safe.directory=*",
    "-c", "credential.helper=",  # only our askpass answers
    "-c", "core.askPass=",
    "-c", f"core.hooksPath={os.devnull}",
    "-c", "core.fsmonitor=false",
    "-c", "core.sshCommand=ssh",
    "-c", "remote.origin.uploadpack=git-upload-pack",
    "-c", "remote.origin.receivepack=git-receive-pack",
    "-c", "submodule.recurse=false",
    # No git outlives the sync: the `gc --auto` a fetch starts when the repository needs packing
    # runs inside the fetch (bounded by its timeout, killed with its process group) instead of
    # detaching into the background, where it would hold the repository's locks into the next
    # sync and run beside its checkout.
    "-c", "gc.autoDetach=false",
    "-c", "maintenance.autoDetach=false",
]  # fmt: skip

# (section, subsection, key) kept from a repository's config; everything else is dropped.
# remote.origin.url is always the worker's own.
_OWNED_KEYS = frozenset(
    [("core", "", key) for key in (
        "repositoryformatversion", "filemode", "bare", "logallrefupdates", "symlinks",
        "ignorecase", "precomposeunicode",
    )]
    + [("extensions", "", key) for key in (
        "objectformat", "refstorage", "partialclone", "preciousobjects", "noop",
    )]
    + [("remote", "origin", key) for key in ("fetch", "promisor", "partialclonefilter")]
    + [("protocol", "", "version")]
)  # fmt: skip
_ORIGIN_FETCH = "+refs/heads/*:refs/remotes/origin/*"


@dataclass(frozen=True)
class _Repo:
    """Where git works: named explicitly, never discovered (layer 3 above)."""

    git_dir: str  # HEAD and the index (a release's: <store>/worktrees/<sha>)
    common_dir: str  # config, objects and refs: the config the worker owns
    work_tree: str = ""

    def args(self) -> list[str]:
        args = ["--git-dir", self.git_dir]
        return [*args, "--work-tree", self.work_tree] if self.work_tree else args


_CONFIG_SECTION = re.compile(r'\s*\[\s*([A-Za-z0-9.-]+)(?:\s+"((?:[^"\\]|\\.)*)")?\s*\](.*)$')
_CONFIG_KEY = re.compile(r"\s*([A-Za-z][A-Za-z0-9-]*)\s*(?:=(.*))?$")
_CONFIG_ESCAPES = {"n": "\n", "t": "\t", "b": "\b", "\\": "\\", '"': '"'}


def _parse_config(text: str) -> list[tuple[str, str, str, str]]:
    """(section, subsection, key, value) entries of a git config file, in order, names lower-cased
    as git compares them. Includes are not followed. A line it cannot read is skipped: what is not
    understood is not kept, since own_config writes only what this returns and allows."""
    entries = []
    section = subsection = ""
    lines = iter(text.splitlines())
    for line in lines:
        header = _CONFIG_SECTION.match(line)
        if header:
            name, quoted, line = header.groups()
            if quoted is not None:
                section, subsection = name.lower(), re.sub(r"\\(.)", r"\1", quoted)
            else:  # [section] or the old [section.subsection]
                section, _, subsection = name.lower().partition(".")
        match = _CONFIG_KEY.match(line)
        if not match or not section or line.lstrip().startswith(("#", ";")):
            continue
        raw = match[2]
        while raw is not None and raw.endswith("\\") and not raw.endswith("\\\\"):
            raw = raw[:-1] + next(lines, "")  # a value continued on the next line
        value = "true" if raw is None else _config_value(raw)
        if value is not None:
            entries.append((section, subsection, match[1].lower(), value))
    return entries


def _config_value(raw: str) -> str | None:
    out, quoted, i = [], False, 0
    while i < len(raw):
        char = raw[i]
        if char == "\\":
            escaped = _CONFIG_ESCAPES.get(raw[i + 1 : i + 2])
            if escaped is None:
                return None  # git refuses the file; we drop the entry
            out.append(escaped)
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "#;":
            break
        else:
            out.append(char)
        i += 1
    return "".join(out).strip() if not quoted else None


def _owned_entries(
    found: list[tuple[str, str, str, str]], url: str
) -> list[tuple[str, str, str, str]]:
    kept = [entry for entry in found if entry[:3] in _OWNED_KEYS]
    if not any(entry[:3] == ("remote", "origin", "fetch") for entry in kept):
        kept.append(("remote", "origin", "fetch", _ORIGIN_FETCH))
    return [*kept, ("remote", "origin", "url", url)]


def _render_config(entries: list[tuple[str, str, str, str]]) -> str:
    def quote(value: str) -> str:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\b", "\\b") + '"'

    grouped: dict[tuple[str, str], list[str]] = {}
    for section, subsection, key, value in entries:
        grouped.setdefault((section, subsection), []).append(f"\t{key} = {quote(value)}\n")
    text = "# Written by gitdeploy: the worker owns this file and rewrites it before git runs.\n"
    for (section, subsection), lines in grouped.items():
        text += f"[{section} {quote(subsection)}]\n" if subsection else f"[{section}]\n"
        text += "".join(lines)
    return text


def _replace_file(path: str, text: str) -> None:
    tmp = f"{path}.gitdeploy-{_random.token_hex(4)}"
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as out:
        out.write(text)
    os.replace(tmp, path)


def _read_config(git_dir: str) -> list[tuple[str, str, str, str]]:
    """The entries of git_dir's config; [] when it has none."""
    try:
        with open(os.path.join(git_dir, "config"), encoding="utf-8", errors="surrogateescape") as f:
            return _parse_config(f.read())
    except FileNotFoundError:
        return []


def _origin_url(git_dir: str) -> str:
    try:
        found = _read_config(git_dir)
    except OSError:
        return ""
    urls = [value for *name, value in found if tuple(name) == ("remote", "origin", "url")]
    return urls[-1] if urls else ""


# --------------------------------------------------------------------------------------------------
# One sync


class _Session:
    """One sync's state: the spec, the credentials, git's environment, the log and heartbeat."""

    def __init__(
        self,
        spec: SyncSpec,
        log: Callable[[str], None],
        heartbeat: Callable[[], None],
        record: process.GroupRecord | None = None,
    ) -> None:
        self.spec = spec
        self.record = record  # where each command is written down while it runs (HeldLock)
        self._log = log
        self._heartbeat = heartbeat
        self._last_beat = 0.0
        self.url, self.username, password = split_credentials(spec.clone_url)
        self.password = spec.token or password
        self.secrets = _secrets_of(spec)
        self.previous = ""
        self.tempdir = ""
        try:
            self.env = self._git_environ()
        except BaseException:
            self.close()
            raise

    # -- logging, errors, heartbeats
    def say(self, text: str) -> None:
        """Redacts text once and hands it to the log callable, one call per line."""
        for line in redact(text, self.secrets).splitlines() or [""]:
            self._log(line)

    def beat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat >= process.HEARTBEAT_EVERY * 0.9:
            self._last_beat = now
            self._heartbeat()

    def error(
        self,
        message: str,
        *,
        retryable: bool,
        deployed_commit: str = "",
        post_deploy_exit_code: int | None = None,
    ) -> SyncError:
        message = redact(message, self.secrets)
        self.say(f"ERROR: {message}")
        return SyncError(
            message,
            retryable=retryable,
            previous_commit=self.previous,
            deployed_commit=deployed_commit,
            post_deploy_exit_code=post_deploy_exit_code,
        )

    # -- environment
    def _git_environ(self) -> dict[str, str]:
        env = scrubbed_environ()
        env.update(
            GIT_TERMINAL_PROMPT="0",  # a missing credential fails at once instead of hanging
            LC_ALL="C",
            LANGUAGE="C",
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,  # no user config surprises (insteadOf, helpers, ...)
            GIT_ALLOW_PROTOCOL=ALLOWED_PROTOCOLS,
        )
        scheme = urlsplit(self.url).scheme.lower()
        if scheme in ("http", "https") and (self.password or self.username):
            # The secret reaches git only through this environment and a 0700 askpass script that
            # echoes it: never argv (visible in ps), never the URL (git writes it to .git/config).
            self.tempdir = tempfile.mkdtemp(prefix="gitdeploy-")
            askpass = os.path.join(self.tempdir, "askpass")
            fd = os.open(askpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(fd, "w") as script:
                script.write(_ASKPASS_SCRIPT)
            env.update(
                GIT_ASKPASS=askpass,
                GITDEPLOY_GIT_USERNAME=self.username or DEFAULT_HTTP_USERNAME,
                GITDEPLOY_GIT_PASSWORD=self.password,
            )
        if self._is_ssh():
            env["GIT_SSH_COMMAND"] = self._ssh_command()
            env["GIT_SSH_VARIANT"] = "ssh"
        return env

    def _is_ssh(self) -> bool:
        if "://" in self.url:
            return urlsplit(self.url).scheme.lower() in ("ssh", "git+ssh", "ssh+git")
        # scp-like syntax: [user@]host:path (a colon before any slash)
        return ":" in self.url.split("/", 1)[0]

    def known_hosts_file(self) -> str:
        if self.spec.ssh_known_hosts_file:
            return self.spec.ssh_known_hosts_file
        if self.spec.deploy_mode == "atomic":
            return os.path.join(self.spec.target_dir, ".gitdeploy", "known_hosts")
        return os.path.join(self.spec.target_dir, ".git", "gitdeploy_known_hosts")

    def _ssh_command(self) -> str:
        spec = self.spec
        argv = ["ssh"]
        if spec.ssh_key_file:
            argv += ["-i", self._private_key_copy(), "-o", "IdentitiesOnly=yes"]
        checking = "yes" if spec.ssh_known_hosts_file else "accept-new"
        argv += [
            "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts_file()}",
            "-o", f"StrictHostKeyChecking={checking}",
            "-F", "/dev/null",
        ]  # fmt: skip
        return shlex.join(argv)

    def _private_key_copy(self) -> str:
        # ssh refuses a key readable by others, and Docker secrets / volumes often mount files 0444:
        # use a 0600 copy in our private temporary directory.
        if not self.tempdir:
            self.tempdir = tempfile.mkdtemp(prefix="gitdeploy-")
        copy = os.path.join(self.tempdir, "ssh_key")
        with open(self.spec.ssh_key_file, "rb") as key:
            data = key.read()
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return copy

    def close(self) -> None:
        if self.tempdir:
            shutil.rmtree(self.tempdir, ignore_errors=True)

    # -- git
    def git(
        self,
        *args: str,
        repo: _Repo | None = None,
        network: bool = False,
        check: bool = True,
        quiet: bool = False,
    ) -> process.Completed:
        """Runs git, in `repo` when given (its config is made ours first: see own_config); with
        check, a failure raises SyncError, retryable when the command talked to the remote
        (network) and the failure may pass (see _worth_retrying)."""
        env = self.env
        if repo is not None:
            self.own_config(repo.common_dir)
            args = (*repo.args(), *args)
            # Named here, so a `commondir` file the application planted cannot point git at
            # another repository's config.
            env = {**env, "GIT_COMMON_DIR": repo.common_dir}
        argv = ["git", *_PINNED_CONFIG, *args]
        if not quiet:
            self.say("$ git " + shlex.join(args))
        # cwd "/": a command outside a repository (init, ls-remote) must not pick up the config of
        # whatever repository the worker happens to run in.
        result = process.run(
            argv, cwd="/", env=env, timeout=self.spec.git_timeout, heartbeat=self.beat,
            record=self.record, what=f"git {_subcommand(args)}", niceness=self.spec.niceness,
        )  # fmt: skip
        stderr = result.stderr.decode("utf-8", "replace").strip()
        if result.timed_out:
            raise self.error(
                f"git {_subcommand(args)} timed out after {self.spec.git_timeout:g}s and was killed"
                + (f": {stderr}" if stderr else ""),
                retryable=True,
            )
        if result.returncode != 0 and check:
            raise self.error(
                f"git {_subcommand(args)} failed (exit {result.returncode}): "
                f"{stderr or '(no output)'}",
                retryable=network and _worth_retrying(stderr),
            )
        if not quiet:
            for output in (result.stdout.decode("utf-8", "replace").strip(), stderr):
                if output:
                    self.say(output)
        return result

    def rev(self, repo: _Repo, rev: str) -> str:
        r = self.git("rev-parse", "--verify", "-q", rev, repo=repo, check=False, quiet=True)
        return r.stdout.decode().strip() if r.returncode == 0 else ""

    def read_ref(self, repo: _Repo, name: str) -> str:
        """What HEAD or a full ref name points to, from its file; git is asked only when the
        files do not say (see _read_ref). "" when it does not exist."""
        sha = _read_ref(repo.git_dir, repo.common_dir, name)
        return self.rev(repo, name) if sha is None else sha

    def own_config(self, git_dir: str) -> None:
        """Reduces git_dir's config to the keys the worker needs (see "The repository's own
        configuration is not trusted"); rewrites it only when something else is in it."""
        path = os.path.join(git_dir, "config")
        found = _read_config(git_dir)
        wanted = _owned_entries(found, self.url)
        if sorted(found) != sorted(wanted):
            # Only names: a value may be a credential (the origin URL is replaced, not "removed").
            dropped = sorted(
                {".".join(filter(None, e[:3])) for e in found if e[:3] not in _OWNED_KEYS}
                - {"remote.origin.url"}
            )
            if dropped:
                self.say(f"Removed from {path} (the worker owns it): {', '.join(dropped)}")
            _replace_file(path, _render_config(wanted))
        with contextlib.suppress(FileNotFoundError):
            # Git never makes one in a repository's own directory; a planted one would send git
            # to another config even without GIT_COMMON_DIR.
            os.unlink(os.path.join(git_dir, "commondir"))

    # -- steps shared by both layouts
    def fetch_target(self, repo: _Repo, *, created: list[str]) -> tuple[str, str]:
        """(branch, commit to deploy), fetched. `created` lists what this run made for a first
        deploy, in order: on failure it is removed again, so a directory that was empty (a volume's
        mount point) is given back empty and a missing one stays missing."""
        try:
            branch = self.resolve_branch()
            self.fetch(repo, branch)
            return branch, self.target_commit(repo, branch)
        except SyncError:
            for path in reversed(created):
                shutil.rmtree(path, ignore_errors=True)
            raise

    def resolve_branch(self) -> str:
        if self.spec.branch:
            if not valid_branch_name(self.spec.branch):
                raise self.error(f"invalid branch name {self.spec.branch!r}", retryable=False)
            return self.spec.branch
        r = self.git("ls-remote", "--symref", "--", self.url, "HEAD", network=True)
        for line in r.stdout.decode("utf-8", "replace").splitlines():
            if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
                branch = line[len("ref: refs/heads/") : -len("\tHEAD")]
                self.say(f"The remote's default branch is {branch}")
                return branch
        raise self.error("could not resolve the remote's default branch (HEAD)", retryable=True)

    def fetch_args(self, *, unshallow: bool = False) -> list[str]:
        """`git fetch` with the spec's depth and filter; never tags (nothing deploys them), never
        submodules (their own config would be read)."""
        args = ["fetch", "--no-tags", "--no-recurse-submodules"]
        if unshallow:
            args.append("--unshallow")
        elif self.spec.depth > 0:
            args.append(f"--depth={self.spec.depth}")
        if self.spec.filter:
            args.append(f"--filter={self.spec.filter}")
        return args

    def fetch(self, repo: _Repo, branch: str) -> None:
        self.git(*self.fetch_args(), "origin", _branch_refspec(branch), repo=repo, network=True)

    def target_commit(self, repo: _Repo, branch: str) -> str:
        spec = self.spec
        if not spec.commit:
            # The ref the fetch just wrote, read from its file. Git never lets a branch point at
            # anything but a commit, so it needs no peeling.
            sha = self.read_ref(repo, f"refs/remotes/origin/{branch}")
            if not sha:
                raise self.error(
                    f"branch {branch} was fetched but cannot be resolved", retryable=True
                )
            return sha
        wanted = spec.commit.strip().lower()
        if not _ABBREV_SHA.match(wanted):  # also keeps option-like strings away from git's argv
            raise self.error(f"{spec.commit!r} is not a commit id", retryable=False)
        sha = self.rev(repo, f"{wanted}^{{commit}}")
        if not sha and _FULL_SHA.match(wanted):
            # Protocol v2 servers let us ask for any reachable commit by id.
            self.say(f"Commit {wanted} is not here yet: fetching it")
            self.git(*self.fetch_args(), "origin", wanted, repo=repo, check=False)
            sha = self.rev(repo, f"{wanted}^{{commit}}")
        if not sha and os.path.exists(os.path.join(repo.common_dir, "shallow")):
            self.say(f"Commit {wanted} is not in the shallow history: fetching the full history")
            self.git(
                *self.fetch_args(unshallow=True), "origin", _branch_refspec(branch),
                repo=repo, network=True,
            )  # fmt: skip
            sha = self.rev(repo, f"{wanted}^{{commit}}")
        if not sha:
            raise self.error(f"commit {spec.commit} was not found on the remote", retryable=False)
        return sha

    def create_repository(self, git_dir: str, *init_args: str) -> None:
        """`git init` (re-running it completes a half-made repository and is otherwise harmless),
        then our config with origin, written in one rename: a kill -9 in between leaves a
        repository with no origin, which adopt() recognises."""
        self.git("init", "-q", *init_args)
        self.own_config(git_dir)

    def adopt(self, git_dir: str, work_dir: str, *, init_args: list[str], alone: bool) -> None:
        """An existing repository: it must be a clone of ours and left unlocked by a killed git;
        its config becomes ours (so no credential stays on disk in its origin URL). A blank
        repository (see _is_blank_repository) alone in its directory is what a first deploy
        killed between `git init` and writing origin left: there is nothing in it to destroy, so
        it becomes ours instead of blocking every later run as "a clone of (no origin)"."""
        if alone and _is_blank_repository(git_dir):
            self.say(f"Adopting the empty repository an interrupted first deploy left in {git_dir}")
            self.clear_stale_locks(git_dir, work_dir)
            self.create_repository(git_dir, *init_args)
            return
        self.check_origin(git_dir)
        self.clear_stale_locks(git_dir, work_dir)
        self.own_config(git_dir)

    def check_origin(self, git_dir: str) -> None:
        """Refuses a repository whose origin is another remote (read-only: touches nothing)."""
        raw = _origin_url(git_dir)
        if _comparable_url(raw) != _comparable_url(self.url):
            shown = split_credentials(raw)[0] if raw else "(no origin)"
            raise self.error(
                f"{self.spec.target_dir} holds a clone of {shown}, not of {self.url}; "
                "refusing to touch it",
                retryable=False,
            )

    def clear_stale_locks(self, git_dir: str, work_dir: str) -> None:
        locks = []
        objects = os.path.join(git_dir, "objects")
        for root, dirs, files in os.walk(git_dir):
            locks += [os.path.join(root, f) for f in files if f.endswith(".lock")]
            if root == objects:  # loose objects (objects/ab/...) never hold a lock: skip them
                dirs[:] = [d for d in dirs if not _LOOSE_FANOUT.match(d)]
        if not locks:
            return
        busy = _git_processes_in(work_dir, locks)
        if busy:
            pid, what = busy[0]
            raise self.error(
                f"another git process (pid {pid}, {what}) is working in {work_dir}; "
                f"not touching {os.path.relpath(locks[0], work_dir)}",
                retryable=True,
            )
        for lock in locks:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
            self.say(
                f"Removed stale lock {os.path.relpath(lock, work_dir)} (no git process holds it)"
            )

    def list_local_changes(self, repo: _Repo) -> None:
        r = self.git("status", "--porcelain=v1", "-z", "--untracked-files=no",
                     repo=repo, check=False, quiet=True)  # fmt: skip
        entries = [e for e in r.stdout.decode("utf-8", "replace").split("\0") if e]
        changed, skip = [], False
        for entry in entries:
            if skip:  # the rename's original path
                skip = False
                continue
            changed.append(entry)
            skip = entry[:1] in ("R", "C")
        self.say_local_changes(changed)

    def say_local_changes(self, changed: list[str]) -> None:
        if changed:
            self.say(f"Local changes to {len(changed)} tracked file(s) are overwritten:")
            for entry in changed[:200]:
                self.say(f"  {entry}")
            if len(changed) > 200:
                self.say(f"  ... and {len(changed) - 200} more")

    def move_worktree(self, repo: _Repo, sha: str, *, head: str) -> None:
        """Moves repo's working tree and index to sha, overwriting local edits to tracked files
        (listed in the log) and keeping untracked files (unless clean_untracked). head is the
        commit checked out there now ("" for none).

        One pass over the tree: a plain `git checkout --detach` stats every tracked file once,
        refuses to overwrite an edited file that the move changes, and prints the edits it
        carried over (name-status lines). With neither, that was the whole move. Edits it
        carried over are listed from its output, then overwritten by `git checkout -f`; when it
        refused (edits in the way, or untracked files where the commit adds tracked ones, which
        are overwritten as they always were), `git status` lists the edits first. One edit goes
        unlisted: a tracked file deleted here that the commit changes is simply written again
        (git finds nothing to overwrite).
        """
        if head:
            self.say(f"$ git checkout --detach {sha}")
            r = self.git("checkout", "--detach", sha, repo=repo, check=False, quiet=True)
            if r.returncode == 0:
                out = r.stdout.decode("utf-8", "replace")
                carried = [line.replace("\t", " ", 1) for line in out.splitlines() if line]
                if carried:
                    self.say_local_changes(carried)
                    self.git("checkout", "-q", "-f", "--detach", sha, repo=repo)
                self.clean_untracked(repo)
                return
            # git's list of what was in the way, without its advice.
            said = r.stderr.decode("utf-8", "replace").splitlines()
            said = [line for line in said if not line.startswith(("Please ", "Aborting"))]
            self.say("\n".join(said) or f"git checkout refused (exit {r.returncode})")
            self.list_local_changes(repo)
        self.git("checkout", "-q", "-f", "--detach", sha, repo=repo)
        self.clean_untracked(repo)

    def clean_untracked(self, repo: _Repo) -> None:
        if self.spec.clean_untracked:
            # -d: untracked directories too; no -x: ignored files (.env, caches, node_modules,
            # uploads listed in .gitignore) are the application's data and stay.
            self.git("clean", "-f", "-d", repo=repo)

    def post_deploy(self, cwd: str, branch: str, sha: str, *, deployed_commit: str) -> int | None:
        """Runs the command in cwd; deployed_commit is what a failure reports as deployed."""
        spec = self.spec
        if not spec.post_deploy_command.strip():
            return None
        env = scrubbed_environ()
        env.update(spec.post_deploy_env)
        env.update(
            GITDEPLOY_BRANCH=branch, GITDEPLOY_COMMIT=sha, GITDEPLOY_PREVIOUS_COMMIT=self.previous
        )
        self.say(f"$ {spec.post_deploy_command}  (in {cwd})")
        result = process.run(
            ["/bin/sh", "-c", spec.post_deploy_command],
            cwd=cwd,
            env=env,
            timeout=spec.post_deploy_timeout,
            heartbeat=self.beat,
            merge_output=True,
            record=self.record,
            what="the post-deploy command",
            niceness=spec.niceness,
        )
        if result.dropped:
            self.say(
                f"[post-deploy output truncated: first {result.dropped} bytes dropped, "
                f"last {process.OUTPUT_CAP} bytes kept]"
            )
        output = result.stdout.decode("utf-8", "replace").rstrip("\n")
        if output:
            self.say(output)
        code = result.returncode
        if result.timed_out:
            timeout = spec.post_deploy_timeout
            failure = f"post-deploy command timed out after {timeout:g}s and was killed"
        else:
            self.say(f"post-deploy command exited with {code}")
            if code == 0:
                return code
            failure = f"post-deploy command failed with exit code {code}"
        raise self.error(
            failure,
            retryable=False,
            deployed_commit=deployed_commit,
            post_deploy_exit_code=code,
        )


_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


def valid_branch_name(branch: str) -> bool:
    """Whether refs/heads/<branch> is a ref name git accepts (`git check-ref-format`'s rules,
    checked here without starting git) that cannot be read as an option."""
    if not branch or branch.startswith(("-", "/")) or branch.endswith(("/", ".")):
        return False
    if _REF_FORBIDDEN.search(branch):
        return False
    return not any(part.startswith(".") or part.endswith(".lock") for part in branch.split("/"))


def _branch_refspec(branch: str) -> str:
    return f"+refs/heads/{branch}:refs/remotes/origin/{branch}"


def _worth_retrying(stderr: str) -> bool:
    """Whether a failed fetch or ls-remote may succeed later (remote down, auth refused, ...). Not
    when git said something no retry changes (_PERMANENT_GIT_ERRORS): a person has to fix the
    configuration first."""
    return not any(text in stderr for text in _PERMANENT_GIT_ERRORS)


def _subcommand(args: tuple[str, ...]) -> str:
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in ("-C", "--git-dir", "--work-tree", "-c"):
            skip_next = True
        elif not arg.startswith("-"):
            return arg
    return "command"


def _git_processes_in(work_dir: str, locks: list[str]) -> list[tuple[int, str]]:
    """Running git processes whose cwd is under work_dir or that have one of the locks open."""
    base = os.path.realpath(work_dir)
    lock_set = {os.path.realpath(lock) for lock in locks}
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        proc = f"/proc/{pid}"
        try:
            with open(f"{proc}/comm") as comm:
                name = comm.read().strip()
            if not name.startswith("git"):
                continue
            cwd = os.readlink(f"{proc}/cwd")
            if cwd == base or cwd.startswith(base + os.sep):
                found.append((int(pid), f"{name}, cwd {cwd}"))
                continue
            for fd in os.listdir(f"{proc}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{proc}/fd/{fd}") in lock_set:
                        found.append((int(pid), f"{name}, holds the lock"))
                        break
        except OSError:  # gone, or another user's process we may not inspect
            continue
    return found


def _is_blank_repository(git_dir: str) -> bool:
    """A repository with no remote, no ref and no object (read-only: files only, no git)."""
    for part in ("objects", "refs"):
        for _root, _dirs, files in os.walk(os.path.join(git_dir, part)):
            if files:
                return False
    if os.path.exists(os.path.join(git_dir, "packed-refs")):
        return False
    if not os.path.exists(os.path.join(git_dir, "config")):
        return True
    try:
        found = _read_config(git_dir)
    except OSError:  # unreadable: we cannot tell it is blank
        return False
    return not any(section == "remote" for section, *_rest in found)


def _holds_no_release(target: str) -> bool:
    return not any(os.path.lexists(os.path.join(target, name)) for name in ("releases", "current"))


def _is_empty_dir(path: str) -> bool:
    with os.scandir(path) as entries:
        return next(entries, None) is None


# --------------------------------------------------------------------------------------------------
# The two layouts


def _sync_inplace(s: _Session) -> SyncResult:
    target = s.spec.target_dir
    dot_git = os.path.join(target, ".git")
    created: list[str] = []
    if not os.path.exists(target):
        os.makedirs(target)
        created.append(target)
    elif not os.path.isdir(target):
        raise s.error(f"{target} exists and is not a directory", retryable=False)
    if os.path.isdir(dot_git) and not os.path.islink(dot_git):
        s.adopt(dot_git, target, init_args=[target], alone=os.listdir(target) == [".git"])
        s.previous = current_commit(target, "inplace")
        s.say(f"Existing clone at {s.previous or '(no commit yet)'}")
    elif _is_empty_dir(target):
        # An existing empty directory is often a Docker volume's mount point: it must stay (it
        # cannot be renamed or replaced), so init + fetch + checkout in place, not `git clone`.
        s.say(f"First deploy: initialising a repository in {target}")
        created.append(dot_git)
        s.create_repository(dot_git, target)
    else:
        raise s.error(
            f"{target} is not empty and is not a git clone; refusing to touch it", retryable=False
        )
    repo = _Repo(dot_git, dot_git, target)
    branch, sha = s.fetch_target(repo, created=created)
    s.say(f"Deploying {sha} (branch {branch}, previous {s.previous or 'none'})")
    s.move_worktree(repo, sha, head=s.previous)
    code = s.post_deploy(target, branch, sha, deployed_commit=sha)
    return SyncResult(branch, s.previous, sha, code, target)


def _sync_atomic(s: _Session) -> SyncResult:
    spec = s.spec
    target = spec.target_dir
    state_dir = os.path.join(target, ".gitdeploy")
    store = os.path.join(state_dir, "repo.git")
    releases = os.path.join(target, "releases")
    created: list[str] = []
    if os.path.exists(target) and not os.path.isdir(target):
        raise s.error(f"{target} exists and is not a directory", retryable=False)
    if os.path.isdir(store):
        s.adopt(store, target, init_args=["--bare", store], alone=_holds_no_release(target))
        s.previous = current_commit(target, "atomic")
        s.say(f"Existing release store; current is {s.previous or '(none)'}")
    elif not os.path.exists(target) or _is_empty_dir(target):
        s.say(f"First deploy: creating the release store in {state_dir}")
        created.append(state_dir if os.path.exists(target) else target)
        os.makedirs(state_dir, exist_ok=True)
        s.create_repository(store, "--bare", store)
    else:
        raise s.error(
            f"{target} is not empty and holds no gitdeploy release store (.gitdeploy/repo.git); "
            "refusing to touch it",
            retryable=False,
        )
    store_repo = _Repo(store, store)
    branch, sha = s.fetch_target(store_repo, created=created)
    s.say(f"Deploying {sha} (branch {branch}, previous {s.previous or 'none'})")

    release = os.path.join(releases, sha)
    os.makedirs(releases, exist_ok=True)
    # The release's own `.git` file is the application's to rewrite: git is told its worktree
    # directory in the store instead, the one whose record names this release.
    usual = os.path.join(store, "worktrees", sha)  # the name `worktree add` gives it
    serving = _worktree_serving(store, release)
    release_repo = _Repo(serving or usual, store, release)
    release_head = ""
    if serving and os.path.isdir(release):
        release_head = s.read_ref(release_repo, "HEAD")
        if release_head.strip("0") == "":  # `worktree add` writes a zero id until it has one
            release_head = ""
    if release_head:
        s.say(f"Reusing releases/{sha}")
        with contextlib.suppress(FileNotFoundError):
            # "initializing", left by a `worktree add` killed after it set HEAD: the checkout
            # below completes the release, and a locked directory would never be pruned.
            os.unlink(os.path.join(release_repo.git_dir, "locked"))
        s.move_worktree(release_repo, sha, head=release_head)
    else:
        if os.path.lexists(release):  # a half-made release from an interrupted run
            s.say(f"Removing incomplete releases/{sha}")
            shutil.rmtree(release, ignore_errors=True)
        # What a `worktree add` of this release left behind. A SIGKILLed one leaves its directory
        # locked, which `worktree prune` keeps; `worktree add` would then name the release's
        # directory `<sha>1`, and before the store's record was read (above), the next run of
        # this commit took the live release for an incomplete one and removed it.
        leftovers = {path for path in (usual, serving) if path and os.path.lexists(path)}
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        if leftovers:
            s.git("worktree", "prune", repo=store_repo)
        s.git("worktree", "add", "-q", "--detach", release, sha, repo=store_repo)
    os.utime(release)  # retention keeps the most recently deployed releases

    code = s.post_deploy(release, branch, sha, deployed_commit="")

    link = os.path.join(target, "current")
    tmp_link = os.path.join(target, f"current.tmp-{_random.token_hex(4)}")
    # Relative, so the volume can be mounted anywhere; os.replace() makes the switch atomic.
    os.symlink(os.path.join("releases", sha), tmp_link)
    try:
        os.replace(tmp_link, link)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_link)
        raise s.error(f"cannot switch {link}: {exc}", retryable=False) from None
    s.say(f"current -> releases/{sha}")
    _prune_releases(s, store_repo, releases, keep={sha, current_commit(target, "atomic")})
    return SyncResult(branch, s.previous, sha, code, release)


def _worktree_records(store: str, name: str) -> list[tuple[str, str]]:
    """(directory, text) for each of the store's worktree directories (`<store>/worktrees/*`,
    git's records of its worktrees) that holds a readable file `name`, in name order."""
    worktrees = os.path.join(store, "worktrees")
    try:
        directories = sorted(os.path.join(worktrees, entry) for entry in os.listdir(worktrees))
    except OSError:
        return []
    found = []
    for directory in directories:
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as record:
                found.append((directory, record.read().strip()))
        except (OSError, ValueError):
            continue
    return found


def _worktree_serving(store: str, release: str) -> str:
    """The store's worktree directory whose record (its gitdir file, which git keeps) names
    release: `<store>/worktrees/<sha>` as `worktree add` names it, or another one it named when
    that name was taken. "" for none."""
    wanted = os.path.realpath(os.path.join(release, ".git"))
    serving = [
        directory
        for directory, named in _worktree_records(store, "gitdir")
        if named and os.path.realpath(named) == wanted
    ]
    usual = os.path.join(store, "worktrees", os.path.basename(release))
    return usual if usual in serving else next(iter(serving), "")


def _prune_releases(s: _Session, store: _Repo, releases: str, keep: set[str]) -> None:
    entries = []
    for entry in os.scandir(releases):
        if entry.is_dir(follow_symlinks=False):
            entries.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
    entries.sort(reverse=True)
    # Never the new release nor the one `current` points to (the same one unless the switch failed).
    keep = keep | {name for _mtime, name in entries[: max(s.spec.keep_releases, 1)]}
    removed = False
    for _mtime, name in entries:
        if name not in keep:
            s.say(f"Removing old release releases/{name}")
            shutil.rmtree(os.path.join(releases, name), ignore_errors=True)
            removed = True
    removed = _remove_abandoned_worktrees(store.common_dir) or removed
    if removed:
        s.git("worktree", "prune", repo=store)


def _remove_abandoned_worktrees(store: str) -> bool:
    """Removes the store's worktree directories that a `worktree add` killed before it finished
    left locked ("initializing"): `worktree prune` keeps locked ones, for ever. The caller holds
    the repository's lock, so no `worktree add` is running; a release reused after such an add
    was unlocked when it was reused (_sync_atomic). True when one was removed."""
    abandoned = [
        directory
        for directory, reason in _worktree_records(store, "locked")
        if reason == "initializing"
    ]
    for directory in abandoned:
        shutil.rmtree(directory, ignore_errors=True)
    return bool(abandoned)


# --------------------------------------------------------------------------------------------------


def sync(
    spec: SyncSpec,
    *,
    log: Callable[[str], None] = _discard,
    heartbeat: Callable[[], None] = _no_heartbeat,
    lock: HeldLock | None = None,
) -> SyncResult:
    """Brings spec.target_dir to the tip of spec.branch as fetched now (or to spec.commit exactly),
    then runs the post-deploy command. Call it while holding repository_lock() for the repository,
    and pass what it yielded as `lock`: each command is then written down while it runs.

    log is called once per log line, as it happens, with the line already redacted (no trailing
    newline; sync keeps no copy). heartbeat is called about once a second while git or the
    post-deploy command runs; an exception it raises kills the command and propagates. Raises
    SyncError (redacted message) when the sync does not complete.
    """
    session = None
    try:
        session = _Session(spec, log, heartbeat, lock.record if lock else None)
        if spec.clone_url.startswith("-"):  # would be read as an option by git
            raise session.error("the clone URL cannot start with '-'", retryable=False)
        if not os.path.isabs(spec.target_dir):
            raise session.error(
                f"target directory {spec.target_dir!r} is not absolute", retryable=False
            )
        if spec.deploy_mode not in ("inplace", "atomic"):
            raise session.error(f"unknown deploy mode {spec.deploy_mode!r}", retryable=False)
        session.say(f"Sync {session.url} into {spec.target_dir} ({spec.deploy_mode})")
        if spec.deploy_mode == "atomic":
            return _sync_atomic(session)
        return _sync_inplace(session)
    except OSError as exc:  # a file system problem (permissions, disk full)
        message = f"{type(exc).__name__}: {exc}"
        if session is None:
            raise SyncError(redact(message, _secrets_of(spec)), retryable=False) from None
        raise session.error(message, retryable=False) from None
    finally:
        if session is not None:
            session.close()
