"""The admin: an audit view of deliveries and sync runs, the repositories' configuration, and the
redeploy / roll back actions.

History (deliveries, runs, heartbeats) is read-only. Redeploy and roll back never edit a run: they
call SyncRun.request(), which queues a new run (or joins the queued one). They need the
`gitdeploy.trigger_deploy` permission, checked again on every POST, not only when drawing a button.
"""

from __future__ import annotations

import json
import secrets
from typing import cast

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef
from django.http import HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import escape, format_html
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from gitdeploy import intake
from gitdeploy.display import (
    commit_summary_html,
    first_line,
    format_duration,
    live_commit_html,
    pretty_text,
    repository_state,
    run_commits_html,
    short_sha,
    status_badge,
    time_html,
)
from gitdeploy.environment import ENV_FIELDS
from gitdeploy.models import (
    Delivery,
    DeployRefused,
    RejectionWindow,
    Repository,
    RepositoryQuerySet,
    SyncRun,
    WorkerHeartbeat,
    provider_of,
)
from gitdeploy.redaction import SECRET_HEADERS, redact

TRIGGER_PERMISSION = "gitdeploy.trigger_deploy"
SECRET_MASK = "••••••••"  # noqa: S105 - a mask, not a password

admin.site.site_header = "gitdeploy"
admin.site.site_title = "gitdeploy"
admin.site.index_title = "Status"
# How much of a running sync's log the run page's poller receives each second.
LOG_TAIL_CHARS = 64 * 1024


def can_trigger(request) -> bool:
    return request.user.is_active and request.user.has_perm(TRIGGER_PERMISSION)


def admin_url(obj, action: str = "change") -> str:
    opts = obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_{action}", args=[obj.pk])


def scrub(text: str, repository: Repository) -> str:
    """Defence in depth: the webhook view and the worker redact what they store, and this makes
    sure an old row or a missed spot still does not put a credential on screen."""
    return redact(text, repository.secrets())


def queued_message(run: SyncRun, joined: bool) -> str:
    if joined:
        return f"'{run.repository}' already had a queued sync: joined the queued run #{run.pk}."
    if run.pin_commit:
        return (
            f"Queued sync run #{run.pk} for '{run.repository}': "
            f"deploy exactly {short_sha(run.requested_commit)}."
        )
    return f"Queued sync run #{run.pk} for '{run.repository}'."


def trigger(url: str, name: str, label: str, confirm: str, warning: bool = False) -> dict:
    """One POST button of trigger_buttons.html; `confirm` is asked before the form is sent."""
    return {"url": url, "name": name, "label": label, "confirm": confirm, "warning": warning}


def deploy_latest_trigger(repository: Repository, url: str, nothing_deployed: bool) -> dict:
    branch = repository.tracked_branch or "the default branch"
    if nothing_deployed:
        return trigger(
            url, "redeploy", "Deploy now", f"Deploy the tip of {branch} to {repository} now?"
        )
    return trigger(
        url,
        "redeploy",
        "Deploy latest",
        f"Deploy the latest commit of {branch} to {repository}? "
        "This replaces what is live, even after a roll back.",
    )


class TriggerMixin(admin.ModelAdmin):
    """Redeploy / roll back, shared by the repository, run and delivery admins."""

    def has_trigger_deploy_permission(self, request) -> bool:
        return can_trigger(request)

    def _redeploy(self, request, repository: Repository) -> SyncRun | None:
        return self._queue(request, repository.redeploy)

    def _rollback(self, request, run: SyncRun) -> SyncRun | None:
        return self._queue(request, run.roll_back)

    def _redeploy_commit(self, request, run: SyncRun) -> SyncRun | None:
        return self._queue(request, run.redeploy_commit)

    def _rollback_before(self, request, run: SyncRun) -> SyncRun | None:
        return self._queue(request, run.roll_back_before)

    def _queue(self, request, deploy) -> SyncRun | None:
        """Permission here, policy in the model (Repository.redeploy, SyncRun.roll_back)."""
        if not can_trigger(request):
            raise PermissionDenied
        try:
            run, joined = deploy(request.user, trigger=SyncRun.Trigger.ADMIN)
        except DeployRefused as refusal:
            self.message_user(request, str(refusal), messages.ERROR)
            return None
        self.message_user(request, queued_message(run, joined), messages.SUCCESS)
        return run

    def trigger_urls(self, *actions: str) -> list:
        """POST-only URLs <pk>/<action>/ served by self.<action>_view, named like the admin's."""
        opts = self.model._meta
        return [
            path(
                f"<path:object_id>/{action}/",
                self.admin_site.admin_view(require_POST(getattr(self, f"{action}_view"))),
                name=f"{opts.app_label}_{opts.model_name}_{action}",
            )
            for action in actions
        ]

    def _after_trigger(self, request, new_run: SyncRun | None, fallback: str):
        return HttpResponseRedirect(admin_url(new_run) if new_run else fallback)


