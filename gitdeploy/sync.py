"""Git operations and the post-deploy command: bring a target directory to one exact commit.

Plain values in (SyncSpec), a SyncResult out, SyncError on failure. No Django import: the worker
task (gitdeploy.tasks) owns the database side and calls sync() while holding repository_lock().

Layouts
  inplace  the target directory is a normal clone; its working tree is moved to the commit with
           `git checkout -f --detach <sha>` (never pull/merge, so force pushes just work).
  atomic   <target>/.gitdeploy/repo.git is a bare store; every commit gets its own worktree at
           <target>/releases/<sha>; <target>/current is a RELATIVE symlink (releases/<sha>) switched
           with os.replace() after the post-deploy command succeeded in the new release.

Why our own subprocess runner and not GitPython for the commands that touch the network or the
working tree: we need, together, a timeout that kills the whole process group (git spawns
git-remote-http, ssh, upload-pack, ...), a new session so a SIGTERM sent to the worker's process
group does not kill git half-way through a checkout, and heartbeats while we wait. GitPython's
execute() gives none of these together. GitPython is used for read-only inspection (HEAD, origin
URL): it reads those files in pure Python without spawning git.
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
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import git

OUTPUT_CAP = 1024 * 1024  # post-deploy output kept in the log (the tail)
HEARTBEAT_EVERY = 1.0  # seconds between heartbeat() calls while a command runs (contract: <= 2 s)
KILL_GRACE = 2.0  # SIGTERM, then SIGKILL after this many seconds
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
# scheme://userinfo@ — userinfo up to the first "/" (or whitespace/quote) before an "@".
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"<>]+)@")
# Environment variables never handed to the post-deploy command (nor to git): our own secrets and
# anything that looks like one. NAME_FILE variants (Docker secrets) only name a path, but the
# command has no business reading them either.
_SECRET_ENV = re.compile(
    r"^(?:GIT_TOKEN|WEBHOOK_SECRET|SECRET_KEY|DATABASE_URL|GITDEPLOY_GIT_.*)(?:_FILE)?$"
    r"|(?:TOKEN|SECRET|SECRET_KEY|PASSWORD|PASSWD|_DSN)(?:_FILE)?$",
    re.IGNORECASE,
)
# Inherited variables that would point our git commands at another repository or config.
_GIT_LOCATION_ENV = (
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
)

_ASKPASS_SCRIPT = """#!/bin/sh
# Written by gitdeploy for one sync; the secret itself only lives in git's environment.
case "$1" in
  Username*|username*) printf '%s\\n' "$GITDEPLOY_GIT_USERNAME" ;;
  *) printf '%s\\n' "$GITDEPLOY_GIT_PASSWORD" ;;
esac
"""


def _noop() -> None:
    pass


def _print_log(line: str) -> None:
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
    token: str = ""
    ssh_key_file: str = ""
    ssh_known_hosts_file: str = ""


@dataclass
class SyncResult:
    branch: str
    previous_commit: str
    deployed_commit: str
    post_deploy_exit_code: int | None
    log: str
    # inplace: the target directory; atomic: <target>/releases/<sha> (what `current` now points to).
    deployed_path: str


class SyncError(Exception):
    """A sync that did not complete. The message and log are already redacted.

    retryable: True when trying again later may work (remote down, auth refused, timeout, another
    git process busy in the directory); False for problems that need a person (foreign directory,
    unknown commit or branch, post-deploy failure).
    deployed_commit: the commit this run moved the target directory to before it failed (inplace
    post-deploy failure); "" when the run did not move it (atomic: `current` did not switch).
    post_deploy_exit_code: the command's exit status; negative (-signal) when killed on timeout.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        log: str = "",
        previous_commit: str = "",
        deployed_commit: str = "",
        post_deploy_exit_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.log = log
        self.previous_commit = previous_commit
        self.deployed_commit = deployed_commit
        self.post_deploy_exit_code = post_deploy_exit_code


# --------------------------------------------------------------------------------------------------
# Small helpers (public: redact, current_commit, repository_lock)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replaces every secret by *** and strips user:pass@ (or an HTTP(S) user@) from any URL."""

    def strip_userinfo(match: re.Match[str]) -> str:
        scheme, userinfo = match["scheme"], match["userinfo"]
        # ssh://git@host keeps its (public) user; a password, or any HTTP(S) userinfo (tokens are
        # often sent as the user name), goes.
        if ":" in userinfo or scheme.lower().startswith(("http", "ftp")):
            return scheme
        return match[0]

    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in {secret, quote(secret, safe="")}:
            text = text.replace(form, "***")
    return _URL_USERINFO.sub(strip_userinfo, text)


