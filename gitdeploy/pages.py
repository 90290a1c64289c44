"""The landing page and the health/readiness probes (issue 4 fills these in)."""

from django.http import HttpResponse, JsonResponse


def landing(request):
    return HttpResponse("gitdeploy", content_type="text/plain")


def health(request):
    # Liveness: no database access, so a slow database never gets the container restarted.
    return HttpResponse("OK", content_type="text/plain")


def ready(request):
    return JsonResponse({"status": "unknown"})
