from django.apps import AppConfig
from django.db.models.signals import post_migrate


class GitdeployConfig(AppConfig):
    name = "gitdeploy"
    verbose_name = "gitdeploy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from gitdeploy import checks  # noqa: F401  (registers the system checks)
        from gitdeploy.environment import sync_environment_repository

        # `manage.py migrate` creates or updates the repository described by GIT_URL / REPO_DIR,
        # so the seed's single-repository setup needs no admin step.
        post_migrate.connect(sync_environment_repository, sender=self)
