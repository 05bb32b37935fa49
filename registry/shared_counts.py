"""Counters every server process shares through Django's cache (Redis in production, so every
replica sees the same count; one process's memory on the embedded default).

A Realtime key's open sessions are counted here, so VOICEPROXY_REALTIME_MAX_SESSIONS_PER_KEY holds
across replicas. Taking a place is atomic (the cache's add + incr: Redis INCR). A process that dies
without giving its places back leaks them until the counter expires: `ttl`, the longest a holder can
live (a Realtime session's maximum), refreshed at every take.
"""

from __future__ import annotations

import logging

from django.core.cache import cache

logger = logging.getLogger(__name__)


def _key(name: str) -> str:
    return f"voiceproxy:count:{name}"


async def take(name: str, *, limit: int, ttl: int) -> bool:
    """Take one of `limit` places under `name`; False, taking nothing, when all are taken."""
    key = _key(name)
    for _ in range(3):  # the counter may expire between add and incr: start again
        await cache.aadd(key, 0, timeout=ttl)
        try:
            count = await cache.aincr(key)
        except ValueError:
            continue
        if count > limit:
            await cache.adecr(key)
            return False
        await cache.atouch(key, timeout=ttl)
        return True
    logger.warning("could not count %s: taking the place uncounted", name)
    return True


async def give_back(name: str) -> None:
    key = _key(name)
    try:
        if await cache.adecr(key) < 0:
            await cache.aset(key, 0, timeout=1)  # expired and recreated meanwhile: never below zero
    except ValueError:
        pass  # expired: nothing left to give back to


async def count(name: str) -> int:
    return int(await cache.aget(_key(name)) or 0)
