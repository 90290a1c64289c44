"""The admin: an audit view an operator can redeploy and roll back from, and nobody can rewrite.

The cast: `operator` (staff, may view everything and trigger deploys), `viewer` (staff, may view but
not trigger), `outsider` (logged in, not staff), `root` (a superuser).
"""

import io
import json
import re

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.urls import reverse

from gitdeploy.display import commit_url
from gitdeploy.models import Delivery, Repository, SyncRun, WorkerHeartbeat

TOKEN = "ghp_T0KENinsideTheCloneUrl"
SECRET = "whsec-stored-webhook-secret-XYZ"
SHA_OLD = "1111111111111111111111111111111111111111"
SHA_NEW = "2222222222222222222222222222222222222222"
HOSTILE = "<script>alert('pwned')</script>"

pytestmark = pytest.mark.django_db


def body_of(response) -> str:
    if response.streaming:
        return b"".join(response.streaming_content).decode()
    return response.content.decode()


def grant(user, *codenames):
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="gitdeploy", codename__in=codenames)
    )
    return User.objects.get(pk=user.pk)  # drop the permission cache


VIEW_ALL = ["view_repository", "view_delivery", "view_syncrun", "view_workerheartbeat"]


@pytest.fixture
def operator():
    user = User.objects.create_user("olivia", password="pw-olivia-123", is_staff=True)
    return grant(user, *VIEW_ALL, "add_repository", "change_repository", "trigger_deploy")


@pytest.fixture
def viewer():
    user = User.objects.create_user("victor", password="pw-victor-123", is_staff=True)
    return grant(user, *VIEW_ALL)


@pytest.fixture
def outsider():
    return User.objects.create_user("oscar", password="pw-oscar-123")


@pytest.fixture
def root():
    return User.objects.create_superuser("root", "root@example.com", "pw-root-123")


@pytest.fixture
def site(tmp_path):
    return Repository.objects.create(
        name="site",
        slug="site",
        clone_url=f"https://deploy:{TOKEN}@github.com/acme/site.git",
        branch="main",
        target_dir=str(tmp_path / "site"),
        webhook_secret=SECRET,
    )


@pytest.fixture
def succeeded_run(site):
    return SyncRun.objects.create(
        repository=site,
        trigger=SyncRun.Trigger.WEBHOOK,
        status=SyncRun.Status.SUCCEEDED,
        previous_commit=SHA_OLD,
        deployed_commit=SHA_NEW,
        log="fetching\nchecked out 2222222\n",
        post_deploy_exit_code=0,
    )


@pytest.fixture
def delivery(site, succeeded_run):
    return Delivery.objects.create(
        repository=site,
        provider="github",
        event="push",
        delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958",
        headers={"X-GitHub-Event": "push", "Content-Type": "application/json"},
        body=json.dumps(
            {"ref": "refs/heads/main", "after": SHA_NEW, "head_commit": {"message": "hello"}}
        ),
        body_size=90,
        ref="refs/heads/main",
        before=SHA_OLD,
        after=SHA_NEW,
        signature=Delivery.Signature.VALID,
        verdict=Delivery.Verdict.QUEUED,
        reason="push on the tracked branch",
        status_code=202,
        sync_run=succeeded_run,
    )


def client_for(client, user):
    client.force_login(user)
    return client


def admin_pages(site, run, delivery):
    return [
        reverse("admin:index"),
        reverse("admin:gitdeploy_repository_changelist"),
        reverse("admin:gitdeploy_repository_change", args=[site.pk]),
        reverse("admin:gitdeploy_syncrun_changelist"),
        reverse("admin:gitdeploy_syncrun_change", args=[run.pk]),
        reverse("admin:gitdeploy_delivery_changelist"),
        reverse("admin:gitdeploy_delivery_change", args=[delivery.pk]),
        reverse("admin:gitdeploy_workerheartbeat_changelist"),
    ]


# --- Who may do what ------------------------------------------------------------------------------


def test_operator_sees_redeploy_and_rollback_buttons(client, operator, site, succeeded_run):
    client_for(client, operator)
    page = body_of(client.get(reverse("admin:gitdeploy_syncrun_change", args=[succeeded_run.pk])))
    assert reverse("admin:gitdeploy_syncrun_redeploy", args=[succeeded_run.pk]) in page
    # The live run's commit is redeployed; an older run's is rolled back to (tested below).
    assert reverse("admin:gitdeploy_syncrun_redeploy_commit", args=[succeeded_run.pk]) in page
    page = body_of(client.get(reverse("admin:gitdeploy_repository_change", args=[site.pk])))
    assert reverse("admin:gitdeploy_repository_redeploy", args=[site.pk]) in page


