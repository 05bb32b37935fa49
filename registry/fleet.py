"""The server processes as the admin sees them: each with its model cache (this process's read now,
the others' as they last reported through registry/processes.py), a model across all of them, and
the commands that load or unload models in them.

Blocking (ORM): call from sync code off the event loop, such as the admin's views.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

import voiceproxy
from registry import catalog
from registry.errors import OpenAIError
from registry.models import CacheCommand, ServerProcess
from registry.processes import GONE_AFTER_BEATS, heartbeat, parse_status, pool_stats, registry_row
from registry.speech.cache import Status, model_cache
from registry.speech.memory import resident_bytes

_READ_MEMO_SECONDS = 1.0  # the admin's list cells share one read of the rows


@dataclass(frozen=True)
class ProcessView:
    """One server process as the admin shows it."""

    id: str
    hostname: str
    pid: int
    version: str
    started: datetime
    heartbeat: datetime | None  # None: this process, not reporting (not served by daphne)
    interval: float
    memory_bytes: int
    pool: dict[str, int]
    models: tuple[Status, ...]
    live: bool
    this: bool  # the process serving this page: its cache read now, not as last reported

    @property
    def name(self) -> str:
        return f"{self.hostname}:{self.pid}"

    @property
    def reporting(self) -> bool:
        return self.heartbeat is not None

    def model(self, model_id: str) -> Status | None:
        return next((m for m in self.models if m.model_id == model_id), None)


@dataclass(frozen=True)
class Across:
    """One model in the cache of every live process."""

    model_id: str
    seen: tuple[tuple[ProcessView, Status | None], ...]

    def where(self, state: str) -> list[tuple[ProcessView, Status]]:
        return [(p, m) for p, m in self.seen if m is not None and m.state == state]

    @property
    def state(self) -> str:
        """E.g. "loaded" (one process), "loaded in 2 of 3 processes", "not loaded in any of 2 processes"."""
        total = len(self.seen)
        if total <= 1:
            model = self.seen[0][1] if self.seen else None
            return model.state if model is not None else "not loaded"
        counts = [(s, len(self.where(s))) for s in ("loaded", "loading", "failed")]
        counts = [(s, n) for s, n in counts if n]
        if not counts:
            return f"not loaded in any of {total} processes"
        (state, n), *rest = counts
        return "; ".join([f"{state} in {n} of {total} processes", *(f"{s} in {k}" for s, k in rest)])

    @property
    def devices(self) -> str:
        return ", ".join(sorted({m.device for _, m in self.where("loaded") if m.device}))

    @property
    def loaded_at(self) -> datetime | None:
        times = [m.loaded_at for _, m in self.where("loaded") if m.loaded_at]
        return min(times) if times else None

    @property
    def uses(self) -> int:
        return sum(m.uses for _, m in self.where("loaded"))

    @property
    def in_use(self) -> int:
        return sum(m.in_use for _, m in self.where("loaded"))

    @property
    def errors(self) -> list[tuple[ProcessView, str]]:
        return [(p, m.error) for p, m in self.where("failed") if m.error]


@dataclass(frozen=True)
class Fleet:
    processes: tuple[ProcessView, ...]  # this process first, then the others; gone ones last

    @property
    def live(self) -> list[ProcessView]:
        return [p for p in self.processes if p.live]

    @property
    def others(self) -> list[ProcessView]:
        """The live processes that take commands, but not this one."""
        return [p for p in self.live if p.reporting and not p.this]

    def get(self, process_id: str) -> ProcessView | None:
        return next((p for p in self.processes if p.id == process_id), None)

    def across(self, model_id: str) -> Across:
        return Across(model_id, tuple((p, p.model(model_id)) for p in self.live))


_memo_lock = threading.Lock()
_memo: tuple[float, list[ServerProcess]] | None = None


def _rows(fresh: bool) -> list[ServerProcess]:
    global _memo
    with _memo_lock:
        if not fresh and _memo is not None and time.monotonic() - _memo[0] < _READ_MEMO_SECONDS:
            return _memo[1]
    rows = list(ServerProcess.objects.all())
    with _memo_lock:
        _memo = (time.monotonic(), rows)
    return rows


def _local(row: ServerProcess | None) -> ProcessView:
    return ProcessView(
        id=heartbeat.id,
        hostname=heartbeat.hostname,
        pid=os.getpid(),
        version=voiceproxy.__version__,
        started=heartbeat.started,
        heartbeat=row.heartbeat if row is not None else (timezone.now() if heartbeat.running else None),
        interval=settings.VOICEPROXY_HEARTBEAT_SECONDS,
        memory_bytes=resident_bytes(),
        pool=pool_stats(),
        models=tuple(model_cache.statuses()),
        live=True,
        this=True,
    )


def read(*, fresh: bool = False) -> Fleet:
    """Every server process: this one (its cache read now), then the others as they last reported.

    Blocking (one query, shared for a second unless `fresh`): call it from sync code off the loop.
    """
    now = timezone.now()
    rows = _rows(fresh)
    own = next((r for r in rows if r.id == heartbeat.id), None)
    views = [_local(own)]
    for row in rows:
        if row.id == heartbeat.id:
            continue
        silent = timedelta(seconds=GONE_AFTER_BEATS * row.interval)
        views.append(
            ProcessView(
                id=row.id,
                hostname=row.hostname,
                pid=row.pid,
                version=row.version,
                started=row.started,
                heartbeat=row.heartbeat,
                interval=row.interval,
                memory_bytes=row.memory_bytes,
                pool=dict(row.pool or {}),
                models=tuple(parse_status(m) for m in row.cache or [] if isinstance(m, dict)),
                live=row.heartbeat >= now - silent,
                this=False,
            )
        )
    views.sort(key=lambda p: (not p.this, not p.live, p.hostname, p.started))
    return Fleet(tuple(views))


def send(*, action: str, model_id: str, targets: Iterable[str], requested_by: str = "") -> list[CacheCommand]:
    """Send `action` ("load" or "unload") for `model_id` to each target process id."""
    if action not in (CacheCommand.LOAD, CacheCommand.UNLOAD):
        raise ValueError(f"unknown cache action {action!r}")
    commands = [
        CacheCommand(target=t, action=action, model_id=model_id, requested_by=requested_by) for t in targets
    ]
    return CacheCommand.objects.bulk_create(commands)


def recent_commands(limit: int = 30) -> list[CacheCommand]:
    return list(CacheCommand.objects.order_by("-created", "-pk")[:limit])


def act_here(*, action: str, model_id: str) -> tuple[bool, str]:
    """Load or unload `model_id` in this process's cache now, from the admin's thread (a load blocks
    that page only, as Django runs each admin request on a thread of its own). Returns (ok, what
    happened)."""
    if action == CacheCommand.UNLOAD:
        return True, ("Unloaded." if model_cache.unload(model_id) else "Was not loaded.")
    model = registry_row(model_id)
    if model is None:
        return False, f"No model {model_id!r} in the registry."
    if not model.enabled:
        return False, f"{model_id} is disabled; enable it first."
    status = model_cache.status(model_id)
    if status.state == "loaded":
        return True, f"Already loaded on {status.device}."
    try:
        model_cache.load(catalog.resolved(model))
    except OpenAIError as exc:
        return False, exc.message
    status = model_cache.status(model_id)
    return True, f"Loaded on {status.device} in {status.load_seconds:.2f} s."
