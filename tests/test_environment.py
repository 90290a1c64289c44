"""The repository configured by the environment (GIT_URL, REPO_DIR, ...): what `migrate` sets."""

import pytest
from django.core.management import call_command

from gitdeploy.models import Repository
from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.django_db


@pytest.fixture
def environment(settings, tmp_path):
    settings.GIT_URL = "https://github.com/octo/site.git"
    settings.REPO_DIR = str(tmp_path / "site")
    settings.WEBHOOK_SECRET = TEST_SECRET
    return settings


def migrate():
    """What every start does: `migrate`, whose post_migrate signal syncs the repository."""
    call_command("migrate", verbosity=0, interactive=False)


def test_a_repository_created_from_the_environment_is_enabled(environment):
    migrate()
    repository = Repository.objects.get(slug="default")
    assert repository.enabled and repository.managed_by_env


def test_disabling_the_environment_repository_survives_the_next_start(environment):
    migrate()
    Repository.objects.filter(slug="default").update(enabled=False)  # unticked in the admin

    environment.GIT_BRANCH = "release"
    migrate()

    repository = Repository.objects.get(slug="default")
    assert repository.branch == "release", "the fields the environment names still follow it"
    assert not repository.enabled, "Enabled is not the environment's to set"
