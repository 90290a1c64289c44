"""Deploy policy lives in the models: Repository.redeploy, SyncRun.roll_back, DeployRefused.

The admin, the CLI and the pages ask these; the admin only checks the permission and shows the
message (tests/test_admin.py covers that side)."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from gitdeploy.models import DeployRefused, Repository, SyncRun

pytestmark = pytest.mark.django_db


def succeeded_run(repository, commit="d" * 40):
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    SyncRun.objects.filter(pk=run.pk).update(
        status=SyncRun.Status.SUCCEEDED, deployed_commit=commit
    )
    run.refresh_from_db()
    return run


def test_redeploy_queues_the_tip_or_joins_the_queued_run(make_repository):
    repository = make_repository()
    run, joined = repository.redeploy()
    assert (run.status, run.trigger, run.pin_commit, joined) == ("queued", "admin", False, False)
    again, joined = repository.redeploy(trigger=SyncRun.Trigger.CLI)
    assert (again.pk, joined) == (run.pk, True)


def test_a_disabled_repository_refuses_redeploy_and_roll_back(make_repository):
    repository = make_repository()
    run = succeeded_run(repository)
    Repository.objects.filter(pk=repository.pk).update(enabled=False)
    repository.refresh_from_db()
    run.refresh_from_db()
    with pytest.raises(DeployRefused, match="disabled: enable it before redeploying"):
        repository.redeploy()
    with pytest.raises(DeployRefused, match="disabled: enable it before rolling back"):
        run.roll_back()
    assert SyncRun.objects.count() == 1


@pytest.mark.parametrize("status", ["queued", "running", "failed", "superseded"])
def test_only_a_succeeded_run_that_deployed_a_commit_can_be_rolled_back_to(make_repository, status):
    repository = make_repository()
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    SyncRun.objects.filter(pk=run.pk).update(status=status, deployed_commit="e" * 40)
    run.refresh_from_db()
    assert not run.can_roll_back
    with pytest.raises(DeployRefused, match="only a succeeded run can be rolled back to"):
        run.roll_back()


def test_roll_back_queues_a_run_pinned_to_the_deployed_commit(make_repository):
    repository = make_repository()
    run = succeeded_run(repository, "f" * 40)
    assert run.can_roll_back
    new_run, joined = run.roll_back(trigger=SyncRun.Trigger.CLI)
    assert not joined
    assert (new_run.requested_commit, new_run.pin_commit, new_run.trigger) == (
        "f" * 40,
        True,
        "cli",
    )


def test_with_status_reads_every_repository_in_one_query(make_repository):
    for _ in range(4):
        repository = make_repository()
        succeeded_run(repository)
        SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    with CaptureQueriesContext(connection) as queries:
        rows = list(Repository.objects.with_status())
    assert len(queries) == 1
    assert all(row.deployed_commit == "d" * 40 for row in rows)
    assert all(row.last_run_status == "queued" for row in rows)


def test_the_landing_page_does_not_query_per_repository(client, make_repository):
    def landing_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/").status_code == 200
        return len(queries)

    make_repository()
    one = landing_queries()
    for _ in range(5):
        succeeded_run(make_repository())
    assert landing_queries() == one


# --- Redeploy this commit, Deploy latest, roll back from a failed run (issue 9, item 4) ----------


def test_redeploy_this_commit_is_pinned_unlike_deploy_latest(make_repository):
    repository = make_repository()
    run = succeeded_run(repository, "a" * 40)
    pinned, _ = run.redeploy_commit(trigger=SyncRun.Trigger.CLI)
    assert (pinned.requested_commit, pinned.pin_commit) == ("a" * 40, True)
    tip, joined = repository.redeploy()
    assert not joined and not tip.pin_commit, "Deploy latest replaces the pinned request"


def test_redeploy_this_commit_needs_a_commit_in_place(make_repository):
    repository = make_repository()
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    SyncRun.objects.filter(pk=run.pk).update(status=SyncRun.Status.FAILED)
    run.refresh_from_db()
    with pytest.raises(DeployRefused, match="nothing to redeploy"):
        run.redeploy_commit()
    # A failed post-deploy command in place leaves its commit checked out: that can be redeployed.
    SyncRun.objects.filter(pk=run.pk).update(deployed_commit="b" * 40)
    run.refresh_from_db()
    assert run.redeploy_commit()[0].requested_commit == "b" * 40


def test_a_failed_run_rolls_back_to_the_commit_before_it(make_repository):
    repository = make_repository()
    run, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    SyncRun.objects.filter(pk=run.pk).update(
        status=SyncRun.Status.FAILED, previous_commit="c" * 40, deployed_commit="d" * 40
    )
    run.refresh_from_db()
    back, _ = run.roll_back_before()
    assert (back.requested_commit, back.pin_commit) == ("c" * 40, True)
    fresh, _ = SyncRun.request(repository, trigger=SyncRun.Trigger.WEBHOOK)
    SyncRun.objects.filter(pk=fresh.pk).update(status=SyncRun.Status.FAILED)
    fresh.refresh_from_db()
    with pytest.raises(DeployRefused, match="nothing to roll back to"):
        fresh.roll_back_before()
