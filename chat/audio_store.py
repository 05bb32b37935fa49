"""Where spoken replies are remembered by audio id, for multi-turn `{"role": "assistant", "audio": {"id"}}`.

Shared by every worker process and kept across restarts: Redis (through Django's cache) when
`REDIS_URL` is set, the database otherwise. Entries expire at the `expires_at` the client was given.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from chat.models import AudioReply
from registry import db_threads
from registry.models import ApiKey

_PREFIX = "voiceproxy:audio:"
_PURGE_EVERY_S = 60.0
_last_purge = 0.0


def new_id() -> str:
    return "audio_" + secrets.token_hex(16)


def expiry() -> datetime:
    return timezone.now() + timedelta(seconds=settings.VOICEPROXY_AUDIO_TTL)


def owner_of(api_key: ApiKey | None) -> str:
    """Who a spoken reply belongs to: the key that asked for it (anonymous callers share one)."""
    return f"key:{api_key.pk}" if api_key is not None else "anonymous"


async def save(audio_id: str, transcript: str, expires_at: datetime, *, owner: str) -> None:
    if settings.REDIS_URL:
        ttl = max(1, int((expires_at - timezone.now()).total_seconds()))
        await cache.aset(_PREFIX + audio_id, {"owner": owner, "transcript": transcript}, timeout=ttl)
        return
    # On a kept connection, awaited: the id must resolve as soon as the client has it. get_or_create,
    # so that a repeat after a dropped connection is harmless.
    await db_threads.foreground.run(
        AudioReply.objects.get_or_create,
        audio_id=audio_id,
        defaults={"transcript": transcript, "expires_at": expires_at, "owner": owner},
    )
    # Expired rows are dropped as new ones arrive (at most once a minute, after this reply), so the
    # table holds about one TTL of replies.
    global _last_purge
    if time.monotonic() - _last_purge > _PURGE_EVERY_S:
        _last_purge = time.monotonic()
        db_threads.background.later(_purge, what="purge expired audio replies")


def _purge() -> None:
    AudioReply.objects.filter(expires_at__lt=timezone.now()).delete()


async def transcript(audio_id: str, *, owner: str) -> str | None:
    """The reply's transcript, or None when the id is unknown, expired, or another owner's (the
    same None: an id tells nothing about replies a caller may not read)."""
    if settings.REDIS_URL:
        stored = await cache.aget(_PREFIX + audio_id)
        ok = isinstance(stored, dict) and stored.get("owner") == owner
        return str(stored["transcript"]) if ok else None
    reply = await AudioReply.objects.filter(
        audio_id=audio_id, owner=owner, expires_at__gt=timezone.now()
    ).afirst()
    return reply.transcript if reply else None
