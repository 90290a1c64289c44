"""The dashboard walked as a person would, in headless Chromium, against a real worker process and a
real git remote: first start → initial deploy visible; a push → the run page turns to succeeded by
itself; a failing post-deploy → the landing page shows the commit on disk with the failure; a
roll back, confirmed (and once declined); a redelivery.

Every page is photographed at 1366 px and 390 px into test-output/<test>/ (kept by CI as
artifacts) and checked for a sideways scroll at 1366 px (and at 390 px where the layout is ours)."""

import time

import pytest
from django.contrib.auth.models import Permission, User

from gitdeploy.models import Delivery, Repository, SyncRun
from tests import test_worker_processes
from tests.test_worker_processes import push_webhook, wait_for

# The worker tests' fixture: a real `manage.py db_worker` process on the test database.
start_worker = test_worker_processes.start_worker

pytest_plugins = ["tests.browser_fixtures"]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.processes,
    pytest.mark.django_db(transaction=True),
]

PASSWORD = "correct-horse-battery-staple"
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def overflow(page) -> int:
    """How many pixels the page, or a list's table, scrolls sideways (0: none)."""
    return page.evaluate(
        """() => Math.max(
            document.documentElement.scrollWidth - document.documentElement.clientWidth,
            ...Array.from(document.querySelectorAll("#changelist .results"),
                          (el) => el.scrollWidth - el.clientWidth))"""
    )


class Camera:
    """Screenshots at both widths, and the no-sideways-scroll check."""

    def __init__(self, page, output_dir):
        self.page = page
        self.output_dir = output_dir
        self.count = 0

    def shoot(self, name: str, *, phone_fits: bool = True) -> None:
        self.count += 1
        stem = f"{self.count:02d}-{name}"
        page = self.page
        page.set_viewport_size(DESKTOP)
        assert overflow(page) <= 0, f"{name}: scrolls sideways at 1366 px"
        page.screenshot(path=str(self.output_dir / f"{stem}-1366.png"), full_page=True)
        page.set_viewport_size(PHONE)
        if phone_fits:
            assert overflow(page) <= 0, f"{name}: scrolls sideways at 390 px"
        page.screenshot(path=str(self.output_dir / f"{stem}-390.png"), full_page=True)
        page.set_viewport_size(DESKTOP)


def log_in(page, base_url):
    page.goto(f"{base_url}/admin/login/")
    page.fill("#id_username", "olivia")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")


def landing_text(page, base_url, expected: str, timeout: float = 60) -> str:
    """The landing page once it says `expected` (it does not refresh itself: reload until then)."""
    deadline = time.monotonic() + timeout
    while True:
        page.goto(f"{base_url}/")
        text = page.inner_text("main")
        if expected in text or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def finished(run_id):
    run = SyncRun.objects.get(pk=run_id)
    return run if run.is_finished else None


