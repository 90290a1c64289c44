"""Repository, Delivery, SyncRun: the configuration, what arrived, and what was done about it.

State changes live here as methods (SyncRun.request, SyncRun.claim, ...), so that the webhook view,
the admin actions, the CLI and the worker all go through the same locked transitions.
"""

from __future__ import annotations

import datetime
import functools
import logging
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Case, F, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce, Concat
from django.urls import reverse
from django.utils import timezone

from gitdeploy import prebuilt, validators
from gitdeploy.environment import ENV_SLUG
from gitdeploy.redaction import collect_secrets, redact_url

logger = logging.getLogger(__name__)

SHA_RE = re.compile(r"^[0-9a-f]{7,64}$")

# PostgreSQL LISTEN/NOTIFY channel: SyncRun.enqueue notifies it, idle workers listen on it.
TASKS_CHANNEL = "gitdeploy_tasks"


class DeployRefused(Exception):
    """A redeploy or roll back the model will not queue; the message says why, for a person."""


class RepositoryQuerySet(models.QuerySet):
    def with_status(self):
        """Each repository with what its pages show, from subqueries (one query for a list).

        live_commit_sha / live_run_pk: what is on disk, as the worker read it after its last run
        (Repository.record_live); a repository the worker has not looked at since it was added
        falls back to its last succeeded run. live_run_status / live_exit_code /
        live_subject / live_author / live_committed_at / live_finished_at describe the run that
        put that commit there (a failed run whose post-deploy command failed leaves its commit
        on disk in place mode). deployed_run_id / deployed_commit / deployed_at: the same, kept
        under the names the admin used first.
        last_run_id / last_run_status / last_run_queued_at / last_run_error: the newest run.
        active_run_id / active_run_status: the run in progress (running before queued).
        provider_hint: the host of the newest delivery, which tells a self-hosted GitLab from a
        Gitea when drawing links."""
        runs = SyncRun.objects.filter(repository=OuterRef("pk"))
        succeeded = runs.filter(status=SyncRun.Status.SUCCEEDED).order_by("-finished_at", "-pk")
        last = runs.order_by("-queued_at", "-pk")
        # "running" sorts after "queued": descending puts the running run first.
        active = runs.active().order_by("-status", "-pk")
        looked = Q(live_checked_at__isnull=False)
        qs = self.annotate(
            live_commit_sha=Case(
                When(looked, then=F("live_commit")),
                default=Subquery(succeeded.values("deployed_commit")[:1]),
                output_field=models.CharField(),
            ),
            live_run_pk=Case(
                When(looked, then=F("live_run_id")),
                default=Subquery(succeeded.values("pk")[:1]),
                output_field=models.IntegerField(),
            ),
        )
        live = SyncRun.objects.filter(pk=OuterRef("live_run_pk"))
        return qs.annotate(
            live_run_status=Subquery(live.values("status")[:1]),
            live_exit_code=Subquery(live.values("post_deploy_exit_code")[:1]),
            live_subject=Subquery(live.values("commit_subject")[:1]),
            live_author=Subquery(live.values("commit_author")[:1]),
            live_committed_at=Subquery(live.values("committed_at")[:1]),
            live_finished_at=Subquery(live.values("finished_at")[:1]),
            deployed_run_id=F("live_run_pk"),
            deployed_commit=F("live_commit_sha"),
            deployed_at=F("live_finished_at"),
            last_run_id=Subquery(last.values("pk")[:1]),
            last_run_status=Subquery(last.values("status")[:1]),
            last_run_queued_at=Subquery(last.values("queued_at")[:1]),
            last_run_error=Subquery(last.values("error")[:1]),
            active_run_id=Subquery(active.values("pk")[:1]),
            active_run_status=Subquery(active.values("status")[:1]),
            provider_hint=provider_of(OuterRef("pk")),
        )


def provider_of(repository_ref) -> Subquery:
    """Subquery: the provider of the repository's newest delivery."""
    return Subquery(
        Delivery.objects.filter(repository=repository_ref)
        .exclude(provider="")
        .order_by("-received_at", "-pk")
        .values("provider")[:1]
    )


