"""What is live: the commit actually on disk, read by the worker after every run (issue 9, item 1).

After a post-deploy failure in place mode the directory is at the new commit; every page says so,
with "post-deploy failed" beside it, and names the commit by subject and author."""

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from gitdeploy.models import Repository, SyncRun
from gitdeploy.worker import execute_run
from tests.gitservers import git

pytestmark = pytest.mark.django_db(transaction=True)


def deploy_now(repository) -> SyncRun:
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.CLI)
    execute_run(run.pk, worker_id="w")
    run.refresh_from_db()
    return run


@pytest.fixture
def failed_post_deploy(make_repository, remote):
    """v1 deployed; v2 pushed and checked out, then its post-deploy command failed."""
    repository = make_repository(clone_url=remote.url)
    first = deploy_now(repository)
    assert first.status == "succeeded", first.log
    new = remote.commit({"app.txt": "v2\n"}, "Ship the v2 banner")
    Repository.objects.filter(pk=repository.pk).update(post_deploy_command="exit 3")
    repository.refresh_from_db()
    second = deploy_now(repository)
    assert second.status == "failed" and second.post_deploy_exit_code == 3
    assert git("rev-parse", "HEAD", cwd=repository.target_dir) == new
    return repository, first, second, new


def test_the_worker_records_the_commit_on_disk_after_a_failed_run(failed_post_deploy):
    repository, _first, second, new = failed_post_deploy
    repository.refresh_from_db()
    assert repository.live_commit == new
    assert repository.live_run_id == second.pk
    row = Repository.objects.with_status().get(pk=repository.pk)
    assert (row.live_commit_sha, row.live_run_status, row.live_exit_code) == (new, "failed", 3)
    assert row.live_subject == "Ship the v2 banner"
    assert row.live_author == "Test Author"


def test_each_run_records_its_commit_subject_author_and_time(make_repository, remote):
    repository = make_repository(clone_url=remote.url)
    remote.commit({"b.txt": "b\n"}, "Add the b file\n\nWith a body that is not the subject.")
    run = deploy_now(repository)
    assert run.commit_subject == "Add the b file"
    assert run.commit_author == "Test Author"
    assert run.committed_at is not None


def test_landing_page_shows_the_commit_on_disk_and_the_failure(client, failed_post_deploy):
    repository, first, second, new = failed_post_deploy
    page = client.get("/").content.decode()
    assert new[:12] in page
    assert first.deployed_commit[:12] not in page.split("Recent runs")[0]
    assert "post-deploy failed" in page
    assert "Ship the v2 banner" in page


def test_admin_pages_show_the_commit_on_disk_and_the_failure(client, failed_post_deploy):
    repository, first, _second, new = failed_post_deploy
    client.force_login(User.objects.create_superuser("root", "r@example.com", "pw-root-123"))
    for url in [
        reverse("admin:gitdeploy_repository_change", args=[repository.pk]),
        reverse("admin:gitdeploy_repository_changelist"),
        reverse("admin:index"),
    ]:
        page = client.get(url).content.decode()
        assert new[:12] in page, url
        assert "post-deploy failed" in page, url


def test_atomic_mode_keeps_the_old_release_live_when_post_deploy_fails(
    client, make_repository, remote
):
    repository = make_repository(clone_url=remote.url, deploy_mode="atomic")
    first = deploy_now(repository)
    assert first.status == "succeeded", first.log
    new = remote.commit({"app.txt": "v2\n"}, "Not switched to")
    Repository.objects.filter(pk=repository.pk).update(post_deploy_command="exit 3")
    second = deploy_now(Repository.objects.get(pk=repository.pk))
    assert second.status == "failed"
    repository.refresh_from_db()
    # `current` did not switch: the old release is what is live, and it did not fail.
    assert (repository.live_commit, repository.live_run_id) == (first.deployed_commit, first.pk)
    page = client.get("/").content.decode()
    live = page.split("Recent runs")[0]
    assert first.deployed_commit[:12] in live and new[:12] not in live
    assert "post-deploy failed" not in live and "failed" in live
