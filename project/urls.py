from django.conf import settings
from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path

from gitdeploy import views
from gitdeploy.environment import ENV_SLUG

urlpatterns: list[URLPattern | URLResolver] = [
    path("", include("gitdeploy.urls")),
    path("admin/", admin.site.urls),
]

# The seed's endpoint for the repository configured by the environment (default /api/webhook).
api_endpoint = settings.API_ENDPOINT.lstrip("/")
if api_endpoint:
    urlpatterns.insert(
        0,
        path(api_endpoint, views.webhook, {"slug": ENV_SLUG, "env_only": True}, name="api_webhook"),
    )
    if not api_endpoint.endswith("/"):
        urlpatterns.insert(
            1,
            path(
                api_endpoint + "/",
                views.webhook,
                {"slug": ENV_SLUG, "env_only": True},
                name="api_webhook_slash",
            ),
        )
