"""Notifications: a JSON POST and an email after a failed run and after the first success after one.

A real worker process tells a real HTTP server and a real SMTP server on 127.0.0.1 (tests/
apiservers.py); the edge cases run the worker's code in-process against the same servers.
"""

import threading
import time

import pytest
from django.core import mail

from gitdeploy import notify
from gitdeploy.models import SyncRun
from gitdeploy.worker import execute_run
from tests.apiservers import api_server, smtp_server, wait_until
from tests.test_worker_processes import finished, push_webhook, start_worker, wait_for

__all__ = ["api_server", "smtp_server", "start_worker"]  # fixtures, used by name

pytestmark = pytest.mark.django_db(transaction=True)

HOOK_PATH = "/hooks/T0001/B0001/s3cretW3bhookK3y"


def fail_while(flag) -> str:
    return f'if [ -e "{flag}" ]; then echo "migration 0042 failed: no such table"; exit 4; fi'


@pytest.mark.processes
def test_the_worker_reports_a_failure_then_the_recovery_and_then_stays_quiet(
    client, make_repository, remote, start_worker, api_server, smtp_server, tmp_path
):
    api_server.on("POST", HOOK_PATH, (200, {"ok": True}))
    broken = tmp_path / "broken"
    broken.touch()
    repository = make_repository(clone_url=remote.url, post_deploy_command=fail_while(broken))
    url_file = tmp_path / "notify-url"
    url_file.write_text(api_server.url + HOOK_PATH + "\n")
    worker = start_worker(
        NOTIFY_WEBHOOK_URL_FILE=str(url_file),
        NOTIFY_EMAILS="ops@example.com, dev@example.com",
        EMAIL_HOST=smtp_server.host,
        EMAIL_PORT=str(smtp_server.port),
        DEFAULT_FROM_EMAIL="gitdeploy@example.com",
        PUBLIC_URL="https://deploy.example.com/",
    )

    failing = remote.commit({"app.txt": "v2\n"}, "v2")
    answer = push_webhook(client, repository, failing, "delivery-fail")
    run = wait_for(lambda: finished(answer["sync_run"]), message="the failing sync")
    assert run.status == SyncRun.Status.FAILED
    (post,) = wait_until(lambda: api_server.find("POST", HOOK_PATH), message="the webhook")
    body = post.json
    assert body["event"] == "failed" and body["status"] == "failed"
    assert body["repository"] == repository.slug and body["run_id"] == run.pk
    assert body["commits"]["requested"] == failing
    url = f"https://deploy.example.com/admin/gitdeploy/syncrun/{run.pk}/change/"
    assert body["run_url"] == url
    assert body["text"].startswith(f"gitdeploy: {repository.slug} failed to deploy {failing[:12]}")
    assert "exit code 4" in body["text"] and body["text"].endswith(url)
    assert "exit code 4" in body["error"]
    assert "migration 0042 failed" in body["log_tail"]
    assert post.headers["content-type"] == "application/json"

    (letter,) = wait_until(lambda: smtp_server.messages, message="the email")
    assert letter["X-Rcpt-To"] == "ops@example.com, dev@example.com"
    assert letter["From"] == "gitdeploy@example.com"
    assert letter["Subject"].startswith(f"[gitdeploy] {repository.slug} failed to deploy")
    text = letter.get_payload(decode=True).decode()
    assert "exit code 4" in text and "migration 0042 failed" in text and url in text

    def notified(run_id):
        value = SyncRun.objects.get(pk=run_id).notifications
        return value if "email" in value else ""

    notes = wait_until(lambda: notified(run.pk), message="the record on the run")
    assert "webhook: sent (HTTP 200)" in notes and "email: sent" in notes

    broken.unlink()
    fixed = remote.commit({"app.txt": "v3\n"}, "v3")
    answer = push_webhook(client, repository, fixed, "delivery-fixed")
    run = wait_for(lambda: finished(answer["sync_run"]), message="the fixed sync")
    assert run.status == SyncRun.Status.SUCCEEDED
    posts = wait_until(
        lambda: len(api_server.requests) == 2 and api_server.requests, message="the recovery"
    )
    assert posts[1].json["event"] == "recovered" and posts[1].json["commits"]["deployed"] == fixed
    assert "again after a failure" in posts[1].json["text"]
    wait_until(lambda: len(smtp_server.messages) == 2, message="the recovery email")

    calm = remote.commit({"app.txt": "v4\n"}, "v4")
    answer = push_webhook(client, repository, calm, "delivery-calm")
    run = wait_for(lambda: finished(answer["sync_run"]), message="the third sync")
    wait_until(lambda: f"sync run #{run.pk} succeeded" in worker.output(), message="its line")
    assert run.status == SyncRun.Status.SUCCEEDED
    time.sleep(0.5)
    assert len(api_server.requests) == 2 and len(smtp_server.messages) == 2
    assert "s3cretW3bhookK3y" not in worker.output()
    assert worker.stop() == 0