def split_credentials(url: str) -> tuple[str, str, str]:
    """(url without credentials, username, password). Only HTTP(S) URLs lose their user name."""
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


def _comparable_url(url: str) -> str:
    clean = split_credentials(url.strip())[0]
    parts = urlsplit(clean)
    if parts.scheme:
        clean = urlunsplit(parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower()))
    return clean.rstrip("/")


def current_commit(target_dir: str, deploy_mode: str) -> str:
    """The commit deployed in target_dir, "" if nothing is deployed yet (or it is not ours)."""
    if deploy_mode == "atomic":
        link = os.path.join(target_dir, "current")
        if not os.path.islink(link):
            return ""
        name = os.path.basename(os.readlink(link).rstrip("/"))
        return name if _FULL_SHA.match(name) else ""
    if not os.path.isdir(os.path.join(target_dir, ".git")):
        return ""
    try:
        return git.Repo(target_dir).head.commit.hexsha
    except (ValueError, OSError, git.exc.GitError):  # unborn HEAD, broken repository
        return ""


@dataclass(frozen=True)
class CommitInfo:
    subject: str
    author: str
    committed_at: datetime.datetime | None


def commit_info(target_dir: str, deploy_mode: str, sha: str) -> CommitInfo | None:
    """Subject, author and commit time of sha in the deployed repository; None if unreadable.

    Read-only and in pure Python (GitPython over gitdb: no git process, so nothing configured in
    the target directory runs)."""
    if not sha or not _FULL_SHA.match(sha):
        return None
    if deploy_mode == "atomic":
        repo_path = os.path.join(target_dir, ".gitdeploy", "repo.git")
    else:
        repo_path = os.path.join(target_dir, ".git")
    if not os.path.isdir(repo_path):
        return None
    try:
        # GitPython deprecates its GitDB backend in favour of a `git cat-file` process, but that
        # process would read the target directory's own config (include.path, ...), which no git
        # call of ours may honour; this is one commit object, read from our own fetch.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            repo = git.Repo(repo_path, odbt=git.GitDB)
        commit = repo.commit(sha)
        subject = commit.summary
        if isinstance(subject, bytes):
            subject = subject.decode("utf-8", "replace")
        return CommitInfo(
            subject=subject.replace("\x00", ""),
            author=(commit.author.name or "").replace("\x00", ""),
            committed_at=commit.committed_datetime,
        )
    except (ValueError, OSError, git.exc.GitError, KeyError, AttributeError):
        return None


