"""The model cache: the one place that constructs engines.

- Loads on first use; one load at a time per model (single flight): concurrent callers wait for
  the first caller's load and share its engine, or its failure.
- Keeps a model for its idle TTL after its last use (0: forever); a reaper thread unloads it.
- Holds at most `VOICEPROXY_MODEL_CACHE_SIZE` models, and, when VOICEPROXY_MODEL_MEMORY sets a
  budget for a device, no more than that device's budget: loading one more evicts the least recently
  used models that no request is using. A model is sized before it loads (its last measured size,
  else its files) and measured as it loads (registry/speech/memory.py); one larger than its device's
  whole budget is refused (ModelUnavailable, code `model_too_large`), and one that does not fit
  beside models in use waits for none: it is refused for now (ModelMemoryBusy, 503 + Retry-After).
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

from registry import metrics
from registry.errors import ModelMemoryBusy, ModelUnavailable, OpenAIError
from registry.resolved import ResolvedModel
from registry.speech import memory, sources
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
    memory_bytes: int = 0  # measured as it loaded (or, before that, estimated): see memory.py
    device: str = ""  # where it loads, known before it does
    refusal: OpenAIError | None = None  # why the cache refused to load it (memory): for its waiters


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
    memory_bytes: int = 0  # an estimate: resident memory the load added (0 when unknown)


class ModelCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[EngineSpec, Entry] = {}
        self._reaper: threading.Thread | None = None
        self._failures: dict[str, tuple[str, datetime]] = {}  # model id -> last load error, for the admin
        self._sizes: dict[EngineSpec, int] = {}  # each spec's last measured size: the next estimate

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
            self._count([self._entries.pop(spec) for spec in specs], "admin")
        if specs:
            logger.info("unloaded %s", model_id)
            gc.collect()
        return bool(specs)

    def status(self, model_id: str) -> Status:
        with self._lock:
            return self._status(model_id)

    def statuses(self) -> list[Status]:
        """Every model this cache holds, is loading, or last failed to load (what a process reports)."""
        with self._lock:
            ids = {e.model.model_id for e in self._entries.values()} | set(self._failures)
            return [self._status(model_id) for model_id in sorted(ids)]

    def _status(self, model_id: str) -> Status:
        # Called with self._lock held.
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
            memory_bytes=entry.memory_bytes,
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
            if entry.refusal is not None:  # the load we waited for was refused: the same answer
                raise _again(entry.refusal)
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
                entry.device = memory.device_of(model.spec)
                disk = memory.on_disk(source)
                entry.memory_bytes = self._sizes.get(model.spec) or disk
                self._make_room(entry)
                with memory.Measure(entry.device) as measured:
                    engine = cls(replace(model.spec, source=source))
            except (ModelUnavailable, ModelMemoryBusy) as exc:  # no room: nothing was loaded
                with self._lock:
                    if self._entries.get(model.spec) is entry:
                        del self._entries[model.spec]
                    if isinstance(exc, ModelUnavailable):
                        self._failures[model.model_id] = (exc.message, datetime.now(tz=UTC))
                entry.error, entry.refusal = exc.message, exc
                raise
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
                metrics.model_load_failed(model.model_id)
                raise ModelUnavailable(
                    f"The model '{model.model_id}' could not be loaded: {reason}", param="model"
                ) from exc
            entry.load_seconds = time.perf_counter() - started
            # Only an estimate: other loads and requests may grow (or free) memory meanwhile; a load
            # that seemed to take nothing (its memory mapped, or freed elsewhere) keeps the estimate.
            if measured.bytes > 0:
                # Resident memory also grows with whatever else ran meanwhile: never more than twice
                # the model's files, so one noisy load cannot make it "too large" for good.
                entry.memory_bytes = min(measured.bytes, 2 * disk) if disk else measured.bytes
            self._sizes[model.spec] = entry.memory_bytes
            entry.loaded_at = datetime.now(tz=UTC)
            entry.error = ""
            entry.engine = engine
            with self._lock:
                self._failures.pop(model.model_id, None)
                self._count([], "")
            metrics.model_loaded(model.model_id, seconds=entry.load_seconds)
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
            # A model that measured larger than its estimate: the budget is kept by evicting more.
            budget = memory.budget(keep.device)
            if budget is not None:
                victims += self._evict_to_fit(keep, budget, need=0)
            self._count(victims, "evicted")
        if victims:
            gc.collect()

    def _make_room(self, entry: Entry) -> None:
        """Before a load: unload least recently used idle models on its device until it fits the
        device's budget. Raises ModelUnavailable when it is larger than the whole budget, and
        ServerBusy when it would fit only once models now in use are done."""
        budget = memory.budget(entry.device)
        if budget is None:
            return
        need = entry.memory_bytes
        model_id = entry.model.model_id
        if need > budget:
            raise ModelUnavailable(
                f"The model '{model_id}' needs about {_mib(need)} on {entry.device}; "
                f"VOICEPROXY_MODEL_MEMORY allows {_mib(budget)} there.",
                param="model",
                code="model_too_large",
            )
        with self._lock:
            # What idle models cannot free: decided before anything is evicted for nothing.
            pinned = sum(
                e.memory_bytes
                for e in self._entries.values()
                if e is not entry and e.device == entry.device and (e.in_use > 0 or e.load_lock.locked())
            )
            short = pinned + need - budget
            victims = [] if short > 0 else self._evict_to_fit(entry, budget, need=need)
            self._count(victims, "evicted")
        if victims:
            gc.collect()
        if short > 0:
            raise ModelMemoryBusy(
                f"The model '{model_id}' needs {_mib(need)} on {entry.device}, and the models in use "
                f"there leave {_mib(max(0, budget - pinned))} of VOICEPROXY_MODEL_MEMORY's "
                f"{_mib(budget)}; retry shortly.",
                retry_after=5,
            )

    def _held(self, entry: Entry) -> int:
        """Bytes held on `entry`'s device by the other loaded (or loading) models. Lock held."""
        return sum(
            e.memory_bytes
            for e in self._entries.values()
            if e is not entry and e.device == entry.device and (e.engine is not None or e.load_lock.locked())
        )

    def _evict_to_fit(self, entry: Entry, budget: int, *, need: int) -> list[Entry]:
        """Unload idle models on `entry`'s device, least recently used first, until what is held
        there plus `need` fits `budget`. Lock held; returns the unloaded entries."""
        idle = sorted(
            (
                e
                for e in self._entries.values()
                if e is not entry and e.engine is not None and e.in_use == 0 and e.device == entry.device
            ),
            key=lambda e: e.last_used,
        )
        victims: list[Entry] = []
        held = self._held(entry) + (entry.memory_bytes if entry.engine is not None else 0)
        while idle and held + need > budget:
            victim = idle.pop(0)
            del self._entries[victim.model.spec]
            held -= victim.memory_bytes
            victims.append(victim)
            logger.info(
                "evicted %s (%s on %s; VOICEPROXY_MODEL_MEMORY allows %s)",
                victim.model.model_id,
                _mib(victim.memory_bytes),
                entry.device,
                _mib(budget),
            )
        return victims

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
            self._count(idle, "idle")
        for entry in idle:
            logger.info("unloaded %s after %d s idle", entry.model.model_id, entry.model.idle_ttl)
        if idle:
            gc.collect()
        return [e.model.model_id for e in idle]

    def _count(self, unloaded: list[Entry], reason: str) -> None:
        """Metrics after a change (called with self._lock held): what was unloaded and why, and
        what is loaded now (set from the entries, so a load racing an unload cannot skew it)."""
        for entry in unloaded:
            if entry.engine is not None:
                metrics.model_unloaded(entry.model.model_id, reason=reason)
        loaded = [e for e in self._entries.values() if e.engine is not None]
        metrics.models_loaded(
            [(e.model.model_id, getattr(e.engine, "device", ""), e.memory_bytes) for e in loaded]
        )

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


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def _again(refusal: OpenAIError) -> OpenAIError:
    """The refusal a waiter shares, as a new exception of the same kind."""
    if isinstance(refusal, ModelMemoryBusy):
        return ModelMemoryBusy(refusal.message, retry_after=int(refusal.headers.get("Retry-After", "5")))
    return ModelUnavailable(refusal.message, param="model", code=refusal.code)
