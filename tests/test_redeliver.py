"""Redeliver (issue 9, the delivery page): a stored accepted delivery goes through intake's decision
path again and is recorded as a new Delivery pointing at the original; every Delivery keeps the
JSON body it answered, which the delivery page shows beside the request."""

import json

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from gitdeploy import intake
from gitdeploy.models import Delivery, Repository, SyncRun
from tests.conftest import TEST_SECRET
from tests.test_worker_processes import push_webhook

pytestmark = pytest.mark.django_db

SHA = "a" * 40


@pytest.fixture
def operator():
    user = User.objects.create_user("olivia", password="pw-olivia-123", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="gitdeploy"))
    return User.objects.get(pk=user.pk)


def test_the_answer_is_stored_on_the_delivery(client, make_repository):
    repository = make_repository()
    answer = push_webhook(client, repository, SHA, "delivery-1")
    delivery = Delivery.objects.get()
    assert delivery.answer == answer
    assert answer["status"] == "queued"


def test_redeliver_queues_again_once_the_first_run_finished(client, make_repository):
    repository = make_repository()
    push_webhook(client, repository, SHA, "delivery-1")
    original = Delivery.objects.get()
    # While its run is still queued, a redelivery is a duplicate, as a host's Redeliver is.
    receipt = intake.redeliver(original)
    assert receipt.body["status"] == "duplicate" and receipt.run == original.sync_run
    SyncRun.objects.update(status=SyncRun.Status.SUCCEEDED, deployed_commit=SHA)
    receipt = intake.redeliver(original)
    new = receipt.delivery
    assert (new.redelivery_of, new.verdict, new.status_code) == (original, "queued", 202)
    assert new.answer == receipt.body and receipt.body["status"] == "queued"
    assert receipt.run is not None and receipt.run != original.sync_run
    assert new.delivery_id == original.delivery_id and new.body == original.body


def test_redeliver_decides_again_as_now(client, make_repository):
    repository = make_repository()
    push_webhook(client, repository, SHA, "delivery-1")
    original = Delivery.objects.get()
    SyncRun.objects.update(status=SyncRun.Status.SUCCEEDED)
    Repository.objects.filter(pk=repository.pk).update(enabled=False)
    original.refresh_from_db()
    receipt = intake.redeliver(original)
    assert receipt.delivery.verdict == "ignored" and "disabled" in receipt.delivery.reason


def test_a_rejected_delivery_cannot_be_redelivered(make_repository):
    repository = make_repository()
    rejected = Delivery.objects.create(
        repository=repository, provider="github", verdict="rejected", status_code=401
    )
    with pytest.raises(intake.CannotRedeliver, match="only an accepted delivery"):
        intake.redeliver(rejected)


def test_delivery_page_shows_request_and_response_and_redelivers(client, operator, make_repository):
    repository = make_repository()
    answer = push_webhook(client, repository, SHA, "delivery-1")
    SyncRun.objects.update(status=SyncRun.Status.SUCCEEDED)
    original = Delivery.objects.get()
    client.force_login(operator)
    page = client.get(reverse("admin:gitdeploy_delivery_change", args=[original.pk])).content
    page = page.decode()
    assert 'id="gd-request-title"' in page and 'id="gd-response-title"' in page
    assert "X-Hub-Signature-256" in page
    assert json.dumps(answer["reason"])[1:-1].replace("'", "&#x27;") in page
    url = reverse("admin:gitdeploy_delivery_redeliver", args=[original.pk])
    assert url in page and "data-confirm=" in page
    response = client.post(url, follow=True)
    new = Delivery.objects.exclude(pk=original.pk).get()
    assert new.redelivery_of == original
    assert response.redirect_chain[-1][0] == reverse(
        "admin:gitdeploy_delivery_change", args=[new.pk]
    )
    assert f"Redelivered as delivery #{new.pk}: answered 202 queued" in response.content.decode()
    assert TEST_SECRET not in response.content.decode()
    listing = client.get(reverse("admin:gitdeploy_delivery_changelist")).content.decode()
    assert listing.count("github, redelivered") == 1


def test_redeliver_needs_the_trigger_permission(client, make_repository):
    repository = make_repository()
    viewer = User.objects.create_user("victor", password="pw-victor-123", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename="view_delivery"))
    delivery = Delivery.objects.create(
        repository=repository, provider="github", verdict="ignored", status_code=200, body="{}"
    )
    client.force_login(viewer)
    page = client.get(reverse("admin:gitdeploy_delivery_change", args=[delivery.pk]))
    assert "/redeliver/" not in page.content.decode()
    url = reverse("admin:gitdeploy_delivery_redeliver", args=[delivery.pk])
    assert client.post(url).status_code == 403
    assert Delivery.objects.count() == 1
