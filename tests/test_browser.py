"""End to end in headless Chromium: log in, open a delivery, press Redeploy, see the new run."""

import datetime
import json
import re

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from gitdeploy.models import Delivery, Repository, SyncRun

pytest_plugins = ["tests.browser_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct-horse-battery-staple"
SECRET = "browser-webhook-secret-value"
TOKEN = "ghp_BrowserT0kenNotForDisplay"
OLD = "0123456789abcdef0123456789abcdef01234567"
NEW = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def cast(tmp_path):
    operator = User.objects.create_user("olivia", password=PASSWORD, is_staff=True)
    operator.user_permissions.add(*Permission.objects.filter(content_type__app_label="gitdeploy"))
    site = Repository.objects.create(
        name="site",
        slug="site",
        clone_url=f"https://deploy:{TOKEN}@github.com/acme/site.git",
        branch="main",
        target_dir=str(tmp_path / "site"),
        webhook_secret=SECRET,
    )
    done = SyncRun.objects.create(
        repository=site,
        trigger="webhook",
        triggered_by_label="octocat",
        status="succeeded",
        queued_at=timezone.now() - datetime.timedelta(minutes=5),
        started_at=timezone.now() - datetime.timedelta(minutes=5),
        finished_at=timezone.now() - datetime.timedelta(minutes=4, seconds=48),
        previous_commit=OLD,
        deployed_commit=NEW,
        log="fetch origin main\nHEAD is now at 89abcdef\n<script>alert(1)</script>\n",
        post_deploy_exit_code=0,
    )
    delivery = Delivery.objects.create(
        repository=site,
        provider="github",
        event="push",
        delivery_id="d6b3c1c0-0000-4000-8000-000000000001",
        headers={"X-GitHub-Event": "push", "Content-Type": "application/json"},
        body=json.dumps({"ref": "refs/heads/main", "after": NEW, "pusher": {"name": "octocat"}}),
        body_size=120,
        ref="refs/heads/main",
        before=OLD,
        after=NEW,
        signature="valid",
        verdict="queued",
        reason="push on the tracked branch",
        status_code=202,
        sync_run=done,
    )
    return {"operator": operator, "site": site, "done": done, "delivery": delivery}


def log_in(page, live_server, username):
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")


def test_redeploy_from_a_delivery(page, live_server, cast, output_dir):
    page.goto(f"{live_server.url}/")
    assert "site" in page.inner_text("main")
    assert "/hooks/site/" not in page.content(), "webhook URLs are for signed-in staff"
    page.screenshot(path=str(output_dir / "landing.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(output_dir / "landing-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    log_in(page, live_server, "olivia")
    page.goto(f"{live_server.url}/admin/gitdeploy/delivery/")
    page.click("#result_list tbody tr th a")  # the delivery's row
    page.wait_for_selector("text=push on the tracked branch")
    page.screenshot(path=str(output_dir / "delivery.png"), full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())  # "Deploy the latest commit of main ...?"
    page.click("button[name=redeploy]")
    page.wait_for_selector("ul.messagelist")
    message = page.inner_text("ul.messagelist")
    new_run = SyncRun.objects.exclude(pk=cast["done"].pk).get()
    assert f"Queued sync run #{new_run.pk} for 'site'" in message
    assert re.search(rf"/admin/gitdeploy/syncrun/{new_run.pk}/change/$", page.url)
    assert new_run.trigger == "admin" and new_run.triggered_by == cast["operator"]
    page.screenshot(path=str(output_dir / "new-run.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/gitdeploy/syncrun/")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 2
    assert "queued" in rows.first.inner_text()
    page.screenshot(path=str(output_dir / "run-list.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/gitdeploy/syncrun/{cast['done'].pk}/change/")
    assert "<script>alert(1)</script>" in page.inner_text(".gd-log")
    page.screenshot(path=str(output_dir / "run-detail.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/gitdeploy/repository/{cast['site'].pk}/change/")
    page.screenshot(path=str(output_dir / "repository.png"), full_page=True)
    for html in [page.content()]:
        assert SECRET not in html and TOKEN not in html


def test_roll_back_from_a_run(page, live_server, cast, output_dir):
    # A newer run is live: the older one's page offers to roll back to it.
    SyncRun.objects.create(
        repository=cast["site"],
        trigger="webhook",
        status="succeeded",
        previous_commit=NEW,
        deployed_commit=OLD,
        finished_at=timezone.now(),
    )
    log_in(page, live_server, "olivia")
    page.goto(f"{live_server.url}/admin/gitdeploy/syncrun/{cast['done'].pk}/change/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[name=rollback]")
    page.wait_for_selector("ul.messagelist")
    pinned = SyncRun.objects.get(status="queued")
    assert pinned.pin_commit and pinned.requested_commit == NEW
    assert f"Queued sync run #{pinned.pk}" in page.inner_text("ul.messagelist")
    page.screenshot(path=str(output_dir / "rolled-back.png"), full_page=True)