class Repository(models.Model):
    class DeployMode(models.TextChoices):
        INPLACE = "inplace", "in place (update the directory itself)"
        ATOMIC = "atomic", "atomic (releases/<commit> + a 'current' symlink)"

    name = models.CharField(max_length=200)
    slug = models.SlugField(
        max_length=100, unique=True, help_text="The webhook path: /hooks/<slug>/"
    )
    clone_url = models.CharField(
        max_length=1000,
        help_text="HTTPS, SSH (git@host:owner/repo.git) or file:// URL. Credentials in an HTTPS "
        "URL are accepted and never displayed.",
    )
    branch = models.CharField(
        max_length=255, blank=True, help_text="Blank: the remote's default branch."
    )
    default_branch = models.CharField(
        max_length=255,
        blank=True,
        editable=False,
        help_text="The remote's default branch as last learned from a payload or a sync.",
    )
    target_dir = models.CharField(max_length=1000, help_text="Absolute path of the checkout.")
    webhook_secret = models.CharField(max_length=255, blank=True)
    allow_unsigned = models.BooleanField(
        default=False,
        help_text="Accept deliveries without a signature when no secret is set. Unsafe on a "
        "public server: anyone could trigger syncs.",
    )
    post_deploy_command = models.TextField(
        blank=True, help_text="Run with /bin/sh -c in the deployed directory after each sync."
    )
    deploy_mode = models.CharField(
        max_length=10, choices=DeployMode.choices, default=DeployMode.INPLACE
    )
    keep_releases = models.PositiveSmallIntegerField(
        default=5, help_text="Atomic mode: old releases kept for roll back."
    )
    ssh_key_file = models.CharField(
        max_length=1000, blank=True, help_text="Path of a private deploy key on the worker."
    )
    enabled = models.BooleanField(default=True)
    managed_by_env = models.BooleanField(
        default=False,
        editable=False,
        help_text="Created from GIT_URL / REPO_DIR: those fields follow the environment.",
    )
    # What is on disk, as the worker read it after its last run (see record_live).
    live_commit = models.CharField(max_length=64, blank=True, editable=False)
    live_run = models.ForeignKey(
        "SyncRun",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="+",
        help_text="The run that put live_commit there (none when it got there some other way).",
    )
    live_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RepositoryQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "repositories"
        permissions = [("trigger_deploy", "Can redeploy or roll back a repository")]

    def __str__(self) -> str:
        return self.name

    @property
    def display_clone_url(self) -> str:
        return redact_url(self.clone_url)

    def secrets(self) -> tuple[str, ...]:
        """Every credential of this repository that must never reach a log line or a page: the
        webhook secrets, the environment's Git token, the clone URL's password or token
        (redaction.collect_secrets applies the one rule)."""
        return collect_secrets(
            self.webhook_secret,
            settings.WEBHOOK_SECRET,
            settings.GIT_TOKEN,
            urls=[self.clone_url],
        )

    @property
    def tracked_branch(self) -> str:
        """The branch pushes must name to be deployed; blank while it is still unknown."""
        return self.branch or self.default_branch

    @property
    def effective_allow_unsigned(self) -> bool:
        return self.allow_unsigned or settings.ALLOW_UNSIGNED_WEBHOOKS

    def clean(self) -> None:
        # The environment owns these two fields of its repository (read-only in the admin, where
        # an error on them could not be shown).
        if self.managed_by_env:
            return
        errors = {}
        if problem := validators.clone_url_problem(self.clone_url):
            errors["clone_url"] = problem
        others = Repository.objects.exclude(pk=self.pk).values_list("name", "target_dir")
        if problem := validators.target_dir_problem(
            self.target_dir, data_dir=settings.DATA_DIR, lock_dir=settings.LOCK_DIR, others=others
        ):
            errors["target_dir"] = problem
        if errors:
            raise ValidationError(errors)

    def webhook_path(self) -> str:
        if self.slug == ENV_SLUG and self.managed_by_env:
            return settings.API_ENDPOINT
        return reverse("gitdeploy:webhook", args=[self.slug])

    # --- deploy policy: the admin, the CLI and the pages all ask here ---------------------------

    def redeploy(self, user=None, *, trigger: str = "admin") -> tuple[SyncRun, bool]:
        """Queue a sync of the branch tip (or join the queued one). Raises DeployRefused."""
        if not self.enabled:
            raise DeployRefused(f"'{self}' is disabled: enable it before redeploying.")
        return SyncRun.request(self, trigger=trigger, user=user)

    def request_initial_sync(self) -> SyncRun | None:
        """The first deploy, asked for by every worker when it starts: only for an enabled
        repository that nothing was ever deployed to and that has no run queued or running.
        Checked under the repository's row lock, so several workers starting together queue one
        run (and the one-queued-run constraint stands behind that). A push takes no such lock:
        one that queues a run meanwhile is joined (request() looks again)."""
        with transaction.atomic():
            Repository.objects.select_for_update(no_key=True).filter(pk=self.pk).first()
            fresh = Repository.objects.filter(pk=self.pk, enabled=True).first()
            if fresh is None or fresh.live_commit:
                return None
            runs = self.sync_runs.all()
            if runs.active().exists() or runs.exclude(deployed_commit="").exists():
                return None
            run, _ = SyncRun.request(
                self, trigger=SyncRun.Trigger.INITIAL, label="first start of the worker"
            )
        return run

    def record_live(self, commit: str, run: SyncRun | None = None) -> None:
        """What the worker found on disk after a run (sync.current_commit: in place the HEAD of
        the directory, atomic the `current` symlink), and the run that put it there.

        Why the worker and not the pages: the web process never runs git nor reads the target
        directory (it may not even have it mounted), and a failed post-deploy command in place
        leaves the new commit checked out while the last *succeeded* run names the old one, so
        the pages show this record instead."""
        if commit and (run is None or run.deployed_commit != commit):
            run = (
                SyncRun.objects.filter(repository=self, deployed_commit=commit)
                .order_by("-finished_at", "-pk")
                .first()
            )
        Repository.objects.filter(pk=self.pk).update(
            live_commit=commit, live_run=run if commit else None, live_checked_at=timezone.now()
        )

    def learn_default_branch(self, branch: str) -> None:
        if branch and branch != self.default_branch:
            Repository.objects.filter(pk=self.pk).update(default_branch=branch)
            self.default_branch = branch


