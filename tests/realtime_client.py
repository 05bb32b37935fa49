"""Helpers for the Realtime tests: speech as the wire carries it, and events read and checked
against the official SDK's own types (strictly: a field we name wrongly fails the test)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import numpy as np
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter

from bench.harness import speech
from registry.speech import audio

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
CHUNK_MS = 20


def pcm(text: str, rate: int = 24_000, silence_s: float = 1.2) -> bytes:
    """`text` spoken by espeak-ng as s16le at `rate`, followed by `silence_s` of silence."""
    samples, _ = audio.decode(speech.speech(text), sample_rate=rate)
    silence = np.zeros(int(rate * silence_s), dtype=np.float32)
    return audio.s16le(np.concatenate([np.zeros(int(rate * 0.3), np.float32), samples, silence]))


def chunks(data: bytes, rate: int = 24_000, width: int = 2) -> list[str]:
    """`data` cut into 20 ms frames, base64, as a live microphone sends them."""
    size = rate * CHUNK_MS // 1000 * width
    return [base64.b64encode(data[i : i + size]).decode() for i in range(0, len(data), size)]


def check(event: dict[str, Any]) -> dict[str, Any]:
    """The event, after checking it against the SDK's server-event types."""
    SERVER_EVENT.validate_python(event)
    assert event["event_id"]
    return event


class Events:
    """Reads a connection's events (an SDK connection, or a plain websockets one)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.seen: list[dict[str, Any]] = []

    def next(self, timeout: float = 60) -> dict[str, Any]:
        # The SDK's recv_bytes() has no timeout: read its websockets connection, so a missing event
        # fails the test (TimeoutError) instead of hanging the run.
        socket = getattr(self.connection, "_connection", self.connection)
        raw = socket.recv(timeout=timeout)
        event = check(json.loads(raw))
        self.seen.append(event)
        return event

    def until(self, kind: str, timeout: float = 60) -> list[dict[str, Any]]:
        """Every event up to and including the first of `kind`."""
        deadline = time.monotonic() + timeout
        got = []
        while time.monotonic() < deadline:
            event = self.next(timeout=max(0.1, deadline - time.monotonic()))
            got.append(event)
            if event["type"] == kind:
                return got
        raise AssertionError(f"no {kind} within {timeout} s; saw {[e['type'] for e in got]}")


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == kind]


def audio_of(events: list[dict[str, Any]]) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in of(events, "response.output_audio.delta"))


def transcript_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in of(events, "response.output_audio_transcript.delta"))