def test_viewer_sees_history_but_no_button(client, viewer, site, succeeded_run, delivery):
    client_for(client, viewer)
    for url in admin_pages(site, succeeded_run, delivery):
        response = client.get(url)
        assert response.status_code == 200, url
        page = body_of(response)
        assert "/redeploy/" not in page, url
        assert "/rollback/" not in page, url
        assert "redeploy_selected" not in page, url


def test_viewer_forged_posts_are_refused(client, viewer, site, succeeded_run):
    client_for(client, viewer)
    for url in [
        reverse("admin:gitdeploy_repository_redeploy", args=[site.pk]),
        reverse("admin:gitdeploy_syncrun_redeploy", args=[succeeded_run.pk]),
        reverse("admin:gitdeploy_syncrun_rollback", args=[succeeded_run.pk]),
    ]:
        assert client.post(url).status_code == 403, url
    # The list actions are not offered, so posting their names does nothing either.
    client.post(
        reverse("admin:gitdeploy_repository_changelist"),
        {"action": "redeploy_selected", "_selected_action": [site.pk]},
    )
    client.post(
        reverse("admin:gitdeploy_syncrun_changelist"),
        {"action": "rollback_selected", "_selected_action": [succeeded_run.pk]},
    )
    assert SyncRun.objects.count() == 1


def test_outsider_is_sent_to_the_login_page(client, outsider, site, succeeded_run):
    client_for(client, outsider)
    response = client.post(reverse("admin:gitdeploy_repository_redeploy", args=[site.pk]))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]
    response = client.get(reverse("admin:gitdeploy_syncrun_changelist"))
    assert response.status_code == 302
    assert SyncRun.objects.count() == 1


def test_redeploy_needs_post_and_csrf(site, operator):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(operator)
    url = reverse("admin:gitdeploy_repository_redeploy", args=[site.pk])
    assert strict.get(url).status_code == 405
    assert strict.post(url).status_code == 403  # no CSRF token
    assert not SyncRun.objects.exists()


