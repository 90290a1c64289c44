"""gitdeploy.prebuilt: the webhook's statements built once must read and write rows exactly as the
ORM does (converters, defaults, JSON, dates), on PostgreSQL and on SQLite."""

import datetime

import pytest
from django.apps import apps
from django.db.models import signals
from django.utils import timezone

from gitdeploy import prebuilt
from gitdeploy.models import Delivery, Repository, SyncRun

pytestmark = pytest.mark.django_db


def fields_of(instance) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in instance._meta.concrete_fields}


def test_no_gitdeploy_model_has_save_signal_receivers():
    # prebuilt.insert() does not send pre_save/post_save: a receiver would silently miss the
    # webhook's rows. Adding one means saving those rows through the ORM again.
    for model in apps.get_app_config("gitdeploy").get_models():
        for signal in (signals.pre_save, signals.post_save):
            assert not signal.has_listeners(model), f"{signal} has a receiver for {model}"


def test_get_reads_a_row_as_the_orm_does(make_repository):
    repository = make_repository(
        allow_unsigned=True, live_checked_at=timezone.now(), post_deploy_command="make"
    )
    through_orm = Repository.objects.get(pk=repository.pk)
    found = prebuilt.get(Repository, "slug", repository.slug)
    assert found is not None and found._state.adding is False
    assert fields_of(found) == fields_of(through_orm)
    assert isinstance(found.created_at, datetime.datetime) and found.created_at.tzinfo
    assert found.allow_unsigned is True
    assert prebuilt.get(Repository, "slug", "no-such-repository") is None


def test_insert_writes_a_row_as_create_does(make_repository):
    repository = make_repository()
    run = SyncRun.objects.create(repository=repository, trigger=SyncRun.Trigger.WEBHOOK)
    values = {
        "repository": repository,
        "provider": "github",
        "event": "push",
        "delivery_id": "d-1",
        "headers": {"X-GitHub-Event": "push", "Ünïcode": "välue"},
        "body": '{"ref": "refs/heads/main"}',
        "body_size": 26,
        "after": "a" * 40,
        "verdict": Delivery.Verdict.QUEUED,
        "status_code": 202,
        "sync_run": run,
        "response_body": {"status": "queued", "sync_run": run.pk, "joined": False},
    }
    inserted = Delivery(**values)
    prebuilt.insert(inserted)
    created = Delivery.objects.create(**{**values, "delivery_id": "d-2"})
    assert inserted.pk is not None and inserted._state.adding is False
    assert inserted.pk != created.pk
    expected = fields_of(Delivery.objects.get(pk=created.pk))
    got = fields_of(Delivery.objects.get(pk=inserted.pk))
    for differs in ("id", "delivery_id", "received_at"):
        expected.pop(differs), got.pop(differs)
    assert got == expected
    assert Delivery.objects.get(pk=inserted.pk).headers["Ünïcode"] == "välue"
    with pytest.raises(ValueError, match="new rows only"):
        prebuilt.insert(inserted)


def test_insert_applies_auto_now_add():
    repository = Repository(
        name="fresh", slug="fresh", clone_url="https://example.com/r.git", target_dir="/srv/x"
    )
    before = timezone.now()
    prebuilt.insert(repository)
    stored = Repository.objects.get(pk=repository.pk)
    assert stored.created_at >= before and stored.updated_at >= before


def test_from_row_reads_the_tip_statement_like_the_orm(make_repository):
    repository = make_repository()
    run, joined = SyncRun.request_tip(
        repository, trigger=SyncRun.Trigger.WEBHOOK, commit="c" * 40, label="octocat via github"
    )
    assert joined is False
    assert fields_of(run) == fields_of(SyncRun.objects.get(pk=run.pk))
    again, joined = SyncRun.request_tip(repository, trigger=SyncRun.Trigger.WEBHOOK, commit="")
    assert joined is True and fields_of(again) == fields_of(SyncRun.objects.get(pk=run.pk))
