"""Short-lived client secrets (`ek_...`): what a browser holds instead of an API key.

Minted for a key (POST /v1/realtime/client_secrets, or the playground for a staff user), a secret
stands for that key until it expires: the key's checks (revoked, expired, rate limit) apply again
on every use, and its hash, never its secret, is what is stored. A secret may also carry a Realtime
session's configuration, applied when a session opens with it. Kept in Django's cache (Redis when
configured, so every replica knows them) under the hash of their value.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache

from registry.models import ApiKey

PREFIX = "ek_"  # noqa: S105 - the prefix of minted secrets, not a secret


@dataclass(frozen=True)
class Minted:
    key_hash: str | None  # None: minted on a server that needs no key
    prefix: str  # the key's prefix, for logs and the audit log
    session: dict[str, Any]
    expires_at: int


def _cache_key(value: str) -> str:
    return "voiceproxy:client-secret:" + hashlib.sha256(value.encode()).hexdigest()


def is_client_secret(token: str) -> bool:
    return token.startswith(PREFIX)


async def mint(
    *, api_key: ApiKey | None, seconds: int, session: dict[str, Any] | None = None
) -> tuple[str, int]:
    """A new secret standing for `api_key` for `seconds`: (its value, when it expires)."""
    value = PREFIX + secrets.token_urlsafe(32)
    expires_at = int(time.time()) + seconds
    minted = {
        "key_hash": api_key.secret_hash if api_key is not None else None,
        "prefix": api_key.prefix if api_key is not None else "",
        "session": session or {},
        "expires_at": expires_at,
    }
    await cache.aset(_cache_key(value), minted, timeout=seconds)
    return value, expires_at


def _minted(found: Any) -> Minted | None:
    if not isinstance(found, dict) or found.get("expires_at", 0) <= time.time():
        return None
    return Minted(found["key_hash"], found["prefix"], found["session"], found["expires_at"])


def redeem(value: str) -> Minted | None:
    """What an unexpired secret stands for, or None. Blocking (the cache may be Redis)."""
    return _minted(cache.get(_cache_key(value)))


async def aredeem(value: str) -> Minted | None:
    return _minted(await cache.aget(_cache_key(value)))
