"""The admin as a dashboard: branded, opening on every repository's status, times with seconds and
a relative form, the task queue's tables for superusers only, a favicon, and a run page that follows
its run through a small JSON endpoint."""

import datetime

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from gitdeploy.models import Repository, SyncRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer():
    user = User.objects.create_user("victor", password="pw-victor-123", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="gitdeploy", codename__startswith="view")
    )
    return User.objects.get(pk=user.pk)


@pytest.fixture
def root():
    return User.objects.create_superuser("root", "root@example.com", "pw-root-123")


def page(client, user, url):
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200, url
    return response.content.decode()


def test_the_admin_is_branded_and_has_a_favicon(client, viewer):
    html = page(client, viewer, reverse("admin:index"))
    assert "Django administration" not in html and "Django site admin" not in html
    assert '<div id="site-name"><a href="/admin/">' in html and "gitdeploy</a>" in html
    assert 'rel="icon" href="/static/gitdeploy/favicon.svg"' in html
    assert client.get("/static/gitdeploy/favicon.svg").status_code == 200


def test_the_index_opens_on_every_repositorys_status(client, viewer, make_repository):
    site = make_repository(name="site")
    docs = make_repository(name="docs")
    SyncRun.objects.create(
        repository=site,
        trigger="webhook",
        status="succeeded",
        deployed_commit="a" * 40,
        commit_subject="Fix the footer",
    )
    failed = SyncRun.objects.create(
        repository=docs, trigger="webhook", status="failed", error="git fetch failed\ndetails"
    )
    html = page(client, viewer, reverse("admin:index"))
    overview = html[html.index('id="gd-overview"') : html.index('id="gd-overview"') + 4000]
    assert "Fix the footer" in overview and "up to date" in overview
    assert "git fetch failed" in overview and "details" not in overview
    assert reverse("admin:gitdeploy_syncrun_change", args=[failed.pk]) in overview
    assert html.index('id="gd-overview"') < html.index('id="content-related"')


def test_the_index_overview_does_not_query_per_repository(
    client, viewer, make_repository, django_assert_max_num_queries
):
    for _ in range(10):
        SyncRun.objects.create(repository=make_repository(), trigger="webhook", status="failed")
    client.force_login(viewer)
    with django_assert_max_num_queries(10):
        assert client.get(reverse("admin:index")).status_code == 200


def test_times_show_seconds_and_a_relative_form(client, viewer, make_repository):
    repository = make_repository()
    queued = timezone.now() - datetime.timedelta(minutes=3, seconds=7)
    SyncRun.objects.create(repository=repository, trigger="webhook", queued_at=queued)
    html = page(client, viewer, reverse("admin:gitdeploy_syncrun_changelist"))
    assert timezone.localtime(queued).strftime("%Y-%m-%d %H:%M:%S") in html
    assert "3 min ago" in html


def test_the_task_queue_tables_are_for_superusers_only(client, viewer, root):
    url = reverse("admin:django_tasks_database_dbtaskresult_changelist")
    client.force_login(viewer)
    assert "django_tasks_database" not in client.get(reverse("admin:index")).content.decode()
    assert client.get(url).status_code == 403
    assert "django_tasks_database" in page(client, root, reverse("admin:index"))
    assert client.get(url).status_code == 200


def test_the_run_page_follows_a_running_run(client, viewer, make_repository):
    repository = make_repository()
    run = SyncRun.objects.create(
        repository=repository,
        trigger="webhook",
        status="running",
        started_at=timezone.now(),
        log=f"12:00:00 fetching <b>\n12:00:01 token {repository.webhook_secret}\n",
    )
    progress = reverse("admin:gitdeploy_syncrun_progress", args=[run.pk])
    html = page(client, viewer, reverse("admin:gitdeploy_syncrun_change", args=[run.pk]))
    assert f'data-url="{progress}"' in html and "gitdeploy/admin.js" in html
    answer = client.get(progress).json()
    assert (answer["status"], answer["finished"]) == ("running", False)
    assert "fetching <b>" in answer["log"]
    assert repository.webhook_secret not in answer["log"], "scrubbed like the page"
    SyncRun.objects.filter(pk=run.pk).update(status="succeeded", finished_at=timezone.now())
    answer = client.get(progress).json()
    assert answer["finished"] is True and answer["title"] == f"#{run.pk} {repository} succeeded"
    assert "finished_time" in answer["fields_html"]
    html = page(client, viewer, reverse("admin:gitdeploy_syncrun_change", args=[run.pk]))
    assert "gd-run-progress" not in html, "a finished run is not polled"


def test_the_progress_endpoint_needs_the_view_permission(client, make_repository):
    run = SyncRun.objects.create(repository=make_repository(), trigger="webhook")
    nobody = User.objects.create_user("nora", password="pw-nora-12345", is_staff=True)
    client.force_login(nobody)
    response = client.get(reverse("admin:gitdeploy_syncrun_progress", args=[run.pk]))
    assert response.status_code == 403


def test_list_pages_keep_few_columns(client, root, make_repository):
    """What fits 1366 px (the browser test measures it): no started/finished columns."""
    SyncRun.objects.create(repository=make_repository(), trigger="webhook")
    html = page(client, root, reverse("admin:gitdeploy_syncrun_changelist"))
    assert "column-started_at" not in html and "column-finished_at" not in html
    assert Repository.objects.count() == 1