# --- Repositories ---------------------------------------------------------------------------------


class RepositoryForm(forms.ModelForm):
    """The webhook secret is write-only: the stored value is never put into the page. A clone URL
    with credentials is shown redacted (https://***@host/...) and kept as stored unless replaced."""

    new_webhook_secret = forms.CharField(
        label="Replace the webhook secret",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Leave blank to keep the current secret.",
    )
    generate_secret = forms.BooleanField(
        label="Generate a new secret",
        required=False,
        help_text="Sets a random secret and shows it once, to paste into the Git host.",
    )
    remove_secret = forms.BooleanField(
        label="Remove the secret",
        required=False,
        help_text="Without a secret every delivery is refused, unless unsigned deliveries are "
        "allowed.",
    )

    class Meta:
        model = Repository
        # Everything editable but the secret, which only the write-only fields above replace.
        fields = [
            "name",
            "slug",
            "enabled",
            "clone_url",
            "branch",
            "target_dir",
            "deploy_mode",
            "keep_releases",
            "post_deploy_command",
            "ssh_key_file",
            "allow_unsigned",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.instance.pk:
            self.fields["generate_secret"].initial = True
        for field in self.fields.values():
            # The admin renders help texts as HTML; the model's say "/hooks/<slug>/" literally.
            field.help_text = escape(field.help_text)
        if "clone_url" in self.fields and self._stored_url_has_credentials():
            # Never echo stored credentials into the HTML: the field starts with the redacted
            # form, which clean_clone_url() maps back to the stored value if left untouched.
            self.initial["clone_url"] = self.instance.display_clone_url
            self.fields["clone_url"].help_text = (
                "The stored URL contains credentials, shown here as ***. Leave it as is to keep "
                "them, or type a complete new URL."
            )

    def _stored_url_has_credentials(self) -> bool:
        url = self.instance.clone_url if self.instance.pk else ""
        return bool(url) and self.instance.display_clone_url != url

    def clean_clone_url(self):
        value = self.cleaned_data["clone_url"].strip()
        if self._stored_url_has_credentials() and value == self.instance.display_clone_url:
            return self.instance.clone_url
        if "***@" in value:
            raise forms.ValidationError(
                "This URL contains the placeholder ***: type the complete URL, with credentials."
            )
        return value

    def clean(self):
        cleaned = super().clean() or {}
        chosen = [
            bool(cleaned.get("new_webhook_secret")),
            bool(cleaned.get("generate_secret")),
            bool(cleaned.get("remove_secret")),
        ]
        if sum(chosen) > 1:
            raise forms.ValidationError(
                "Choose one of: type a new secret, generate one, or remove it."
            )
        return cleaned


class ReadOnlyMixin:
    """History: visible to whoever may view it, changed by nobody through the admin."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyInline(ReadOnlyMixin, admin.TabularInline):
    """History shown inside another page: nothing can be added, changed or deleted from it."""

    extra = 0
    max_num = 0
    can_delete = False


class SyncRunInline(ReadOnlyInline):
    model = SyncRun
    fk_name = "repository"
    verbose_name = "recent sync run"
    verbose_name_plural = "last 20 sync runs"
    fields = readonly_fields = (
        "run_link",
        "status_display",
        "trigger",
        "who",
        "commits",
        "queued_time",
        "duration_display",
    )
    ordering = ["-queued_at", "-pk"]
    show_change_link = False

    @admin.display(description="run")
    def run_link(self, run):
        return format_html('<a href="{}">#{}</a>', admin_url(run), run.pk)

    @admin.display(description="status")
    def status_display(self, run):
        return status_badge(run.status, run.get_status_display())

    @admin.display(description="triggered by")
    def who(self, run):
        return run.triggered_by_label or "—"

    @admin.display(description="previous → deployed")
    def commits(self, run):
        return run_commits_html(run, getattr(run, "provider_hint", "") or "")

    @admin.display(description="queued")
    def queued_time(self, run):
        return time_html(run.queued_at)

    @admin.display(description="duration")
    def duration_display(self, run):
        return format_duration(run.duration)


@admin.register(Repository)
class RepositoryAdmin(TriggerMixin, admin.ModelAdmin):
    form = RepositoryForm
    inlines = [SyncRunInline]
    list_display = [
        "name",
        "branch_display",
        "deployed",
        "last_status",
        "target_dir",
        "enabled",
    ]
    list_filter = ["enabled", "managed_by_env", "deploy_mode"]
    # Not the clone URL: searching it would let a viewer probe for a stored token.
    search_fields = ["name", "slug", "target_dir"]
    actions = ["redeploy_selected"]

    class Media:
        css = {"all": ["gitdeploy/admin.css"]}

    # --- the page -------------------------------------------------------------------------------

    def get_fieldsets(self, request, obj=None):
        env = bool(obj and obj.managed_by_env)
        secret_fields = ["secret_status"]
        if not env:
            secret_fields += ["new_webhook_secret", "generate_secret"]
            if obj is not None:
                secret_fields.append("remove_secret")
        source = ["display_clone_url" if env else "clone_url", "branch", "default_branch"]
        return [
            (
                None,
                {
                    "fields": ["name", "slug_readonly" if env else "slug", "enabled"]
                    + (["env_note"] if env else [])
                },
            ),
            ("Source", {"fields": source}),
            (
                "Target",
                {
                    "fields": [
                        "target_dir",
                        "deploy_mode",
                        "keep_releases",
                        "post_deploy_command",
                        "ssh_key_file",
                    ]
                },
            ),
            ("Webhook", {"fields": secret_fields + ["allow_unsigned"]}),
        ]

    def get_readonly_fields(self, request, obj=None):
        readonly = [
            "secret_status",
            "default_branch",
            "env_note",
            "display_clone_url",
            "slug_readonly",
        ]
        if obj is not None and obj.managed_by_env:
            # The environment owns these; the slug is how the environment finds its repository.
            readonly += [
                {"clone_url": "display_clone_url", "webhook_secret": "secret_status"}.get(f, f)
                for f in ENV_FIELDS
            ]
        return list(dict.fromkeys(readonly))

    def get_formset_kwargs(self, request, obj, inline, prefix):
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, SyncRunInline):
            # An inline queryset cannot be sliced (the formset filters it afterwards): select the
            # 20 newest by primary key instead.
            latest = []
            if obj is not None and obj.pk:
                latest = list(
                    obj.sync_runs.order_by("-queued_at", "-pk").values_list("pk", flat=True)[:20]
                )
            kwargs["queryset"] = (
                kwargs["queryset"]
                .filter(pk__in=latest)
                .select_related("repository")
                .annotate(provider_hint=provider_of(OuterRef("repository")))
            )
        return kwargs

    def save_model(self, request, obj, form, change):
        new_secret = ""
        if not obj.managed_by_env:
            if form.cleaned_data.get("generate_secret"):
                new_secret = secrets.token_urlsafe(32)
                obj.webhook_secret = new_secret
            elif form.cleaned_data.get("new_webhook_secret"):
                obj.webhook_secret = form.cleaned_data["new_webhook_secret"]
            elif form.cleaned_data.get("remove_secret"):
                obj.webhook_secret = ""
        super().save_model(request, obj, form, change)
        if new_secret:
            # Shown once: it is never displayed again, only replaced.
            self.message_user(
                request,
                format_html(
                    "New webhook secret for '{}': <code class=\"gd-secret\">{}</code> — copy it "
                    "into the Git host's webhook settings now; it will not be shown again.",
                    obj,
                    new_secret,
                ),
                messages.WARNING,
            )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = extra_context or {}
        obj = self.get_object(request, object_id)
        if obj is not None:
            extra_context.update(self.webhook_context(request, obj))
        return super().change_view(request, object_id, form_url, extra_context)

    def webhook_context(self, request, obj: Repository) -> dict:
        status = Repository.objects.with_status().get(pk=obj.pk)
        state, state_label = repository_state(status)
        triggers = []
        if can_trigger(request):
            triggers.append(
                deploy_latest_trigger(
                    obj,
                    reverse("admin:gitdeploy_repository_redeploy", args=[obj.pk]),
                    nothing_deployed=not status.live_commit_sha,
                )
            )
        return {
            "webhook_url": request.build_absolute_uri(obj.webhook_path()),
            "has_secret": bool(obj.webhook_secret),
            "deployed_run_id": status.live_run_pk,
            "deployed_at": status.live_finished_at,
            "live_html": live_commit_html(status),
            "state": state,
            "state_label": state_label,
            "last_run_id": status.last_run_id,
            "last_error": first_line(status.last_run_error or "")
            if status.last_run_status == SyncRun.Status.FAILED
            else "",
            "active_run_id": status.active_run_id,
            "can_trigger": can_trigger(request),
            "triggers": triggers,
            "reveal_url": (
                reverse("admin:gitdeploy_repository_reveal_secret", args=[obj.pk])
                if obj.webhook_secret and self.has_change_permission(request, obj)
                else ""
            ),
            # Until the first delivery arrives, the set-up instructions are what the page is for.
            "show_setup": not obj.deliveries.exists(),
        }

    # --- computed fields ------------------------------------------------------------------------

    @admin.display(description="webhook secret")
    def secret_status(self, obj):
        if obj is None or not obj.webhook_secret:
            return format_html("<em>{}</em>", "not set")
        return format_html("<code>{}</code> (set)", SECRET_MASK)

    @admin.display(description="slug")
    def slug_readonly(self, obj):
        return obj.slug if obj else ""

    @admin.display(description="clone URL")
    def display_clone_url(self, obj):
        return obj.display_clone_url if obj else ""

    @admin.display(description="configured by the environment")
    def env_note(self, obj):
        return (
            "GIT_URL, REPO_DIR, GIT_BRANCH, WEBHOOK_SECRET, POST_DEPLOY_COMMAND, DEPLOY_MODE, ... "
            "define this repository: change them in the environment and restart."
        )

    @admin.display(description="branch")
    def branch_display(self, obj):
        return obj.tracked_branch or "remote default"

    def has_delete_permission(self, request, obj=None):
        # The environment would recreate it at the next start, without its history.
        if obj is not None and obj.managed_by_env and settings.GIT_URL and settings.REPO_DIR:
            return False
        return super().has_delete_permission(request, obj)

    def get_queryset(self, request):
        return cast(RepositoryQuerySet, super().get_queryset(request)).with_status()

    @admin.display(description="live commit (on disk)")
    def deployed(self, obj):
        return live_commit_html(obj)

    @admin.display(description="status")
    def last_status(self, obj):
        state, label = repository_state(obj)
        run_id = obj.active_run_id or obj.last_run_id
        if not run_id:
            return status_badge(state, label)
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:gitdeploy_syncrun_change", args=[run_id]),
            status_badge(state, label),
        )

    # --- redeploy -------------------------------------------------------------------------------

    def get_urls(self):
        opts = self.model._meta
        reveal = path(
            "<path:object_id>/reveal_secret/",
            self.admin_site.admin_view(never_cache(require_POST(self.reveal_secret_view))),
            name=f"{opts.app_label}_{opts.model_name}_reveal_secret",
        )
        return [reveal, *self.trigger_urls("redeploy"), *super().get_urls()]

    def redeploy_view(self, request, object_id):
        if not can_trigger(request):
            raise PermissionDenied
        repository = get_object_or_404(Repository, pk=object_id)
        run = self._redeploy(request, repository)
        return self._after_trigger(request, run, admin_url(repository))

    def reveal_secret_view(self, request, object_id):
        """The one way the admin shows a stored secret: an explicit POST by someone who may change
        the repository (and so could replace the secret anyway), recorded in its history. The
        answer is a page of its own, never cached; the change page keeps showing the mask."""
        repository = get_object_or_404(Repository, pk=object_id)
        if not self.has_change_permission(request, repository):
            raise PermissionDenied
        self.log_change(request, repository, "Revealed the webhook secret.")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": repository,
            "title": f"Webhook secret of {repository}",
            "secret": repository.webhook_secret,
            "webhook_url": request.build_absolute_uri(repository.webhook_path()),
            "change_url": admin_url(repository),
        }
        response = TemplateResponse(
            request, "admin/gitdeploy/repository/reveal_secret.html", context
        )
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(
        description="Deploy latest: the branch tip of the selected repositories",
        permissions=["trigger_deploy"],
    )
    def redeploy_selected(self, request, queryset):
        for repository in queryset:
            self._redeploy(request, repository)


# --- Sync runs ------------------------------------------------------------------------------------


class ReadOnlyAdmin(ReadOnlyMixin, admin.ModelAdmin):
    pass


class DeliveryInline(ReadOnlyInline):
    model = Delivery
    fk_name = "sync_run"
    verbose_name_plural = "deliveries served by this run"
    fields = readonly_fields = (
        "delivery_link",
        "received_time",
        "provider",
        "event",
        "ref",
        "after_short",
        "verdict",
    )

    @admin.display(description="delivery")
    def delivery_link(self, delivery):
        return format_html(
            '<a href="{}">{}</a>', admin_url(delivery), delivery.delivery_id or f"#{delivery.pk}"
        )

    @admin.display(description="commit")
    def after_short(self, delivery):
        return short_sha(delivery.after) or "—"

    @admin.display(description="received")
    def received_time(self, delivery):
        return time_html(delivery.received_at)


@admin.register(SyncRun)
class SyncRunAdmin(TriggerMixin, ReadOnlyAdmin):
    # Fits 1366 px: the start and finish times are on the run's page, the duration is here.
    list_display = [
        "run_id",
        "repository",
        "commits_list",
        "trigger_display",
        "queued_display",
        "duration_display",
    ]
    list_display_links = ["run_id"]
    list_filter = ["status", "trigger", "repository", "queued_at"]
    list_select_related = ["repository", "triggered_by"]
    search_fields = [
        "=id",
        "requested_commit",
        "deployed_commit",
        "previous_commit",
        "triggered_by_label",
    ]
    date_hierarchy = "queued_at"
    actions = ["redeploy_selected", "rollback_selected"]
    inlines = [DeliveryInline]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "repository",
                    "status_display",
                    "trigger",
                    "who",
                    "attempt_display",
                    "retry_of",
                    "superseded_by",
                ]
            },
        ),
        (
            "Commits",
            {"fields": ["branch", "requested_commit", "pin_commit", "commits", "commit_details"]},
        ),
        (
            "Timing",
            {
                "fields": [
                    "queued_display",
                    "run_after_time",
                    "started_time",
                    "finished_time",
                    "duration_display",
                    "worker_id",
                    "lease_time",
                ]
            },
        ),
        (
            "Result",
            {
                "fields": [
                    "post_deploy_exit_code",
                    "error_display",
                    "notifications_display",
                    "log_display",
                ]
            },
        ),
    ]

    class Media:
        css = {"all": ["gitdeploy/admin.css"]}

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("repository", "triggered_by")
            .annotate(provider_hint=provider_of(OuterRef("repository")))
        )

    @admin.display(description="run", ordering="pk")
    def run_id(self, run):
        return format_html("#{}<br>{}", run.pk, self.status_display(run))

    @admin.display(description="status", ordering="status")
    def status_display(self, run):
        badge = status_badge(run.status, run.get_status_display())
        if run.repository.live_run_id == run.pk:
            # What is on disk now, as the worker last read it: the "Published" of a deploy list.
            return format_html('{} <span class="gd-status gd-status-live">live</span>', badge)
        return badge

    @admin.display(description="commits (previous → deployed)")
    def commits_list(self, run):
        commits = run_commits_html(run, getattr(run, "provider_hint", "") or "")
        if not run.commit_subject:
            return commits
        return format_html(
            '{}<br><span class="gd-subject">{}</span> <span class="gd-author">{}</span>',
            commits,
            run.commit_subject,
            f"by {run.commit_author}" if run.commit_author else "",
        )

    @admin.display(description="trigger", ordering="trigger")
    def trigger_display(self, run):
        who = self.who(run)
        return format_html(
            '{}<br><span class="gd-muted">{}</span>',
            run.get_trigger_display(),
            "" if who == "—" else who,
        )

    @admin.display(description="queued", ordering="queued_at")
    def queued_display(self, run):
        return time_html(run.queued_at)

    @admin.display(description="run after")
    def run_after_time(self, run):
        return time_html(run.run_after) if run.run_after else "—"

    @admin.display(description="started")
    def started_time(self, run):
        return time_html(run.started_at)

    @admin.display(description="finished")
    def finished_time(self, run):
        return time_html(run.finished_at)

    @admin.display(description="lease expires")
    def lease_time(self, run):
        return time_html(run.lease_expires_at) if run.lease_expires_at else "—"

    @admin.display(description="attempt")
    def attempt_display(self, run):
        return run.attempt_label()

    @admin.display(description="deployed commit")
    def commit_details(self, run):
        if not run.deployed_commit:
            return "—"
        return commit_summary_html(
            run.repository.clone_url,
            run.deployed_commit,
            getattr(run, "provider_hint", "") or "",
            run.commit_subject,
            run.commit_author,
            run.committed_at,
        )

    @admin.display(description="triggered by")
    def who(self, run):
        user = run.triggered_by
        return run.triggered_by_label or (user.get_username() if user else "") or "—"

    @admin.display(description="previous → deployed")
    def commits(self, run):
        return run_commits_html(run, getattr(run, "provider_hint", "") or "")

    @admin.display(description="duration")
    def duration_display(self, run):
        return format_duration(run.duration)

    @admin.display(description="error")
    def error_display(self, run):
        if not run.error:
            return "—"
        return format_html('<pre class="gd-pre">{}</pre>', scrub(run.error, run.repository))

    @admin.display(description="notifications")
    def notifications_display(self, run):
        """What the worker told the outside world about this run (webhook, email, Git host)."""
        if not run.notifications:
            return "—"
        return format_html('<pre class="gd-pre">{}</pre>', scrub(run.notifications, run.repository))

    @admin.display(description="log")
    def log_display(self, run):
        if not run.log:
            return "—"
        return format_html('<pre class="gd-pre gd-log">{}</pre>', scrub(run.log, run.repository))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = extra_context or {}
        run = self.get_object(request, object_id)
        if run is not None:
            extra_context.update(
                {
                    "can_trigger": can_trigger(request),
                    "triggers": self.run_triggers(request, run),
                    "progress_url": reverse("admin:gitdeploy_syncrun_progress", args=[run.pk]),
                    "run_active": not run.is_finished,
                }
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def run_triggers(self, request, run: SyncRun) -> list[dict]:
        """The run page's buttons. The policy (what may be queued) is the model's; this only
        chooses the words: the live commit is redeployed, an older one is rolled back to."""
        if not can_trigger(request):
            return []
        repository = run.repository
        status = Repository.objects.with_status().get(pk=repository.pk)
        buttons = []
        target = short_sha(run.deployed_commit)
        if run.can_redeploy_commit and run.pk == status.live_run_pk:
            buttons.append(
                trigger(
                    reverse("admin:gitdeploy_syncrun_redeploy_commit", args=[run.pk]),
                    "redeploy_commit",
                    "Redeploy this commit",
                    f"Deploy {target} to {repository} again (the same commit, not the branch tip)?",
                )
            )
        elif run.can_roll_back:
            buttons.append(
                trigger(
                    reverse("admin:gitdeploy_syncrun_rollback", args=[run.pk]),
                    "rollback",
                    "Roll back to this commit",
                    f"Roll {repository} back to {target}? What is live now is replaced.",
                    warning=True,
                )
            )
        if run.can_roll_back_before:
            previous = short_sha(run.previous_commit)
            buttons.append(
                trigger(
                    reverse("admin:gitdeploy_syncrun_rollback_before", args=[run.pk]),
                    "rollback_before",
                    f"Roll back to {previous}",
                    f"Roll {repository} back to {previous}, the commit before this failed run?",
                    warning=True,
                )
            )
        buttons.append(
            deploy_latest_trigger(
                repository,
                reverse("admin:gitdeploy_syncrun_redeploy", args=[run.pk]),
                nothing_deployed=not status.live_commit_sha,
            )
        )
        return buttons

    def get_urls(self):
        opts = self.model._meta
        progress = path(
            "<path:object_id>/progress/",
            self.admin_site.admin_view(never_cache(require_GET(self.progress_view))),
            name=f"{opts.app_label}_{opts.model_name}_progress",
        )
        triggers = self.trigger_urls("redeploy", "rollback", "redeploy_commit", "rollback_before")
        return [progress, *triggers, *super().get_urls()]

    def progress_view(self, request, object_id):
        """What the run page polls every second while the run is queued or running: its status
        and the tail of its log (published by the worker with each lease renewal)."""
        run = get_object_or_404(
            SyncRun.objects.select_related("repository").annotate(
                provider_hint=provider_of(OuterRef("repository"))
            ),
            pk=object_id,
        )
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        log = scrub(run.log, run.repository)
        return JsonResponse(
            {
                "id": run.pk,
                "status": run.status,
                "label": run.get_status_display(),
                "finished": run.is_finished,
                "duration": format_duration(run.duration),
                "error": scrub(run.error, run.repository),
                "log": log[-LOG_TAIL_CHARS:],
                "log_truncated": len(log) > LOG_TAIL_CHARS,
                "title": str(run),
                # Server-side HTML (escaped by format_html), swapped in as it is.
                "fields_html": {
                    "commits": str(self.commits(run)),
                    "commit_details": str(self.commit_details(run)),
                    "started_time": str(self.started_time(run)),
                    "finished_time": str(self.finished_time(run)),
                    "lease_time": str(self.lease_time(run)),
                    "post_deploy_exit_code": escape(
                        "-" if run.post_deploy_exit_code is None else run.post_deploy_exit_code
                    ),
                    "error_display": str(self.error_display(run)),
                },
            }
        )

    def _run_action(self, request, object_id, action):
        if not can_trigger(request):
            raise PermissionDenied
        run = get_object_or_404(SyncRun.objects.select_related("repository"), pk=object_id)
        new_run = action(request, run)
        return self._after_trigger(request, new_run, admin_url(run))

    def redeploy_view(self, request, object_id):
        return self._run_action(
            request, object_id, lambda request, run: self._redeploy(request, run.repository)
        )

    def rollback_view(self, request, object_id):
        return self._run_action(request, object_id, self._rollback)

    def redeploy_commit_view(self, request, object_id):
        return self._run_action(request, object_id, self._redeploy_commit)

    def rollback_before_view(self, request, object_id):
        return self._run_action(request, object_id, self._rollback_before)

    @admin.action(
        description="Deploy latest: the branch tip of the selected runs' repositories",
        permissions=["trigger_deploy"],
    )
    def redeploy_selected(self, request, queryset):
        repository_ids = set(queryset.values_list("repository_id", flat=True))
        for repository in Repository.objects.filter(pk__in=repository_ids):
            self._redeploy(request, repository)

    @admin.action(
        description="Roll back to the commit of the selected run", permissions=["trigger_deploy"]
    )
    def rollback_selected(self, request, queryset):
        runs = list(queryset.select_related("repository")[:2])
        if len(runs) != 1:
            self.message_user(
                request, "Select exactly one succeeded run to roll back to.", messages.ERROR
            )
            return
        self._rollback(request, runs[0])


# --- Deliveries -----------------------------------------------------------------------------------


@admin.register(Delivery)
class DeliveryAdmin(TriggerMixin, ReadOnlyAdmin):
    list_display = [
        "received_display",
        "repository",
        "event_display",
        "ref_display",
        "commit",
        "answer_display",
        "run_link",
    ]
    list_display_links = ["received_display"]
    list_filter = ["repository", "provider", "verdict", "received_at"]
    list_select_related = ["repository", "sync_run"]
    search_fields = ["=delivery_id", "^after", "^before"]
    date_hierarchy = "received_at"
    actions = None
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "repository",
                    "received_time",
                    "remote_addr",
                    "provider",
                    "event",
                    "delivery_id",
                    "webhook_id",
                    "redelivery_of_link",
                ]
            },
        ),
        (
            "Verdict",
            {
                "fields": [
                    "verdict_display",
                    "reason_display",
                    "status_code",
                    "signature",
                    "run_link",
                ]
            },
        ),
        ("Push", {"fields": ["ref", "before", "after"]}),
        # The request (headers, body) and the response side by side: delivery/change_form.html.
    ]

    class Media:
        css = {"all": ["gitdeploy/admin.css"]}

    @admin.display(description="received", ordering="received_at")
    def received_display(self, delivery):
        return time_html(delivery.received_at)

    @admin.display(description="received")
    def received_time(self, delivery):
        return time_html(delivery.received_at)

    @admin.display(description="event", ordering="event")
    def event_display(self, delivery):
        source = delivery.provider
        if delivery.redelivery_of_id:
            source = f"{source}, redelivered" if source else "redelivered"
        return format_html('{}<br><span class="gd-muted">{}</span>', delivery.event or "—", source)

    @admin.display(description="redelivery of")
    def redelivery_of_link(self, delivery):
        if delivery.redelivery_of_id is None:
            return "—"
        return format_html(
            '<a href="{}">delivery #{}</a>',
            reverse("admin:gitdeploy_delivery_change", args=[delivery.redelivery_of_id]),
            delivery.redelivery_of_id,
        )

    @admin.display(description="ref", ordering="ref")
    def ref_display(self, delivery):
        return delivery.ref.removeprefix("refs/heads/") if delivery.ref else "—"

    @admin.display(description="commit", ordering="after")
    def commit(self, delivery):
        return format_html("<code>{}</code>", short_sha(delivery.after)) if delivery.after else "—"

    @admin.display(description="verdict", ordering="verdict")
    def verdict_display(self, delivery):
        return status_badge(delivery.verdict, delivery.get_verdict_display())

    @admin.display(description="answer", ordering="verdict")
    def answer_display(self, delivery):
        return format_html(
            '{}<br><span class="gd-muted">HTTP {}</span>',
            self.verdict_display(delivery),
            delivery.status_code,
        )

    @admin.display(description="sync run")
    def run_link(self, delivery):
        if delivery.sync_run_id is None:
            return "—"
        return format_html(
            '<a href="{}">#{}</a>', admin_url(delivery.sync_run), delivery.sync_run_id
        )

    @admin.display(description="reason")
    def reason_display(self, delivery):
        return scrub(delivery.reason, delivery.repository) or "—"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = extra_context or {}
        delivery = self.get_object(request, object_id)
        if delivery is not None:
            repository = delivery.repository
            triggers = []
            if can_trigger(request):
                if delivery.verdict != Delivery.Verdict.REJECTED and not delivery.body_truncated:
                    triggers.append(
                        trigger(
                            reverse("admin:gitdeploy_delivery_redeliver", args=[delivery.pk]),
                            "redeliver",
                            "Redeliver",
                            f"Replay this {delivery.event or 'delivery'} to {repository}? It is "
                            "decided again as it would be now, and recorded as a new delivery.",
                        )
                    )
                deployed = Repository.objects.with_status().get(pk=repository.pk)
                triggers.append(
                    deploy_latest_trigger(
                        repository,
                        reverse("admin:gitdeploy_repository_redeploy", args=[repository.pk]),
                        nothing_deployed=not deployed.live_commit_sha,
                    )
                )
            extra_context.update(
                {
                    "can_trigger": can_trigger(request),
                    "triggers": triggers,
                    "repository": repository,
                    "exchange": self.exchange(delivery),
                }
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def exchange(self, delivery: Delivery) -> dict:
        """The Request and Response tabs: what arrived and exactly what was answered."""
        repository = delivery.repository
        headers = dict(delivery.headers or {})
        rows = sorted(
            (str(name), "***" if str(name).lower() in SECRET_HEADERS else str(value))
            for name, value in headers.items()
        )
        response = delivery.answer
        return {
            "headers": scrub("\n".join(f"{name}: {value}" for name, value in rows), repository),
            "body": scrub(pretty_text(delivery.body), repository),
            "body_size": delivery.body_size,
            "body_truncated": delivery.body_truncated,
            "body_sha256": delivery.body_sha256,
            "content_type": delivery.content_type,
            "status_code": delivery.status_code,
            # Deliveries recorded before the answer was stored: say so rather than invent one.
            "response": scrub(json.dumps(response, indent=2), repository) if response else "",
        }

    def get_urls(self):
        return [*self.trigger_urls("redeliver"), *super().get_urls()]

    def redeliver_view(self, request, object_id):
        """Replay a stored delivery through intake (the same decision path as the webhook)."""
        if not can_trigger(request):
            raise PermissionDenied
        original = get_object_or_404(Delivery.objects.select_related("repository"), pk=object_id)
        try:
            receipt = intake.redeliver(original)
        except intake.CannotRedeliver as refusal:
            self.message_user(request, str(refusal), messages.ERROR)
            return HttpResponseRedirect(admin_url(original))
        if receipt.delivery is None:  # past the flood limit for rejected deliveries: counted only
            self.message_user(request, receipt.body.get("reason", ""), messages.WARNING)
            return HttpResponseRedirect(admin_url(original))
        self.message_user(
            request,
            f"Redelivered as delivery #{receipt.delivery.pk}: answered {receipt.status_code} "
            f"{receipt.body.get('status', '')} ({receipt.body.get('reason', '')}).",
            messages.SUCCESS if receipt.status_code < 400 else messages.WARNING,
        )
        return HttpResponseRedirect(admin_url(receipt.delivery))


# --- The task queue -------------------------------------------------------------------------------


def _superuser_only_task_admin() -> None:
    """django-tasks-db's own table of task rows is an implementation detail (SyncRun is the
    history people read): visible to superusers only, and read-only as upstream made it."""
    from django_tasks_db.admin import DBTaskResultAdmin
    from django_tasks_db.models import DBTaskResult

    class TaskResultAdmin(DBTaskResultAdmin):
        def has_module_permission(self, request):
            return request.user.is_active and request.user.is_superuser

        def has_view_permission(self, request, obj=None):
            return request.user.is_active and request.user.is_superuser

    if admin.site.is_registered(DBTaskResult):
        admin.site.unregister(DBTaskResult)
    admin.site.register(DBTaskResult, TaskResultAdmin)


_superuser_only_task_admin()


# --- Floods of rejected deliveries ---------------------------------------------------------------


@admin.register(RejectionWindow)
class RejectionWindowAdmin(ReadOnlyAdmin):
    list_display = ["minute", "repository", "remote_addr", "count", "last_reason"]
    list_filter = ["repository", "minute"]
    list_select_related = ["repository"]
    search_fields = ["=remote_addr"]
    date_hierarchy = "minute"


# --- Workers --------------------------------------------------------------------------------------


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnlyAdmin):
    list_display = ["worker_id", "hostname", "pid", "started_time", "seen_time", "alive"]
    fields = readonly_fields = (
        "worker_id",
        "hostname",
        "pid",
        "started_time",
        "seen_time",
        "alive",
    )
    ordering = ["-seen_at"]

    @admin.display(description="started", ordering="started_at")
    def started_time(self, heartbeat):
        return time_html(heartbeat.started_at)

    @admin.display(description="last seen", ordering="seen_at")
    def seen_time(self, heartbeat):
        return time_html(heartbeat.seen_at)

    @admin.display(description="alive", boolean=True)
    def alive(self, heartbeat):
        age = (timezone.now() - heartbeat.seen_at).total_seconds()
        return age <= settings.WORKER_HEARTBEAT_MAX_AGE
