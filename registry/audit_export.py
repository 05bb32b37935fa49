"""The audit log as a download: CSV or JSON Lines of any filtered queryset, streamed.

Rows are read in batches of BATCH_SIZE by keyset pagination (newest first: each batch is the next
BATCH_SIZE rows older than the last one sent), so memory stays flat however many rows match, no
cursor or transaction stays open between batches, and a batch can be read on any thread. Each
batch becomes one chunk of text. `stream()` turns the chunks into the async iterator that
StreamingHttpResponse needs under ASGI (given a sync iterator, Django reads it whole first).

What is exported is the row as stored, without the key's id: a key is named by its prefix. In CSV
only, a text cell that a spreadsheet would read as a formula (it begins with =, +, -, @, a tab or a
carriage return: a client's request id, an upstream's error message) gets a leading ' so that it is
shown as text, never run; JSON Lines keeps every value as it is.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import Q, QuerySet

from registry.models import RequestLog

BATCH_SIZE = 2000
FIELDS = [
    "created",
    "request_id",
    "client_request_id",
    "key_prefix",
    "method",
    "endpoint",
    "route",
    "model_names",
    "status_code",
    "error_type",
    "error_code",
    "error_message",
    "duration_ms",
    "stt_ms",
    "llm_ms",
    "llm_first_token_ms",
    "tts_ms",
    "tts_first_audio_ms",
    "audio_seconds_in",
    "audio_seconds_out",
    "characters_in",
    "bytes_in",
    "bytes_out",
    "upstream",
    "upstream_status",
    "stt_cache_hits",
    "streamed",
    "client_disconnected",
    "reply_capped",
    "usage",
    "session_id",
    "turns",
]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as a formula
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}


def batches(
    queryset: QuerySet[RequestLog], *, batch_size: int = BATCH_SIZE
) -> Iterator[list[tuple[Any, ...]]]:
    """The queryset's rows (a tuple of FIELDS each), newest first, `batch_size` at a time.

    The queryset's own ordering is replaced: keyset pagination needs (created, pk), a unique order.
    """
    rows = queryset.order_by("-created", "-pk").values_list(*FIELDS, "pk")
    after: tuple[dt.datetime, int] | None = None
    while True:
        page = rows
        if after is not None:
            created, pk = after
            # `created__lte` alone bounds the index scan: the OR would not, and each batch would
            # read every newer row again.
            page = rows.filter(
                Q(created__lte=created), Q(created__lt=created) | Q(created=created, pk__lt=pk)
            )
        batch = list(page[:batch_size])
        if not batch:
            return
        after = batch[-1][0], batch[-1][-1]
        yield [row[:-1] for row in batch]
        if len(batch) < batch_size:
            return


def csv_chunks(queryset: QuerySet[RequestLog], *, batch_size: int = BATCH_SIZE) -> Iterator[str]:
    """A header line, then the rows as CSV (`usage` as its JSON text; empty cells for NULL)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(FIELDS)
    yield _drain(buffer)
    for batch in batches(queryset, batch_size=batch_size):
        writer.writerows([_cell(value) for value in row] for row in batch)
        yield _drain(buffer)


def jsonl_chunks(queryset: QuerySet[RequestLog], *, batch_size: int = BATCH_SIZE) -> Iterator[str]:
    """One JSON object per line and row, FIELDS as keys (`created` in ISO 8601)."""
    for batch in batches(queryset, batch_size=batch_size):
        yield "".join(
            json.dumps(dict(zip(FIELDS, row, strict=True)), default=_json_default, ensure_ascii=False) + "\n"
            for row in batch
        )


async def stream(chunks: Iterator[str]) -> AsyncIterator[bytes]:
    """Each chunk, read on Django's thread for this request (the ORM may not run on the event loop)."""
    next_chunk = sync_to_async(_next, thread_sensitive=True)
    try:
        while (chunk := await next_chunk(chunks)) is not None:
            yield chunk.encode()
    finally:
        await sync_to_async(_close, thread_sensitive=True)(chunks)


def filename(kind: str, *, now: dt.datetime) -> str:
    """e.g. request-log-2025-06-01T1204.csv"""
    return f"request-log-{now:%Y-%m-%dT%H%M}.{kind}"


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _next(chunks: Iterator[str]) -> str | None:
    return next(chunks, None)


def _close(chunks: Iterator[str]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