class Delivery(models.Model):
    """One webhook request as received, kept whether it was accepted or not."""

    class Verdict(models.TextChoices):
        QUEUED = "queued", "queued a sync"
        JOINED = "joined", "joined a pending sync"
        IGNORED = "ignored", "ignored"
        REJECTED = "rejected", "rejected"

    class Signature(models.TextChoices):
        VALID = "valid", "valid"
        INVALID = "invalid", "invalid"
        MISSING = "missing", "missing"
        UNSIGNED_ALLOWED = "unsigned", "not signed (allowed)"
        NOT_CHECKED = "not_checked", "not checked"

    # No index of its own: the composite indexes below lead with it (every push writes each index).
    repository = models.ForeignKey(
        Repository, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    provider = models.CharField(max_length=20, blank=True)
    event = models.CharField(max_length=100, blank=True)
    delivery_id = models.CharField(max_length=200, blank=True)
    # A signed GitLab delivery's webhook-id (Standard Webhooks), refused when reused (intake).
    webhook_id = models.CharField(max_length=200, blank=True)
    content_type = models.CharField(max_length=200, blank=True)
    headers = models.JSONField(default=dict)
    body = models.TextField(blank=True)
    body_size = models.PositiveBigIntegerField(default=0)
    body_sha256 = models.CharField(max_length=64, blank=True)
    body_truncated = models.BooleanField(default=False)
    ref = models.CharField(max_length=500, blank=True)
    before = models.CharField(max_length=64, blank=True)
    after = models.CharField(max_length=64, blank=True)
    signature = models.CharField(
        max_length=20, choices=Signature.choices, default=Signature.NOT_CHECKED
    )
    verdict = models.CharField(max_length=20, choices=Verdict.choices)
    reason = models.TextField(blank=True)
    status_code = models.PositiveSmallIntegerField()
    sync_run = models.ForeignKey(
        "SyncRun",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="deliveries",
    )
    response_body = models.JSONField(
        default=dict,
        blank=True,
        help_text="The JSON body answered to the Git host, but for its own id (see answer).",
    )
    redelivery_of = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="redeliveries",
        help_text="Set when this delivery was replayed from the admin (Redeliver).",
    )

    class Meta:
        ordering = ["-received_at", "-pk"]
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(fields=["repository", "delivery_id"]),
            # The admin's search by a Git host's delivery id, in every repository. Declared here
            # rather than with db_index, which on PostgreSQL adds a LIKE twin no query uses.
            models.Index(fields=["delivery_id"], name="gitdeploy_delivery_id_only"),
            # Only signed GitLab deliveries have a webhook-id (the replay check's look-up).
            models.Index(
                fields=["repository", "webhook_id"],
                condition=~models.Q(webhook_id=""),
                name="gitdeploy_delivery_webhook_id",
            ),
            # Counting a source's rejected deliveries in the current minute (intake's flood limit).
            models.Index(fields=["repository", "remote_addr", "received_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.provider or 'unknown'} {self.event or '?'} {self.delivery_id or self.pk}"

    @property
    def answer(self) -> dict:
        """The JSON body that was answered (a 429 past the flood limit had no row)."""
        return {"delivery": self.pk, **self.response_body} if self.response_body else {}


class SyncRunQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=[SyncRun.Status.QUEUED, SyncRun.Status.RUNNING])

    def lease_expired(self, now: datetime.datetime | None = None):
        return self.filter(
            status=SyncRun.Status.RUNNING, lease_expires_at__lt=now or timezone.now()
        )


class SyncRun(models.Model):
    """One attempt to bring a repository's target directory to the branch tip or a chosen commit.

    History: once finished it is never edited; a redeploy, a roll back or a retry is a new SyncRun.
    The database allows at most one queued and one running run per repository (partial unique
    constraints), which is what coalesces a burst of pushes into two or three syncs.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        SUPERSEDED = "superseded", "superseded"

    class Trigger(models.TextChoices):
        WEBHOOK = "webhook", "webhook"
        ADMIN = "admin", "admin"
        CLI = "cli", "command line"
        RETRY = "retry", "retry"
        INITIAL = "initial", "initial"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.SUPERSEDED)

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="sync_runs")
    trigger = models.CharField(max_length=20, choices=Trigger.choices)
    triggered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    triggered_by_label = models.CharField(
        max_length=200, blank=True, help_text="Who asked: a user, or the pusher named by the host."
    )
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    branch = models.CharField(max_length=255, blank=True)
    requested_commit = models.CharField(
        max_length=64,
        blank=True,
        help_text=(
            "The commit named by the request (the push's 'after', or the roll back target). A run "
            "that later pushes joined takes the newest push's when it starts."
        ),
    )
    pin_commit = models.BooleanField(
        default=False,
        help_text="Deploy exactly requested_commit (roll back, sync --commit) instead of the tip.",
    )
    previous_commit = models.CharField(max_length=64, blank=True)
    deployed_commit = models.CharField(max_length=64, blank=True)
    # The deployed commit as git describes it, read by the worker after the checkout.
    commit_subject = models.CharField(max_length=500, blank=True)
    commit_author = models.CharField(max_length=200, blank=True)
    committed_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(default=timezone.now, db_index=True)
    run_after = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1)
    retry_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="retries"
    )
    superseded_by = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="superseded_runs"
    )
    worker_id = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    post_deploy_exit_code = models.IntegerField(null=True, blank=True)
    # What was sent about the run (notifications, the Git host's deploy status) and what failed:
    # written by gitdeploy.reporting around the run, the one field added to after it finished.
    notifications = models.TextField(blank=True)

    objects = SyncRunQuerySet.as_manager()

    class Meta:
        ordering = ["-queued_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["repository"],
                condition=Q(status="queued"),
                name="one_queued_run_per_repository",
            ),
            models.UniqueConstraint(
                fields=["repository"],
                condition=Q(status="running"),
                name="one_running_run_per_repository",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.repository} {self.status}"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def can_roll_back(self) -> bool:
        """Only a run that deployed a commit can be returned to."""
        return self.status == self.Status.SUCCEEDED and bool(self.deployed_commit)

    @property
    def can_redeploy_commit(self) -> bool:
        """A finished run that put a commit in place (a failed post-deploy command in place mode
        did) can deploy exactly that commit again."""
        return self.is_finished and bool(self.deployed_commit)

    @property
    def can_roll_back_before(self) -> bool:
        """A failed run can return the directory to the commit that was there before it."""
        return self.status == self.Status.FAILED and bool(self.previous_commit)

    def _pinned(self, commit: str, user, trigger: str, what: str) -> tuple[SyncRun, bool]:
        if not self.repository.enabled:
            raise DeployRefused(f"'{self.repository}' is disabled: enable it before {what}.")
        return SyncRun.request(
            self.repository, trigger=trigger, commit=commit, pin_commit=True, user=user
        )

    def roll_back(self, user=None, *, trigger: str = "admin") -> tuple[SyncRun, bool]:
        """Queue a run pinned to this run's deployed commit. Raises DeployRefused."""
        if not self.can_roll_back:
            raise DeployRefused(
                f"Run #{self.pk} did not deploy a commit: "
                "only a succeeded run can be rolled back to."
            )
        return self._pinned(self.deployed_commit, user, trigger, "rolling back")

    def redeploy_commit(self, user=None, *, trigger: str = "admin") -> tuple[SyncRun, bool]:
        """Redeploy this commit: a run pinned to this run's commit, unlike Repository.redeploy,
        which deploys the branch tip (after a roll back, the tip is what was rolled back from).
        Raises DeployRefused."""
        if not self.can_redeploy_commit:
            raise DeployRefused(
                f"Run #{self.pk} did not put a commit in place: there is nothing to redeploy."
            )
        return self._pinned(self.deployed_commit, user, trigger, "redeploying")

    def roll_back_before(self, user=None, *, trigger: str = "admin") -> tuple[SyncRun, bool]:
        """A failed run's way back: a run pinned to the commit that was there before it.
        Raises DeployRefused."""
        if not self.can_roll_back_before:
            raise DeployRefused(
                f"Run #{self.pk} is not a failed run with a previous commit: "
                "there is nothing to roll back to."
            )
        return self._pinned(self.previous_commit, user, trigger, "rolling back")

    @property
    def first_attempt_id(self) -> int | None:
        """The run this retry chain started with (#15 in "attempt 3 of run #15")."""
        run: SyncRun = self
        for _ in range(50):  # a chain is at most SYNC_RETRIES long; never loop on bad data
            if run.retry_of_id is None or run.retry_of is None:
                break
            run = run.retry_of
        return run.pk

    def attempt_label(self) -> str:
        """'attempt 3 of run #15': the same words in the log, the admin and a retry's label."""
        return f"attempt {self.attempt} of run #{self.first_attempt_id}"

    @property
    def duration(self) -> datetime.timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    # --- requesting ------------------------------------------------------------------------------

    @classmethod
    def request(
        cls,
        repository: Repository,
        *,
        trigger: str,
        commit: str = "",
        pin_commit: bool = False,
        user=None,
        label: str = "",
        run_after: datetime.datetime | None = None,
        retry_of: SyncRun | None = None,
    ) -> tuple[SyncRun, bool]:
        """Ask for a sync. Returns (run, joined): joined is True when the request was folded into a
        run that was already queued. Never creates a second queued run for a repository.

        A tip request joins a queued tip request (the worker fetches the tip when it starts, so the
        queued run covers this push too). A pinned commit (roll back) replaces whatever is queued,
        and so does a tip request arriving after a queued roll back: the newest intent wins, and
        the replaced run is kept as 'superseded'. A retry (retry_of) is the oldest intent of all:
        whatever is queued already covers it.
        """
        with transaction.atomic():
            # Serialises request() calls for one repository across web processes and workers. NO
            # KEY: the foreign-key checks of rows that point at the repository (a push's Delivery,
            # checked when its transaction commits) take KEY SHARE, which FOR UPDATE would block:
            # a push joining the queued run this request supersedes would deadlock with it.
            Repository.objects.select_for_update(no_key=True).filter(pk=repository.pk).first()
            # A push (request_tip) takes no repository lock: it may queue a run between the look-up
            # and the insert below, whose insert then breaks the one-queued-run constraint. Look
            # again: the next look-up finds that run and joins or supersedes it.
            for attempt in range(1, 4):
                queued = cls.objects.filter(repository=repository, status=cls.Status.QUEUED).first()
                if queued is not None and retry_of is not None:
                    return queued, True
                if queued is not None and not pin_commit and not queued.pin_commit:
                    if commit and commit != queued.requested_commit:
                        queued.requested_commit = commit
                        queued.save(update_fields=["requested_commit"])
                    return queued, True
                try:
                    with transaction.atomic():  # a savepoint: the insert may lose to a push
                        if queued is not None:
                            queued.status = cls.Status.SUPERSEDED
                            queued.finished_at = timezone.now()
                            queued.save(update_fields=["status", "finished_at"])
                        run = cls.objects.create(
                            repository=repository,
                            trigger=trigger,
                            triggered_by=user if getattr(user, "pk", None) else None,
                            triggered_by_label=label
                            or (user.get_username() if user is not None else ""),
                            branch=repository.tracked_branch,
                            requested_commit=commit,
                            pin_commit=pin_commit,
                            run_after=run_after,
                            attempt=(retry_of.attempt + 1) if retry_of else 1,
                            retry_of=retry_of,
                        )
                except IntegrityError:
                    # Any other integrity error fails the same way again and is raised.
                    if attempt == 3:
                        raise
                    continue
                if queued is not None:
                    queued.superseded_by = run
                    queued.save(update_fields=["superseded_by"])
                    queued.deliveries.update(sync_run=run)
                run.enqueue()
                return run, False
        raise AssertionError("unreachable: the last attempt returns or raises")

    @classmethod
    def request_tip(
        cls, repository: Repository, *, trigger: str, commit: str = "", label: str = ""
    ) -> tuple[SyncRun, bool]:
        """request() for a push, the hot path: join the queued run or insert one, with no lock that
        makes concurrent pushes to one repository wait for each other. Call it inside the
        transaction that records the Delivery.

        - Joining takes a shared lock on the queued run (FOR SHARE): joiners do not wait for each
          other, while claiming the run (the worker) and superseding it (a roll back) wait for
          them to commit, so a joining Delivery is never left on a run that moved on without it.
          A join writes nothing: the run learns the newest pushed commit when it is claimed
          (claim() reads it from its deliveries).
        - Inserting: the partial unique index on the queued run arbitrates (ON CONFLICT DO
          NOTHING); the loser of a race joins the winner.
        - A queued pinned run (a roll back) is not joined: request() supersedes it, as before.

        On PostgreSQL the join-or-insert is one statement; SQLite, whose IMMEDIATE transactions
        have one writer at a time, runs a SELECT and, when nothing is queued, an INSERT."""
        run = cls.new_tip_run(repository, trigger=trigger, commit=commit, label=label)
        join_or_insert, queued_run = _tip_statements(connection.alias, connection.vendor)
        # savepoint=False: inside receive()'s transaction a savepoint would cost two more queries.
        with transaction.atomic(savepoint=False), connection.cursor() as cursor:
            # Twice at most: a lost insert race means a queued run exists (or was claimed already).
            for _ in range(2):
                if connection.vendor == "postgresql":
                    cursor.execute(join_or_insert, [repository.pk, *prebuilt.insert_values(run)])
                    row = cursor.fetchone()
                    if row is None:
                        continue  # a concurrent push inserted first: join it
                    found, inserted = prebuilt.from_row(cls, row), bool(row[-1])
                else:
                    cursor.execute(queued_run, [repository.pk])
                    row = cursor.fetchone()
                    found, inserted = (prebuilt.from_row(cls, row), False) if row else (run, True)
                    if inserted:
                        try:
                            with transaction.atomic():
                                prebuilt.insert(run)
                        except IntegrityError:
                            continue
                if found.pin_commit:
                    break  # a queued roll back: request() supersedes it
                if inserted:
                    found.enqueue()
                return found, not inserted
        return cls.request(repository, trigger=trigger, commit=commit, label=label)

    @classmethod
    def new_tip_run(
        cls, repository: Repository, *, trigger: str, commit: str, label: str
    ) -> SyncRun:
        """The unsaved run a push asks for (request_tip, record_push): the tracked branch's tip,
        the pushed commit recorded; queued_at is now."""
        return cls(
            repository=repository,
            trigger=trigger,
            triggered_by_label=label,
            branch=repository.tracked_branch,
            requested_commit=commit,
        )

    @classmethod
    def record_push(
        cls, delivery: Delivery, *, trigger: str, commit: str, label: str, joined_reason: str
    ) -> tuple[SyncRun, bool] | None:
        """request_tip() and the Delivery's insert in one statement (PostgreSQL): join the queued
        run or insert one, with its task row and the NOTIFY that wakes a worker, and insert
        `delivery` on that run. Outside a transaction the statement is its own, committed before
        this returns, with no BEGIN and COMMIT round trips: what a push writes is one round trip.
        Returns (run, joined), as request_tip() does; `delivery` gets its id and run.

        `delivery` comes complete (verdict queued, its reason, no answer) but for what the
        statement computes from the run it chose, for a join: the verdict joined, the reason
        `joined_reason` with "{run}" replaced by the run's id; and for either, the answer
        (response_body) intake.answer() gives. The caller sets those on the instance, as stored.

        None, with nothing written, when the statement cannot decide alone: the push redelivers
        one (the same Git host delivery id) whose run is still pending, the queued run is a roll
        back (request() supersedes it), or a concurrent push won the insert race twice. The caller
        then records the push in a transaction."""
        repository = delivery.repository
        joined_prefix, joined_suffix = joined_reason.split("{run}")
        columns = len(prebuilt.table(cls).attnames)
        statement = _push_statement(connection.alias, connection.vendor)
        # The Delivery's values first (the body is the bulk of the work): the run's queued_at is
        # stamped when the run is built, just before the statement that inserts it.
        delivery_values = prebuilt.insert_values(delivery, _PUSH_COMPUTED)
        task_values = prebuilt.insert_values(_new_task_row(), _TASK_COMPUTED)
        run = cls.new_tip_run(repository, trigger=trigger, commit=commit, label=label)
        with prebuilt.cursor() as cursor:  # prepared: it is most of a push's time in PostgreSQL
            for _ in range(2):  # a lost insert race: the winner's run is queued, or taken already
                cursor.execute(
                    statement,
                    [
                        repository.pk,
                        delivery.delivery_id,
                        delivery.delivery_id,
                        SyncRun.Status.QUEUED,
                        SyncRun.Status.RUNNING,
                        repository.pk,
                        *prebuilt.insert_values(run),
                        Delivery.Verdict.QUEUED,
                        Delivery.Verdict.JOINED,
                        delivery.reason,
                        joined_prefix,
                        joined_suffix,
                        *task_values,
                        *delivery_values,
                    ],
                )
                row = cursor.fetchone()
                if row[-1]:
                    return None  # a redelivery of a pending run
                if row[0] is not None:
                    break
            else:
                return None
        found, is_new, delivery_id = prebuilt.from_row(cls, row), row[columns], row[columns + 1]
        if delivery_id is None:
            return None  # a queued roll back
        delivery.pk = delivery_id
        delivery._state.adding, delivery._state.db = False, connection.alias
        delivery.sync_run = found
        return found, not is_new

    def enqueue(self) -> None:
        """The task row, written in the caller's transaction (a 2xx or a queued run never exists
        without it). On PostgreSQL a NOTIFY, delivered when that transaction commits, wakes a
        waiting worker at once; polling is the fallback."""
        from gitdeploy.tasks import run_sync

        task = run_sync
        if self.run_after:
            task = run_sync.using(run_after=self.run_after)
        task.enqueue(self.pk, self.repository_id)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"NOTIFY {TASKS_CHANNEL}")

    # --- the worker's side -----------------------------------------------------------------------

    def claim(self, worker_id: str) -> bool:
        """queued → running for this worker, with a fresh lease. False if someone else got it, it
        was superseded, or another run of the repository is still running."""
        now = timezone.now()
        fields = {
            "status": self.Status.RUNNING,
            "worker_id": worker_id,
            "started_at": now,
            "lease_expires_at": now + lease_duration(),
        }
        # The repository too: the worker takes its lock file from the task's repository id.
        claim = SyncRun.objects.filter(
            pk=self.pk, repository_id=self.repository_id, status=self.Status.QUEUED
        )
        try:
            if connection.in_atomic_block:
                with transaction.atomic():  # a savepoint: the caller's transaction survives
                    claimed = claim.update(**fields)
            else:
                # One statement, its own transaction: no BEGIN and COMMIT round trips on the way
                # from a push to its sync.
                claimed = claim.update(**fields)
        except IntegrityError:
            return False
        if claimed:  # what the UPDATE wrote, without reading the row back
            vars(self).update(fields)
            self._take_newest_pushed_commit()
        return bool(claimed)

    def _take_newest_pushed_commit(self) -> None:
        """A tip run records the commit of the newest push among its deliveries. Pushes that join a
        queued run write nothing to it (request_tip), so it learns here, once it is ours: the claim
        waited for every join in progress (their shared lock), and no push joins a running run.
        A separate statement, so that it sees the joins that committed while the claim waited."""
        newest = (
            Delivery.objects.filter(sync_run=OuterRef("pk"))
            .exclude(after="")
            .order_by("-pk")
            .values("after")[:1]
        )
        SyncRun.objects.filter(pk=self.pk, pin_commit=False).update(
            requested_commit=Coalesce(Subquery(newest), F("requested_commit"))
        )

    def renew_lease(self, log: str | None = None) -> bool:
        """Extends the lease (and publishes the log so far); False if the run is no longer ours
        (it was recovered as lost while this worker was stalled)."""
        fields: dict[str, object] = {"lease_expires_at": timezone.now() + lease_duration()}
        if log is not None:
            fields["log"] = log
        return bool(
            SyncRun.objects.filter(
                pk=self.pk, status=self.Status.RUNNING, worker_id=self.worker_id
            ).update(**fields)
        )

    def finish(
        self,
        *,
        succeeded: bool,
        log: str,
        error: str = "",
        previous_commit: str = "",
        deployed_commit: str = "",
        post_deploy_exit_code: int | None = None,
        commit_subject: str = "",
        commit_author: str = "",
        committed_at: datetime.datetime | None = None,
    ) -> bool:
        """running → succeeded/failed, written only if this worker still owns the run."""
        fields = {
            "status": self.Status.SUCCEEDED if succeeded else self.Status.FAILED,
            "finished_at": timezone.now(),
            "lease_expires_at": None,
            "log": log,
            "error": error,
            "previous_commit": previous_commit,
            "deployed_commit": deployed_commit,
            "post_deploy_exit_code": post_deploy_exit_code,
            "commit_subject": commit_subject[:500],
            "commit_author": commit_author[:200],
            "committed_at": committed_at,
        }
        updated = SyncRun.objects.filter(
            pk=self.pk, status=self.Status.RUNNING, worker_id=self.worker_id
        ).update(**fields)
        if updated:  # what the UPDATE wrote, without reading the row back
            vars(self).update(fields)
        return bool(updated)

    WORKER_LOST = "worker lost"

    def mark_lost(self, *, give_up: str = "") -> SyncRun | None:
        """A running run whose worker died: failed with "worker lost", and a fresh run queued (or
        the queued one kept) so the repository still reaches the tip. Returns the follow-up run.
        With give_up (the reason), nothing is queued: gitdeploy.worker's crash-loop guard."""
        error = f"{self.WORKER_LOST}: {give_up}" if give_up else self.WORKER_LOST
        note = f"\n{self.WORKER_LOST}: {self.worker_id} stopped renewing its lease\n"
        if give_up:
            note += f"{give_up}\n"
        with transaction.atomic():
            updated = SyncRun.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(
                status=self.Status.FAILED,
                finished_at=timezone.now(),
                lease_expires_at=None,
                error=error,
                log=Concat("log", Value(note)),
            )
            if not updated or give_up:
                if updated:
                    logger.error("SyncRun %s: worker %s lost; %s", self.pk, self.worker_id, give_up)
                return None
            follow_up = self.request_again(why="after the worker was lost")
        logger.warning(
            "SyncRun %s: worker %s lost; queued %s", self.pk, self.worker_id, follow_up.pk
        )
        return follow_up

    def request_again(self, *, why: str, run_after: datetime.datetime | None = None) -> SyncRun:
        """The same request once more, as the next attempt (a retry, a recovery); a run queued in
        the meantime is newer and is returned instead. Its label reads "attempt 3 of run #15,
        <why>", the words the worker's log uses."""
        run, _ = SyncRun.request(
            self.repository,
            trigger=SyncRun.Trigger.RETRY,
            commit=self.requested_commit,
            pin_commit=self.pin_commit,
            label=f"attempt {self.attempt + 1} of run #{self.first_attempt_id}, {why}",
            run_after=run_after,
            retry_of=self,
        )
        return run


