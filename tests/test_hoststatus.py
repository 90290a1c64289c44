"""Deploy status on the Git host: GitHub deployments, GitLab and Gitea commit statuses.

The worker's code runs in-process against a real HTTP server on 127.0.0.1 that records each request
and answers as the APIs document (201 with the created object).
"""

import itertools
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gitdeploy import hoststatus
from gitdeploy.models import Delivery, SyncRun
from gitdeploy.worker import execute_run
from tests.apiservers import api_server

__all__ = ["api_server"]

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "ghp_T0kenThatMustNeverBeLogged0123456789"


def configure(monkeypatch, repository, api, provider, project="octo/site"):
    key = hoststatus.variable_key(repository.slug)
    monkeypatch.setenv(f"STATUS_TOKEN_{key}", TOKEN)
    monkeypatch.setenv(f"STATUS_PROVIDER_{key}", provider)
    monkeypatch.setenv(f"STATUS_API_URL_{key}", api.url + "/api")
    monkeypatch.setenv(f"STATUS_PROJECT_{key}", project)


def run_now(repository, commit=""):
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK, commit=commit)
    execute_run(run.pk, worker_id="test-worker")
    run.refresh_from_db()
    return run


def github_api(api):
    ids = itertools.count(1001)

    def create(request):
        return 201, {"id": next(ids), "sha": request.json["ref"], "environment": "production"}

    api.on("POST", r"/api/repos/octo/site/deployments", create)
    api.on(
        "POST",
        r"/api/repos/octo/site/deployments/\d+/statuses",
        lambda request: (201, {"id": 1, "state": request.json["state"]}),
    )


def test_github_gets_a_deployment_in_progress_then_success(
    make_repository, remote, api_server, monkeypatch, settings
):
    settings.PUBLIC_URL = "https://deploy.example.com"
    settings.STATUS_ENVIRONMENT = "staging"
    github_api(api_server)
    repository = make_repository(clone_url=remote.url)
    configure(monkeypatch, repository, api_server, "github")
    run = run_now(repository, commit=remote.tip())
    assert run.status == SyncRun.Status.SUCCEEDED

    create, progress, done = api_server.requests
    assert create.path == "/api/repos/octo/site/deployments"
    assert create.json["ref"] == remote.tip() and create.json["environment"] == "staging"
    assert create.json["required_contexts"] == [] and create.json["auto_merge"] is False
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert create.headers["accept"] == "application/vnd.github+json"
    assert create.headers["x-github-api-version"] == "2022-11-28"
    log_url = f"https://deploy.example.com/admin/gitdeploy/syncrun/{run.pk}/change/"
    assert progress.path == "/api/repos/octo/site/deployments/1001/statuses"
    assert progress.json["state"] == "in_progress" and progress.json["log_url"] == log_url
    assert done.path == progress.path
    assert done.json["state"] == "success" and done.json["log_url"] == log_url
    assert done.json["environment"] == "staging"
    assert "github deployment: deployment 1001 in_progress (HTTP 201)" in run.notifications
    assert "github deployment: deployment 1001 success (HTTP 201)" in run.notifications
    assert TOKEN not in run.notifications + run.log


def test_the_sync_does_not_wait_for_the_hosts_answer_to_its_start(
    make_repository, remote, api_server, monkeypatch, settings
):
    """GitHub took seconds to create the deployment: the checkout went on meanwhile, and the host
    still heard the start before the result."""
    settings.NOTIFY_TIMEOUT = 5
    github_api(api_server)
    repository = make_repository(clone_url=remote.url)
    configure(monkeypatch, repository, api_server, "github")
    tip = remote.tip()
    checked_out_before_the_answer = threading.Event()

    def slow_create(request):
        # Answers once the commit is checked out, or after 3 s (within NOTIFY_TIMEOUT): had the
        # sync waited for this answer, the commit could not be checked out by then.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if head(repository.target_dir) == tip:
                checked_out_before_the_answer.set()
                break
            time.sleep(0.02)
        return 201, {"id": 1001, "sha": request.json["ref"]}

    api_server.on("POST", r"/api/repos/octo/site/deployments", slow_create)
    run = run_now(repository, commit=tip)

    assert run.status == SyncRun.Status.SUCCEEDED
    assert checked_out_before_the_answer.is_set()
    create, progress, done = api_server.requests
    assert create.path == "/api/repos/octo/site/deployments"
    assert progress.json["state"] == "in_progress" and done.json["state"] == "success"
    assert progress.path == done.path == "/api/repos/octo/site/deployments/1001/statuses"
    assert "deployment 1001 in_progress (HTTP 201)" in run.notifications
    assert "deployment 1001 success (HTTP 201)" in run.notifications


