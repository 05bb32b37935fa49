"""The Realtime API (/v1/realtime) through a real daphne, with the official SDK's
`client.realtime.connect()` and a plain WebSocket client; real engines, a loopback upstream.
Every event received is checked against the SDK's own server-event types."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import openai
import pytest
import websockets.exceptions
import websockets.sync.client

from registry.models import RequestLog
from registry.speech import audio
from tests.conftest import Key, Server
from tests.realtime_client import Events, audio_of, chunks, of, pcm, transcript_of
from tests.wer import wer

QUESTION = "What is the weather like in Paris today?"


@pytest.fixture
def realtime(gateway: Server, api_key: Key) -> Iterator[Callable[..., Any]]:
    """Opens SDK connections (closed at the test's end): `realtime(model=..., **connect_kwargs)`."""
    managers: list[Any] = []

    def connect(model: str = "echo-model", key: str = api_key.secret, **kwargs: Any) -> tuple[Any, Events]:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
        manager = client.realtime.connect(model=model, **kwargs)
        connection = manager.__enter__()
        managers.append(manager)
        return connection, Events(connection)

    yield connect
    for manager in managers:
        try:
            manager.__exit__(None, None, None)
        except Exception:  # noqa: S110 - already closed by the server
            pass


def speak(connection: Any, data: bytes, rate: int = 24_000, width: int = 2, paced: bool = True) -> None:
    """Send audio as a microphone would: 20 ms frames in real time (or as fast as possible)."""
    for frame in chunks(data, rate, width):
        connection.input_audio_buffer.append(audio=frame)
        if paced:
            time.sleep(0.02)


def transcribe(client: openai.OpenAI, pcm16: bytes, rate: int = 24_000) -> str:
    samples = audio.from_s16le(pcm16)
    wav = audio.encode_whole(samples, "wav", input_rate=rate, output_rate=rate)
    return client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav)).text


def rows(session_id: str, timeout: float = 10) -> list[RequestLog]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(RequestLog.objects.filter(session_id=session_id).order_by("created"))
        if any(r.endpoint == "/v1/realtime" for r in found):
            return found
        time.sleep(0.1)
    return list(RequestLog.objects.filter(session_id=session_id))


def test_session_created_first_and_update_answers_updated(realtime: Callable[..., Any]) -> None:
    connection, events = realtime()
    created = events.next()
    assert created["type"] == "session.created"
    assert created["session"]["model"] == "echo-model"
    assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    connection.session.update(
        session={"type": "realtime", "instructions": "Be brief.", "audio": {"output": {"voice": "alloy"}}}
    )
    updated = events.until("session.updated")[-1]
    assert updated["session"]["instructions"] == "Be brief."
    assert updated["session"]["audio"]["output"]["voice"] == "alloy"


def test_invalid_session_value_is_an_error_naming_the_param_and_the_session_stays_open(
    realtime: Callable[..., Any],
) -> None:
    connection, events = realtime()
    events.until("session.created")
    connection.send({"type": "session.update", "event_id": "evt_bad", "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/mp3"}}}}})
    error = events.until("error")[-1]["error"]
    assert error["param"] == "session.audio.input.format.type"
    assert error["event_id"] == "evt_bad"
    connection.send({"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "nobody"}}}})
    error = events.until("error")[-1]["error"]
    assert error["param"] == "session.audio.output.voice"
    connection.session.update(session={"type": "realtime", "instructions": "still here"})
    assert events.until("session.updated")[-1]["session"]["instructions"] == "still here"


def test_text_in_spoken_answer_out(realtime: Callable[..., Any], client: openai.OpenAI, upstream: Any) -> None:
    connection, events = realtime(model="echo-model")
    events.until("session.created")
    connection.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]}
    )
    connection.response.create()
    got = events.until("response.done")
    done = got[-1]["response"]
    assert done["status"] == "completed"
    assert transcript_of(got) == QUESTION
    assert of(got, "response.output_audio_transcript.done")[0]["transcript"] == QUESTION
    spoken = audio_of(got)
    assert len(spoken) > 24_000  # over half a second of pcm16
    assert wer(QUESTION, transcribe(client, spoken)) < 0.4
    order = [e["type"] for e in got]
    assert order.index("response.created") < order.index("response.output_item.added")
    assert order.index("response.content_part.added") < order.index("response.output_audio.delta")
    assert order.index("response.output_audio.done") < order.index("response.output_item.done")
    assert done["usage"]["output_tokens"] > 0
    assert upstream.last_request["json"]["messages"][-1] == {"role": "user", "content": QUESTION}


def test_spoken_question_with_server_vad_gets_a_spoken_answer(
    realtime: Callable[..., Any], client: openai.OpenAI
) -> None:
    connection, events = realtime(model="echo-model")
    session_id = events.until("session.created")[-1]["session"]["id"]
    speak(connection, pcm(QUESTION))
    got = events.until("response.done", timeout=90)
    kinds = [e["type"] for e in got]
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped")
    assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("input_audio_buffer.committed")
    started, stopped = of(got, "input_audio_buffer.speech_started")[0], of(got, "input_audio_buffer.speech_stopped")[0]
    assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"]
    heard = of(got, "conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert wer(QUESTION, heard) < 0.3
    answer = transcript_of(got)
    assert answer == heard  # the echo upstream says back what it was told
    assert wer(answer, transcribe(client, audio_of(got))) < 0.4
    assert got[-1]["response"]["status"] == "completed"
    connection.close()
    logged = rows(session_id)
    session_row = next(r for r in logged if r.endpoint == "/v1/realtime")
    response_row = next(r for r in logged if r.endpoint == "/v1/realtime/response")
    assert session_row.turns == 1 and session_row.audio_seconds_in > 2
    assert response_row.status_code == 200 and response_row.stt_ms is not None
    assert response_row.llm_first_token_ms is not None and response_row.tts_first_audio_ms is not None