def lease_duration() -> datetime.timedelta:
    return datetime.timedelta(seconds=settings.SYNC_LEASE_SECONDS)


class RejectionWindow(models.Model):
    """Rejected deliveries from one source in one minute past REJECTED_DELIVERIES_PER_MINUTE:
    counted here in one row instead of one Delivery each (answered 429), so a flood of forged
    requests costs a row per source and minute, not a row per request."""

    repository = models.ForeignKey(
        Repository, on_delete=models.CASCADE, related_name="rejection_windows"
    )
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    minute = models.DateTimeField(db_index=True)
    count = models.PositiveIntegerField(default=0)
    last_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-minute"]
        constraints = [
            models.UniqueConstraint(
                fields=["repository", "remote_addr", "minute"], name="one_window_per_source_minute"
            )
        ]

    def __str__(self) -> str:
        return f"{self.count} rejected from {self.remote_addr or '?'} at {self.minute:%H:%M}"


class WorkerHeartbeat(models.Model):
    """Last sign of life of each worker process, for /api/ready."""

    worker_id = models.CharField(max_length=100, unique=True)
    hostname = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True)
    started_at = models.DateTimeField(default=timezone.now)
    seen_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"{self.worker_id} ({self.hostname}:{self.pid})"

    @classmethod
    def beat(cls, worker_id: str, hostname: str, pid: int) -> None:
        # One UPDATE every beat; the row is created once (an idle worker costs almost nothing).
        values = {"hostname": hostname, "pid": pid, "seen_at": timezone.now()}
        if not cls.objects.filter(worker_id=worker_id).update(**values):
            cls.objects.get_or_create(worker_id=worker_id, defaults=values)

    @classmethod
    def latest(cls) -> WorkerHeartbeat | None:
        return cls.objects.order_by("-seen_at").first()


