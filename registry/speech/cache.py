"""The model cache: the one place that constructs engines.

- Loads on first use; one load at a time per model (single flight): concurrent callers wait for
  the first caller's load and share its engine, or its failure.
- Keeps a model for its idle TTL after its last use (0: forever); a reaper thread unloads it.
- Holds at most `VOICEPROXY_MODEL_CACHE_SIZE` models; loading one more evicts the least recently
  used model that no request is using.
- Thread-safe: it is used from worker threads (`with model_cache.use(model) as engine:`) and
  from the admin's thread (status, load now, unload).
- A failed load is remembered for the admin and raises ModelUnavailable naming the model; the
  next request tries again.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

from django.conf import settings

from registry.errors import ModelUnavailable
from registry.resolved import ResolvedModel
from registry.speech import sources
from registry.speech.engines import engine_class
from registry.speech.engines.base import EngineError, EngineSpec, SpeechToText, TextToSpeech
from registry.speech.sources import SourceError

logger = logging.getLogger(__name__)

_REAP_EVERY = 5.0  # seconds between idle sweeps


@dataclass
class Entry:
    model: ResolvedModel
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    engine: Any = None
    loaded_at: datetime | None = None
    load_seconds: float = 0.0
    last_used: float = field(default_factory=time.monotonic)
    uses: int = 0
    in_use: int = 0
    error: str = ""
    failed_at: datetime | None = None


@dataclass(frozen=True)
class Status:
    """What the admin shows of one model in this process's cache."""

    model_id: str
    state: str  # "loaded", "loading", "failed", "not loaded"
    device: str = ""
    loaded_at: datetime | None = None
    load_seconds: float = 0.0
    uses: int = 0
    in_use: int = 0
    idle_seconds: float = 0.0
    error: str = ""


class ModelCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[EngineSpec, Entry] = {}
        self._reaper: threading.Thread | None = None
        self._failures: dict[str, tuple[str, datetime]] = {}  # model id -> last load error, for the admin

    @contextmanager
    def use(self, model: ResolvedModel) -> Iterator[Any]:
        """Yield the loaded engine for `model`, loading it first if needed. Blocks: call in a worker.

        Raises ModelUnavailable when the model cannot be loaded.
        """
        entry = self._entry(model)  # pinned: neither evicted nor reaped while we load or use it
        try:
            engine = self._ensure_loaded(entry)
            with self._lock:
                entry.uses += 1
            yield engine
        finally:
            with self._lock:
                entry.in_use -= 1
                entry.last_used = time.monotonic()

    def stt(self, model: ResolvedModel) -> AbstractContextManager[SpeechToText]:
        """`use()` for a speech-to-text model: the engine typed as the STT Protocol."""
        return cast("AbstractContextManager[SpeechToText]", self.use(model))

    def tts(self, model: ResolvedModel) -> AbstractContextManager[TextToSpeech]:
        """`use()` for a text-to-speech model: the engine typed as the TTS Protocol."""
        return cast("AbstractContextManager[TextToSpeech]", self.use(model))

    def load(self, model: ResolvedModel) -> None:
        """Load now (the admin's action). Raises ModelUnavailable."""
        entry = self._entry(model)
        try:
            self._ensure_loaded(entry)
        finally:
            with self._lock:
                entry.in_use -= 1
                entry.last_used = time.monotonic()

    def unload(self, model_id: str) -> bool:
        """Drop every cached engine of `model_id`; requests using one keep it until they finish."""
        with self._lock:
            specs = [spec for spec, e in self._entries.items() if e.model.model_id == model_id]
            for spec in specs:
                del self._entries[spec]
        if specs:
            logger.info("unloaded %s", model_id)
            gc.collect()
        return bool(specs)

    def status(self, model_id: str) -> Status:
        with self._lock:
            entries = [e for e in self._entries.values() if e.model.model_id == model_id]
            if not entries:
                failure = self._failures.get(model_id)
                if failure is not None:
                    return Status(model_id=model_id, state="failed", error=failure[0])
                return Status(model_id=model_id, state="not loaded")
            entry = max(entries, key=lambda e: e.last_used)
            if entry.engine is not None:
                state = "loaded"
            elif entry.error and not entry.load_lock.locked():
                state = "failed"
            else:
                state = "loading"
            return Status(
                model_id=model_id,
                state=state,
                device=getattr(entry.engine, "device", "") if entry.engine is not None else "",
                loaded_at=entry.loaded_at,
                load_seconds=entry.load_seconds,
                uses=entry.uses,
                in_use=entry.in_use,
                idle_seconds=time.monotonic() - entry.last_used,
                error=entry.error,
            )

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return [e.model.model_id for e in self._entries.values() if e.engine is not None]

    def _entry(self, model: ResolvedModel) -> Entry:
        with self._lock:
            entry = self._entries.get(model.spec)
            if entry is None:
                entry = self._entries[model.spec] = Entry(model=model)
            else:
                entry.model = model  # the TTL may have been edited
            entry.in_use += 1
            entry.last_used = time.monotonic()
            self._start_reaper()
            return entry

    def _ensure_loaded(self, entry: Entry) -> Any:
        if entry.engine is not None:
            return entry.engine
        with entry.load_lock:  # single flight: later callers wait here for the first one
            if entry.engine is not None:
                return entry.engine
            model = entry.model
            if entry.error:
                # The load we waited for failed: share its failure. The entry is already out of
                # the cache, so the next request starts a fresh load.
                raise ModelUnavailable(
                    f"The model '{model.model_id}' could not be loaded: {entry.error}", param="model"
                )
            started = time.perf_counter()
            try:
                cls = engine_class(model.spec.engine)
                # A `pypi:` source becomes a local path here, in the loading thread (it may copy files).
                source = sources.local(model.spec.source, model.spec.download_root)
                engine = cls(replace(model.spec, source=source))
            except Exception as exc:
                reason = (
                    str(exc) if isinstance(exc, EngineError | SourceError) else f"{type(exc).__name__}: {exc}"
                )
                entry.error = reason
                entry.failed_at = datetime.now(tz=UTC)
                logger.exception("loading %s failed", model.model_id)
                with self._lock:
                    # Forget the failed entry so the next request tries again from scratch,
                    # but keep its error for the admin.
                    if self._entries.get(model.spec) is entry:
                        del self._entries[model.spec]
                    self._failures[model.model_id] = (reason, entry.failed_at)
                raise ModelUnavailable(
                    f"The model '{model.model_id}' could not be loaded: {reason}", param="model"
                ) from exc
            entry.load_seconds = time.perf_counter() - started
            entry.loaded_at = datetime.now(tz=UTC)
            entry.error = ""
            entry.engine = engine
            with self._lock:
                self._failures.pop(model.model_id, None)
            logger.info(
                "loaded %s on %s in %.2f s",
                model.model_id,
                getattr(engine, "device", "?"),
                entry.load_seconds,
            )
        self._evict_over_capacity(keep=entry)
        return entry.engine

    def last_failure(self, model_id: str) -> tuple[str, datetime] | None:
        with self._lock:
            return self._failures.get(model_id)

    def _evict_over_capacity(self, *, keep: Entry) -> None:
        limit = settings.VOICEPROXY_MODEL_CACHE_SIZE
        with self._lock:
            loaded = [e for e in self._entries.values() if e.engine is not None]
            excess = len(loaded) - limit
            victims = sorted(
                (e for e in loaded if e is not keep and e.in_use == 0), key=lambda e: e.last_used
            )[: max(0, excess)]
            for victim in victims:
                del self._entries[victim.model.spec]
                logger.info("evicted %s (cache holds at most %d models)", victim.model.model_id, limit)
        if victims:
            gc.collect()

    def reap(self) -> list[str]:
        """Unload models idle past their TTL; returns their ids."""
        now = time.monotonic()
        with self._lock:
            idle = [
                e
                for e in self._entries.values()
                if e.engine is not None
                and e.in_use == 0
                and e.model.idle_ttl > 0
                and now - e.last_used > e.model.idle_ttl
            ]
            for entry in idle:
                del self._entries[entry.model.spec]
        for entry in idle:
            logger.info("unloaded %s after %d s idle", entry.model.model_id, entry.model.idle_ttl)
        if idle:
            gc.collect()
        return [e.model.model_id for e in idle]

    def _start_reaper(self) -> None:
        # Called with self._lock held. Started lazily: daphne has no lifespan hooks, and
        # importing this module (migrate, the admin) must not start threads.
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap_forever, name="voiceproxy-reaper", daemon=True)
            self._reaper.start()

    def _reap_forever(self) -> None:
        while True:
            time.sleep(_REAP_EVERY)
            try:
                self.reap()
            except Exception:
                logger.exception("model cache reaper failed")


model_cache = ModelCache()
