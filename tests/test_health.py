"""Liveness (/api/health) never touches the database; readiness (/api/ready) checks what a sync
needs: the database, a writable target directory per enabled repository, a live worker."""

import datetime
import json
from unittest import mock

import pytest
from django.db import OperationalError, connection
from django.urls import reverse
from django.utils import timezone

from gitdeploy.models import Repository, WorkerHeartbeat


@pytest.mark.django_db
def test_health_is_plain_text_without_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get(reverse("gitdeploy:health"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert response.content.strip() == b"OK"


def test_health_answers_with_the_database_down(client):
    with mock.patch.object(connection, "ensure_connection", side_effect=OperationalError("down")):
        assert client.get(reverse("gitdeploy:health")).status_code == 200


def ready(client):
    response = client.get(reverse("gitdeploy:ready"))
    assert response["Content-Type"] == "application/json"
    return response.status_code, json.loads(response.content)


@pytest.fixture
def live_worker(db):
    WorkerHeartbeat.beat("worker-1", "host", 1234)


@pytest.mark.django_db
def test_ready_when_everything_passes(client, live_worker, tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    Repository.objects.create(name="a", slug="a", clone_url="x", target_dir=str(existing))
    Repository.objects.create(
        name="b", slug="b", clone_url="x", target_dir=str(tmp_path / "not" / "yet" / "there")
    )
    status, body = ready(client)
    assert status == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "target_dir:a", "target_dir:b", "worker"}
    assert all(check["ok"] for check in body["checks"].values())


@pytest.mark.django_db
def test_not_ready_without_a_worker(client):
    status, body = ready(client)
    assert status == 503
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["worker"]["ok"] is False


@pytest.mark.django_db
def test_not_ready_with_a_stale_worker(client, settings):
    WorkerHeartbeat.objects.create(
        worker_id="old",
        seen_at=timezone.now() - datetime.timedelta(seconds=settings.WORKER_HEARTBEAT_MAX_AGE + 5),
    )
    status, body = ready(client)
    assert status == 503
    assert body["checks"]["worker"]["ok"] is False


@pytest.mark.django_db
def test_not_ready_with_an_unwritable_target_dir(client, live_worker, tmp_path):
    Repository.objects.create(name="a", slug="a", clone_url="x", target_dir=str(tmp_path / "x"))
    # The suite may run as root, who can write anywhere: ask the permission check to say no.
    with mock.patch("gitdeploy.pages.os.access", return_value=False):
        status, body = ready(client)
    assert status == 503
    assert body["checks"]["target_dir:a"]["ok"] is False
    assert "not writable" in body["checks"]["target_dir:a"]["detail"]


@pytest.mark.django_db
def test_not_ready_when_the_target_dir_is_a_file(client, live_worker, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    Repository.objects.create(name="a", slug="a", clone_url="x", target_dir=str(a_file))
    Repository.objects.create(
        name="b", slug="b", clone_url="x", target_dir=str(a_file / "below"), enabled=True
    )
    Repository.objects.create(
        name="off", slug="off", clone_url="x", target_dir=str(a_file), enabled=False
    )
    status, body = ready(client)
    assert status == 503
    assert body["checks"]["target_dir:a"]["ok"] is False
    assert body["checks"]["target_dir:b"]["ok"] is False
    assert "target_dir:off" not in body["checks"]


@pytest.mark.django_db
def test_not_ready_with_the_database_down(client):
    with mock.patch.object(connection, "ensure_connection", side_effect=OperationalError("down")):
        status, body = ready(client)
    assert status == 503
    assert body["status"] == "fail"
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["worker"]["ok"] is False


@pytest.mark.django_db
def test_probes_refuse_other_methods(client):
    assert client.post(reverse("gitdeploy:health")).status_code == 405
    assert client.post(reverse("gitdeploy:ready")).status_code == 405
