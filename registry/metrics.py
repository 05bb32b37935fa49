"""Prometheus metrics: what each server process counts, summed over every process at each scrape.

Who observes what:
    request_finished()   the audit path (registry/audit.py `AuditRecord.finish`), once per unit of work:
                         requests, durations, stages, errors, audio seconds, upstream status and time
    model_loaded() ...   the model cache (registry/speech/cache.py): loads, failures, unloads, loaded
    pool_units() ...     the worker pool (registry/speech/workers.py): queue depth, running, 503s
    realtime_sessions()  Realtime admission (chat/realtime/admission.py): open sessions
    exposition()         a scrape: every process's values merged (registry/api/metrics.py serves it)

Several processes on a host (daphne processes, `manage.py` commands) each count their own, so
prometheus_client's multiprocess mode is on: settings.py points `PROMETHEUS_MULTIPROC_DIR` at
`VOICEPROXY_METRICS_DIR` (one per host name by default) before anything imports prometheus_client
(it decides at import), each process writes its values to memory-mapped files there named by kind
and pid, and a scrape of any of them merges them all. Replicas in separate containers each have their
own directory: Prometheus scrapes each one. The files' rule:
- Counters and histograms of processes that ended stay and are still summed, so a total never goes
  back when one process restarts. Clear the directory only when the whole server set is stopped.
- Live gauges (`livesum`: models loaded, queue depth, sessions) are removed when their process ends:
  on drain's exit (voiceproxy/drain.py) and at interpreter exit. A process starting removes the
  live gauges left under its own pid (a killed process whose pid it now has); it never removes
  another pid's files, since the directory may be shared with processes it cannot see. A process
  killed outright leaves its live gauges until its pid is reused or the directory is cleared.

Labels stay bounded whatever clients send: `route` is registry.routes.route_of() (unknown paths are
"(unknown)"), `model` is a registry model id or a chat model name that some upstream lists (any
other name is "other"), error codes are capped per process (further ones are "other").
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
from collections import Counter as Tally
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.exposition import choose_encoder

from registry.routes import route_of

if TYPE_CHECKING:
    from registry.audit import AuditRecord
    from registry.snapshot import Snapshot

logger = logging.getLogger(__name__)

OTHER = "other"
_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_LOAD_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

MULTIPROCESS = bool(getattr(values.ValueClass, "_multiprocess", False))
if MULTIPROCESS:
    # Before any value exists: live gauges a killed process with our pid left behind are not ours.
    multiprocess.mark_process_dead(os.getpid())
else:
    logger.warning(
        "prometheus_client was imported before voiceproxy.settings set PROMETHEUS_MULTIPROC_DIR: "
        "/metrics shows no values of this process"
    )

REQUESTS = Counter(
    "voiceproxy_requests",
    "Requests (units of work) finished, by route, method, status and model.",
    ["route", "method", "status", "status_class", "model"],
)
REQUEST_SECONDS = Histogram(
    "voiceproxy_request_duration_seconds",
    "Time from the request's start to its end (the last byte of a stream).",
    ["route", "model"],
    buckets=_SECONDS,
)
STAGE_SECONDS = Histogram(
    "voiceproxy_stage_duration_seconds",
    "Time spent in a stage (stt, llm, tts), or to its first output (llm_first_token, tts_first_audio,"
    " measured from the request's start), by the stage's model.",
    ["stage", "model"],
    buckets=_SECONDS,
)
ERRORS = Counter(
    "voiceproxy_errors",
    "Requests that failed, by route and the error's type and code.",
    ["route", "type", "code"],
)
AUDIO_SECONDS = Counter(
    "voiceproxy_audio_seconds",
    "Seconds of audio transcribed (in) and synthesised (out), by model.",
    ["direction", "model"],
)
UPSTREAM_REQUESTS = Counter(
    "voiceproxy_upstream_requests",
    "Requests forwarded to an upstream LLM, by its HTTP status ('none': no answer).",
    ["upstream", "status"],
)
UPSTREAM_SECONDS = Histogram(
    "voiceproxy_upstream_duration_seconds",
    "Time the upstream LLM took (the llm stage) by upstream.",
    ["upstream"],
    buckets=_SECONDS,
)
MODELS_LOADED = Gauge(
    "voiceproxy_models_loaded",
    "Models loaded, by model and device (summed over the live processes).",
    ["model", "device"],
    multiprocess_mode="livesum",
)
MODEL_MEMORY = Gauge(
    "voiceproxy_model_memory_bytes",
    "Memory the loaded models hold (measured as each loaded; summed over the live processes).",
    ["model", "device"],
    multiprocess_mode="livesum",
)
MODEL_LOADS = Counter("voiceproxy_model_loads", "Model loads, by result (ok, failed).", ["model", "result"])
MODEL_UNLOADS = Counter(
    "voiceproxy_model_unloads", "Model unloads, by reason (admin, idle, evicted).", ["model", "reason"]
)
MODEL_LOAD_SECONDS = Histogram(
    "voiceproxy_model_load_seconds", "Time a successful model load took.", ["model"], buckets=_LOAD_SECONDS
)
POOL_UNITS = Gauge(
    "voiceproxy_pool_units",
    "Units of work in the inference pool: waiting for a thread, or running.",
    ["state"],
    multiprocess_mode="livesum",
)
POOL_REJECTIONS = Counter(
    "voiceproxy_pool_rejections",
    "Work refused with 503 server_busy because the pool and its queue were full, by route.",
    ["route"],
)
REALTIME_SESSIONS = Gauge(
    "voiceproxy_realtime_sessions", "Open Realtime sessions.", multiprocess_mode="livesum"
)


# --- labels --------------------------------------------------------------------------------------

_known: tuple[object, dict[str, str]] = (None, {})  # (the snapshot it was read from, name -> task)


def _tasks() -> dict[str, str]:
    """Registry model ids and upstream chat model names -> "stt", "tts" or "llm", from the snapshot
    the last request checked (never a query: this runs as each request ends)."""
    global _known
    from registry import snapshot  # the ORM's models: not at import (settings' logging imports us)

    latest: Snapshot | None = snapshot._latest
    if latest is None:
        return {}
    seen, tasks = _known
    if seen is latest:
        return tasks
    tasks = {name: "llm" for upstream in latest.upstreams for name in upstream.chat_models or []}
    tasks.update({model.model_id: "stt" for model in latest.stt_models})
    tasks.update({model.model_id: "tts" for model in latest.tts_models})
    _known = (latest, tasks)
    return tasks


def model_label(name: str) -> str:
    """`name` if the registry knows it (a model id, an upstream's chat model), else "other"."""
    return name if name in _tasks() else OTHER


def _models_by_task(names: list[str]) -> dict[str, str]:
    """The first model of each task among a request's models, as labels. A name the registry does
    not know is a chat model (speech models are recorded by their resolved ids)."""
    tasks = _tasks()
    found: dict[str, str] = {}
    for name in names:
        task = tasks.get(name, "llm")
        found.setdefault(task, name if name in tasks else OTHER)
    return found


class _Bounded:
    """At most `limit` distinct label values per process (then "other"): for values that come
    from outside, such as an upstream's own error codes."""

    _SANE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if not self._SANE.match(value):
            return OTHER if value else ""
        with self.lock:
            if value in self.seen:
                return value
            if len(self.seen) >= self.limit:
                return OTHER
            self.seen.add(value)
            return value


_error_code = _Bounded(100)
_error_type = _Bounded(20)


# --- observations --------------------------------------------------------------------------------


def request_finished(record: AuditRecord, status_code: int, duration_ms: float) -> None:
    """One unit of work ended (called by the audit path, once per record)."""
    route = route_of(record.endpoint)
    models = _models_by_task(record.models)
    # A request is labelled by the model the client named: the chat model of a voice chat, else
    # its speech model.
    model = models.get("llm") or next(iter(models.values()), "")
    REQUESTS.labels(route, record.method, str(status_code), f"{status_code // 100}xx", model).inc()
    REQUEST_SECONDS.labels(route, model).observe(duration_ms / 1000)
    usage = record.usage
    stages = (
        ("stt", usage.stt_ms, "stt"),
        ("llm", usage.llm_ms, "llm"),
        ("llm_first_token", usage.llm_first_token_ms, "llm"),
        ("tts", usage.tts_ms, "tts"),
        ("tts_first_audio", usage.tts_first_audio_ms, "tts"),
    )
    for stage, ms, task in stages:
        if ms is not None:
            STAGE_SECONDS.labels(stage, models.get(task, "")).observe(ms / 1000)
    if usage.audio_seconds_in:
        AUDIO_SECONDS.labels("in", models.get("stt", "")).inc(usage.audio_seconds_in)
    if usage.audio_seconds_out:
        AUDIO_SECONDS.labels("out", models.get("tts", "")).inc(usage.audio_seconds_out)
    if record.error is not None:
        ERRORS.labels(route, _error_type(record.error.type), _error_code(str(record.error.code or ""))).inc()
    if usage.upstream:  # upstream names come from the registry: bounded
        status = str(usage.upstream_status) if usage.upstream_status is not None else "none"
        UPSTREAM_REQUESTS.labels(usage.upstream, status).inc()
        if usage.llm_ms is not None:
            UPSTREAM_SECONDS.labels(usage.upstream).observe(usage.llm_ms / 1000)


def model_loaded(model_id: str, *, seconds: float) -> None:
    MODEL_LOADS.labels(model_id, "ok").inc()
    MODEL_LOAD_SECONDS.labels(model_id).observe(seconds)


def model_load_failed(model_id: str) -> None:
    MODEL_LOADS.labels(model_id, "failed").inc()


def model_unloaded(model_id: str, *, reason: str) -> None:
    MODEL_UNLOADS.labels(model_id, reason).inc()


_loaded: set[tuple[str, str]] = set()


def models_loaded(loaded: list[tuple[str, str, int]]) -> None:
    """This process's loaded engines now, as (model id, device, memory bytes); the cache calls it
    after each change, under its lock. A pair no longer loaded is set to 0."""
    global _loaded
    counts = Tally((model, device) for model, device, _ in loaded)
    sizes: dict[tuple[str, str], int] = {}
    for model, device, size in loaded:
        sizes[(model, device)] = sizes.get((model, device), 0) + size
    for labels in _loaded - counts.keys():
        MODELS_LOADED.labels(*labels).set(0)
        MODEL_MEMORY.labels(*labels).set(0)
    for labels, count in counts.items():
        MODELS_LOADED.labels(*labels).set(count)
        MODEL_MEMORY.labels(*labels).set(sizes[labels])
    _loaded = set(counts)


def pool_units(*, waiting: int, running: int) -> None:
    POOL_UNITS.labels("waiting").set(waiting)
    POOL_UNITS.labels("running").set(running)


def pool_rejected(endpoint: str | None) -> None:
    POOL_REJECTIONS.labels(route_of(endpoint) if endpoint else "").inc()


def realtime_sessions(count: int) -> None:
    REALTIME_SESSIONS.set(count)


# --- scrape and exit -----------------------------------------------------------------------------


def exposition(accept: str = "") -> tuple[bytes, str]:
    """Every process's metrics, merged from the files: (body, content type) for a scrape's Accept
    header (Prometheus text, or OpenMetrics when asked). Reads files: call off the event loop."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def process_exiting() -> None:
    """This process's live gauges leave the sum (its counters stay). Safe to call twice."""
    if MULTIPROCESS:
        try:
            multiprocess.mark_process_dead(os.getpid())
        except OSError:
            logger.exception("could not remove this process's live gauges")


atexit.register(process_exiting)
