"""Deploy status back on the Git host, so the repository's page shows what is deployed.

    GitHub (and Enterprise)   the Deployments API: a deployment for the commit when the run starts,
                              its status in_progress, then success / failure with log_url (the run)
    GitLab                    a commit status: running, then success / failed
    Gitea / Forgejo           a commit status: pending, then success / failure

Per repository (SLUG: the slug upper-cased, "-" as "_"), read by the worker only:

    STATUS_TOKEN_<SLUG> or STATUS_TOKEN   the API token (or their _FILE); none: nothing is reported
    STATUS_PROVIDER_<SLUG>                github | gitlab | gitea; default: github.com and
                                          gitlab.com clone URLs say it, else the host that sends
                                          the repository's webhooks
    STATUS_API_URL_<SLUG>                 default: https://api.github.com for github.com,
                                          https://<host>/api/v3 (GitHub Enterprise),
                                          https://<host>/api/v4 (GitLab), https://<host>/api/v1
    STATUS_PROJECT_<SLUG>                 owner/name (GitLab: the project path); default: the
                                          clone URL's path without .git
    STATUS_ENVIRONMENT                    the deployment's environment (settings; production)

Every call is bounded by NOTIFY_TIMEOUT and returns a line for SyncRun.notifications; a failure is
logged, never raised. Tokens are never logged or stored.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import urllib.parse

from django.conf import settings

from gitdeploy import notify
from gitdeploy.models import Repository, SyncRun, provider_of
from project.env import env_str

logger = logging.getLogger(__name__)

PROVIDERS = ("github", "gitlab", "gitea")
_KNOWN_HOSTS = {"github.com": "github", "gitlab.com": "gitlab", "codeberg.org": "gitea"}

# GitHub deployment ids of the runs this process started, until they finish.
_deployments: dict[int, int] = {}


@dataclasses.dataclass(frozen=True)
class Target:
    provider: str
    api_url: str
    project: str
    token: str = dataclasses.field(repr=False)


def variable_key(slug: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", slug.upper())


def host_and_path(clone_url: str) -> tuple[str, str]:
    """(host, owner/name) of https://, ssh:// and scp-like (git@host:owner/name.git) URLs."""
    if "://" in clone_url:
        parts = urllib.parse.urlsplit(clone_url)
        host, path = parts.hostname or "", parts.path
    elif ":" in clone_url:
        host, path = clone_url.split(":", 1)
        host = host.rsplit("@", 1)[-1]
    else:
        return "", ""
    return host.lower(), path.strip("/").removesuffix(".git")


def target_for(repository: Repository) -> Target | None:
    key = variable_key(repository.slug)
    token = env_str(f"STATUS_TOKEN_{key}") or env_str("STATUS_TOKEN")
    if not token:
        return None
    host, path = host_and_path(repository.clone_url)
    provider = os.environ.get(f"STATUS_PROVIDER_{key}", "").strip().lower()
    if not provider:
        provider = _KNOWN_HOSTS.get(host) or (
            Repository.objects.filter(pk=repository.pk)
            .annotate(hint=provider_of(repository.pk))
            .values_list("hint", flat=True)
            .first()
            or ""
        )
    if provider not in PROVIDERS:
        return None
    api_url = os.environ.get(f"STATUS_API_URL_{key}", "").strip()
    if not api_url and host:
        if host == "github.com":
            api_url = "https://api.github.com"
        else:
            api_url = (
                f"https://{host}/api/" + {"github": "v3", "gitlab": "v4", "gitea": "v1"}[provider]
            )
    project = os.environ.get(f"STATUS_PROJECT_{key}", "").strip() or path
    if not api_url or not project:
        return None
    return Target(provider, api_url.rstrip("/"), project, token)


def started(run: SyncRun, target: Target) -> list[str]:
    """Tells target (target_for(run.repository), which the caller has looked up to decide
    whether there is anyone to tell) that run started."""
    if target.provider == "github":
        return [_attempt(target, "deployment", lambda: _github_start(target, run))]
    if not run.requested_commit:
        return []  # a commit status needs the commit; the branch tip is known when the run ends
    state = "running" if target.provider == "gitlab" else "pending"
    return [_attempt(target, "commit status", lambda: _commit_status(target, run, state))]


