"""The landing page: what is deployed where, and the webhook URL to paste; never a secret."""

import datetime

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from gitdeploy.models import Repository, SyncRun

TOKEN = "glpat-L4ndingT0ken"
SECRET = "landing-webhook-secret-value"
SHA = "abcdef0123456789abcdef0123456789abcdef01"
HOSTILE = "<script>alert(1)</script>"

pytestmark = pytest.mark.django_db


@pytest.fixture
def site(tmp_path):
    return Repository.objects.create(
        name="site",
        slug="site",
        clone_url=f"https://oauth2:{TOKEN}@gitlab.com/acme/site.git",
        branch="main",
        target_dir=str(tmp_path / "site"),
        webhook_secret=SECRET,
    )


def get_landing(client):
    response = client.get(reverse("gitdeploy:landing"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    return response.content.decode()


def test_shows_each_enabled_repository(client, site, tmp_path):
    SyncRun.objects.create(
        repository=site, trigger="webhook", status="succeeded", deployed_commit=SHA
    )
    SyncRun.objects.create(repository=site, trigger="admin", status="queued")
    Repository.objects.create(
        name="follows-default",
        slug="follows-default",
        clone_url="git@github.com:acme/other.git",
        target_dir=str(tmp_path / "other"),
    )
    Repository.objects.create(
        name="switched-off",
        slug="off",
        clone_url="https://github.com/acme/off.git",
        target_dir="/srv/off",
        enabled=False,
    )
    page = get_landing(client)
    assert "site" in page and "follows-default" in page
    assert "switched-off" not in page
    assert "<code>main</code>" in page
    assert "remote default" in page
    assert f'href="https://gitlab.com/acme/site/-/commit/{SHA}"' in page
    assert SHA[:12] in page
    assert "queued" in page
    assert reverse("admin:index") in page
    # Directories and webhook URLs are for signed-in staff only.
    assert str(tmp_path / "site") not in page
    assert "/hooks/" not in page
    staff = User.objects.create_user("sam", password="pw-sam-12345", is_staff=True)
    client.force_login(staff)
    page = get_landing(client)
    assert str(tmp_path / "site") in page
    assert "http://testserver/hooks/site/" in page
    assert "http://testserver/hooks/follows-default/" in page


def test_never_shows_a_secret_or_clone_url_credentials(client, site):
    page = get_landing(client)
    assert SECRET not in page
    assert TOKEN not in page
    assert "oauth2" not in page


@override_settings(
    TITLE="Deploys of ACME",
    DESCRIPTION="Pushed to main, live in a minute.",
    VERSION="9.8.7",
    CONTACT_NAME="Ops team",
    CONTACT_EMAIL="ops@example.com",
    CONTACT_URL="",
)
def test_site_fields_and_only_the_contacts_that_are_set(client):
    page = get_landing(client)
    assert "<title>Deploys of ACME</title>" in page
    assert "Pushed to main, live in a minute." in page
    assert "9.8.7" in page
    assert "Ops team" in page
    assert 'href="mailto:ops@example.com"' in page
    assert "None" not in page


@override_settings(CONTACT_NAME="", CONTACT_EMAIL="", CONTACT_URL="")
def test_no_contact_line_without_contacts(client):
    page = get_landing(client)
    assert "Contact" not in page
    assert "None" not in page


@override_settings(CONTACT_URL="javascript:alert(1)")
def test_contact_url_must_be_a_web_address(client):
    assert "javascript:" not in get_landing(client)


@override_settings(TITLE=HOSTILE, DESCRIPTION=HOSTILE, CONTACT_NAME=HOSTILE)
def test_everything_is_escaped(client, tmp_path):
    repo = Repository.objects.create(
        name=HOSTILE,
        slug="evil",
        clone_url="https://github.com/acme/evil.git",
        branch=HOSTILE,
        target_dir=f"/srv/{HOSTILE}",
    )
    SyncRun.objects.create(
        repository=repo, trigger="webhook", status="succeeded", deployed_commit=HOSTILE
    )
    page = get_landing(client)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_empty_install_explains_what_to_do(client):
    page = get_landing(client)
    assert "GIT_URL" in page and "REPO_DIR" in page


def test_readable_on_a_phone_and_styled_by_a_static_file(client):
    page = get_landing(client)
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "/static/gitdeploy/site.css" in page


def test_static_files_are_served_with_debug_off(client, settings):
    assert settings.DEBUG is False
    for url in [
        "/static/gitdeploy/site.css",
        "/static/admin/css/base.css",
        "/static/gitdeploy/admin.css",
    ]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response["Content-Type"].startswith("text/css"), url
        response.close()


def test_status_live_commit_and_the_last_five_runs(client, site):
    now = timezone.now()
    for n in range(7):
        SyncRun.objects.create(
            repository=site,
            trigger="webhook",
            status="succeeded",
            deployed_commit=f"{n}" * 40,
            commit_subject=f"Change number {n}",
            commit_author="Ada",
            committed_at=now - datetime.timedelta(minutes=10),
            queued_at=now - datetime.timedelta(minutes=10 - n),
            started_at=now - datetime.timedelta(minutes=10 - n),
            finished_at=now - datetime.timedelta(minutes=10 - n, seconds=-7),
        )
    failed = SyncRun.objects.create(
        repository=site,
        trigger="webhook",
        status="failed",
        error=f"git fetch failed (exit 128): fatal: {site.target_dir} is broken\nsecond line",
    )
    page = get_landing(client)
    assert "Change number 6" in page and "by Ada" in page  # the live commit
    assert page.count('class="run run-') == 5
    assert "7.0 s" in page  # durations
    assert "failed" in page and f"see run #{failed.pk}" in page
    assert site.target_dir not in page, "the error's first line is for staff only"
    client.force_login(User.objects.create_user("sam", password="pw-sam-12345", is_staff=True))
    page = get_landing(client)
    assert f"fatal: {site.target_dir} is broken" in page and "second line" not in page


def test_a_run_in_progress_is_shown(client, site):
    running = SyncRun.objects.create(repository=site, trigger="webhook", status="running")
    page = get_landing(client)
    assert "deploying" in page and f"run #{running.pk}" in page
