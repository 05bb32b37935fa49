"""The pages: server-rendered from the registry, then plain JavaScript against /v1/ in the browser."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from registry import catalog, client_secrets
from registry.api import health
from registry.errors import error_body
from registry.models import ApiKey
from voiceproxy import __version__

PLAYGROUND_SECRET_SECONDS = 600


async def home(request: HttpRequest) -> HttpResponse:
    """What this server is, whether it is ready, and what it serves."""
    models = await catalog.model_objects(None)
    ready = await health.readiness()
    user = await request.auser()
    return render(
        request,
        "web/home.html",
        {
            "version": __version__,
            "ready": ready,
            "stt": [m for m in models if m.get("task") == "stt" and not m.get("alias_of")],
            "tts": [m for m in models if m.get("task") == "tts" and not m.get("alias_of")],
            "chat": [m for m in models if m.get("task") == "chat"],
            "staff": user.is_staff,
        },
    )


async def playground(request: HttpRequest) -> HttpResponse:
    user = await request.auser()
    return render(request, "web/playground.html", {"staff": user.is_staff, "version": __version__})


def _playground_key(user: AbstractBaseUser | AnonymousUser) -> ApiKey:
    """The staff user's own playground key (created once, its secret discarded: it never leaves
    the server; the browser gets client secrets that stand for it)."""
    name = f"playground:{user.get_username()}"
    key = ApiKey.objects.filter(name=name, revoked_at__isnull=True).first()
    if key is None:
        key, _ = ApiKey.issue(name=name)
    return key


@require_POST
async def playground_secret(request: HttpRequest) -> HttpResponse:
    """A staff user logged in to the admin gets a short-lived client secret (CSRF-checked)."""
    user = await request.auser()
    if not user.is_staff:
        body = error_body("Log in to the admin as staff first.", type="permission_error", code="not_staff")
        return JsonResponse(body, status=403)
    key = await sync_to_async(_playground_key, thread_sensitive=False)(user)
    value, expires_at = await client_secrets.mint(api_key=key, seconds=PLAYGROUND_SECRET_SECONDS)
    return JsonResponse({"value": value, "expires_at": expires_at})