# --- Read-only history ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["delivery", "syncrun", "workerheartbeat"])
def test_history_cannot_be_added_changed_or_deleted(client, root, site, delivery, model):
    WorkerHeartbeat.beat("w1", "host", 42)
    obj = {
        "delivery": delivery,
        "syncrun": delivery.sync_run,
        "workerheartbeat": WorkerHeartbeat.objects.get(),
    }[model]
    client_for(client, root)
    assert client.get(reverse(f"admin:gitdeploy_{model}_add")).status_code == 403
    change_url = reverse(f"admin:gitdeploy_{model}_change", args=[obj.pk])
    page = body_of(client.get(change_url))
    assert 'name="_save"' not in page
    assert client.post(change_url, {"status": "failed", "log": "rewritten"}).status_code == 403
    assert client.get(reverse(f"admin:gitdeploy_{model}_delete", args=[obj.pk])).status_code == 403
    assert (
        client.post(
            reverse(f"admin:gitdeploy_{model}_delete", args=[obj.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    changelist = body_of(client.get(reverse(f"admin:gitdeploy_{model}_changelist")))
    assert "delete_selected" not in changelist
    assert type(obj).objects.filter(pk=obj.pk).exists()


def test_redeploy_does_not_touch_the_history(client, operator, succeeded_run):
    before = SyncRun.objects.values().get(pk=succeeded_run.pk)
    client_for(client, operator)
    client.post(reverse("admin:gitdeploy_syncrun_redeploy", args=[succeeded_run.pk]))
    client.post(reverse("admin:gitdeploy_syncrun_rollback", args=[succeeded_run.pk]))
    assert SyncRun.objects.values().get(pk=succeeded_run.pk) == before


# --- Redeploy and roll back -----------------------------------------------------------------------


def test_redeploy_button_queues_an_admin_run(client, operator, site):
    client_for(client, operator)
    response = client.post(
        reverse("admin:gitdeploy_repository_redeploy", args=[site.pk]), follow=True
    )
    run = SyncRun.objects.get()
    assert run.trigger == SyncRun.Trigger.ADMIN
    assert run.triggered_by == operator
    assert run.status == SyncRun.Status.QUEUED
    assert not run.pin_commit
    assert response.redirect_chain[-1][0] == reverse(
        "admin:gitdeploy_syncrun_change", args=[run.pk]
    )
    assert f"Queued sync run #{run.pk} for &#x27;site&#x27;" in body_of(response)


def test_redeploy_while_a_run_is_queued_joins_it(client, operator, site):
    queued = SyncRun.objects.create(repository=site, trigger=SyncRun.Trigger.WEBHOOK)
    client_for(client, operator)
    response = client.post(
        reverse("admin:gitdeploy_repository_redeploy", args=[site.pk]), follow=True
    )
    assert list(SyncRun.objects.all()) == [queued]
    assert f"joined the queued run #{queued.pk}" in body_of(response)


def test_redeploy_from_a_run_redeploys_its_repository(client, operator, site, succeeded_run):
    client_for(client, operator)
    client.post(reverse("admin:gitdeploy_syncrun_redeploy", args=[succeeded_run.pk]))
    new = SyncRun.objects.exclude(pk=succeeded_run.pk).get()
    assert (new.repository, new.trigger, new.pin_commit) == (site, "admin", False)


def test_roll_back_queues_a_pinned_admin_run(client, operator, site, succeeded_run):
    client_for(client, operator)
    response = client.post(
        reverse("admin:gitdeploy_syncrun_rollback", args=[succeeded_run.pk]), follow=True
    )
    new = SyncRun.objects.exclude(pk=succeeded_run.pk).get()
    assert new.trigger == SyncRun.Trigger.ADMIN
    assert new.pin_commit is True
    assert new.requested_commit == SHA_NEW
    assert new.triggered_by == operator
    assert f"Queued sync run #{new.pk}" in body_of(response)


def test_roll_back_replaces_a_queued_tip_run(client, operator, site, succeeded_run):
    queued = SyncRun.objects.create(repository=site, trigger=SyncRun.Trigger.WEBHOOK)
    client_for(client, operator)
    client.post(reverse("admin:gitdeploy_syncrun_rollback", args=[succeeded_run.pk]))
    queued.refresh_from_db()
    assert queued.status == SyncRun.Status.SUPERSEDED
    assert SyncRun.objects.get(status="queued").pin_commit


def test_roll_back_to_a_failed_run_is_refused(client, operator, site):
    failed = SyncRun.objects.create(
        repository=site, trigger="webhook", status=SyncRun.Status.FAILED, error="boom"
    )
    client_for(client, operator)
    page = body_of(client.get(reverse("admin:gitdeploy_syncrun_change", args=[failed.pk])))
    assert "/rollback/" not in page
    response = client.post(
        reverse("admin:gitdeploy_syncrun_rollback", args=[failed.pk]), follow=True
    )
    assert "only a succeeded run can be rolled back to" in body_of(response)
    assert SyncRun.objects.count() == 1


def test_redeploy_of_a_disabled_repository_is_refused(client, operator, site):
    site.enabled = False
    site.save()
    client_for(client, operator)
    response = client.post(
        reverse("admin:gitdeploy_repository_redeploy", args=[site.pk]), follow=True
    )
    assert "is disabled" in body_of(response)
    assert not SyncRun.objects.exists()


def test_list_actions_redeploy_and_roll_back(client, operator, site, succeeded_run):
    client_for(client, operator)
    response = client.post(
        reverse("admin:gitdeploy_repository_changelist"),
        {"action": "redeploy_selected", "_selected_action": [site.pk]},
        follow=True,
    )
    queued = SyncRun.objects.get(status="queued")
    assert f"Queued sync run #{queued.pk}" in body_of(response)

    response = client.post(
        reverse("admin:gitdeploy_syncrun_changelist"),
        {"action": "rollback_selected", "_selected_action": [succeeded_run.pk]},
        follow=True,
    )
    pinned = SyncRun.objects.get(status="queued")
    assert pinned.pin_commit and pinned.requested_commit == SHA_NEW
    assert SyncRun.objects.get(pk=queued.pk).status == SyncRun.Status.SUPERSEDED

    response = client.post(
        reverse("admin:gitdeploy_syncrun_changelist"),
        {"action": "redeploy_selected", "_selected_action": [succeeded_run.pk]},
        follow=True,
    )
    assert SyncRun.objects.get(status="queued").trigger == "admin"


def test_delivery_page_offers_redeploy_of_its_repository(client, operator, delivery):
    client_for(client, operator)
    page = body_of(client.get(reverse("admin:gitdeploy_delivery_change", args=[delivery.pk])))
    assert reverse("admin:gitdeploy_repository_redeploy", args=[delivery.repository_id]) in page
    assert "push on the tracked branch" in page
    assert "X-GitHub-Event: push" in page
    # The body is pretty-printed.
    assert "&quot;head_commit&quot;: {\n    &quot;message&quot;: &quot;hello&quot;" in page


# --- Secrets never rendered -----------------------------------------------------------------------


def test_secret_and_clone_url_credentials_never_rendered(
    client, root, site, succeeded_run, delivery
):
    client_for(client, root)
    for url in admin_pages(site, succeeded_run, delivery) + [
        reverse("admin:gitdeploy_repository_add"),
        reverse("admin:gitdeploy_repository_history", args=[site.pk]),
        reverse("gitdeploy:landing"),
    ]:
        page = body_of(client.get(url))
        assert SECRET not in page, url
        assert TOKEN not in page, url
    page = body_of(client.get(reverse("admin:gitdeploy_repository_change", args=[site.pk])))
    assert "https://***@github.com/acme/site.git" in page
    assert "http://testserver/hooks/site/" in page


def test_search_does_not_reveal_clone_url_credentials(client, root, site):
    client_for(client, root)
    page = body_of(client.get(reverse("admin:gitdeploy_repository_changelist"), {"q": TOKEN}))
    assert "0 repositories" in page or "0 results" in page


def repository_form(site, **overrides):
    data = {
        "name": site.name,
        "slug": site.slug,
        "enabled": "on",
        "clone_url": site.display_clone_url,
        "branch": site.branch,
        "target_dir": site.target_dir,
        "deploy_mode": site.deploy_mode,
        "keep_releases": site.keep_releases,
        "post_deploy_command": site.post_deploy_command,
        "ssh_key_file": site.ssh_key_file,
        "sync_runs-TOTAL_FORMS": "0",
        "sync_runs-INITIAL_FORMS": "0",
        "sync_runs-MIN_NUM_FORMS": "0",
        "sync_runs-MAX_NUM_FORMS": "0",
    }
    data.update(overrides)
    return data


def test_saving_with_the_redacted_clone_url_keeps_the_credentials(client, operator, site):
    client_for(client, operator)
    url = reverse("admin:gitdeploy_repository_change", args=[site.pk])
    response = client.post(url, repository_form(site, branch="production"))
    assert response.status_code == 302, body_of(response)
    site.refresh_from_db()
    assert site.branch == "production"
    assert site.clone_url == f"https://deploy:{TOKEN}@github.com/acme/site.git"
    assert site.webhook_secret == SECRET


def test_a_new_clone_url_replaces_the_stored_one(client, operator, site):
    client_for(client, operator)
    url = reverse("admin:gitdeploy_repository_change", args=[site.pk])
    response = client.post(url, repository_form(site, clone_url="git@github.com:acme/new.git"))
    assert response.status_code == 302
    site.refresh_from_db()
    assert site.clone_url == "git@github.com:acme/new.git"


def test_generate_a_new_secret_shows_it_once(client, operator, site):
    client_for(client, operator)
    url = reverse("admin:gitdeploy_repository_change", args=[site.pk])
    response = client.post(url, repository_form(site, generate_secret="on"), follow=True)
    site.refresh_from_db()
    assert site.webhook_secret != SECRET
    assert len(site.webhook_secret) >= 40
    assert site.webhook_secret in body_of(response)
    assert site.webhook_secret not in body_of(client.get(url))


def test_type_a_new_secret_or_remove_it(client, operator, site):
    client_for(client, operator)
    url = reverse("admin:gitdeploy_repository_change", args=[site.pk])
    response = client.post(url, repository_form(site, new_webhook_secret="typed-secret-42"))
    assert response.status_code == 302
    site.refresh_from_db()
    assert site.webhook_secret == "typed-secret-42"
    client.post(url, repository_form(site, remove_secret="on"))
    site.refresh_from_db()
    assert site.webhook_secret == ""


def test_add_repository_generates_a_secret_by_default(client, operator, tmp_path):
    client_for(client, operator)
    page = body_of(client.get(reverse("admin:gitdeploy_repository_add")))
    assert re.search(r'name="generate_secret"[^>]*checked', page)
    response = client.post(
        reverse("admin:gitdeploy_repository_add"),
        {
            "name": "docs",
            "slug": "docs",
            "enabled": "on",
            "clone_url": "https://gitlab.com/acme/docs.git",
            "branch": "",
            "target_dir": str(tmp_path / "docs"),
            "deploy_mode": "inplace",
            "keep_releases": "5",
            "generate_secret": "on",
            "sync_runs-TOTAL_FORMS": "0",
            "sync_runs-INITIAL_FORMS": "0",
        },
        follow=True,
    )
    docs = Repository.objects.get(slug="docs")
    assert len(docs.webhook_secret) >= 40
    assert docs.webhook_secret in body_of(response)


def test_environment_repository_fields_are_read_only(client, root, tmp_path):
    env_repo = Repository.objects.create(
        name="env",
        slug="default",
        clone_url=f"https://x-access-token:{TOKEN}@github.com/acme/env.git",
        target_dir=str(tmp_path / "env"),
        webhook_secret=SECRET,
        managed_by_env=True,
    )
    client_for(client, root)
    url = reverse("admin:gitdeploy_repository_change", args=[env_repo.pk])
    page = body_of(client.get(url))
    assert TOKEN not in page and SECRET not in page
    for field in ["clone_url", "target_dir", "branch", "post_deploy_command", "new_webhook_secret"]:
        assert f'name="{field}"' not in page, field
    assert 'name="name"' in page
    response = client.post(
        url,
        {
            "name": "renamed",
            "enabled": "on",
            "clone_url": "https://evil.example/x.git",
            "target_dir": "/etc",
            "generate_secret": "on",
            "sync_runs-TOTAL_FORMS": "0",
            "sync_runs-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, body_of(response)
    env_repo.refresh_from_db()
    assert env_repo.name == "renamed"
    assert env_repo.target_dir == str(tmp_path / "env")
    assert env_repo.clone_url.endswith("@github.com/acme/env.git")
    assert env_repo.webhook_secret == SECRET
    assert env_repo.slug == "default"


# --- Escaping -------------------------------------------------------------------------------------


def test_hostile_branch_commit_message_and_log_are_escaped(client, root, tmp_path):
    repo = Repository.objects.create(
        name=f"evil {HOSTILE}",
        slug="evil",
        clone_url="https://github.com/acme/evil.git",
        branch=HOSTILE,
        target_dir=str(tmp_path / "evil"),
    )
    run = SyncRun.objects.create(
        repository=repo,
        trigger="webhook",
        triggered_by_label=HOSTILE,
        status=SyncRun.Status.FAILED,
        branch=HOSTILE,
        log=f"line one\n{HOSTILE}\n",
        error=HOSTILE,
    )
    delivery = Delivery.objects.create(
        repository=repo,
        provider="github",
        event="push",
        delivery_id=HOSTILE,
        headers={"X-Evil": HOSTILE},
        body=json.dumps({"head_commit": {"message": HOSTILE}}),
        ref=f"refs/heads/{HOSTILE}",
        verdict="ignored",
        reason=HOSTILE,
        status_code=200,
        sync_run=run,
    )
    client_for(client, root)
    for url in admin_pages(repo, run, delivery) + [reverse("gitdeploy:landing")]:
        page = body_of(client.get(url))
        assert "<script>alert" not in page, url
    page = body_of(client.get(reverse("admin:gitdeploy_syncrun_change", args=[run.pk])))
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert '<pre class="gd-pre gd-log">' in page


# --- Lists ----------------------------------------------------------------------------------------


def test_run_list_shows_commits_linked_to_the_host(client, viewer, site, succeeded_run):
    client_for(client, viewer)
    page = body_of(client.get(reverse("admin:gitdeploy_syncrun_changelist")))
    assert f'href="https://github.com/acme/site/commit/{SHA_NEW}"' in page
    assert f'href="https://github.com/acme/site/commit/{SHA_OLD}"' in page
    assert "gd-status-succeeded" in page
    assert TOKEN not in page


def test_repository_page_lists_recent_runs_read_only(client, operator, site):
    for _ in range(25):
        SyncRun.objects.create(
            repository=site, trigger="webhook", status="succeeded", deployed_commit=SHA_NEW
        )
    client_for(client, operator)
    page = body_of(client.get(reverse("admin:gitdeploy_repository_change", args=[site.pk])))
    newest = SyncRun.objects.order_by("-queued_at", "-pk")[:20]
    oldest = SyncRun.objects.order_by("queued_at", "pk").first()
    assert all(f">#{run.pk}<" in page for run in newest)
    assert f">#{oldest.pk}<" not in page
    assert 'name="sync_runs-0-status"' not in page
    assert "Live commit" in page


def test_delivery_search_by_id_and_commit(client, viewer, delivery):
    client_for(client, viewer)
    url = reverse("admin:gitdeploy_delivery_changelist")
    change = reverse("admin:gitdeploy_delivery_change", args=[delivery.pk])
    assert change in body_of(client.get(url, {"q": delivery.delivery_id}))
    assert change in body_of(client.get(url, {"q": SHA_NEW[:10]}))
    assert change not in body_of(client.get(url, {"q": "nothing-like-it"}))
    assert change in body_of(client.get(url, {"verdict__exact": "queued", "provider": "github"}))


# --- Commit links ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clone_url", "provider", "expected"),
    [
        ("https://github.com/o/r.git", "", "https://github.com/o/r/commit/{}"),
        (f"https://u:{TOKEN}@github.com/o/r.git", "", "https://github.com/o/r/commit/{}"),
        ("git@github.com:o/r.git", "", "https://github.com/o/r/commit/{}"),
        ("ssh://git@github.com:22/o/r.git", "", "https://github.com/o/r/commit/{}"),
        ("https://gitlab.com/group/sub/r.git", "", "https://gitlab.com/group/sub/r/-/commit/{}"),
        ("git@bitbucket.org:o/r.git", "", "https://bitbucket.org/o/r/commits/{}"),
        ("https://x@bitbucket.org/o/r.git", "", "https://bitbucket.org/o/r/commits/{}"),
        ("https://git.example.com/o/r.git", "gitea", "https://git.example.com/o/r/commit/{}"),
        ("https://git.example.com:3000/o/r", "gitea", "https://git.example.com:3000/o/r/commit/{}"),
        ("git@gitlab.example.com:o/r.git", "", "https://gitlab.example.com/o/r/-/commit/{}"),
        ("https://git.example.com/o/r.git", "", ""),
        ("file:///srv/git/r.git", "github", ""),
        ("/srv/git/r.git", "", ""),
        ("https://github.com/only-owner", "", ""),
        ("https://github.com/o/../r", "", ""),
    ],
)
def test_commit_url(clone_url, provider, expected):
    assert commit_url(clone_url, SHA_NEW, provider) == expected.format(SHA_NEW)


def test_commit_url_refuses_what_is_not_a_commit():
    assert commit_url("https://github.com/o/r.git", "main") == ""
    assert commit_url("https://github.com/o/r.git", '"><script>') == ""


# --- ensure_superuser -----------------------------------------------------------------------------


def run_ensure_superuser(monkeypatch, **env):
    for name in ["USERNAME", "EMAIL", "PASSWORD", "PASSWORD_FILE"]:
        monkeypatch.delenv(f"DJANGO_SUPERUSER_{name}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(f"DJANGO_SUPERUSER_{name}", value)
    out = io.StringIO()
    call_command("ensure_superuser", stdout=out)
    return out.getvalue()


def test_ensure_superuser_is_idempotent(monkeypatch):
    out = run_ensure_superuser(monkeypatch)
    assert "nothing to do" in out
    assert not User.objects.exists()

    out = run_ensure_superuser(
        monkeypatch, USERNAME="admin", EMAIL="admin@example.com", PASSWORD="first-Pass-123"
    )
    assert "created superuser 'admin'" in out
    admin_user = User.objects.get(username="admin")
    assert admin_user.is_superuser and admin_user.is_staff
    assert admin_user.check_password("first-Pass-123")

    out = run_ensure_superuser(
        monkeypatch, USERNAME="admin", EMAIL="admin@example.com", PASSWORD="second-Pass-456"
    )
    assert "already exists" in out
    admin_user.refresh_from_db()
    assert admin_user.check_password("first-Pass-123")
    assert User.objects.count() == 1


def test_ensure_superuser_without_password_does_nothing(monkeypatch):
    out = run_ensure_superuser(monkeypatch, USERNAME="admin")
    assert "DJANGO_SUPERUSER_PASSWORD is not set" in out
    assert not User.objects.exists()


def test_ensure_superuser_reads_a_password_file(monkeypatch, tmp_path):
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-a-file-789\n")
    run_ensure_superuser(monkeypatch, USERNAME="admin", PASSWORD_FILE=str(secret_file))
    assert User.objects.get(username="admin").check_password("from-a-file-789")


def test_credentials_stored_by_mistake_are_masked_on_screen(client, root, site):
    # Old Gitea payloads carried the secret in the body; a log line might carry the clone URL.
    run = SyncRun.objects.create(
        repository=site,
        trigger="webhook",
        status="failed",
        log=f"fatal: unable to access 'https://deploy:{TOKEN}@github.com/acme/site.git/'\n",
        error=f"git fetch failed for {TOKEN}",
    )
    delivery = Delivery.objects.create(
        repository=site,
        provider="gitlab",
        event="Push Hook",
        headers={"X-Gitlab-Token": "some-other-token-value", "Authorization": "Basic abc"},
        body=json.dumps({"secret": SECRET, "ref": "refs/heads/main"}),
        verdict="rejected",
        reason=f"bad token {SECRET}",
        status_code=401,
        sync_run=run,
    )
    client_for(client, root)
    for url in [
        reverse("admin:gitdeploy_syncrun_change", args=[run.pk]),
        reverse("admin:gitdeploy_delivery_change", args=[delivery.pk]),
    ]:
        page = body_of(client.get(url))
        assert TOKEN not in page and SECRET not in page, url
        assert "some-other-token-value" not in page and "Basic abc" not in page, url
        assert "***" in page, url


def test_repository_list_shows_deployed_commit_and_last_run(
    client, viewer, site, succeeded_run, django_assert_max_num_queries, tmp_path
):
    for n in range(10):
        repo = Repository.objects.create(
            name=f"r{n}", slug=f"r{n}", clone_url="x", target_dir=str(tmp_path / str(n))
        )
        SyncRun.objects.create(repository=repo, trigger="webhook", status="failed")
    client_for(client, viewer)
    with django_assert_max_num_queries(15):
        page = body_of(client.get(reverse("admin:gitdeploy_repository_changelist")))
    assert f'href="https://github.com/acme/site/commit/{SHA_NEW}"' in page
    assert reverse("admin:gitdeploy_syncrun_change", args=[succeeded_run.pk]) in page
    assert page.count("gd-status-failed") == 10


@pytest.mark.parametrize("model", ["syncrun", "delivery"])
def test_history_lists_do_not_query_per_row(
    client, viewer, site, model, django_assert_max_num_queries
):
    for n in range(30):
        run = SyncRun.objects.create(
            repository=site,
            trigger="admin",
            status="succeeded",
            triggered_by=viewer,
            deployed_commit=SHA_NEW,
        )
        Delivery.objects.create(
            repository=site,
            provider="github",
            delivery_id=str(n),
            verdict="queued",
            status_code=202,
            sync_run=run,
        )
    client_for(client, viewer)
    with django_assert_max_num_queries(15):
        response = client.get(reverse(f"admin:gitdeploy_{model}_changelist"))
    assert response.status_code == 200


def test_environment_repository_cannot_be_deleted_while_configured(
    client, root, settings, tmp_path
):
    env_repo = Repository.objects.create(
        name="env",
        slug="default",
        clone_url="https://github.com/acme/env.git",
        target_dir=str(tmp_path / "env"),
        managed_by_env=True,
    )
    client_for(client, root)
    url = reverse("admin:gitdeploy_repository_delete", args=[env_repo.pk])
    settings.GIT_URL, settings.REPO_DIR = env_repo.clone_url, env_repo.target_dir
    assert client.post(url, {"post": "yes"}).status_code == 403
    settings.GIT_URL = ""
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert not Repository.objects.filter(pk=env_repo.pk).exists()


def test_a_stored_body_nested_past_the_parser_limit_still_renders(client, root, site):
    # What the webhook keeps of a rejected hostile body: its first 4 KiB, all brackets.
    delivery = Delivery.objects.create(
        repository=site,
        provider="github",
        event="push",
        body="[" * 4096,
        body_truncated=True,
        verdict=Delivery.Verdict.REJECTED,
        status_code=400,
    )
    client_for(client, root)
    response = client.get(reverse("admin:gitdeploy_delivery_change", args=[delivery.pk]))
    assert response.status_code == 200
    assert "[[[[" in body_of(response)


# --- Redeploy this commit / Deploy latest / Roll back, with confirmation (issue 9, item 4) -------


def test_run_page_offers_two_distinct_redeploys_each_confirmed(
    client, operator, site, succeeded_run
):
    client_for(client, operator)
    url = reverse("admin:gitdeploy_syncrun_change", args=[succeeded_run.pk])
    page = body_of(client.get(url))
    # The live run: its commit can be deployed again (pinned), or the branch tip deployed.
    assert "Redeploy this commit" in page and "Deploy latest" in page
    assert "Roll back to this commit" not in page
    assert page.count("data-confirm=") == 2, "every trigger asks for confirmation first"
    assert "gitdeploy/admin.js" in page
    # Once a newer run is live, the same page offers to roll back to it instead.
    SyncRun.objects.create(
        repository=site, trigger="webhook", status="succeeded", deployed_commit="3" * 40
    )
    page = body_of(client.get(url))
    assert "Roll back to this commit" in page and "Redeploy this commit" not in page
    assert page.count("data-confirm=") == 2

    client.post(reverse("admin:gitdeploy_syncrun_redeploy_commit", args=[succeeded_run.pk]))
    pinned = SyncRun.objects.get(status="queued")
    assert pinned.pin_commit and pinned.requested_commit == SHA_NEW
    client.post(reverse("admin:gitdeploy_syncrun_redeploy", args=[succeeded_run.pk]))
    tip = SyncRun.objects.get(status="queued")
    assert not tip.pin_commit


def test_a_failed_run_page_offers_roll_back_to_the_previous_commit(client, operator, site):
    failed = SyncRun.objects.create(
        repository=site,
        trigger="webhook",
        status=SyncRun.Status.FAILED,
        previous_commit=SHA_OLD,
        error="post-deploy command failed with exit code 3",
    )
    client_for(client, operator)
    page = body_of(client.get(reverse("admin:gitdeploy_syncrun_change", args=[failed.pk])))
    assert f"Roll back to {SHA_OLD[:12]}" in page
    url = reverse("admin:gitdeploy_syncrun_rollback_before", args=[failed.pk])
    assert url in page
    client.post(url)
    back = SyncRun.objects.get(status="queued")
    assert back.pin_commit and back.requested_commit == SHA_OLD


def test_viewer_cannot_use_the_new_triggers(client, viewer, site, succeeded_run):
    client_for(client, viewer)
    for name in ["redeploy_commit", "rollback_before"]:
        url = reverse(f"admin:gitdeploy_syncrun_{name}", args=[succeeded_run.pk])
        assert client.post(url).status_code == 403, name
    assert SyncRun.objects.count() == 1


# --- Reveal the webhook secret (issue 9, item 2) --------------------------------------------------


def test_reveal_the_secret_is_a_post_recorded_in_the_history(client, operator, site):
    from django.contrib.admin.models import LogEntry

    client_for(client, operator)
    change = reverse("admin:gitdeploy_repository_change", args=[site.pk])
    reveal = reverse("admin:gitdeploy_repository_reveal_secret", args=[site.pk])
    page = body_of(client.get(change))
    assert reveal in page and SECRET not in page
    assert client.get(reveal).status_code == 405
    response = client.post(reveal)
    assert response.status_code == 200
    assert SECRET in body_of(response)
    assert "no-store" in response["Cache-Control"]
    entry = LogEntry.objects.get(object_id=str(site.pk))
    assert entry.user == operator and "Revealed the webhook secret" in entry.get_change_message()
    assert SECRET not in body_of(client.get(change))


def test_reveal_needs_the_change_permission(client, viewer, site):
    client_for(client, viewer)
    change = reverse("admin:gitdeploy_repository_change", args=[site.pk])
    reveal = reverse("admin:gitdeploy_repository_reveal_secret", args=[site.pk])
    assert reveal not in body_of(client.get(change))
    response = client.post(reveal)
    assert response.status_code == 403
    assert SECRET not in body_of(response)


def test_run_and_delivery_pages_show_notifications_and_the_signed_webhook_id(
    client, viewer, site, succeeded_run, delivery
):
    SyncRun.objects.filter(pk=succeeded_run.pk).update(
        notifications="12:00:01 webhook: failed: HTTP 500\n12:00:02 email: sent"
    )
    Delivery.objects.filter(pk=delivery.pk).update(webhook_id="msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")
    client = client_for(client, viewer)
    run_page = body_of(
        client.get(reverse("admin:gitdeploy_syncrun_change", args=[succeeded_run.pk]))
    )
    assert "webhook: failed: HTTP 500" in run_page and "email: sent" in run_page
    delivery_page = body_of(
        client.get(reverse("admin:gitdeploy_delivery_change", args=[delivery.pk]))
    )
    assert "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W" in delivery_page
