"""The webhook endpoint (filled in next)."""

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def webhook(request, slug, env_only=False):
    return JsonResponse({"status": "not implemented"}, status=501)
