"""`manage.py show_webhook <slug>`: what to paste into the Git host's webhook form.

The secret is printed: whoever can run manage.py on the server can read it from the database or the
environment anyway, and the Git host needs it verbatim.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gitdeploy.models import Repository

# What `make run` serves by default (HOST, PORT in the Makefile).
MAKE_RUN_BASE_URL = "http://127.0.0.1:8880"
CONTENT_TYPE = "application/json"

# (host, where, the URL field, content type, the secret field, events to select)
HOSTS = [
    (
        "GitHub",
        "Settings → Webhooks → Add webhook",
        "Payload URL",
        f"Content type: {CONTENT_TYPE}",
        "Secret",
        "Just the push event",
    ),
    (
        "GitLab",
        "Settings → Webhooks → Add new webhook",
        "URL",
        "(always JSON)",
        "Secret token",
        "Push events",
    ),
    (
        "Gitea / Forgejo",
        "Settings → Webhooks → Add webhook → Gitea",
        "Target URL (HTTP method POST)",
        f"POST content type: {CONTENT_TYPE}",
        "Secret",
        "Push events",
    ),
    (
        "Bitbucket Cloud",
        "Repository settings → Webhooks → Add webhook",
        "URL",
        "(always JSON)",
        "Secret",
        "Triggers: Repository → Push",
    ),
]


def public_origin() -> str:
    """The address the service is reached at, when the settings say it: behind an HTTPS proxy,
    CSRF_TRUSTED_ORIGINS holds it (a wildcard origin names no single host)."""
    for origin in settings.CSRF_TRUSTED_ORIGINS:
        if "*" not in origin:
            return origin
    return ""


def value_for_the_secret_field(repository: Repository) -> str:
    if repository.webhook_secret:
        return repository.webhook_secret
    if repository.effective_allow_unsigned:
        return (
            "(no secret is set; unsigned deliveries are accepted, so anyone who can reach the URL "
            "can trigger syncs: leave the field empty, or better, set a secret)"
        )
    return (
        "(no secret is set: every delivery is refused with 401. Set WEBHOOK_SECRET for the "
        "repository configured by the environment, or generate one in the admin)"
    )


class Command(BaseCommand):
    help = "Print the webhook URL, content type, secret and events to set on the Git host."

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug", help="the repository's slug (the env-configured one: default)")
        parser.add_argument(
            "--base-url",
            default="",
            help="how the Git host reaches this server, e.g. https://deploy.example.com "
            f"(default: the first CSRF_TRUSTED_ORIGINS entry, else {MAKE_RUN_BASE_URL})",
        )

    def handle(self, *args, slug: str, base_url: str, **options) -> None:
        repository = Repository.objects.filter(slug=slug).first()
        if repository is None:
            known = ", ".join(Repository.objects.values_list("slug", flat=True)) or "none"
            raise CommandError(f"no repository {slug!r} (known: {known})")

        base = base_url or public_origin()
        guessed = not base
        url = (base or MAKE_RUN_BASE_URL).rstrip("/") + repository.webhook_path()

        secret_line = value_for_the_secret_field(repository)

        write = self.stdout.write
        write(f"Webhook for repository {repository.name!r} (slug {repository.slug}):")
        write("")
        write(f"  URL           {url}")
        write(f"  Content type  {CONTENT_TYPE}")
        write(f"  Secret        {secret_line}")
        write("  Events        push")
        if guessed:
            write("")
            write(f"  The URL uses {MAKE_RUN_BASE_URL}, what `make run` serves by default. The Git")
            write("  host needs an address it can reach: pass --base-url http://your-server:8880")
            write("  (or --base-url https://your-domain behind the HTTPS proxy).")
        write("")
        for host, where, url_field, content_type, secret_field, events in HOSTS:
            write(f"{host}: {where}")
            write(f"  {url_field}: {url}")
            write(f"  {content_type}")
            write(f"  {secret_field}: {secret_line}")
            write(f"  Events: {events}")