def head(directory: str) -> str:
    if not (Path(directory) / ".git").exists():
        return ""
    found = subprocess.run(
        ["git", "-C", directory, "rev-parse", "-q", "--verify", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip()


def test_github_failure_is_reported_as_failure(make_repository, remote, api_server, monkeypatch):
    github_api(api_server)
    repository = make_repository(clone_url=remote.url, post_deploy_command="exit 1")
    configure(monkeypatch, repository, api_server, "github")
    run = run_now(repository)
    assert run.status == SyncRun.Status.FAILED
    _create, _progress, done = api_server.requests
    assert _create.json["ref"] == repository.branch  # no commit named: the branch
    assert done.json["state"] == "failure" and "failed" in done.json["description"]
    assert "log_url" not in done.json  # PUBLIC_URL unset: no absolute link to give


def test_gitlab_gets_commit_statuses(make_repository, remote, api_server, monkeypatch):
    api_server.on(
        "POST",
        r"/api/projects/group%2Fsub%2Fsite/statuses/[0-9a-f]{40}",
        lambda request: (201, {"id": 93, "status": request.json["state"]}),
    )
    repository = make_repository(clone_url=remote.url)
    configure(monkeypatch, repository, api_server, "gitlab", project="group/sub/site")
    run = run_now(repository, commit=remote.tip())
    running, success = api_server.requests
    assert running.path == f"/api/projects/group%2Fsub%2Fsite/statuses/{remote.tip()}"
    assert running.json["state"] == "running" and running.json["name"] == "gitdeploy/production"
    assert success.json["state"] == "success"
    assert success.headers["private-token"] == TOKEN
    assert "gitlab commit status: success on" in run.notifications


def test_gitea_gets_commit_statuses(make_repository, remote, api_server, monkeypatch):
    api_server.on(
        "POST",
        r"/api/repos/octo/site/statuses/[0-9a-f]{40}",
        lambda request: (201, {"id": 5, "status": request.json["state"]}),
    )
    repository = make_repository(clone_url=remote.url, post_deploy_command="exit 2")
    configure(monkeypatch, repository, api_server, "gitea")
    run = run_now(repository, commit=remote.tip())
    pending, failure = api_server.requests
    assert pending.json["state"] == "pending" and failure.json["state"] == "failure"
    assert failure.json["context"] == "gitdeploy/production"
    assert failure.headers["authorization"] == f"token {TOKEN}"
    assert run.status == SyncRun.Status.FAILED


def test_an_api_that_refuses_is_recorded_and_the_deploy_still_succeeds(
    make_repository, remote, api_server, monkeypatch, caplog
):
    api_server.on(
        "POST", r"/api/repos/octo/site/deployments", (401, {"message": "Bad credentials"})
    )
    repository = make_repository(clone_url=remote.url)
    configure(monkeypatch, repository, api_server, "github")
    run = run_now(repository, commit=remote.tip())
    assert run.status == SyncRun.Status.SUCCEEDED
    assert run.notifications.count("github deployment: failed: HTTP 401") == 2
    assert TOKEN not in caplog.text + run.notifications


def test_nothing_is_reported_without_a_token(make_repository, remote, api_server, monkeypatch):
    repository = make_repository(clone_url=remote.url)
    configure(monkeypatch, repository, api_server, "github")
    monkeypatch.delenv(f"STATUS_TOKEN_{hoststatus.variable_key(repository.slug)}")
    monkeypatch.delenv("STATUS_TOKEN", raising=False)
    run = run_now(repository)
    assert api_server.requests == [] and run.notifications == ""


@pytest.mark.parametrize(
    "clone_url, provider, api_url, project",
    [
        ("https://github.com/octo/site.git", "github", "https://api.github.com", "octo/site"),
        (
            "git@github.example.com:octo/site.git",
            "github",
            "https://github.example.com/api/v3",
            "octo/site",
        ),
        (
            "https://gitlab.com/group/sub/site.git",
            "gitlab",
            "https://gitlab.com/api/v4",
            "group/sub/site",
        ),
        (
            "ssh://git@codeberg.org/octo/site.git",
            "gitea",
            "https://codeberg.org/api/v1",
            "octo/site",
        ),
    ],
)
def test_the_target_follows_the_clone_url(
    make_repository, monkeypatch, clone_url, provider, api_url, project
):
    repository = make_repository(clone_url=clone_url)
    monkeypatch.setenv("STATUS_TOKEN", TOKEN)
    if "example.com" in clone_url:  # a self-hosted host: the webhooks it sends tell which one
        Delivery.objects.create(
            repository=repository, provider="github", verdict="queued", status_code=202
        )
    target = hoststatus.target_for(repository)
    assert (target.provider, target.api_url, target.project) == (provider, api_url, project)
    assert TOKEN not in repr(target)
