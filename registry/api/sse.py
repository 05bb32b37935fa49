"""Streamed responses: the one SSE encoder, and the one place a stream's headers and errors are set.

Every event stream (transcription, speech, chat pass-through and voice chat) is an async iterator
of payloads handed to `event_stream()`; every streamed audio body goes through `audio_stream()`.
Once the headers are out an error cannot change the status: it is recorded on the audit scope
and, in an event stream, sent as a last `data: {"error": {...}}` event (which the openai SDK raises).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from django.http import StreamingHttpResponse

from registry import audit


@dataclass(frozen=True)
class Comment:
    """A comment line (`: ping`): no event for the client, but bytes that keep proxies from timing out."""

    text: str


Payload = dict[str, Any] | str | Comment  # an event object, a JSON text passed through as it came, a comment


def encode(payload: Payload) -> bytes:
    """One `data:` event; a str is sent as it is (an upstream's own JSON, or "[DONE]")."""
    if isinstance(payload, Comment):
        return f": {payload.text}\n\n".encode()
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


DONE = "[DONE]"


def _streaming(content: AsyncIterator[bytes], content_type: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(content, content_type=content_type)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each chunk on as it comes
    return response


def event_stream(events: AsyncIterable[Payload]) -> StreamingHttpResponse:
    """A `text/event-stream` response of `events`; an error while streaming ends it with an error event."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield encode(event)
        except Exception as exc:
            yield encode(audit.fail(exc).body())

    return _streaming(body(), "text/event-stream")


def audio_stream(chunks: AsyncIterable[bytes], content_type: str) -> StreamingHttpResponse:
    """A streamed audio body; an error while streaming is recorded and cuts the body short."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as exc:
            audit.fail(exc)
            raise

    return _streaming(body(), content_type)
