"""What every client-event handler shares: the error that answers a bad event, and audio decoding."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from registry.errors import InvalidRequest, OpenAIError
from registry.speech import audio
from registry.speech.engines.base import Samples


class EventError(InvalidRequest):
    """A client event that cannot be handled: answered with an `error` event, the session goes on."""

    code = "invalid_value"  # unless a site names another


def b64(value: Any, param: str) -> bytes:
    if not isinstance(value, str):
        raise EventError(f"'{param}' must be base64-encoded audio.", param=param, code="invalid_type")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EventError(f"'{param}' is not valid base64.", param=param, code="invalid_value") from exc


def decode_input(data: bytes, fmt: str) -> Samples:
    """Client audio in the session's format as float samples at its rate. Blocking (G.711: PyAV)."""
    if fmt == "pcm":
        return audio.from_s16le(data)
    return audio.g711_decode(data, fmt)


def error_event(exc: OpenAIError, event_id: str | None = None) -> dict[str, Any]:
    """The `error` server event for `exc`, naming the client event that caused it, if any."""
    return {
        "type": "error",
        "error": {
            "type": exc.type,
            "code": None if exc.code is None else str(exc.code),
            "message": exc.message,
            "param": exc.param,
            "event_id": event_id,
        },
    }
