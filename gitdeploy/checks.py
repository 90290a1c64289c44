"""System checks for settings that are unsafe on a production server."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.security, deploy=True)
def check_unsigned_webhooks(app_configs, **kwargs):
    if settings.ALLOW_UNSIGNED_WEBHOOKS:
        return [
            Warning(
                "ALLOW_UNSIGNED_WEBHOOKS is true: anyone who can reach the server can trigger "
                "syncs.",
                hint="Set WEBHOOK_SECRET and the same secret on the Git host.",
                id="gitdeploy.W001",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def check_environment_repository_secret(app_configs, **kwargs):
    if settings.GIT_URL and settings.REPO_DIR and not settings.WEBHOOK_SECRET:
        if not settings.ALLOW_UNSIGNED_WEBHOOKS:
            return [
                Warning(
                    "GIT_URL is set without WEBHOOK_SECRET: every delivery will be refused (401).",
                    hint="Set WEBHOOK_SECRET (or WEBHOOK_SECRET_FILE) and paste it into the Git "
                    "host.",
                    id="gitdeploy.W002",
                )
            ]
    return []


@register()
def check_environment_repository_paths(app_configs, **kwargs):
    """GIT_URL and REPO_DIR get the checks the admin applies to a repository (validators): a
    relative REPO_DIR would fail every sync and turn /api/ready red for the whole service, so
    `migrate` (which every start runs) refuses it with the reason instead."""
    from gitdeploy import validators

    if not (settings.GIT_URL and settings.REPO_DIR):
        return []
    errors = []
    if problem := validators.clone_url_problem(settings.GIT_URL):
        errors.append(Error(f"GIT_URL: {problem}", id="gitdeploy.E001"))
    problem = validators.target_dir_problem(
        settings.REPO_DIR, data_dir=settings.DATA_DIR, lock_dir=settings.LOCK_DIR, others=()
    )
    if problem:
        errors.append(Error(f"REPO_DIR: {problem}", id="gitdeploy.E002"))
    return errors