def run_now(repository, **fields):
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.ADMIN, **fields)
    execute_run(run.pk, worker_id="test-worker")
    run.refresh_from_db()
    return run


def test_a_webhook_that_fails_is_recorded_on_the_run_and_never_fails_the_deploy(
    make_repository, remote, api_server, monkeypatch, settings, caplog
):
    api_server.on("POST", HOOK_PATH, (500, {"error": "down"}))
    monkeypatch.setenv("NOTIFY_WEBHOOK_URL", api_server.url + HOOK_PATH)
    repository = make_repository(clone_url=remote.url, post_deploy_command="exit 1")
    run = run_now(repository)
    assert run.status == SyncRun.Status.FAILED
    assert "webhook: failed: HTTP 500" in run.notifications
    assert "s3cretW3bhookK3y" not in run.notifications + caplog.text
    assert "notification by webhook failed: HTTP 500" in caplog.text
    # The run itself is as the sync left it.
    assert run.post_deploy_exit_code == 1 and "exit code 1" in run.error


def test_a_webhook_that_does_not_answer_is_given_up_after_notify_timeout(
    make_repository, remote, api_server, monkeypatch, settings
):
    release = threading.Event()

    def hang(_request):
        release.wait(10)
        return 200, {}

    api_server.on("POST", HOOK_PATH, hang)
    monkeypatch.setenv("NOTIFY_WEBHOOK_URL", api_server.url + HOOK_PATH)
    settings.NOTIFY_TIMEOUT = 1.0
    repository = make_repository(clone_url=remote.url, post_deploy_command="exit 1")
    started = time.monotonic()
    try:
        run = run_now(repository)
    finally:
        release.set()
    assert time.monotonic() - started < 8
    assert run.status == SyncRun.Status.FAILED
    assert "webhook: failed: no answer within 1 s" in run.notifications


def test_email_content_through_djangos_email_settings(make_repository, remote, settings):
    settings.NOTIFY_EMAILS = ["ops@example.com"]
    repository = make_repository(clone_url=remote.url, post_deploy_command="echo boom; exit 2")
    run = run_now(repository)
    (letter,) = mail.outbox
    assert letter.to == ["ops@example.com"]
    assert letter.subject.startswith(f"[gitdeploy] {repository.slug} failed to deploy")
    assert "boom" in letter.body and "exit code 2" in letter.body
    assert "email: sent (1 message to 1 recipient(s))" in run.notifications


def test_a_failed_attempt_with_a_retry_queued_is_not_announced(make_repository, remote):
    repository = make_repository(clone_url=remote.url)
    first, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    SyncRun.objects.filter(pk=first.pk).update(status=SyncRun.Status.FAILED)
    first.refresh_from_db()
    assert notify.occasion(first) == "failed"
    first.request_again(why="retry")
    assert notify.occasion(first) == ""


def test_only_the_first_success_after_a_failure_is_announced(make_repository, remote):
    repository = make_repository(clone_url=remote.url, post_deploy_command="exit 1")
    failed = run_now(repository)
    assert notify.occasion(failed) == "failed"
    repository.post_deploy_command = ""
    repository.save()
    recovered = run_now(repository)
    assert notify.occasion(recovered) == "recovered"
    again = run_now(repository)
    assert notify.occasion(again) == ""
    # Nothing configured: nothing sent, nothing recorded.
    assert recovered.notifications == "" and mail.outbox == []
