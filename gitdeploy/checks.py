"""System checks for settings that are unsafe on a production server."""

from django.conf import settings
from django.core.checks import Tags, Warning, register


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
