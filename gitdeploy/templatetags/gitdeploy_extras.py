"""Template access to gitdeploy.display: `{% load gitdeploy_extras %}`."""

from django import template

from gitdeploy import display

register = template.Library()

register.filter("short_sha", display.short_sha)
register.simple_tag(display.commit_link, name="commit_link")
register.simple_tag(display.status_badge, name="status_badge")
