"""What the speech and chat benchmarks add to `bench.common.Gateway`: more models, an upstream, and the
gateway's own settings in the bench process.

- `kokoro_full_dir()`: the full-size random-weight Kokoro-82M (shared/recipes/make_tiny_kokoro.py --full),
  written once into .cache/kokoro-full (330 MB, ~7 s).
- `load_registry(gateway, registry)`: apply a registry dict with `manage.py loadregistry FILE`.
- `use_gateway_settings(gateway)`: point this process's Django at the gateway's settings and database, so
  `registry.speech.tts` and `registry.catalog` import here and the engines get the very EngineSpec and
  VoiceSpec
  the gateway builds from its rows. Only reads; the gateway's daphne owns the database.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.common import Gateway
from registry.speech.engines.base import EngineSpec, VoiceSpec
from tests.speech import kokoro_dir


def kokoro_full_dir() -> Path:
    """.cache/kokoro-full: Kokoro-82M's sizes with random weights (the real architecture's compute)."""
    return kokoro_dir("kokoro-full", full=True)


def load_registry(gateway: Gateway, registry: dict[str, Any], name: str = "bench-registry.json") -> str:
    """Write `registry` into the gateway's data dir and apply it; loadregistry's one-line summary."""
    path = gateway.data_dir / name
    path.write_text(json.dumps(registry, indent=2))
    return gateway.manage("loadregistry", str(path)).strip()


def use_gateway_settings(gateway: Gateway) -> None:
    """Configure Django in this process as the gateway's (same env, same SQLite file); logging at WARNING,
    so the engines' and the HTTP clients' INFO lines stay out of the figures."""
    import django

    for key, value in gateway.env.items():
        if key == "DJANGO_SETTINGS_MODULE" or key.startswith("VOICEPROXY_") or key == "DATABASE_URL":
            os.environ[key] = value
    for key in ("REDIS_URL", "SECRET_KEY", "SECRET_KEY_FILE"):  # Gateway leaves these out of its env
        if key not in gateway.env:
            os.environ.pop(key, None)
    os.environ["VOICEPROXY_LOG_LEVEL"] = "WARNING"
    django.setup()


def tts_target(model: str | None, voice: str) -> tuple[EngineSpec, VoiceSpec]:
    """The EngineSpec and VoiceSpec the gateway resolves for `model` (None: the default TTS model) and
    `voice` (ids or aliases), via registry.catalog itself. Needs `use_gateway_settings` first."""
    from asgiref.sync import async_to_sync
    from django.db import connections

    from registry import catalog

    async def resolve() -> tuple[EngineSpec, VoiceSpec]:
        resolved = await catalog.model_for(task="tts", api_key=None, name=model)
        return resolved.spec, await catalog.voice_for(model=resolved, name=voice)

    try:
        return async_to_sync(resolve)()
    finally:
        connections.close_all()


def stt_target(model: str) -> EngineSpec:
    """The EngineSpec the gateway resolves for the STT `model` (id or alias)."""
    from asgiref.sync import async_to_sync
    from django.db import connections

    from registry import catalog

    async def resolve() -> EngineSpec:
        return (await catalog.model_for(task="stt", api_key=None, name=model)).spec

    try:
        return async_to_sync(resolve)()
    finally:
        connections.close_all()
