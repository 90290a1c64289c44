"""What a repository may point at: the admin refuses a target or clone URL no sync could use safely.

A relative target directory made every sync fail and /api/ready answer 503 for the whole service; a
target inside DATA_DIR or another repository's directory would let one sync overwrite the database
or the other checkout; git's `ext::` URLs and option-like URLs run commands as the worker.
"""

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.urls import reverse

from gitdeploy.models import Repository

pytestmark = pytest.mark.django_db


@pytest.fixture
def dirs(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    settings.LOCK_DIR = tmp_path / "locks"
    return tmp_path


def repository(dirs, **fields) -> Repository:
    values = {
        "name": "docs",
        "slug": "docs",
        "clone_url": "https://github.com/acme/docs.git",
        "target_dir": str(dirs / "srv" / "docs"),
    }
    values.update(fields)
    return Repository(**values)


def errors_of(repo: Repository) -> dict[str, list[str]]:
    try:
        repo.full_clean()
    except ValidationError as exc:
        return exc.message_dict
    return {}


@pytest.mark.parametrize(
    "clone_url",
    [
        "https://github.com/acme/docs.git",
        "https://deploy:ghp_token@github.com/acme/docs.git",
        "http://127.0.0.1:8080/docs.git",
        "ssh://git@github.com:22/acme/docs.git",
        "git://git.example.com/docs.git",
        "file:///srv/git/docs.git",
        "git@github.com:acme/docs.git",
        "gitea@git.example.com:acme/docs.git",
    ],
)
def test_clone_urls_git_may_use_are_accepted(dirs, clone_url):
    assert errors_of(repository(dirs, clone_url=clone_url)) == {}


@pytest.mark.parametrize(
    "clone_url",
    [
        "ext::sh -c touch% /tmp/pwned",
        "fd::3",
        "-uhttps://github.com/acme/docs.git",
        "--upload-pack=touch /tmp/pwned",
        "ssh://-oProxyCommand=touch%20/tmp/pwned/acme/docs.git",
        "ssh://-oProxyCommand=x@github.com/acme/docs.git",
        "ftp://example.com/docs.git",
        "javascript:alert(1)",
        "github.com/acme/docs",
        "/srv/git/docs.git",
        "https://",
        "https://github.com/acme/docs.git\n--upload-pack=x",
    ],
)
def test_other_clone_urls_are_refused(dirs, clone_url):
    assert "clone_url" in errors_of(repository(dirs, clone_url=clone_url))


def test_a_relative_target_directory_is_refused(dirs):
    errors = errors_of(repository(dirs, target_dir="srv/docs"))
    assert "absolute" in " ".join(errors["target_dir"])


@pytest.mark.parametrize("target", ["/", "//", "/."])
def test_the_root_directory_is_refused(dirs, target):
    assert "target_dir" in errors_of(repository(dirs, target_dir=target))


@pytest.mark.parametrize("relative", ["data", "data/docs", "locks", "locks/docs", "."], ids=str)
def test_a_target_overlapping_the_data_or_lock_directory_is_refused(dirs, relative):
    target = str((dirs / relative).resolve())
    assert "target_dir" in errors_of(repository(dirs, target_dir=target))


@pytest.mark.parametrize("relative", ["srv/site", "srv/site/docs", "srv"], ids=str)
def test_a_target_equal_to_inside_or_containing_another_repository_is_refused(dirs, relative):
    repository(dirs, name="site", slug="site", target_dir=str(dirs / "srv" / "site")).save()
    errors = errors_of(repository(dirs, target_dir=str(dirs / relative)))
    assert "site" in " ".join(errors["target_dir"])


def test_a_repository_may_keep_its_own_directory(dirs):
    docs = repository(dirs)
    docs.save()
    repository(dirs, name="site", slug="site", target_dir=str(dirs / "srv" / "site")).save()
    docs.branch = "main"
    assert errors_of(docs) == {}


# --- through the admin's add form -----------------------------------------------------------------


def add_form(dirs, **overrides):
    data = {
        "name": "docs",
        "slug": "docs",
        "enabled": "on",
        "clone_url": "https://gitlab.com/acme/docs.git",
        "branch": "",
        "target_dir": str(dirs / "srv" / "docs"),
        "deploy_mode": "inplace",
        "keep_releases": "5",
        "generate_secret": "on",
        "sync_runs-TOTAL_FORMS": "0",
        "sync_runs-INITIAL_FORMS": "0",
    }
    data.update(overrides)
    return data


@pytest.fixture
def root_client(client):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root-123"))
    return client


@pytest.mark.parametrize(
    "field, value",
    [
        ("target_dir", "srv/docs"),
        ("target_dir", "/"),
        ("clone_url", "ext::sh -c touch% /tmp/pwned"),
        ("clone_url", "-uhttps://github.com/acme/docs.git"),
    ],
)
def test_the_add_form_shows_the_error_and_saves_nothing(root_client, dirs, field, value):
    response = root_client.post(
        reverse("admin:gitdeploy_repository_add"), add_form(dirs, **{field: value})
    )
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not Repository.objects.exists()


def test_the_add_form_saves_a_valid_repository(root_client, dirs):
    response = root_client.post(reverse("admin:gitdeploy_repository_add"), add_form(dirs))
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Repository.objects.get().target_dir == str(dirs / "srv" / "docs")


def test_the_environment_repository_is_checked_at_start(settings, tmp_path):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    settings.GIT_URL = "https://github.com/octo/site.git"
    settings.REPO_DIR = "relative/checkout"
    with pytest.raises(SystemCheckError, match="REPO_DIR: .*absolute"):
        call_command("check")
    settings.REPO_DIR, settings.GIT_URL = str(tmp_path / "site"), "ext::sh%20-c%20id"
    with pytest.raises(SystemCheckError, match="GIT_URL: .*transport"):
        call_command("check")
    settings.GIT_URL = "https://github.com/octo/site.git"
    call_command("check")
