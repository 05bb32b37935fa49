"""The audit log: one RequestLog row per /v1/ request, failures and streams included.

`AuditMiddleware` opens a record for each /v1/ request in a context variable; authentication
and the services fill it (`note`, `add_model`, `add_time`) and the middleware hands it to the
background database thread once the response is complete (or the last byte of a stream has been
produced, or the client has gone): the INSERT never delays a response, and rows land within
milliseconds of it, in order (registry/db_threads.py). A failed INSERT is logged, never turned into
a failed request. The middleware also gives every response its `x-request-id` and answers over-size
bodies with a 413 before Django reads them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse

from registry import db_threads
from registry.errors import OpenAIError, PayloadTooLarge, error_response

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


@dataclass
class AuditRecord:
    request_id: str
    method: str
    endpoint: str
    started: float = field(default_factory=time.perf_counter)
    api_key_id: int | None = None
    key_prefix: str = ""
    models: list[str] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    error: OpenAIError | None = None
    stats: dict[str, Any] = field(default_factory=dict)  # RequestLog field name -> value


_current: ContextVar[AuditRecord | None] = ContextVar("voiceproxy_audit", default=None)


def current() -> AuditRecord | None:
    return _current.get()


def note(**fields: Any) -> None:
    """Set RequestLog fields on the current request's record (no-op outside a request)."""
    record = _current.get()
    if record is not None:
        record.stats.update(fields)


def add_time(name: str, milliseconds: float) -> None:
    """Add to a duration field (stt_ms, llm_ms, tts_ms...): stages may run several times."""
    record = _current.get()
    if record is not None:
        record.stats[name] = record.stats.get(name, 0.0) + milliseconds


def count(name: str, amount: int = 1) -> None:
    """Add to a counter field (stt_cache_hits...)."""
    record = _current.get()
    if record is not None:
        record.stats[name] = record.stats.get(name, 0) + amount


def add_model(name: str) -> None:
    record = _current.get()
    if record is not None and name not in record.models:
        record.models.append(name)


class RequestIdFilter(logging.Filter):
    """Puts the request id on every log line, worker threads included (contextvars are copied)."""

    def filter(self, record: logging.LogRecord) -> bool:
        audit = _current.get()
        record.request_id = audit.request_id if audit else "-"
        return True


class AuditMiddleware:
    async_capable = True
    sync_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]]) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if not request.path.startswith("/v1/"):
            return await self.get_response(request)
        supplied = request.headers.get("x-request-id", "")
        record = AuditRecord(
            request_id=supplied if _REQUEST_ID.match(supplied) else f"req_{uuid.uuid4().hex}",
            method=request.method or "",
            endpoint=request.path[:200],
        )
        # Not reset afterwards: a streamed body is produced later in this same task and its
        # services still write to the record.
        _current.set(record)
        record.bytes_in = _content_length(request)
        try:
            # Django checks ALLOWED_HOSTS here; its CommonMiddleware, which would, stays off /v1/.
            request.get_host()
        except DisallowedHost as exc:
            response: HttpResponseBase = error_response(exc)
        else:
            response = await self._respond(request, record)
        response["x-request-id"] = record.request_id
        # What Django's SecurityMiddleware would add; it stays off /v1/ (voiceproxy/middleware.py).
        response.setdefault("X-Content-Type-Options", "nosniff")
        record.error = getattr(response, "openai_error", None)
        if isinstance(response, StreamingHttpResponse):
            response.streaming_content = self._watch_stream(response.streaming_content, response, record)
        else:
            record.bytes_out = len(getattr(response, "content", b""))
            if not response.has_header("Content-Length"):  # as CommonMiddleware would
                response["Content-Length"] = str(record.bytes_out)
            write(record, response.status_code)
        return response

    async def _respond(self, request: HttpRequest, record: AuditRecord) -> HttpResponseBase:
        if record.bytes_in > settings.VOICEPROXY_MAX_BODY_BYTES:
            response: HttpResponseBase = error_response(
                PayloadTooLarge(
                    f"The request body is {record.bytes_in} bytes; this server accepts at most "
                    f"{settings.VOICEPROXY_MAX_BODY_BYTES}."
                )
            )
        else:
            try:
                response = await self.get_response(request)
            except asyncio.CancelledError:
                # The client hung up before the response began (Django cancels the view): the
                # request still gets its row, with nginx's 499 "client closed request".
                record.stats["client_disconnected"] = True
                write(record, 499)
                raise
        return response

    async def _watch_stream(
        self, content: AsyncIterator[bytes], response: StreamingHttpResponse, record: AuditRecord
    ) -> AsyncIterator[bytes]:
        record.stats["streamed"] = True
        try:
            async for chunk in content:
                record.bytes_out += len(chunk)
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            record.stats["client_disconnected"] = True
            raise
        finally:
            # Handed over, not awaited: the last byte is not held back by the INSERT.
            write(record, response.status_code)


def _content_length(request: HttpRequest) -> int:
    try:
        return max(0, int(request.headers.get("content-length") or 0))
    except ValueError:
        return 0


def write(record: AuditRecord, status_code: int) -> Future[None]:
    """Queue the record's RequestLog row; returns at once. The duration ends now."""
    stats = dict(record.stats)  # a snapshot: the request's own code may still touch the record
    error = record.error
    if error is None and "stream_error" in stats:
        error = stats.pop("stream_error")
    stats.pop("stream_error", None)
    fields = {
        "request_id": record.request_id,
        "api_key_id": record.api_key_id,
        "key_prefix": record.key_prefix,
        "method": record.method,
        "endpoint": record.endpoint,
        "model_names": ",".join(record.models)[:500],
        "status_code": status_code,
        "error_type": error.type if error else "",
        "error_code": (error.code or "") if error else "",
        "error_message": error.message[:2000] if error else "",
        "duration_ms": (time.perf_counter() - record.started) * 1000,
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        **stats,
    }
    # An INSERT repeated after a dropped connection may, rarely, log a request twice: better than not at all.
    return db_threads.background.later(_insert, fields, what=f"write the audit row for {record.request_id}")


def _insert(fields: dict[str, Any]) -> None:
    from registry.models import RequestLog  # the app registry is ready by the first request

    RequestLog.objects.create(**fields)