@functools.cache
def _tip_statements(alias: str, vendor: str) -> tuple[str, str]:
    """SyncRun.request_tip's statements, built once (prebuilt): PostgreSQL's join-or-insert, and
    the queued run of a repository (SQLite's join). Both return the run's columns for
    prebuilt.from_row, the first also whether it inserted."""
    return (
        f"WITH {_tip_ctes(alias, vendor)} "  # noqa: S608
        "SELECT *, false FROM queued UNION ALL SELECT *, true FROM inserted",
        _queued_run_sql(alias, vendor),
    )


@functools.cache
def _queued_run_sql(alias: str, vendor: str) -> str:
    runs = prebuilt.table(SyncRun)
    # Names come from _meta; every value is a parameter.
    return f"SELECT {runs.columns} FROM {runs.table} WHERE repository_id = %s AND status = 'queued'"  # noqa: S608


@functools.cache
def _tip_ctes(alias: str, vendor: str, unless: str = "") -> str:
    """queued (the queued run, share-locked) and inserted (the new run, when none is queued and no
    concurrent push inserted first, nor `unless` holds). Parameters: the repository id,
    prebuilt.insert_values(run)."""
    runs = prebuilt.table(SyncRun)
    return (
        f"queued AS ({_queued_run_sql(alias, vendor)} FOR SHARE), "  # noqa: S608
        f"inserted AS ({runs.insert_columns} "
        f"SELECT {', '.join(['%s'] * len(runs.insert_fields))} "
        f"WHERE NOT EXISTS (SELECT FROM queued){unless} "
        "ON CONFLICT (repository_id) WHERE status = 'queued' DO NOTHING "
        f"RETURNING {runs.columns})"
    )


