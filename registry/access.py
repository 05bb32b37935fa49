"""Who may use the gateway: an API key's secret -> its ApiKey, and what that key may use.

Plain functions, no HTTP: the DRF adapter (registry/api/auth.py), a WebSocket consumer or a script
call `authenticate(secret)` alike and get the key or a typed error (AuthenticationFailed,
RateLimited). Keys come from the in-memory registry (registry/snapshot.py), checked against the
database once per audit scope: a revoked key fails from the next request on.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from registry import audit, client_secrets, db_threads, keys, snapshot
from registry.errors import AuthenticationFailed, PermissionDenied, RateLimited
from registry.models import ApiKey

BEARER_HEADERS = {"WWW-Authenticate": 'Bearer realm="voiceproxy"'}
# last_used is a hint for operators, not a counter: writing it at most this often spares the
# database one UPDATE per request.
_LAST_USED_RESOLUTION = timedelta(seconds=30)


def refused(message: str) -> AuthenticationFailed:
    return AuthenticationFailed(message, headers=BEARER_HEADERS)


def authenticate(secret: str, *, client: str = "") -> ApiKey:
    """The key whose secret this is, if it is valid now; records it on the current audit scope.

    `client` (an address) is throttled after VOICEPROXY_AUTH_FAILURES_PER_MINUTE failed checks in a
    minute: guessing keys must not crowd out valid callers. Blocking (a key not seen since the
    registry last changed is read from the database): call it off the event loop, or use
    `aauthenticate`. Raises AuthenticationFailed (unknown, revoked or expired key) and RateLimited
    (over the key's per-minute limit, or the client's failures).
    """
    _check_failures(client)
    try:
        if client_secrets.is_client_secret(secret):
            return _redeemed(secret)
        return _authenticate(secret)
    except AuthenticationFailed:
        _count_failure(client)
        raise


def _redeemed(value: str) -> ApiKey:
    """The key a client secret stands for (registry/client_secrets.py), checked as the key itself."""
    minted = client_secrets.redeem(value)
    if minted is None or minted.key_hash is None:
        raise refused("The client secret is unknown or has expired.")
    return authenticate_hashed(minted.key_hash, shown=minted.prefix)


def _authenticate(secret: str) -> ApiKey:
    shown = keys.prefix_of(secret) if secret.startswith(keys.SECRET_PREFIX) else ""
    return authenticate_hashed(keys.hash_secret(secret), shown=shown)


def authenticate_hashed(secret_hash: str, *, shown: str) -> ApiKey:
    """`authenticate()` for a key known by its hash (a Realtime client secret names the key that
    minted it this way), with the same checks: revoked, expired, rate limit. `shown` is the prefix
    logged. Blocking, as `authenticate()`."""
    record = audit.current()
    if record is not None:
        record.key_prefix = shown
    key = snapshot.current_sync().api_key(secret_hash)
    if key is None:
        hint = f" ({shown}…)" if shown else ""
        raise refused(f"Incorrect API key provided{hint}.")
    if record is not None:
        record.api_key_id = key.pk
    if key.is_revoked:
        raise refused(f"The API key {key.prefix}… has been revoked.")
    if key.is_expired:
        raise refused(f"The API key {key.prefix}… has expired.")
    _check_rate(key)
    now = timezone.now()
    if key.last_used is None or now - key.last_used > _LAST_USED_RESOLUTION:
        key.last_used = now  # the snapshot's copy: the next requests skip this
        db_threads.background.later(_touch, key.pk, now, what=f"record the last use of key {key.prefix}")
    return key


async def aauthenticate(secret: str, *, client: str = "") -> ApiKey:
    """`authenticate()` from async code: runs it on a thread (contextvars, so the audit scope, go along)."""
    return await asyncio.to_thread(authenticate, secret, client=client)


def _failures_counter(client: str, now: float) -> str:
    return f"voiceproxy:authfail:{client}:{int(now // 60)}"


def _check_failures(client: str) -> None:
    limit = settings.VOICEPROXY_AUTH_FAILURES_PER_MINUTE
    if not client or not limit:
        return
    now = time.time()
    if (cache.get(_failures_counter(client, now)) or 0) >= limit:
        raise RateLimited(
            f"Too many failed API-key checks from {client}; retry after the minute ends.",
            retry_after=60 - int(now % 60),
        )


def _count_failure(client: str) -> None:
    if not client or not settings.VOICEPROXY_AUTH_FAILURES_PER_MINUTE:
        return
    counter = _failures_counter(client, time.time())
    cache.add(counter, 0, timeout=120)
    try:
        cache.incr(counter)
    except ValueError:  # expired between add and incr
        cache.add(counter, 1, timeout=120)


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


def may_use(api_key: ApiKey | None, names: list[str]) -> bool:
    """Whether the key's model list admits any of a model's names (its id or an alias)."""
    if api_key is None or not api_key.allowed_models:
        return True
    return any(name in api_key.allowed_models for name in names)


def check_model_allowed(api_key: ApiKey | None, names: list[str], *, param: str = "model") -> None:
    if not may_use(api_key, names):
        raise PermissionDenied(f"This API key may not use the model '{names[0]}'.", param=param)
