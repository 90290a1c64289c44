"""Template access to gitdeploy.display: `{% load gitdeploy_extras %}`."""

from django import template

from gitdeploy import display

register = template.Library()

register.filter("short_sha", display.short_sha)
register.simple_tag(display.commit_link, name="commit_link")
register.simple_tag(display.status_badge, name="status_badge")
register.simple_tag(display.time_html, name="time_html")
register.filter("ago", display.ago)
register.filter("first_line", display.first_line)


@register.inclusion_tag("admin/gitdeploy/overview.html", takes_context=True)
def repository_overview(context):
    """The admin index's first panel: every repository's status and live commit, one query."""
    from django.urls import reverse

    from gitdeploy.models import Repository

    request = context["request"]
    if not request.user.has_perm("gitdeploy.view_repository"):
        return {"rows": None}
    rows = []
    for row in Repository.objects.with_status().order_by("name"):
        state, label = display.repository_state(row)
        run_id = row.active_run_id or row.last_run_id
        rows.append(
            {
                "name": row.name,
                "enabled": row.enabled,
                "url": reverse("admin:gitdeploy_repository_change", args=[row.pk]),
                "state": display.status_badge(state, label),
                "run_url": reverse("admin:gitdeploy_syncrun_change", args=[run_id])
                if run_id
                else "",
                "run_id": run_id,
                "error": display.first_line(row.last_run_error or "") if state == "failed" else "",
                "live": display.live_commit_html(row),
                "branch": row.tracked_branch,
            }
        )
    return {"rows": rows}