# The Delivery's values that SyncRun.record_push's statement computes from the run it chose.
_PUSH_COMPUTED = {
    "sync_run_id": "decided.run_id",
    "verdict": "decided.verdict",
    "reason": "decided.reason",
    # intake.answer() for a push that queued or joined a run.
    "response_body": (
        "jsonb_build_object('reason', decided.reason, 'status', 'queued', "
        "'sync_run', decided.run_id, 'joined', NOT decided.is_new)"
    ),
}
# The task row's arguments, as django-tasks stores run_sync.enqueue(run id, repository id).
_TASK_COMPUTED = {
    "args_kwargs": (
        "jsonb_build_object('args', jsonb_build_array(decided.run_id, decided.repository_id), "
        "'kwargs', '{}'::jsonb)"
    )
}


@functools.cache
def _push_statement(alias: str, vendor: str) -> str:
    """SyncRun.record_push's statement (PostgreSQL). Parameters, in order: the redelivery check's
    (the repository id, the Git host's delivery id twice, the queued and running statuses); those
    of _tip_ctes; the verdicts and reasons of a new run and of a join (the join's reason cut around
    the run id); the task row's (prebuilt.insert_values without _TASK_COMPUTED); the Delivery's
    (without _PUSH_COMPUTED). Returns one row: the run's columns, whether it is new, the
    Delivery's id (NULL when a queued roll back was found: nothing is written then), how many task
    rows were inserted, and whether the push redelivers one whose run is still pending (nothing
    chosen nor written then); the run's columns are NULL when a concurrent push won the insert."""
    from django_tasks_db.models import DBTaskResult

    sync_run_id = prebuilt.quoted(SyncRun, "id")
    repository_id = prebuilt.quoted(SyncRun, "repository")
    pin_commit = prebuilt.quoted(SyncRun, "pin_commit")
    delivery_id = prebuilt.table(Delivery).pk_column
    task_id = prebuilt.table(DBTaskResult).pk_column
    deliveries, runs = prebuilt.table(Delivery).table, prebuilt.table(SyncRun).table
    delivery_run = prebuilt.quoted(Delivery, "sync_run")
    # Names come from _meta and this module's constants; every value is a parameter.
    return (
        # A redelivery (the same Git host delivery id) of a push whose run is still pending: the
        # statement writes nothing, and intake records it in a transaction (it joins that run).
        f"WITH earlier AS (SELECT FROM {deliveries} INNER JOIN {runs} "  # noqa: S608
        f"ON {deliveries}.{delivery_run} = {runs}.{sync_run_id} "
        f"WHERE {deliveries}.{prebuilt.quoted(Delivery, 'repository')} = %s "
        f"AND {deliveries}.{prebuilt.quoted(Delivery, 'delivery_id')} = %s AND %s::text <> '' "
        f"AND {runs}.{prebuilt.quoted(SyncRun, 'status')} IN (%s, %s) LIMIT 1), "
        f"{_tip_ctes(alias, vendor, ' AND NOT EXISTS (SELECT FROM earlier)')}, "
        "chosen AS (SELECT *, false AS is_new FROM queued WHERE NOT EXISTS (SELECT FROM earlier) "
        "UNION ALL SELECT *, true FROM inserted), "
        f"decided AS (SELECT {sync_run_id} AS run_id, {repository_id} AS repository_id, "
        f"{pin_commit} AS pin_commit, is_new, "
        "CASE WHEN is_new THEN %s::text ELSE %s::text END AS verdict, "
        f"CASE WHEN is_new THEN %s::text ELSE %s::text || {sync_run_id}::text || %s::text END "
        "AS reason FROM chosen), "
        # The task only for a new run; its NOTIFY is delivered when the statement commits.
        f"task AS ({prebuilt.insert_select(DBTaskResult, _TASK_COMPUTED)} "
        f"FROM decided WHERE is_new RETURNING {task_id}, pg_notify('{TASKS_CHANNEL}', '')), "
        f"delivery AS ({prebuilt.insert_select(Delivery, _PUSH_COMPUTED)} "
        f"FROM decided WHERE NOT pin_commit RETURNING {delivery_id}) "
        "SELECT chosen.*, (SELECT * FROM delivery), (SELECT count(*) FROM task), "
        "flags.redelivery FROM (SELECT EXISTS (SELECT FROM earlier) AS redelivery) AS flags "
        "LEFT JOIN chosen ON true"
    )