def test_the_dashboard_walk(
    page, live_server, start_worker, remote, make_repository, client, output_dir
):
    base = live_server.url
    camera = Camera(page, output_dir)
    operator = User.objects.create_user("olivia", password=PASSWORD, is_staff=True)
    operator.user_permissions.add(*Permission.objects.filter(content_type__app_label="gitdeploy"))
    v1 = remote.commit({"index.html": "<h1>v1</h1>\n"}, "First page")
    repository = make_repository(name="site", slug="site", clone_url=remote.url)

    # 1. First start: the worker deploys what is there without waiting for a push.
    worker = start_worker("walker")
    text = landing_text(page, base, "up to date")
    assert "up to date" in text, worker.output()
    assert "First page" in text and v1[:12] in text
    assert repository.target_dir not in text, "no paths for anonymous visitors"
    initial = SyncRun.objects.get()
    assert initial.trigger == "initial"
    camera.shoot("landing-initial-deploy")

    # 2. A push: the run page follows the run to "succeeded" without being reloaded.
    log_in(page, base)
    camera.shoot("admin-index-overview")
    Repository.objects.filter(pk=repository.pk).update(post_deploy_command="sleep 2")
    v2 = remote.commit({"index.html": "<h1>v2</h1>\n"}, "Second page")
    answer = push_webhook(client, repository, v2, "walk-push-1")
    page.goto(f"{base}/admin/gitdeploy/syncrun/{answer['sync_run']}/change/")
    assert page.locator("#gd-run-progress").count() == 1, "a queued or running run is followed"
    page.evaluate("window.gdNotReloaded = true")
    # While it runs (the post-deploy command sleeps 2 s) the log tail arrives by itself.
    page.wait_for_selector(".field-status_display .gd-status-running", timeout=30_000)
    page.wait_for_function(
        "() => (document.querySelector('.gd-log') || {}).textContent?.includes('$ sleep 2')",
        timeout=30_000,
    )
    page.screenshot(path=str(output_dir / "run-while-running-1366.png"), full_page=True)
    page.wait_for_selector(".field-status_display .gd-status-succeeded", timeout=60_000)
    page.wait_for_selector(".gd-finished-note")
    assert page.evaluate("window.gdNotReloaded === true"), "the page was not reloaded"
    assert "succeeded" in page.inner_text("#content > h2")
    assert "Second page" in page.inner_text(".field-commit_details")
    camera.shoot("run-finished-in-place")
    page.reload()
    assert "Second page" in page.inner_text("#content-main")
    camera.shoot("run-succeeded")

    # 3. A post-deploy command fails: on disk (in place) is the new commit, and the pages say so.
    broken = remote.commit({"index.html": "<h1>broken</h1>\n"}, "Break the build")
    Repository.objects.filter(pk=repository.pk).update(
        post_deploy_command=f'test "$GITDEPLOY_COMMIT" != {broken} || {{ echo boom >&2; exit 3; }}'
    )
    answer = push_webhook(client, repository, broken, "walk-push-2")
    failed = wait_for(lambda: finished(answer["sync_run"]), message="the failing run")
    assert failed.status == "failed" and failed.post_deploy_exit_code == 3, failed.log
    text = landing_text(page, base, "post-deploy failed")
    assert broken[:12] in text and "Break the build" in text and "post-deploy failed" in text
    assert "failed" in text
    camera.shoot("landing-post-deploy-failed")
    page.goto(f"{base}/admin/gitdeploy/repository/")
    assert broken[:12] in page.inner_text("#result_list")
    camera.shoot("repository-list", phone_fits=False)
    page.goto(f"{base}/admin/gitdeploy/syncrun/")
    camera.shoot("run-list", phone_fits=False)

    # 4. Roll back from the failed run's page: declined once, then confirmed.
    page.goto(f"{base}/admin/gitdeploy/syncrun/{failed.pk}/change/")
    button = page.locator("button[name=rollback_before]")
    assert button.inner_text() == f"Roll back to {v2[:12]}"
    camera.shoot("failed-run")
    questions = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    button.click()
    page.wait_for_timeout(500)
    assert questions and "Roll site back to" in questions[0]
    assert not SyncRun.objects.active().exists(), "declined: nothing was queued"
    page.once("dialog", lambda dialog: dialog.accept())
    button.click()
    page.wait_for_selector("ul.messagelist")
    back = SyncRun.objects.order_by("-pk").first()
    assert back.pin_commit and back.requested_commit == v2
    page.wait_for_selector(".field-status_display .gd-status-succeeded", timeout=60_000)
    text = landing_text(page, base, "up to date")
    assert v2[:12] in text.split("Recent runs")[0] and "post-deploy failed" not in text
    camera.shoot("landing-rolled-back")

    # 5. Redeliver the first push from its delivery page.
    original = Delivery.objects.get(delivery_id="walk-push-1")
    page.goto(f"{base}/admin/gitdeploy/delivery/{original.pk}/change/")
    assert "Request" in page.inner_text("#gd-request-title")
    assert '"status": "queued"' in page.inner_text(".gd-exchange")
    camera.shoot("delivery")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[name=redeliver]")
    page.wait_for_selector("ul.messagelist")
    again = Delivery.objects.exclude(pk=original.pk).get(delivery_id="walk-push-1")
    assert again.redelivery_of == original
    assert f"Redelivered as delivery #{again.pk}" in page.inner_text("ul.messagelist")
    assert f"delivery #{original.pk}" in page.inner_text(".field-redelivery_of_link")
    camera.shoot("redelivered")
    page.goto(f"{base}/admin/gitdeploy/delivery/")
    camera.shoot("delivery-list", phone_fits=False)

    # The repository page, with the secret revealed on request.
    page.goto(f"{base}/admin/gitdeploy/repository/{repository.pk}/change/")
    camera.shoot("repository")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button.gd-reveal-button")
    page.wait_for_selector("#gd-secret")
    assert page.inner_text("#gd-secret") == repository.webhook_secret
    camera.shoot("secret-revealed")
    assert worker.stop() == 0, worker.output()
