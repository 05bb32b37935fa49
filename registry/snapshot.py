"""The registry in memory: what every /v1/ request looks up, without reading it again each time.

A request needs its API key, a speech model or two, a voice and perhaps an upstream: five small
queries, each behind a thread hop, ~4-7 ms before any work starts. Instead each process keeps a
`Snapshot` of the enabled models, voices and upstreams (and the keys it has seen), and checks it
once per unit of work (each /v1/ request, or any other audit scope) against `RegistryVersion`, a
number every registry change bumps in its own transaction (registry/models.py). A change made
anywhere (the admin, `loadregistry`, another process or host on the same database) therefore
applies from the next request on, at the cost of one indexed one-row read on a kept connection
(registry/db_threads.py). A snapshot is also read
again after `MAX_AGE_S`, for changes made beside Django (SQL by hand).

Snapshots are read-only: their rows are shared by concurrent requests and must not be saved.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from registry import audit, db_threads
from registry.models import (
    ApiKey,
    RegistryVersion,
    SpeechModel,
    SpeechToTextModel,
    TextToSpeechModel,
    Upstream,
    Voice,
)

MAX_AGE_S = 60.0
MAX_UNKNOWN_KEYS = 10_000


@dataclass(frozen=True)
class Snapshot:
    version: int | None
    loaded_at: float
    stt_models: tuple[SpeechToTextModel, ...]  # enabled, by model id
    tts_models: tuple[TextToSpeechModel, ...]
    voices: dict[int, tuple[Voice, ...]]  # model pk -> its enabled voices, oldest first
    upstreams: tuple[Upstream, ...]  # enabled, by name
    keys: dict[str, ApiKey] = field(default_factory=dict)  # secret hash -> key, filled as keys are seen
    unknown: set[str] = field(default_factory=set)  # hashes of no key (bounded): a flood of bad keys

    def models(self, task: str) -> tuple[SpeechModel, ...]:
        return self.stt_models if task == "stt" else self.tts_models

    def api_key(self, secret_hash: str) -> ApiKey | None:
        """The key with this secret hash, revoked and expired ones included; None if there is none.

        Blocking on a key not seen since the last change: call from sync code off the event loop.
        """
        key = self.keys.get(secret_hash)
        if key is None and secret_hash not in self.unknown:
            key = db_threads.foreground.call(_read_key, secret_hash)
            if key is not None:
                self.keys[secret_hash] = key
            elif len(self.unknown) < MAX_UNKNOWN_KEYS:
                self.unknown.add(secret_hash)  # a key made later bumps the version: a new snapshot
        return key


_latest: Snapshot | None = None
# The snapshot checked in this unit of work, with its audit record: one check per audit scope.
_checked: ContextVar[tuple[audit.AuditRecord, Snapshot] | None] = ContextVar(
    "voiceproxy_snapshot", default=None
)


async def current() -> Snapshot:
    """The registry as of this unit of work.

    Checked against the database on the first call in each audit scope (an HTTP request, a
    WebSocket turn, a command or bench run: registry/audit.py) and kept for the rest of it;
    outside any scope, checked on every call. Usable from any async code.
    """
    checked = _memo()
    if checked is None:
        checked = _remember(await db_threads.foreground.run(_fresh))
    return checked


def current_sync() -> Snapshot:
    """`current()` for sync code running off the event loop (key checks in registry/access.py)."""
    checked = _memo()
    if checked is None:
        checked = _remember(db_threads.foreground.call(_fresh))
    return checked


def _memo() -> Snapshot | None:
    record = audit.current()
    checked = _checked.get()
    if record is not None and checked is not None and checked[0] is record:
        return checked[1]
    return None


def _remember(snapshot: Snapshot) -> Snapshot:
    record = audit.current()
    if record is not None:
        _checked.set((record, snapshot))
    return snapshot


def _fresh() -> Snapshot:
    """The kept snapshot if the registry has not changed, else a new one (on the foreground thread)."""
    global _latest
    version = RegistryVersion.objects.filter(pk=1).values_list("version", flat=True).first()
    latest = _latest
    if latest is not None and latest.version == version and time.monotonic() - latest.loaded_at < MAX_AGE_S:
        return latest
    # The version is read first: a change committed while loading makes the next check reload.
    voices: dict[int, list[Voice]] = {}
    for voice in Voice.objects.filter(enabled=True, model__enabled=True).order_by("pk"):
        voices.setdefault(voice.model_id, []).append(voice)
    _latest = Snapshot(
        version=version,
        loaded_at=time.monotonic(),
        stt_models=tuple(SpeechToTextModel.objects.filter(enabled=True).order_by("model_id")),
        tts_models=tuple(TextToSpeechModel.objects.filter(enabled=True).order_by("model_id")),
        voices={pk: tuple(rows) for pk, rows in voices.items()},
        upstreams=tuple(Upstream.objects.filter(enabled=True).order_by("name")),
    )
    return _latest


def _read_key(secret_hash: str) -> ApiKey | None:
    return ApiKey.objects.filter(secret_hash=secret_hash).first()
