"""Liveness and readiness, outside /v1/ and without authentication."""

from __future__ import annotations

import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from voiceproxy import drain

logger = logging.getLogger(__name__)


async def health(request: HttpRequest) -> HttpResponse:
    """Answers from the event loop alone: its latency shows whether the loop is free."""
    return JsonResponse({"status": "ok"})


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


async def ready(request: HttpRequest) -> HttpResponse:
    checks = {"database": await sync_to_async(_database_ok, thread_sensitive=False)()}
    if settings.REDIS_URL:
        checks["redis"] = await sync_to_async(_cache_ok, thread_sensitive=False)()
    ok = all(checks.values())
    if drain.draining():  # shutting down: a load balancer should send no more work here
        return JsonResponse({"status": "draining", "checks": checks}, status=503)
    return JsonResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503
    )
