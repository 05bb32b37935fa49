"""API-key authentication for /v1/: Bearer key -> hash lookup, expiry, revocation, rate, model scope."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from registry import audit, db_threads, keys, snapshot
from registry.errors import AuthenticationFailed, PermissionDenied, RateLimited
from registry.models import ApiKey

if TYPE_CHECKING:
    from rest_framework.views import APIView

_BEARER_HEADERS = {"WWW-Authenticate": 'Bearer realm="voiceproxy"'}
# last_used is a hint for operators, not a counter: writing it at most this often spares the
# database one UPDATE per request.
_LAST_USED_RESOLUTION = timedelta(seconds=30)


def _fail(message: str) -> AuthenticationFailed:
    return AuthenticationFailed(message, headers=_BEARER_HEADERS)


class ApiKeyAuthentication(BaseAuthentication):
    """Runs in adrf's sync `initial` step (a worker thread), so it may block.

    Keys come from the in-memory registry (registry/snapshot.py), which this first check of the
    request validates against the database: a revoked key fails from the next request on.
    """

    def authenticate(self, request: Request) -> tuple[None, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None  # HasApiKey decides whether anonymous access is allowed
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _fail("The Authorization header must be 'Bearer YOUR_API_KEY'.")
        shown = keys.prefix_of(token) if token.startswith(keys.SECRET_PREFIX) else ""
        audit_record = audit.current()
        if audit_record is not None:
            audit_record.key_prefix = shown
        key = snapshot.current_sync().api_key(keys.hash_secret(token))
        if key is None:
            hint = f" ({shown}…)" if shown else ""
            raise _fail(f"Incorrect API key provided{hint}.")
        if audit_record is not None:
            audit_record.api_key_id = key.pk
        if key.is_revoked:
            raise _fail(f"The API key {key.prefix}… has been revoked.")
        if key.is_expired:
            raise _fail(f"The API key {key.prefix}… has expired.")
        _check_rate(key)
        now = timezone.now()
        if key.last_used is None or now - key.last_used > _LAST_USED_RESOLUTION:
            key.last_used = now  # the snapshot's copy: the next requests skip this
            db_threads.background.later(_touch, key.pk, now, what=f"record the last use of key {key.prefix}")
        return None, key

    def authenticate_header(self, request: Request) -> str:
        # Without it DRF turns a failed authentication into a 403.
        return 'Bearer realm="voiceproxy"'


def _touch(pk: int, now: datetime) -> None:
    ApiKey.objects.filter(pk=pk).update(last_used=now)


def _check_rate(key: ApiKey) -> None:
    """Fixed one-minute windows in Django's cache: Redis when configured, so every process shares them."""
    limit = key.rate_limit_per_minute
    if not limit:
        return
    now = time.time()
    counter = f"voiceproxy:rate:{key.pk}:{int(now // 60)}"
    cache.add(counter, 0, timeout=120)
    try:
        count = cache.incr(counter)
    except ValueError:  # expired between add and incr: this request opens the window
        cache.add(counter, 1, timeout=120)
        count = 1
    if count > limit:
        raise RateLimited(
            f"Rate limit reached for key {key.prefix}…: {limit} requests per minute.",
            retry_after=60 - int(now % 60),
        )


class HasApiKey(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.auth is not None or settings.VOICEPROXY_ALLOW_ANONYMOUS:
            return True
        raise _fail(
            "You didn't provide an API key. Send it in an Authorization header: "
            "'Authorization: Bearer YOUR_API_KEY'."
        )


def may_use(api_key: ApiKey | None, names: list[str]) -> bool:
    """Whether the key's model list admits any of a model's names (its id or an alias)."""
    if api_key is None or not api_key.allowed_models:
        return True
    return any(name in api_key.allowed_models for name in names)


def check_model_allowed(api_key: ApiKey | None, names: list[str], *, param: str = "model") -> None:
    if not may_use(api_key, names):
        raise PermissionDenied(f"This API key may not use the model '{names[0]}'.", param=param)
