"""The audit log: one RequestLog row per unit of work, failures and streams included.

Whoever starts the work opens the record: the HTTP middleware for each /v1/ request
(registry/api/middleware.py), a WebSocket consumer, a management command or the bench, with

    with audit.scope(method="POST", endpoint="/v1/audio/speech") as record:
        ...  # call services; they fill record.usage

Services never see the record's owner: they call `audit.usage()` (the typed `Usage` of the current
scope), `audit.add_model()` and `audit.fail()`, which act on the record in this context (contextvars
reach worker threads too). `record.finish(status)` hands the row to the background database thread
(registry/db_threads.py) exactly once: the INSERT never delays a response, rows land within
milliseconds and in order, and a failed INSERT is logged, never turned into a failed request.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from registry import db_threads, metrics
from registry.errors import OpenAIError, as_openai_error
from registry.journal import journal
from registry.routes import route_of

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
CLIENT_CLOSED = 499  # nginx's "client closed request": the client left before the response began

Accumulated = Literal["audio_seconds_in", "audio_seconds_out"]
Stage = Literal["stt_ms", "llm_ms", "tts_ms"]


@dataclass
class Usage:
    """What the work used and how long each stage took: the RequestLog columns services fill.

    A stage's time is the wall-clock time during which any of its work ran: work of one stage that
    overlaps itself (two audio parts transcribed at once, sentences synthesised in parallel) counts
    once, so no stage is longer than the whole. Different stages may overlap each other (a streamed
    voice reply's llm and tts run at once). `*_first_*` are measured from the start of the scope.
    """

    stt_ms: float | None = None
    llm_ms: float | None = None
    llm_first_token_ms: float | None = None
    tts_ms: float | None = None
    tts_first_audio_ms: float | None = None
    audio_seconds_in: float | None = None
    audio_seconds_out: float | None = None
    characters_in: int | None = None
    upstream: str = ""
    upstream_status: int | None = None
    stt_cache_hits: int = 0
    streamed: bool = False
    client_disconnected: bool = False
    reply_capped: bool = False  # the spoken reply stopped at VOICEPROXY_MAX_SPOKEN_CHARS
    session_id: str = ""  # a Realtime session's id, on its row and its responses'
    turns: int | None = None  # a Realtime session's user turns
    tokens: dict[str, Any] | None = None  # the upstream's token usage, as it reported it
    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict, repr=False)

    def add(self, name: Accumulated, amount: float) -> None:
        """Add to an amount that may come in parts (the audio of several parts or sentences)."""
        setattr(self, name, (getattr(self, name) or 0.0) + amount)

    def span(self, name: Stage, started: float, ended: float | None = None) -> None:
        """A stage ran from `started` to `ended` (time.perf_counter(); now when None)."""
        spans = self.spans.setdefault(name, [])
        spans.append((started, time.perf_counter() if ended is None else ended))
        setattr(self, name, _covered(spans) * 1000)


def _covered(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of the spans."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


@dataclass
class AuditRecord:
    request_id: str
    method: str
    endpoint: str
    client_request_id: str = ""  # the caller's own id for the work (x-request-id), kept beside ours
    started: float = field(default_factory=time.perf_counter)
    api_key_id: int | None = None
    key_prefix: str = ""
    models: list[str] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    error: OpenAIError | None = None  # why the work failed: the row's error columns
    usage: Usage = field(default_factory=Usage)
    _written: bool = False

    def add_model(self, name: str) -> None:
        if name not in self.models:
            self.models.append(name)

    def fail(self, exc: BaseException) -> OpenAIError:
        """Record why the work failed (the first reason wins) and return it as an OpenAIError."""
        error = as_openai_error(exc)
        if self.error is None:
            self.error = error
        return error

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def mark_first(self, name: Literal["llm_first_token_ms", "tts_first_audio_ms"]) -> None:
        """Set a first-event time (since the scope began) unless it is already set."""
        if getattr(self.usage, name) is None:
            setattr(self.usage, name, self.elapsed_ms())

    def finish(self, status_code: int) -> Future[None] | None:
        """Queue the row (once; later calls do nothing) and return at once. The duration ends now."""
        if self._written:
            return None
        self._written = True
        usage = asdict(self.usage)
        tokens = usage.pop("tokens")
        del usage["spans"]
        error = self.error
        fields = {
            "request_id": self.request_id,
            "client_request_id": self.client_request_id,
            "api_key_id": self.api_key_id,
            "key_prefix": self.key_prefix,
            "method": self.method,
            "endpoint": self.endpoint,
            "route": route_of(self.endpoint),
            "model_names": ",".join(self.models)[:500],
            "status_code": status_code,
            "error_type": error.type if error else "",
            "error_code": str(error.code or "")[:50] if error else "",
            "error_message": error.message[:2000] if error else "",
            "duration_ms": self.elapsed_ms(),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "usage": tokens,
            **usage,
        }
        fields = {name: storable(value) for name, value in fields.items()}
        journal.ended(fields)  # survives this process; the database's copy comes a moment later
        # An INSERT repeated after a dropped connection may, rarely, log a request twice:
        # better than not at all.
        future = db_threads.background.later(
            _insert, fields, what=f"write the audit row for {self.request_id}"
        )
        # A row that could not be written stays in the journal: the next start writes it.
        future.add_done_callback(
            lambda done: journal.written(ok=not done.cancelled() and not done.exception())
        )
        try:
            metrics.request_finished(self, status_code, fields["duration_ms"])
        except Exception:  # a bug in counting must not cost the request (its row is queued)
            logger.exception("could not count %s in the metrics", self.request_id)
        return future


def storable(value: Any) -> Any:
    """`value` with every string made storable by any database: a NUL (which PostgreSQL text cannot
    hold) and lone surrogates (which no encoder can write) escaped as text. No input costs a row."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


_current: ContextVar[AuditRecord | None] = ContextVar("voiceproxy_audit", default=None)


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def client_request_id(supplied: str) -> str:
    """A caller's own request id, if it is a sane one (kept beside ours, never instead of it)."""
    return supplied if _REQUEST_ID.match(supplied) else ""


def open_record(
    *, method: str, endpoint: str, request_id: str | None = None, client_request_id: str = ""
) -> AuditRecord:
    """Start a record and make it current for this context, without an end: the caller must
    `finish()` it. For the HTTP middleware, whose streamed bodies outlive its own call; everyone
    else uses `scope()`."""
    record = AuditRecord(
        request_id=request_id or new_request_id(),
        method=method,
        endpoint=endpoint[:200],
        client_request_id=client_request_id,
    )
    journal.begun(
        storable(
            {
                "request_id": record.request_id,
                "client_request_id": record.client_request_id,
                "method": record.method,
                "endpoint": record.endpoint,
            }
        )
    )
    _current.set(record)
    return record


@contextmanager
def scope(*, method: str, endpoint: str, request_id: str | None = None) -> Iterator[AuditRecord]:
    """One unit of work with its audit row, from any caller (sync or async code alike).

    The row is written when the block ends: with the status of `record.error` when set, 200
    otherwise; an exception leaving the block is recorded (its status, or 499 when cancelled) and
    re-raised.
    """
    token = _current.set(None)
    record = open_record(method=method, endpoint=endpoint, request_id=request_id)
    try:
        yield record
    except asyncio.CancelledError:
        record.usage.client_disconnected = True
        record.finish(CLIENT_CLOSED)
        raise
    except BaseException as exc:
        record.finish(record.fail(exc).status)
        raise
    else:
        record.finish(record.error.status if record.error else 200)
    finally:
        _current.reset(token)


def current() -> AuditRecord | None:
    return _current.get()


def leave() -> None:
    """This context has no current record any more (its owner keeps and finishes it)."""
    _current.set(None)


def detached() -> contextvars.Context:
    """A copy of this context with no current record: work started in it (a Realtime session's
    transcriptions, say) records nothing on the record that started it until it opens its own."""
    context = contextvars.copy_context()
    context.run(_current.set, None)
    return context


def usage() -> Usage:
    """The current scope's usage record; outside any scope, a throwaway one (nothing is recorded)."""
    record = _current.get()
    return record.usage if record is not None else Usage()


def add_model(name: str) -> None:
    record = _current.get()
    if record is not None:
        record.add_model(name)


def mark_first(name: Literal["llm_first_token_ms", "tts_first_audio_ms"]) -> None:
    record = _current.get()
    if record is not None:
        record.mark_first(name)


def fail(exc: BaseException) -> OpenAIError:
    """Record a failure on the current scope (if any); returns it as an OpenAIError to render."""
    record = _current.get()
    return record.fail(exc) if record is not None else as_openai_error(exc)


class RequestIdFilter(logging.Filter):
    """Puts the request id on every log line, worker threads included (contextvars are copied)."""

    def filter(self, record: logging.LogRecord) -> bool:
        audit = _current.get()
        record.request_id = audit.request_id if audit else "-"
        return True


def _insert(fields: dict[str, Any]) -> None:
    from registry.models import RequestLog  # the app registry is ready by the first request

    RequestLog.objects.create(**fields)
