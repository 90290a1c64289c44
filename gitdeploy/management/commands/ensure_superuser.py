"""Create the first superuser from the environment, without a prompt (compose entrypoint, make run).

Idempotent: creates the user when DJANGO_SUPERUSER_USERNAME and DJANGO_SUPERUSER_PASSWORD
(or DJANGO_SUPERUSER_PASSWORD_FILE) are set and no such user exists; otherwise it says why it did
nothing. An existing user is never changed, so a password rotated in the admin survives restarts.
"""

from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError, transaction

from project.env import env_str


def _env(name: str) -> str:
    try:
        return env_str(name)
    except ImproperlyConfigured as exc:
        raise CommandError(str(exc)) from exc


class Command(BaseCommand):
    help = (
        "Create a superuser from DJANGO_SUPERUSER_USERNAME, DJANGO_SUPERUSER_EMAIL and "
        "DJANGO_SUPERUSER_PASSWORD if it does not exist yet; never changes an existing user."
    )

    def handle(self, *args, **options):
        username = _env("DJANGO_SUPERUSER_USERNAME").strip()
        email = _env("DJANGO_SUPERUSER_EMAIL").strip()
        password = _env("DJANGO_SUPERUSER_PASSWORD")
        if not username:
            self.stdout.write(
                "ensure_superuser: DJANGO_SUPERUSER_USERNAME is not set; nothing to do."
            )
            return
        User = get_user_model()  # noqa: N806 - Django's own spelling
        lookup = {User.USERNAME_FIELD: username}
        if User._default_manager.filter(**lookup).exists():
            self.stdout.write(
                f"ensure_superuser: user {username!r} already exists; left unchanged."
            )
            return
        if not password:
            self.stdout.write(
                "ensure_superuser: DJANGO_SUPERUSER_PASSWORD is not set; no superuser created."
            )
            return
        try:
            with transaction.atomic():
                User._default_manager.create_superuser(
                    **lookup, email=email or "", password=password
                )
        except IntegrityError:
            # Another container created it at the same moment: the goal is reached either way.
            self.stdout.write(
                f"ensure_superuser: user {username!r} already exists; left unchanged."
            )
            return
        self.stdout.write(self.style.SUCCESS(f"ensure_superuser: created superuser {username!r}."))
