"""The repository configured by the environment (GIT_URL, REPO_DIR, ...), slug `default`."""

import logging

from django.conf import settings

logger = logging.getLogger(__name__)

ENV_SLUG = "default"

# Fields that follow the environment; the admin shows them read-only for this repository.
ENV_FIELDS = (
    "clone_url",
    "target_dir",
    "branch",
    "webhook_secret",
    "allow_unsigned",
    "post_deploy_command",
    "deploy_mode",
    "keep_releases",
    "ssh_key_file",
)


def environment_values() -> dict:
    return {
        "clone_url": settings.GIT_URL,
        "target_dir": settings.REPO_DIR,
        "branch": settings.GIT_BRANCH,
        "webhook_secret": settings.WEBHOOK_SECRET,
        "allow_unsigned": settings.ALLOW_UNSIGNED_WEBHOOKS,
        "post_deploy_command": settings.POST_DEPLOY_COMMAND,
        "deploy_mode": settings.DEPLOY_MODE,
        "keep_releases": settings.KEEP_RELEASES,
        "ssh_key_file": settings.GIT_SSH_KEY_FILE,
    }


def sync_environment_repository(sender=None, using="default", verbosity=1, **kwargs):
    """Create or update the `default` repository from GIT_URL / REPO_DIR (post_migrate)."""
    from gitdeploy.models import Repository

    if not (settings.GIT_URL and settings.REPO_DIR):
        return None
    values = environment_values()
    repository = Repository.objects.using(using).filter(slug=ENV_SLUG).first()
    if repository is None:
        repository = Repository(slug=ENV_SLUG, name=_name_from_url(settings.GIT_URL))
        action = "created"
    else:
        action = "updated"
    for field, value in values.items():
        setattr(repository, field, value)
    repository.managed_by_env = True
    # Only ENV_FIELDS follow the environment: `enabled` is the admin's (a new row starts enabled by
    # the field's default), so unticking it survives the next start.
    repository.save(using=using)
    if verbosity:
        logger.info("Repository %r %s from the environment", ENV_SLUG, action)
    return repository


def _name_from_url(url: str) -> str:
    tail = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return tail.removesuffix(".git") or "default"