@functools.cache
def _run_sync_backend() -> Any:
    """run_sync's django-tasks-db backend, the task validated against it as enqueue() does: once
    per process, not on every push (the task and the settings do not change while it runs)."""
    from django_tasks_db.backend import DatabaseBackend

    from gitdeploy.tasks import run_sync

    backend = run_sync.get_backend()
    if not isinstance(backend, DatabaseBackend):
        raise TypeError(f"run_sync's backend is {type(backend).__name__}, not django-tasks-db's")
    backend.validate_task(run_sync)
    return backend


def _new_task_row() -> Any:
    """The django-tasks row run_sync.enqueue() would insert, but for its arguments, built as its
    database backend builds it (the backend's id, pre_save's receivers applied), for
    SyncRun.record_push's statement. tests/test_ingest.py compares it with enqueue()'s."""
    from django.db.models.signals import pre_save
    from django_tasks_db.models import DBTaskResult

    from gitdeploy.tasks import run_sync as task

    backend = _run_sync_backend()
    row: DBTaskResult[Any, Any] = DBTaskResult(
        id=backend._get_id(),  # the backend's configured id function, as its enqueue() uses
        priority=task.priority,
        task_path=task.module_path,
        queue_name=task.queue_name,
        run_after=task.run_after,  # type: ignore[misc]  # None: pre_save's receiver's marker
        backend_name=backend.alias,
    )
    # django-tasks-db's own receiver turns "no run_after" into its far-future marker.
    pre_save.send(DBTaskResult, instance=row, raw=False, using=connection.alias, update_fields=None)
    return row
