"""DRF's side of API keys: the Bearer header -> `registry.access.authenticate()`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from registry import access
from registry.models import ApiKey

if TYPE_CHECKING:
    from rest_framework.views import APIView


class ApiKeyAuthentication(BaseAuthentication):
    """Runs in adrf's sync `initial` step (a worker thread), so it may block."""

    def authenticate(self, request: Request) -> tuple[None, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None  # HasApiKey decides whether anonymous access is allowed
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise access.refused("The Authorization header must be 'Bearer YOUR_API_KEY'.")
        # Throttled by the client's address after too many failed checks (registry/access.py).
        return None, access.authenticate(token, client=request.META.get("REMOTE_ADDR", ""))

    def authenticate_header(self, request: Request) -> str:
        # Without it DRF turns a failed authentication into a 403.
        return access.BEARER_HEADERS["WWW-Authenticate"]


class HasApiKey(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.auth is not None or settings.VOICEPROXY_ALLOW_ANONYMOUS:
            return True
        raise access.refused(
            "You didn't provide an API key. Send it in an Authorization header: "
            "'Authorization: Bearer YOUR_API_KEY'."
        )