@contextlib.contextmanager
def repository_lock(
    lock_path: str, *, heartbeat: Callable[[], None] | None = None, poll: float = 0.2
) -> Iterator[None]:
    """Exclusive OS lock (flock) on lock_path, which must live OUTSIDE the target directory.

    Blocks until acquired, calling heartbeat (about once a second) while waiting. The kernel drops
    the lock when the process dies, so a killed worker never leaves a stale lock behind.
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
                if heartbeat is not None and time.monotonic() - last_beat >= HEARTBEAT_EVERY:
                    heartbeat()
                    last_beat = time.monotonic()
                time.sleep(poll)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


# --------------------------------------------------------------------------------------------------
# Process runner


@dataclass
class _Completed:
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    dropped: int  # bytes dropped from the head of the output (cap)


class _Tail:
    """Keeps the last `cap` bytes read from a pipe."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.dropped = 0

    def drain(self, stream) -> None:
        try:
            while chunk := stream.read1(65536):
                self.data += chunk
                if len(self.data) > self.cap:
                    cut = len(self.data) - self.cap
                    del self.data[:cut]
                    self.dropped += cut
        except (OSError, ValueError):
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    # The command runs in its own session, so its pid is its process group id: this reaches every
    # child it started (git-remote-http, ssh, a build tool's workers, ...).
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _run(
    argv: list[str],
    *,
    cwd: str | None,
    env: Mapping[str, str],
    timeout: float,
    heartbeat: Callable[[], None],
    merge_output: bool = False,
    output_cap: int = OUTPUT_CAP,
) -> _Completed:
    """Runs argv in a new session (a SIGTERM/SIGINT to the worker's group does not reach it), calls
    heartbeat while waiting, kills the whole group past timeout."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
        start_new_session=True,
    )
    out, err = _Tail(output_cap), _Tail(output_cap)
    readers = [threading.Thread(target=out.drain, args=(proc.stdout,), daemon=True)]
    if not merge_output:
        readers.append(threading.Thread(target=err.drain, args=(proc.stderr,), daemon=True))
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            heartbeat()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                _kill_group(proc)
                break
            try:
                proc.wait(timeout=min(HEARTBEAT_EVERY, remaining))
                break
            except subprocess.TimeoutExpired:
                continue
    except BaseException:  # heartbeat raised (lease lost) or KeyboardInterrupt: leave no orphan
        _kill_group(proc)
        raise
    finally:
        # A background process started by the command may keep the pipe open; do not wait for it.
        for reader in readers:
            reader.join(timeout=2)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
    return _Completed(
        proc.returncode, bytes(out.data), bytes(err.data), timed_out, out.dropped + err.dropped
    )


def _clean_environ() -> dict[str, str]:
    """os.environ without secrets and without variables that would redirect git."""
    return {
        name: value
        for name, value in os.environ.items()
        if not _SECRET_ENV.search(name) and name not in _GIT_LOCATION_ENV
    }


def _environ_secrets() -> list[str]:
    """Values of secret-looking variables of our own environment, redacted from every log line."""
    return [
        value for name, value in os.environ.items() if _SECRET_ENV.search(name) and len(value) >= 6
    ]


# --------------------------------------------------------------------------------------------------
# One sync


class _Session:
    def __init__(
        self, spec: SyncSpec, log: Callable[[str], None], heartbeat: Callable[[], None]
    ) -> None:
        self.spec = spec
        self._log = log
        self._heartbeat = heartbeat
        self._last_beat = 0.0
        self.lines: list[str] = []
        self.url, self.username, password = split_credentials(spec.clone_url)
        self.password = spec.token or password
        secrets = [spec.token, password, *_environ_secrets()]
        if self.username and not password and len(self.username) >= 12:
            secrets.append(self.username)  # https://<token>@host: the user name is the secret
        self.secrets = [s for s in secrets if s]
        self.previous = ""
        self.tempdir = ""
        try:
            self.env = self._git_environ()
        except BaseException:
            self.close()
            raise

    # -- logging, errors, heartbeats
    def say(self, text: str) -> None:
        for line in redact(text, self.secrets).splitlines() or [""]:
            self.lines.append(line)
            self._log(line)

    def beat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat >= HEARTBEAT_EVERY * 0.9:
            self._last_beat = now
            self._heartbeat()

    def error(self, message: str, *, retryable: bool, **commits) -> SyncError:
        message = redact(message, self.secrets)
        self.say(f"ERROR: {message}")
        commits.setdefault("previous_commit", self.previous)
        return SyncError(message, retryable=retryable, log="\n".join(self.lines), **commits)

    # -- environment
    def _git_environ(self) -> dict[str, str]:
        env = _clean_environ()
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
        cwd: str | None = None,
        retryable: bool = False,
        check: bool = True,
        quiet: bool = False,
    ) -> _Completed:
        # safe.directory=*: a Docker volume is often owned by another uid than the worker's; we only
        # ever run git in the directory the operator configured. credential.helper= drops any helper
        # a repository config might name, so only our askpass answers.
        argv = ["git", "-c", "safe.directory=*", "-c", "credential.helper=", *args]
        if not quiet:
            self.say("$ git " + shlex.join(args))
        result = _run(
            argv, cwd=cwd, env=self.env, timeout=self.spec.git_timeout, heartbeat=self.beat
        )
        stderr = result.stderr.decode("utf-8", "replace").strip()
        if result.timed_out:
            raise self.error(
                f"git {_subcommand(args)} timed out after {self.spec.git_timeout:g}s and was killed"
                + (f": {stderr}" if stderr else ""),
                retryable=True,
            )
        if result.returncode != 0 and check:
            permanent = any(text in stderr for text in _PERMANENT_GIT_ERRORS)
            raise self.error(
                f"git {_subcommand(args)} failed (exit {result.returncode}): "
                f"{stderr or '(no output)'}",
                retryable=retryable and not permanent,
            )
        if not quiet:
            for output in (result.stdout.decode("utf-8", "replace").strip(), stderr):
                if output:
                    self.say(output)
        return result

    def rev(self, git_args: list[str], rev: str) -> str:
        r = self.git(*git_args, "rev-parse", "--verify", "-q", rev, check=False, quiet=True)
        return r.stdout.decode().strip() if r.returncode == 0 else ""

    # -- steps shared by both layouts
    def resolve_branch(self) -> str:
        if self.spec.branch:
            r = self.git(
                "check-ref-format", f"refs/heads/{self.spec.branch}", check=False, quiet=True
            )
            if r.returncode != 0 or self.spec.branch.startswith("-"):
                raise self.error(f"invalid branch name {self.spec.branch!r}", retryable=False)
            return self.spec.branch
        r = self.git("ls-remote", "--symref", "--", self.url, "HEAD", retryable=True)
        for line in r.stdout.decode("utf-8", "replace").splitlines():
            if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
                branch = line[len("ref: refs/heads/") : -len("\tHEAD")]
                self.say(f"The remote's default branch is {branch}")
                return branch
        raise self.error("could not resolve the remote's default branch (HEAD)", retryable=True)

    def fetch(self, git_args: list[str], branch: str) -> None:
        spec = self.spec
        args = [*git_args, "fetch", "--no-tags"]
        if spec.depth > 0:
            args.append(f"--depth={spec.depth}")
        if spec.filter:
            args.append(f"--filter={spec.filter}")
        args += ["origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}"]
        try:
            self.git(*args, retryable=True)
        except SyncError as exc:
            if "couldn't find remote ref" in exc.message:
                exc.retryable = False  # the branch does not exist: a person has to fix the config
            raise

    def target_commit(self, git_args: list[str], git_dir: str, branch: str) -> str:
        spec = self.spec
        if not spec.commit:
            sha = self.rev(git_args, f"refs/remotes/origin/{branch}^{{commit}}")
            if not sha:
                raise self.error(
                    f"branch {branch} was fetched but cannot be resolved", retryable=True
                )
            return sha
        wanted = spec.commit.strip().lower()
        if not _ABBREV_SHA.match(wanted):  # also keeps option-like strings away from git's argv
            raise self.error(f"{spec.commit!r} is not a commit id", retryable=False)
        sha = self.rev(git_args, f"{wanted}^{{commit}}")
        if not sha and _FULL_SHA.match(wanted):
            # Protocol v2 servers let us ask for any reachable commit by id.
            self.say(f"Commit {wanted} is not here yet: fetching it")
            args = [*git_args, "fetch", "--no-tags"]
            if spec.depth > 0:
                args.append(f"--depth={spec.depth}")
            if spec.filter:
                args.append(f"--filter={spec.filter}")
            self.git(*args, "origin", wanted, check=False)
            sha = self.rev(git_args, f"{wanted}^{{commit}}")
        if not sha and os.path.exists(os.path.join(git_dir, "shallow")):
            self.say(f"Commit {wanted} is not in the shallow history: fetching the full history")
            self.git(
                *git_args, "fetch", "--no-tags", "--unshallow", "origin",
                f"+refs/heads/{branch}:refs/remotes/origin/{branch}", retryable=True,
            )  # fmt: skip
            sha = self.rev(git_args, f"{wanted}^{{commit}}")
        if not sha:
            raise self.error(f"commit {spec.commit} was not found on the remote", retryable=False)
        return sha

    def adopt(self, git_dir: str, work_dir: str) -> None:
        """An existing repository: it must be a clone of ours, left unlocked by a killed git, and
        carry no credentials on disk."""
        self.check_origin(git_dir)
        self.clear_stale_locks(git_dir, work_dir)
        self.fix_origin(git_dir)

    def check_origin(self, repo_path: str) -> None:
        """Refuses a repository whose origin is another remote (read-only: touches nothing)."""
        try:
            raw = git.Repo(repo_path).remote("origin").url
        except (ValueError, git.exc.GitError, OSError):
            raw = ""
        if _comparable_url(raw) != _comparable_url(self.url):
            shown = split_credentials(raw)[0] if raw else "(no origin)"
            raise self.error(
                f"{self.spec.target_dir} holds a clone of {shown}, not of {self.url}; "
                "refusing to touch it",
                retryable=False,
            )

    def fix_origin(self, git_dir: str) -> None:
        # An operator's clone may carry a token in its origin URL: keep none on disk.
        if git.Repo(git_dir).remote("origin").url != self.url:
            self.git("--git-dir", git_dir, "remote", "set-url", "origin", self.url)

    def clear_stale_locks(self, git_dir: str, work_dir: str) -> None:
        locks = []
        for root, _dirs, files in os.walk(git_dir):
            locks += [os.path.join(root, f) for f in files if f.endswith(".lock")]
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

    def list_local_changes(self, work_dir: str) -> None:
        r = self.git("-C", work_dir, "status", "--porcelain=v1", "-z", "--untracked-files=no",
                     check=False, quiet=True)  # fmt: skip
        entries = [e for e in r.stdout.decode("utf-8", "replace").split("\0") if e]
        changed, skip = [], False
        for entry in entries:
            if skip:  # the rename's original path
                skip = False
                continue
            changed.append(entry)
            skip = entry[:1] in ("R", "C")
        if changed:
            self.say(f"Local changes to {len(changed)} tracked file(s) are overwritten:")
            for entry in changed[:200]:
                self.say(f"  {entry}")
            if len(changed) > 200:
                self.say(f"  ... and {len(changed) - 200} more")

    def move_worktree(self, work_dir: str, sha: str) -> None:
        self.list_local_changes(work_dir)
        self.git("-C", work_dir, "checkout", "-q", "-f", "--detach", sha)
        if self.spec.clean_untracked:
            # -d: untracked directories too; no -x: ignored files (.env, caches, node_modules,
            # uploads listed in .gitignore) are the application's data and stay.
            self.git("-C", work_dir, "clean", "-f", "-d")

    def post_deploy(self, cwd: str, branch: str, sha: str, **commits) -> int | None:
        spec = self.spec
        if not spec.post_deploy_command.strip():
            return None
        env = _clean_environ()
        env.update(spec.post_deploy_env)
        env.update(
            GITDEPLOY_BRANCH=branch, GITDEPLOY_COMMIT=sha, GITDEPLOY_PREVIOUS_COMMIT=self.previous
        )
        self.say(f"$ {spec.post_deploy_command}  (in {cwd})")
        result = _run(
            ["/bin/sh", "-c", spec.post_deploy_command],
            cwd=cwd,
            env=env,
            timeout=spec.post_deploy_timeout,
            heartbeat=self.beat,
            merge_output=True,
        )
        if result.dropped:
            self.say(
                f"[post-deploy output truncated: first {result.dropped} bytes dropped, "
                f"last {OUTPUT_CAP} bytes kept]"
            )
        output = result.stdout.decode("utf-8", "replace").rstrip("\n")
        if output:
            self.say(output)
        code = result.returncode
        if result.timed_out:
            raise self.error(
                f"post-deploy command timed out after {spec.post_deploy_timeout:g}s and was killed",
                retryable=False,
                post_deploy_exit_code=code,
                **commits,
            )
        self.say(f"post-deploy command exited with {code}")
        if code != 0:
            raise self.error(
                f"post-deploy command failed with exit code {code}",
                retryable=False,
                post_deploy_exit_code=code,
                **commits,
            )
        return code


def _subcommand(args: tuple[str, ...]) -> str:
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in ("-C", "--git-dir", "-c"):
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


def _is_empty_dir(path: str) -> bool:
    with os.scandir(path) as entries:
        return next(entries, None) is None


# --------------------------------------------------------------------------------------------------
# The two layouts


def _sync_inplace(s: _Session) -> SyncResult:
    target = s.spec.target_dir
    dot_git = os.path.join(target, ".git")
    created_target = created_git = False
    if not os.path.exists(target):
        os.makedirs(target)
        created_target = True
    elif not os.path.isdir(target):
        raise s.error(f"{target} exists and is not a directory", retryable=False)
    if os.path.isdir(dot_git):
        s.adopt(dot_git, target)
        s.previous = current_commit(target, "inplace")
        s.say(f"Existing clone at {s.previous or '(no commit yet)'}")
    elif _is_empty_dir(target):
        # An existing empty directory is often a Docker volume's mount point: it must stay (it
        # cannot be renamed or replaced), so init + fetch + checkout in place, not `git clone`.
        s.say(f"First deploy: initialising a repository in {target}")
        s.git("init", "-q", target)
        s.git("-C", target, "remote", "add", "origin", s.url)
        created_git = True
    else:
        raise s.error(
            f"{target} is not empty and is not a git clone; refusing to touch it", retryable=False
        )
    git_args = ["-C", target]
    try:
        branch = s.resolve_branch()
        s.fetch(git_args, branch)
        sha = s.target_commit(git_args, dot_git, branch)
    except SyncError:
        if created_git:  # the directory was empty: give it back empty
            shutil.rmtree(dot_git, ignore_errors=True)
        if created_target:
            with contextlib.suppress(OSError):
                os.rmdir(target)
        raise
    s.say(f"Deploying {sha} (branch {branch}, previous {s.previous or 'none'})")
    s.move_worktree(target, sha)
    code = s.post_deploy(target, branch, sha, deployed_commit=sha)
    return SyncResult(branch, s.previous, sha, code, "", target)


def _sync_atomic(s: _Session) -> SyncResult:
    spec = s.spec
    target = spec.target_dir
    state_dir = os.path.join(target, ".gitdeploy")
    store = os.path.join(state_dir, "repo.git")
    releases = os.path.join(target, "releases")
    created_store = False
    if os.path.exists(target) and not os.path.isdir(target):
        raise s.error(f"{target} exists and is not a directory", retryable=False)
    if os.path.isdir(store):
        s.adopt(store, target)
        s.previous = current_commit(target, "atomic")
        s.say(f"Existing release store; current is {s.previous or '(none)'}")
    elif not os.path.exists(target) or _is_empty_dir(target):
        s.say(f"First deploy: creating the release store in {state_dir}")
        os.makedirs(state_dir, exist_ok=True)
        s.git("init", "-q", "--bare", store)
        s.git("--git-dir", store, "remote", "add", "origin", s.url)
        created_store = True
    else:
        raise s.error(
            f"{target} is not empty and holds no gitdeploy release store (.gitdeploy/repo.git); "
            "refusing to touch it",
            retryable=False,
        )
    git_args = ["--git-dir", store]
    try:
        branch = s.resolve_branch()
        s.fetch(git_args, branch)
        sha = s.target_commit(git_args, store, branch)
    except SyncError:
        if created_store:
            shutil.rmtree(state_dir, ignore_errors=True)
        raise
    s.say(f"Deploying {sha} (branch {branch}, previous {s.previous or 'none'})")

    release = os.path.join(releases, sha)
    os.makedirs(releases, exist_ok=True)
    if os.path.isdir(release) and s.rev(["-C", release], "HEAD"):
        s.say(f"Reusing releases/{sha}")
        s.move_worktree(release, sha)
    else:
        if os.path.lexists(release):  # a half-made release from an interrupted run
            s.say(f"Removing incomplete releases/{sha}")
            shutil.rmtree(release, ignore_errors=True)
        s.git(*git_args, "worktree", "prune")
        s.git(*git_args, "worktree", "add", "-q", "--detach", release, sha)
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
    _prune_releases(s, store, releases, keep={sha, current_commit(target, "atomic")})
    return SyncResult(branch, s.previous, sha, code, "", release)


def _prune_releases(s: _Session, store: str, releases: str, keep: set[str]) -> None:
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
    if removed:
        s.git("--git-dir", store, "worktree", "prune")


# --------------------------------------------------------------------------------------------------


def sync(
    spec: SyncSpec,
    *,
    log: Callable[[str], None] = _print_log,
    heartbeat: Callable[[], None] = _noop,
) -> SyncResult:
    """Brings spec.target_dir to the tip of spec.branch as fetched now (or to spec.commit exactly),
    then runs the post-deploy command. Call it while holding repository_lock() for the repository.

    log receives each (redacted) log line as it happens; heartbeat is called about once a second
    while git or the post-deploy command runs. Raises SyncError (redacted message and log).
    """
    session = None
    try:
        session = _Session(spec, log, heartbeat)
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
            result = _sync_atomic(session)
        else:
            result = _sync_inplace(session)
        result.log = "\n".join(session.lines)
        return result
    except (
        OSError,
        git.exc.GitError,
    ) as exc:  # a file system problem (permissions, disk full, ...)
        secrets = session.secrets if session else [spec.token, split_credentials(spec.clone_url)[2]]
        message = f"{type(exc).__name__}: {exc}"
        if session is None:
            raise SyncError(redact(message, secrets), retryable=False) from None
        raise session.error(message, retryable=False) from None
    finally:
        if session is not None:
            session.close()
