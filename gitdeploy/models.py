"""Repository, Delivery, SyncRun: the configuration, what arrived, and what was done about it.

State changes live here as methods (SyncRun.request, SyncRun.claim, ...), so that the webhook view,
the admin actions, the CLI and the worker all go through the same locked transitions.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import re
from collections.abc import Mapping

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Q, Value
from django.db.models.functions import Concat
from django.urls import reverse
from django.utils import timezone

from gitdeploy import providers
from gitdeploy.redaction import redact_url

logger = logging.getLogger(__name__)

SHA_RE = re.compile(r"^[0-9a-f]{7,64}$")


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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "repositories"
        permissions = [("trigger_deploy", "Can redeploy or roll back a repository")]

    def __str__(self) -> str:
        return self.name

    @property
    def display_clone_url(self) -> str:
        return redact_url(self.clone_url)

    @property
    def tracked_branch(self) -> str:
        """The branch pushes must name to be deployed; blank while it is still unknown."""
        return self.branch or self.default_branch

    @property
    def effective_allow_unsigned(self) -> bool:
        return self.allow_unsigned or settings.ALLOW_UNSIGNED_WEBHOOKS

    def webhook_path(self) -> str:
        if self.slug == "default" and self.managed_by_env:
            return settings.API_ENDPOINT
        return reverse("gitdeploy:webhook", args=[self.slug])

    def last_run(self) -> SyncRun | None:
        return self.sync_runs.order_by("-queued_at", "-pk").first()

    def last_successful_run(self) -> SyncRun | None:
        return (
            self.sync_runs.filter(status=SyncRun.Status.SUCCEEDED)
            .order_by("-finished_at", "-pk")
            .first()
        )

    def host_provider(self) -> str:
        """The provider of the newest delivery: tells a self-hosted GitLab from a Gitea when
        drawing links to commits."""
        return (
            self.deliveries.exclude(provider="")
            .order_by("-received_at", "-pk")
            .values_list("provider", flat=True)
            .first()
            or ""
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

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="deliveries")
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    provider = models.CharField(max_length=20, blank=True)
    event = models.CharField(max_length=100, blank=True)
    delivery_id = models.CharField(max_length=200, blank=True, db_index=True)
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

    class Meta:
        ordering = ["-received_at", "-pk"]
        verbose_name_plural = "deliveries"
        indexes = [models.Index(fields=["repository", "delivery_id"])]

    def __str__(self) -> str:
        return f"{self.provider or 'unknown'} {self.event or '?'} {self.delivery_id or self.pk}"


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
        help_text="The commit named by the request (the push's 'after', or the roll back target).",
    )
    pin_commit = models.BooleanField(
        default=False,
        help_text="Deploy exactly requested_commit (roll back, sync --commit) instead of the tip.",
    )
    previous_commit = models.CharField(max_length=64, blank=True)
    deployed_commit = models.CharField(max_length=64, blank=True)
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
            # Serialises requests for one repository across web processes and workers.
            Repository.objects.select_for_update().filter(pk=repository.pk).first()
            queued = cls.objects.filter(repository=repository, status=cls.Status.QUEUED).first()
            if queued is not None and retry_of is not None:
                return queued, True
            if queued is not None and not pin_commit and not queued.pin_commit:
                if commit and commit != queued.requested_commit:
                    queued.requested_commit = commit
                    queued.save(update_fields=["requested_commit"])
                return queued, True
            if queued is not None:
                queued.status = cls.Status.SUPERSEDED
                queued.finished_at = timezone.now()
                queued.save(update_fields=["status", "finished_at"])
            run = cls.objects.create(
                repository=repository,
                trigger=trigger,
                triggered_by=user if getattr(user, "pk", None) else None,
                triggered_by_label=label or (user.get_username() if user is not None else ""),
                branch=repository.tracked_branch,
                requested_commit=commit,
                pin_commit=pin_commit,
                run_after=run_after,
                attempt=(retry_of.attempt + 1) if retry_of else 1,
                retry_of=retry_of,
            )
            if queued is not None:
                queued.superseded_by = run
                queued.save(update_fields=["superseded_by"])
                queued.deliveries.update(sync_run=run)
            transaction.on_commit(run.enqueue)
        return run, False

    def enqueue(self) -> None:
        from gitdeploy.tasks import run_sync

        task = run_sync
        if self.run_after:
            task = run_sync.using(run_after=self.run_after)
        task.enqueue(self.pk)

    # --- the worker's side -----------------------------------------------------------------------

    def claim(self, worker_id: str) -> bool:
        """queued → running for this worker, with a fresh lease. False if someone else got it, it
        was superseded, or another run of the repository is still running."""
        now = timezone.now()
        try:
            with transaction.atomic():
                claimed = SyncRun.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
                    status=self.Status.RUNNING,
                    worker_id=worker_id,
                    started_at=now,
                    lease_expires_at=now + lease_duration(),
                )
        except IntegrityError:
            return False
        if claimed:
            self.refresh_from_db()
        return bool(claimed)

    def renew_lease(self, log: str | None = None) -> bool:
        """Extends the lease (and publishes the log so far); False if the run is no longer ours
        (it was recovered as lost while this worker was stalled)."""
        fields = {"lease_expires_at": timezone.now() + lease_duration()}
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
    ) -> bool:
        """running → succeeded/failed, written only if this worker still owns the run."""
        status = self.Status.SUCCEEDED if succeeded else self.Status.FAILED
        updated = SyncRun.objects.filter(
            pk=self.pk, status=self.Status.RUNNING, worker_id=self.worker_id
        ).update(
            status=status,
            finished_at=timezone.now(),
            lease_expires_at=None,
            log=log,
            error=error,
            previous_commit=previous_commit,
            deployed_commit=deployed_commit,
            post_deploy_exit_code=post_deploy_exit_code,
        )
        if updated:
            self.refresh_from_db()
        return bool(updated)

    def mark_lost(self) -> SyncRun | None:
        """A running run whose worker died: failed with "worker lost", and a fresh run queued (or
        the queued one kept) so the repository still reaches the tip. Returns the follow-up run."""
        with transaction.atomic():
            updated = SyncRun.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(
                status=self.Status.FAILED,
                finished_at=timezone.now(),
                lease_expires_at=None,
                error="worker lost",
                log=Concat(
                    "log", Value(f"\nworker lost: {self.worker_id} stopped renewing its lease\n")
                ),
            )
            if not updated:
                return None
            follow_up = self.request_again(label="recovery after worker lost")
        logger.warning(
            "SyncRun %s: worker %s lost; queued %s", self.pk, self.worker_id, follow_up.pk
        )
        return follow_up

    def request_again(self, *, label: str, run_after: datetime.datetime | None = None) -> SyncRun:
        """The same request once more, as the next attempt (a retry, a recovery); a run queued in
        the meantime is newer and is returned instead."""
        run, _ = SyncRun.request(
            self.repository,
            trigger=SyncRun.Trigger.RETRY,
            commit=self.requested_commit,
            pin_commit=self.pin_commit,
            label=label,
            run_after=run_after,
            retry_of=self,
        )
        return run

    @classmethod
    def recover_lost(cls, repository: Repository | None = None) -> list[SyncRun]:
        """Called by every worker's monitor and before each claim: nothing stays 'running' after a
        kill -9."""
        expired = cls.objects.lease_expired().select_related("repository")
        if repository is not None:
            expired = expired.filter(repository=repository)
        follow_ups = []
        for run in expired:
            follow_up = run.mark_lost()
            if follow_up is not None:
                follow_ups.append(follow_up)
        return follow_ups


def lease_duration() -> datetime.timedelta:
    return datetime.timedelta(seconds=settings.SYNC_LEASE_SECONDS)


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
        cls.objects.update_or_create(
            worker_id=worker_id,
            defaults={"hostname": hostname, "pid": pid, "seen_at": timezone.now()},
        )

    @classmethod
    def latest(cls) -> WorkerHeartbeat | None:
        return cls.objects.order_by("-seen_at").first()


# --- receiving a webhook ------------------------------------------------------------------------

REJECTED_BODY_LIMIT = 4096


@dataclasses.dataclass(frozen=True)
class IncomingWebhook:
    """What the view read from the request; everything else is decided from the Repository."""

    headers: Mapping[str, str]
    body: bytes
    content_type: str = ""
    remote_addr: str | None = None
    # Set when the body was refused for its size (413) and never read in full.
    declared_size: int | None = None


@dataclasses.dataclass
class Outcome:
    status_code: int
    verdict: str
    reason: str
    signature: str = Delivery.Signature.NOT_CHECKED
    event: providers.Event | None = None
    sync_run: SyncRun | None = None
    joined: bool = False


def receive_webhook(repository: Repository, incoming: IncomingWebhook) -> Delivery:
    """Verify, decide and record one webhook request. The Delivery row (and the SyncRun it asks
    for) is committed before this returns: the answer never claims more than the database holds."""
    envelope = providers.read_envelope(incoming.headers)
    outcome = _decide(repository, envelope, incoming)
    with transaction.atomic():
        if outcome.verdict in (Delivery.Verdict.QUEUED, Delivery.Verdict.JOINED) and (
            outcome.sync_run is None
        ):
            outcome.sync_run, outcome.joined = SyncRun.request(
                repository,
                trigger=SyncRun.Trigger.WEBHOOK,
                commit=outcome.event.after if outcome.event else "",
                label=_pusher_label(envelope, outcome.event),
            )
            if outcome.joined:
                outcome.verdict = Delivery.Verdict.JOINED
                outcome.reason = (
                    f"joined sync run #{outcome.sync_run.pk}, which is queued and will deploy "
                    "the branch tip as fetched when it starts"
                )
        delivery = Delivery.objects.create(
            repository=repository,
            remote_addr=incoming.remote_addr or None,
            provider=envelope.provider,
            event=envelope.event[:100],
            delivery_id=envelope.delivery_id[:200],
            content_type=incoming.content_type[:200],
            headers=providers.sanitize_headers(incoming.headers),
            **_stored_body(incoming, keep_all=outcome.verdict != Delivery.Verdict.REJECTED),
            ref=(outcome.event.ref if outcome.event else "")[:500],
            before=(outcome.event.before if outcome.event else "")[:64],
            after=(outcome.event.after if outcome.event else "")[:64],
            signature=outcome.signature,
            verdict=outcome.verdict,
            reason=outcome.reason,
            status_code=outcome.status_code,
            sync_run=outcome.sync_run,
        )
    delivery.joined = outcome.joined
    return delivery


def _decide(repository: Repository, envelope: providers.Envelope, incoming: IncomingWebhook):
    rejected = Delivery.Verdict.REJECTED
    if incoming.declared_size is not None:
        return Outcome(
            413,
            rejected,
            f"body of {incoming.declared_size} bytes is over MAX_WEBHOOK_BYTES "
            f"({settings.MAX_WEBHOOK_BYTES})",
        )

    # Verify before anything else is read from the body.
    if repository.webhook_secret:
        if not envelope.provider:
            return Outcome(
                401,
                rejected,
                "cannot tell which Git host sent this: no X-GitHub-Event, X-Gitlab-Event, "
                "X-Gitea-Event/X-Forgejo-Event or X-Event-Key header",
                Delivery.Signature.MISSING,
            )
        signed = providers.has_signature(envelope, incoming.headers)
        try:
            providers.verify(envelope, incoming.headers, incoming.body, repository.webhook_secret)
        except providers.Unauthorized as exc:
            signature = Delivery.Signature.INVALID if signed else Delivery.Signature.MISSING
            return Outcome(401, rejected, exc.message, signature)
        signature = Delivery.Signature.VALID
    elif repository.effective_allow_unsigned:
        signature = Delivery.Signature.UNSIGNED_ALLOWED
        if not envelope.provider:
            return Outcome(
                400,
                rejected,
                "cannot tell which Git host sent this: no X-GitHub-Event, X-Gitlab-Event, "
                "X-Gitea-Event/X-Forgejo-Event or X-Event-Key header",
                signature,
            )
    else:
        return Outcome(
            401,
            rejected,
            "this repository has no webhook secret, and unsigned deliveries are not allowed "
            "(set a secret, or ALLOW_UNSIGNED_WEBHOOKS=true on a private network)",
            Delivery.Signature.MISSING,
        )

    try:
        event = providers.parse(
            envelope, incoming.body, incoming.content_type, branch=repository.tracked_branch
        )
    except providers.BadPayload as exc:
        return Outcome(400, rejected, exc.message, signature)

    ignored = Delivery.Verdict.IGNORED
    if event.kind == "ping":
        return Outcome(200, ignored, event.reason or "ping", signature, event)
    if event.kind != "push":
        return Outcome(
            200,
            ignored,
            event.reason or f"event {envelope.event!r} is not a push",
            signature,
            event,
        )
    if event.default_branch:
        repository.learn_default_branch(event.default_branch)
    if not repository.enabled:
        return Outcome(200, ignored, "repository is disabled", signature, event)
    if event.tag:
        return Outcome(
            200, ignored, f"tag {event.tag!r}: only branch pushes deploy", signature, event
        )
    if not event.branch:
        return Outcome(200, ignored, f"ref {event.ref!r} is not a branch", signature, event)
    tracked = repository.tracked_branch
    if tracked and event.branch != tracked:
        return Outcome(
            200,
            ignored,
            f"push to branch {event.branch!r}; this repository deploys {tracked!r}",
            signature,
            event,
        )
    if event.deleted:
        return Outcome(
            200,
            ignored,
            f"branch {event.branch!r} was deleted; the directory keeps its last commit",
            signature,
            event,
        )

    redelivered = _active_run_of_earlier_delivery(repository, envelope.delivery_id)
    if redelivered is not None:
        return Outcome(
            200,
            Delivery.Verdict.JOINED,
            f"redelivery of {envelope.delivery_id}: sync run #{redelivered.pk} it started is "
            f"still {redelivered.status}",
            signature,
            event,
            sync_run=redelivered,
            joined=True,
        )
    reason = f"push to {event.branch!r} at {event.after[:12]}"
    if not tracked:
        reason += " (the remote's default branch is not known yet: the worker resolves it)"
    return Outcome(202, Delivery.Verdict.QUEUED, reason, signature, event)


def _active_run_of_earlier_delivery(repository: Repository, delivery_id: str) -> SyncRun | None:
    """A redelivery (same provider delivery id) joins the run the original fed while that run is
    still pending; once it has finished, a redelivery is how users retry, so it asks again."""
    if not delivery_id:
        return None
    earlier = (
        Delivery.objects.filter(
            repository=repository, delivery_id=delivery_id, sync_run__isnull=False
        )
        .select_related("sync_run")
        .order_by("-pk")
        .first()
    )
    if earlier is not None and earlier.sync_run.status in (
        SyncRun.Status.QUEUED,
        SyncRun.Status.RUNNING,
    ):
        return earlier.sync_run
    return None


def _pusher_label(envelope: providers.Envelope, event: providers.Event | None) -> str:
    who = event.pusher if event else ""
    host = envelope.provider or "webhook"
    return (f"{who} via {host}" if who else host)[:200]


def _stored_body(incoming: IncomingWebhook, *, keep_all: bool) -> dict:
    body = incoming.body
    size = incoming.declared_size if incoming.declared_size is not None else len(body)
    # A rejected request keeps only its first 4 KiB, so a flood of forged requests cannot fill the
    # database; the size and hash still identify it.
    kept = body if keep_all else body[:REJECTED_BODY_LIMIT]
    # Postgres text cannot hold NUL; the hash is of the bytes as received.
    text = kept.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return {
        "body": text,
        "body_size": size,
        "body_sha256": hashlib.sha256(body).hexdigest() if incoming.declared_size is None else "",
        "body_truncated": len(kept) < size,
    }