def finished(run: SyncRun) -> list[str]:
    target = target_for(run.repository)
    if target is None or run.status not in (SyncRun.Status.SUCCEEDED, SyncRun.Status.FAILED):
        _deployments.pop(run.pk, None)
        return []
    ok = run.status == SyncRun.Status.SUCCEEDED
    if target.provider == "github":
        return [_attempt(target, "deployment", lambda: _github_finish(target, run, ok))]
    if not (run.deployed_commit or run.requested_commit):
        return []
    state = {"gitlab": ("success", "failed"), "gitea": ("success", "failure")}[target.provider]
    return [
        _attempt(
            target, "commit status", lambda: _commit_status(target, run, state[0 if ok else 1])
        )
    ]


def _attempt(target: Target, what: str, call) -> str:
    label = f"{target.provider} {what}"
    try:
        detail = call()
    except Exception as exc:
        reason = notify.describe(exc)
        logger.warning("%s failed: %s", label, reason)
        return f"{label}: failed: {reason}"
    return f"{label}: {detail}"


def _description(run: SyncRun) -> str:
    if run.status == SyncRun.Status.RUNNING:
        return f"gitdeploy run #{run.pk} is deploying"
    if run.status == SyncRun.Status.SUCCEEDED:
        return f"gitdeploy run #{run.pk} deployed {run.deployed_commit[:12]}"
    return f"gitdeploy run #{run.pk} failed: {run.error.strip()[:100]}"[:140]


def _link(run: SyncRun) -> dict[str, str]:
    url = notify.run_url(run)
    return {"url": url} if url.startswith("http") else {}


# --- GitHub: deployments and their statuses ------------------------------------------------------


def _github_headers(target: Target) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {target.token}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
    }


def _github_create(target: Target, run: SyncRun, ref: str) -> int:
    _status, answer = notify.post_json(
        f"{target.api_url}/repos/{target.project}/deployments",
        {
            "ref": ref,
            "environment": settings.STATUS_ENVIRONMENT,
            "description": f"gitdeploy run #{run.pk}",
            "auto_merge": False,
            "required_contexts": [],
            "payload": {"run_id": run.pk},
        },
        _github_headers(target),
    )
    if not isinstance(answer.get("id"), int):
        raise ValueError(f"no deployment id in the answer: {answer.get('message', '')}"[:200])
    return answer["id"]


def _github_status(target: Target, run: SyncRun, deployment: int, state: str) -> str:
    body = {
        "state": state,
        "environment": settings.STATUS_ENVIRONMENT,
        "description": _description(run),
    }
    if link := _link(run):
        body["log_url"] = link["url"]
    status, _answer = notify.post_json(
        f"{target.api_url}/repos/{target.project}/deployments/{deployment}/statuses",
        body,
        _github_headers(target),
    )
    return f"deployment {deployment} {state} (HTTP {status})"


def _github_start(target: Target, run: SyncRun) -> str:
    deployment = _github_create(target, run, run.requested_commit or run.branch)
    _deployments[run.pk] = deployment
    return _github_status(target, run, deployment, "in_progress")


def _github_finish(target: Target, run: SyncRun, ok: bool) -> str:
    deployment = _deployments.pop(run.pk, None)
    if deployment is None:  # started elsewhere (a lost run), or the start call failed
        ref = run.deployed_commit or run.requested_commit or run.branch
        deployment = _github_create(target, run, ref)
    return _github_status(target, run, deployment, "success" if ok else "failure")


# --- GitLab and Gitea: commit statuses ------------------------------------------------------------


def _commit_status(target: Target, run: SyncRun, state: str) -> str:
    sha = run.deployed_commit or run.requested_commit
    name = f"gitdeploy/{settings.STATUS_ENVIRONMENT}"
    link = _link(run).get("url", "")
    if target.provider == "gitlab":
        project = urllib.parse.quote(target.project, safe="")
        url = f"{target.api_url}/projects/{project}/statuses/{sha}"
        body = {"state": state, "name": name, "description": _description(run)}
        if link:
            body["target_url"] = link
        headers = {"PRIVATE-TOKEN": target.token}
    else:
        url = f"{target.api_url}/repos/{target.project}/statuses/{sha}"
        body = {"state": state, "context": name, "description": _description(run)}
        if link:
            body["target_url"] = link
        headers = {"Authorization": f"token {target.token}"}
    status, _answer = notify.post_json(url, body, headers)
    return f"{state} on {sha[:12]} (HTTP {status})"
