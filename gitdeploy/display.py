"""Display helpers shared by the admin, the landing page and the templates: short commits, links to
a commit on the Git host, status badges, durations, pretty bodies. Plain functions returning safe
HTML; gitdeploy.templatetags.gitdeploy_extras only registers them for templates.

Every link is built from the repository's clone URL with the credentials dropped, and only for a
value that looks like a commit id."""

from __future__ import annotations

import datetime
import json
import re
from urllib.parse import parse_qs, urlsplit

from django.utils import timezone
from django.utils.html import format_html

from gitdeploy.models import SHA_RE, SyncRun

# git@host:owner/repo.git (scp-like syntax: no scheme, a colon before the first slash).
SCP_RE = re.compile(r"^(?:[^@/:]+@)?(?P<host>[A-Za-z0-9.-]+):(?!//)(?P<path>[^\s]+)$")
HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.~-]+$")

# How each host family lays out a commit page under https://host/owner/repo.
COMMIT_PATHS = {
    "github": "/commit/{sha}",
    "gitlab": "/-/commit/{sha}",
    "gitea": "/commit/{sha}",
    "bitbucket": "/commits/{sha}",
}
KNOWN_HOSTS = {
    "github.com": "github",
    "gitlab.com": "gitlab",
    "bitbucket.org": "bitbucket",
    "codeberg.org": "gitea",
    "gitea.com": "gitea",
}


def host_layout(host: str, provider: str = "") -> str:
    """github / gitlab / gitea / bitbucket, or '' when the layout of this host is unknown.

    A known public host wins; then the provider that sent the repository's webhooks (a self-hosted
    GitLab or Gitea says who it is in its headers); then a telling name (gitlab.example.com)."""
    host = host.lower()
    if host in KNOWN_HOSTS:
        return KNOWN_HOSTS[host]
    provider = (provider or "").lower()
    if provider == "forgejo":
        provider = "gitea"
    if provider in COMMIT_PATHS:
        return provider
    for family, needles in (
        ("gitlab", ("gitlab",)),
        ("gitea", ("gitea", "forgejo")),
        ("bitbucket", ("bitbucket",)),
        ("github", ("github",)),
    ):
        if any(needle in host for needle in needles):
            return family
    return ""


def repository_web_url(clone_url: str, provider: str = "") -> tuple[str, str]:
    """(https://host/owner/repo, layout) for a clone URL on a host we can link to, else ('', '').

    User info (tokens, passwords) and ssh ports are never carried into the result."""
    url = (clone_url or "").strip()
    scheme = "https"
    match = SCP_RE.match(url)
    if match and "://" not in url:
        host, path, port = match["host"], match["path"], None
    else:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "", ""
        if parts.scheme not in {"https", "http", "ssh", "git", "git+ssh", "ssh+git"}:
            return "", ""
        host, path = parts.hostname or "", parts.path
        if parts.scheme == "http":
            # A self-hosted server only reachable over plain HTTP: link the way it is cloned.
            scheme = "http"
        if parts.scheme not in {"https", "http"}:
            port = None  # an ssh/git port says nothing about the web server's port
    if not HOST_RE.match(host):
        return "", ""
    layout = host_layout(host, provider)
    if not layout:
        return "", ""
    segments = [s for s in path.strip("/").removesuffix(".git").split("/") if s]
    if len(segments) < 2 or any(s in {".", ".."} or not SEGMENT_RE.match(s) for s in segments):
        return "", ""
    if layout != "gitlab" and len(segments) != 2:
        return "", ""  # only GitLab nests groups; anything else is not a repository page
    netloc = f"{host}:{port}" if port else host
    return f"{scheme}://{netloc}/{'/'.join(segments)}", layout


def commit_url(clone_url: str, sha: str, provider: str = "") -> str:
    """The commit's page on the Git host, or '' when we cannot know it."""
    if not sha or not SHA_RE.match(sha):
        return ""
    base, layout = repository_web_url(clone_url, provider)
    if not base:
        return ""
    return base + COMMIT_PATHS[layout].format(sha=sha)


def short_sha(value: str) -> str:
    return (value or "")[:12]


def commit_html(clone_url: str, sha: str, provider: str = ""):
    """<a href=...><code>abcdef123456</code></a>; plain <code> for an unknown host; '—' if empty."""
    if not sha:
        return "—"
    url = commit_url(clone_url, sha, provider)
    if url:
        return format_html(
            '<a href="{}" title="{}" rel="noopener noreferrer"><code>{}</code></a>',
            url,
            sha,
            short_sha(sha),
        )
    return format_html('<code title="{}">{}</code>', sha, short_sha(sha))


def commit_link(repository, sha, provider=""):
    return commit_html(repository.clone_url, sha, provider)


def status_badge(status: str, label: str = ""):
    status = status or "none"
    return format_html(
        '<span class="gd-status gd-status-{}">{}</span>',
        status if status.isalnum() else "none",
        label or status,
    )


