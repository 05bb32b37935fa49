"""Where spoken replies are remembered by audio id, for multi-turn `{"role": "assistant", "audio": {"id"}}`.

Shared by every worker process and kept across restarts: Redis (through Django's cache) when
`REDIS_URL` is set, the database otherwise. Entries expire at the `expires_at` the client was given.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from chat.models import AudioReply

_PREFIX = "voiceproxy:audio:"


def new_id() -> str:
    return "audio_" + secrets.token_hex(16)


def expiry() -> datetime:
    return timezone.now() + timedelta(seconds=settings.VOICEPROXY_AUDIO_TTL)


async def save(audio_id: str, transcript: str, expires_at: datetime) -> None:
    if settings.REDIS_URL:
        ttl = max(1, int((expires_at - timezone.now()).total_seconds()))
        await cache.aset(_PREFIX + audio_id, transcript, timeout=ttl)
        return
    await AudioReply.objects.acreate(audio_id=audio_id, transcript=transcript, expires_at=expires_at)
    # Expired rows are dropped as new ones arrive, so the table holds about one TTL of replies.
    await AudioReply.objects.filter(expires_at__lt=timezone.now()).adelete()


async def transcript(audio_id: str) -> str | None:
    """The reply's transcript, or None when the id is unknown or expired."""
    if settings.REDIS_URL:
        return await cache.aget(_PREFIX + audio_id)
    reply = await AudioReply.objects.filter(audio_id=audio_id, expires_at__gt=timezone.now()).afirst()
    return reply.transcript if reply else None
