"""Models a server process loads as it starts (VOICEPROXY_PRELOAD_MODELS), so the first request of
the day does not wait for a cold load, and a restarted replica is warm before it takes work:
/health/ready answers 503 "preloading" until the list is done (a failed or unknown model is logged
and skipped, never fatal). Loads run one after another in a thread of their own, through the model
cache like any load, within its memory budget."""

from __future__ import annotations

import logging
import threading

from django.conf import settings

from registry import catalog, snapshot
from registry.errors import OpenAIError
from registry.models import SpeechModel
from registry.speech.cache import model_cache

logger = logging.getLogger(__name__)

_pending = threading.Event()


def pending() -> bool:
    return _pending.is_set()


def start() -> threading.Thread | None:
    names = list(settings.VOICEPROXY_PRELOAD_MODELS)
    if not names:
        return None
    _pending.set()
    thread = threading.Thread(target=_preload, args=(names,), name="voiceproxy-preload", daemon=True)
    thread.start()
    return thread


def _find(registry: snapshot.Snapshot, name: str) -> SpeechModel | None:
    for row in (*registry.stt_models, *registry.tts_models):
        if name == row.model_id or name in (row.aliases or []):
            return row
    return None


def _preload(names: list[str]) -> None:
    try:
        for name in names:
            try:
                row = _find(snapshot.current_sync(), name)
                if row is None:
                    logger.warning("preload: no enabled speech model is named %r", name)
                    continue
                model_cache.load(catalog.resolved(row))
                logger.info("preloaded %s", row.model_id)
            except OpenAIError as exc:
                logger.error("preload: %s", exc.message)
            except Exception:
                logger.exception("preload of %r failed", name)
    finally:
        _pending.clear()