def run_commits_html(run: SyncRun, provider: str = ""):
    """previous → deployed, or previous → requested/pinned while the run has not deployed."""
    clone_url = run.repository.clone_url
    previous = commit_html(clone_url, run.previous_commit, provider)
    deployed = commit_html(clone_url, run.deployed_commit, provider)
    if not run.deployed_commit and run.requested_commit:
        requested = commit_html(clone_url, run.requested_commit, provider)
        label = "pinned" if run.pin_commit else "requested"
        return format_html("{} → <em>{}</em> {}", previous, label, requested)
    return format_html("{} → {}", previous, deployed)


def format_duration(delta: datetime.timedelta | None) -> str:
    if delta is None:
        return "—"
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def pretty_text(raw: str) -> str:
    """A JSON body indented (GitHub's form-encoded `payload=` unwrapped first), else as is."""
    text = raw or ""
    candidate = text
    if not text.lstrip().startswith(("{", "[")):
        payload = parse_qs(text, keep_blank_values=True).get("payload")
        if payload:
            candidate = payload[0]
    try:
        return json.dumps(json.loads(candidate), indent=2, ensure_ascii=False, sort_keys=False)
    except (ValueError, RecursionError):  # a stored hostile body may nest past the parser's limit
        return text


def ago(value: datetime.datetime | None, now: datetime.datetime | None = None) -> str:
    """'12 s ago', '3 min ago', '2 h ago', '4 days ago', 'in 20 s' (for lists and timelines)."""
    if value is None:
        return ""
    seconds = ((now or timezone.now()) - value).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 60:
        amount = f"{int(seconds)} s"
    elif seconds < 3600:
        amount = f"{int(seconds // 60)} min"
    elif seconds < 86400:
        amount = f"{int(seconds // 3600)} h"
    else:
        days = int(seconds // 86400)
        amount = f"{days} day{'s' if days != 1 else ''}"
    return f"in {amount}" if future else f"{amount} ago"


def time_html(value: datetime.datetime | None, *, relative_first: bool = False):
    """<time> with seconds (in TIME_ZONE) and the relative form: '2026-11-25 16:01:02 · 3 min'."""
    if value is None:
        return "—"
    local = timezone.localtime(value)
    absolute = local.strftime("%Y-%m-%d %H:%M:%S")
    if relative_first:
        return format_html(
            '<time datetime="{}" title="{} {}">{}</time>',
            value.isoformat(),
            absolute,
            local.tzname() or "",
            ago(value),
        )
    return format_html(
        '<time datetime="{}" title="{}">{}</time> <span class="gd-ago">{}</span>',
        value.isoformat(),
        local.tzname() or "",
        absolute,
        ago(value),
    )


def first_line(text: str, limit: int = 200) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def commit_summary_html(
    clone_url: str,
    sha: str,
    provider: str,
    subject: str,
    author: str,
    committed_at: datetime.datetime | None,
):
    """The commit link with its subject, author and relative time, as deploy lists show it."""
    if not sha:
        return "—"
    link = commit_html(clone_url, sha, provider)
    if not subject and not author:
        return link
    when = format_html(", {}", time_html(committed_at, relative_first=True)) if committed_at else ""
    return format_html(
        '{} <span class="gd-subject">{}</span> <span class="gd-author">{}{}</span>',
        link,
        subject,
        f"by {author}" if author else "",
        when,
    )


def post_deploy_failed(row) -> bool:
    """The live commit was put in place by a run whose post-deploy command then failed."""
    return row.live_run_status == SyncRun.Status.FAILED and row.live_exit_code not in (None, 0)


def live_commit_html(row):
    """What is on disk for a Repository.objects.with_status() row: the commit with its subject,
    author and time, and "post-deploy failed" beside it when that is how it got there."""
    sha = row.live_commit_sha or ""
    if not sha:
        return format_html("<em>{}</em>", "nothing deployed yet")
    summary = commit_summary_html(
        row.clone_url,
        sha,
        row.provider_hint or "",
        row.live_subject or "",
        row.live_author or "",
        row.live_committed_at,
    )
    if post_deploy_failed(row):
        return format_html(
            '{} <span class="gd-status gd-status-failed">post-deploy failed (exit {})</span>',
            summary,
            row.live_exit_code,
        )
    return summary


def repository_state(row) -> tuple[str, str]:
    """(css status, words) for a with_status() row: deploying / queued / failed / up to date."""
    if row.active_run_status == SyncRun.Status.RUNNING:
        return "running", "deploying"
    if row.active_run_status == SyncRun.Status.QUEUED:
        return "queued", "queued"
    if row.last_run_status == SyncRun.Status.FAILED:
        return "failed", "failed"
    if row.live_commit_sha:
        return "succeeded", "up to date"
    return "none", "nothing deployed"
