"""Liveness and readiness, outside /v1/ and without authentication."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from registry import preload
from voiceproxy import drain

logger = logging.getLogger(__name__)


async def health(request: HttpRequest) -> HttpResponse:
    """The same answer through Django (under daphne, `LoopHealth` answers first)."""
    return JsonResponse({"status": "ok"})


_OK = b'{"status": "ok"}'


class LoopHealth:
    """ASGI middleware answering `GET /health` before Django: from the event loop alone, so its
    latency shows whether the loop is free (through Django, each request also starts two threads
    for its thread-sensitive signal handlers, and the loop waits for them: bench/bench_load.py)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/health" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(_OK)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": _OK if scope["method"] == "GET" else b""})


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        logger.exception("readiness: database unreachable")
        return False
    finally:
        connection.close()


def _cache_ok() -> bool:
    try:
        cache.set("voiceproxy:ready", "1", timeout=5)
        return cache.get("voiceproxy:ready") == "1"
    except Exception:
        logger.exception("readiness: cache unreachable")
        return False


async def readiness() -> dict[str, Any]:
    """`{"status": "ok" | "unavailable" | "draining" | "preloading", "checks": {...}}`: the database
    (and Redis when configured) answer, the server is not shutting down, and its preloaded models
    are in."""
    checks = {"database": await sync_to_async(_database_ok, thread_sensitive=False)()}
    if settings.REDIS_URL:
        checks["redis"] = await sync_to_async(_cache_ok, thread_sensitive=False)()
    if drain.draining():  # shutting down: a load balancer should send no more work here
        return {"status": "draining", "checks": checks}
    if preload.pending():  # still loading VOICEPROXY_PRELOAD_MODELS: not warm yet
        return {"status": "preloading", "checks": checks}
    return {"status": "ok" if all(checks.values()) else "unavailable", "checks": checks}


async def ready(request: HttpRequest) -> HttpResponse:
    state = await readiness()
    return JsonResponse(state, status=200 if state["status"] == "ok" else 503)
