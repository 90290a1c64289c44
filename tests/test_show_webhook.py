"""`manage.py show_webhook <slug>`: everything to paste into the Git host's webhook form."""

import io
import subprocess

import pytest
from django.core.management import CommandError, call_command

from gitdeploy.models import Repository
from tests.conftest import PROJECT_ROOT, TEST_SECRET

pytestmark = pytest.mark.django_db


def show_webhook(*args) -> str:
    out = io.StringIO()
    call_command("show_webhook", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def env_repository(tmp_path):
    return Repository.objects.create(
        name="site",
        slug="default",
        clone_url="https://github.com/acme/site.git",
        target_dir=str(tmp_path / "site"),
        webhook_secret=TEST_SECRET,
        managed_by_env=True,
    )


def test_the_environment_repository_is_served_at_api_endpoint(env_repository):
    out = show_webhook("default", "--base-url", "http://deploy.example.com:8880")
    assert "http://deploy.example.com:8880/api/webhook" in out
    assert "application/json" in out
    assert TEST_SECRET in out
    for host in ("GitHub", "GitLab", "Gitea", "Bitbucket"):
        assert host in out
    assert "Just the push event" in out and "Push events" in out


def test_a_repository_added_in_the_admin_has_its_hooks_path(make_repository):
    make_repository(slug="docs")
    out = show_webhook("docs", "--base-url", "https://deploy.example.com/")
    assert "https://deploy.example.com/hooks/docs/" in out


def test_without_a_base_url_it_shows_what_make_run_serves_and_says_so(make_repository, settings):
    settings.CSRF_TRUSTED_ORIGINS = []
    make_repository(slug="docs")
    out = show_webhook("docs")
    assert "http://127.0.0.1:8880/hooks/docs/" in out
    assert "--base-url" in out


def test_the_public_origin_behind_a_proxy_is_the_default_base(make_repository, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://deploy.example.com"]
    make_repository(slug="docs")
    assert "https://deploy.example.com/hooks/docs/" in show_webhook("docs")


def test_no_secret_says_deliveries_are_refused(make_repository, settings):
    settings.ALLOW_UNSIGNED_WEBHOOKS = False
    make_repository(slug="docs", webhook_secret="")
    out = show_webhook("docs", "--base-url", "http://x")
    assert "no secret is set" in out.lower() and "401" in out


def test_no_secret_with_unsigned_allowed_says_anyone_can_trigger(make_repository):
    make_repository(slug="docs", webhook_secret="", allow_unsigned=True)
    out = show_webhook("docs", "--base-url", "http://x")
    assert "no secret is set" in out.lower() and "unsigned" in out.lower()


def test_an_unknown_slug_lists_the_known_ones(make_repository):
    make_repository(slug="docs")
    with pytest.raises(CommandError, match="docs"):
        show_webhook("nope")


def readme_secret_lines() -> str:
    """The README's lines that create data/webhook_secret, before the `make run` command."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    block = readme.split("```sh\n# The secret shared with the Git host", 1)[1].split("```", 1)[0]
    lines = block.split("\nGIT_URL=", 1)[0]
    assert 'WEBHOOK_SECRET_FILE="$PWD/data/webhook_secret"' in block
    assert "manage.py show_webhook default" in readme
    return lines


def test_readme_set_up_saves_the_secret_once_and_reuses_it(tmp_path):
    def run_readme_lines():
        subprocess.run(["sh", "-ec", readme_secret_lines()], cwd=tmp_path, check=True, timeout=30)
        return (tmp_path / "data" / "webhook_secret").read_text()

    first = run_readme_lines()
    assert len(first.strip()) >= 40
    assert (tmp_path / "data" / "webhook_secret").stat().st_mode & 0o077 == 0
    assert run_readme_lines() == first, "running the set-up again rotated the secret"
