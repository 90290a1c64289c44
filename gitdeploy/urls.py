from django.urls import path

from gitdeploy import metrics, pages, views

app_name = "gitdeploy"

urlpatterns = [
    path("", pages.landing, name="landing"),
    path("api/health", pages.health, name="health"),
    path("api/ready", pages.ready, name="ready"),
    path("metrics", metrics.view, name="metrics"),
    path("hooks/<slug:slug>/", views.webhook, name="webhook"),
    # Git hosts do not follow a redirect on POST, so APPEND_SLASH's 301 would lose the delivery.
    path("hooks/<slug:slug>", views.webhook, name="webhook_no_slash"),
]
