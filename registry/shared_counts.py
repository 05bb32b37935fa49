"""Places every server process shares through Django's cache (Redis in production, so every replica
sees the same count; one process's memory on the embedded default).

A Realtime key's open sessions are counted here, so VOICEPROXY_REALTIME_MAX_SESSIONS_PER_KEY holds
across replicas. Each place is a lease: a holder's id with an expiry (the longest its holder can
live: a Realtime session's maximum). Taking counts the unexpired leases and adds one atomically (a
Lua script on Redis: ZREMRANGEBYSCORE, ZCARD, ZADD on one sorted set); giving back removes the lease.
A process that dies without giving its places back leaks them only until their expiry, whatever the
key does meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from django.core.cache import cache

_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

_local: dict[str, dict[str, float]] = {}  # without Redis: name -> holder -> expiry, this process only
_local_lock = threading.Lock()


def _key(name: str) -> str:
    return f"voiceproxy:leases:{name}"


def _redis() -> Any | None:
    """The Redis client behind Django's cache, or None when the cache is not Redis."""
    backend = getattr(cache, "_cache", None)
    get_client = getattr(backend, "get_client", None)
    return get_client(write=True) if get_client is not None else None


def _take(name: str, holder: str, limit: int, ttl: int) -> bool:
    now = time.time()
    client = _redis()
    if client is not None:
        return bool(client.eval(_TAKE, 1, _key(name), now, limit, now + ttl, holder, ttl + 60))
    with _local_lock:
        leases = {h: e for h, e in _local.get(name, {}).items() if e > now}
        if len(leases) >= limit:
            _local[name] = leases
            return False
        leases[holder] = now + ttl
        _local[name] = leases
        return True


def _give_back(name: str, holder: str) -> None:
    client = _redis()
    if client is not None:
        client.zrem(_key(name), holder)
        return
    with _local_lock:
        _local.get(name, {}).pop(holder, None)


def _count(name: str) -> int:
    now = time.time()
    client = _redis()
    if client is not None:
        return int(client.zcount(_key(name), now, "+inf"))
    with _local_lock:
        return sum(1 for e in _local.get(name, {}).values() if e > now)


async def take(name: str, holder: str, *, limit: int, ttl: int) -> bool:
    """Lease one of `limit` places under `name` for `holder`, for `ttl` seconds at most; False,
    taking nothing, when all are leased."""
    return await asyncio.to_thread(_take, name, holder, limit, ttl)


async def give_back(name: str, holder: str) -> None:
    await asyncio.to_thread(_give_back, name, holder)


async def count(name: str) -> int:
    return await asyncio.to_thread(_count, name)
