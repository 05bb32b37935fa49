"""The Realtime API (/v1/realtime) through a real daphne, with the official SDK's
`client.realtime.connect()` and a plain WebSocket client; real engines, a loopback upstream.
Every event received is checked against the SDK's own server-event types."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
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
# Piper -> tiny.en on that 8-word sentence: Piper's VITS noise makes each rendering differ, and
# "like in Paris" has been heard as "lichen pairs" (3 words); audio in a wrong format scores ~1.0.
ROUND_TRIP_WER_BOUND = 0.5


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
        with contextlib.suppress(Exception):  # already closed by the server
            manager.__exit__(None, None, None)


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
    connection.send(
        {
            "type": "session.update",
            "event_id": "evt_bad",
            "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/mp3"}}}},
        }
    )
    error = events.until("error")[-1]["error"]
    assert error["param"] == "session.audio.input.format.type"
    assert error["event_id"] == "evt_bad"
    connection.send(
        {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "nobody"}}}}
    )
    error = events.until("error")[-1]["error"]
    assert error["param"] == "session.audio.output.voice"
    connection.session.update(session={"type": "realtime", "instructions": "still here"})
    assert events.until("session.updated")[-1]["session"]["instructions"] == "still here"


def test_text_in_spoken_answer_out(
    realtime: Callable[..., Any], client: openai.OpenAI, upstream: Any
) -> None:
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
    assert wer(QUESTION, transcribe(client, spoken)) <= ROUND_TRIP_WER_BOUND
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
    started, stopped = (
        of(got, "input_audio_buffer.speech_started")[0],
        of(got, "input_audio_buffer.speech_stopped")[0],
    )
    assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"]
    heard = of(got, "conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert wer(QUESTION, heard) < 0.3
    answer = transcript_of(got)
    assert answer == heard  # the echo upstream says back what it was told
    assert wer(answer, transcribe(client, audio_of(got))) <= ROUND_TRIP_WER_BOUND
    assert got[-1]["response"]["status"] == "completed"
    connection.close()
    logged = rows(session_id)
    session_row = next(r for r in logged if r.endpoint == "/v1/realtime")
    response_row = next(r for r in logged if r.endpoint == "/v1/realtime/response")
    assert session_row.turns == 1 and session_row.audio_seconds_in > 2
    assert response_row.status_code == 200 and response_row.stt_ms is not None
    assert response_row.llm_first_token_ms is not None and response_row.tts_first_audio_ms is not None


@pytest.fixture
def fresh_upstream(upstream: Any) -> Iterator[Any]:
    upstream.reset()
    yield upstream
    upstream.reset()


def say(connection: Any, text: str) -> None:
    connection.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )
    connection.response.create()


def test_manual_turns_commit_then_response_create(realtime: Callable[..., Any]) -> None:
    connection, events = realtime(model="echo-model")
    events.until("session.created")
    connection.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    assert events.until("session.updated")[-1]["session"]["audio"]["input"]["turn_detection"] is None
    speak(connection, pcm(QUESTION), paced=False)
    connection.input_audio_buffer.commit()
    committed = events.until("input_audio_buffer.committed")
    assert not of(committed, "input_audio_buffer.speech_started")  # no VAD: no turn events
    heard = events.until("conversation.item.input_audio_transcription.completed")[-1]["transcript"]
    assert wer(QUESTION, heard) < 0.3
    connection.response.create()
    got = events.until("response.done")
    assert transcript_of(got) == heard
    # Committing an empty buffer is an error, not a turn.
    connection.send({"type": "input_audio_buffer.commit", "event_id": "evt_empty"})
    error = events.until("error")[-1]["error"]
    assert error["code"] == "input_audio_buffer_commit_empty" and error["event_id"] == "evt_empty"


def test_two_turns_carry_context_and_text_only_output(
    realtime: Callable[..., Any], fresh_upstream: Any
) -> None:
    connection, events = realtime(model="echo-model")
    events.until("session.created")
    connection.session.update(
        session={"type": "realtime", "instructions": "Answer kindly.", "output_modalities": ["text"]}
    )
    events.until("session.updated")
    say(connection, "My name is Ada.")
    first = events.until("response.done")
    assert not of(first, "response.output_audio.delta")
    assert "".join(e["delta"] for e in of(first, "response.output_text.delta")) == "My name is Ada."
    say(connection, "What is my name?")
    events.until("response.done")
    messages = fresh_upstream.last_request["json"]["messages"]
    assert messages == [
        {"role": "system", "content": "Answer kindly."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "My name is Ada."},
        {"role": "user", "content": "What is my name?"},
    ]


def test_tool_call_round_trip(realtime: Callable[..., Any], fresh_upstream: Any) -> None:
    connection, events = realtime(model="tool-model")
    events.until("session.created")
    weather = {"type": "function", "name": "get_weather", "description": "Weather in a city",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip
    connection.session.update(session={"type": "realtime", "tools": [weather], "tool_choice": "auto"})
    events.until("session.updated")
    say(connection, "Weather in Paris?")
    got = events.until("response.done")
    assert not of(got, "response.output_audio.delta")  # a tool call is not spoken
    call = of(got, "response.function_call_arguments.done")[0]
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    output = got[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["function_call"] and output[0]["status"] == "completed"
    sent = fresh_upstream.last_request["json"]
    assert sent["tools"][0]["function"]["name"] == "get_weather" and sent["tool_choice"] == "auto"
    connection.conversation.item.create(
        item={"type": "function_call_output", "call_id": call["call_id"], "output": '{"celsius": 21}'}
    )
    connection.response.create()
    events.until("response.done")
    messages = fresh_upstream.last_request["json"]["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == call["call_id"]
    assert messages[-1] == {"role": "tool", "tool_call_id": call["call_id"], "content": '{"celsius": 21}'}


LONG_REPLY = (
    "The weather in Paris is mild and bright this morning, with a light breeze from the west. "
    "In the afternoon clouds will gather over the river and a little rain may fall. "
    "Tomorrow will be warmer again."
)


def test_cancel_stops_the_upstream_and_speech(realtime: Callable[..., Any], fresh_upstream: Any) -> None:
    fresh_upstream.reply, fresh_upstream.hold = LONG_REPLY, True
    fresh_upstream.token_delay = 0.02  # a disconnect is seen at a write after it: not all at once
    connection, events = realtime(model="fake-llm")
    events.until("session.created")
    say(connection, "Tell me the weather.")
    events.until("response.output_audio.delta")
    response_id = events.seen[-1]["response_id"]
    connection.response.cancel()
    got = events.until("response.done")
    done = got[-1]["response"]
    assert done["id"] == response_id and done["status"] == "cancelled"
    assert done["status_details"]["reason"] == "client_cancelled"
    assert done["output"][0]["status"] == "incomplete"
    fresh_upstream.release.set()
    assert fresh_upstream.wait_for(lambda requests: any(r["disconnected"] for r in requests), timeout=20)
    # Nothing more of that response arrives; the session still works.
    connection.send({"type": "response.cancel", "event_id": "evt_none"})
    error = events.until("error")[-1]
    assert error["error"]["code"] == "response_cancel_not_active"
    assert not of(events.seen[events.seen.index(got[-1]) :], "response.output_audio.delta")


def test_barge_in_cancels_and_truncate_keeps_only_what_was_heard(
    realtime: Callable[..., Any], fresh_upstream: Any
) -> None:
    fresh_upstream.reply, fresh_upstream.hold = LONG_REPLY, True
    fresh_upstream.token_delay = 0.02  # a disconnect is seen at a write after it: not all at once
    connection, events = realtime(model="fake-llm")
    events.until("session.created")
    say(connection, "Tell me the weather.")
    events.until("response.output_audio.delta")
    item_id = events.seen[-1]["item_id"]
    # The user starts talking over the answer; the client cuts the answer where its playback stopped.
    talking = threading.Thread(target=speak, args=(connection, pcm("Stop, that is enough.")))
    talking.start()
    got = events.until("input_audio_buffer.speech_started", timeout=60)
    heard_ms = len(audio_of(events.seen)) / 2 / 24
    assert heard_ms > 500
    connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=int(heard_ms * 0.5))
    got = events.until("response.done", timeout=60)
    done = got[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
    truncated = of(got, "conversation.item.truncated") or events.until("conversation.item.truncated")[-1:]
    assert truncated[0]["item_id"] == item_id
    talking.join()
    fresh_upstream.hold = False
    fresh_upstream.release.set()
    events.until("response.done", timeout=90)  # the interrupting turn is answered
    messages = fresh_upstream.last_request["json"]["messages"]
    assistant = [m for m in messages if m["role"] == "assistant"]
    assert len(assistant) == 1
    said = assistant[0]["content"]
    assert said and LONG_REPLY.startswith(said.rstrip(".,")[: len(said) - 1])
    assert len(said) < len(LONG_REPLY.split(". ")[0])  # half of the first sentence's audio, not all of it


def test_g711_in_and_out(realtime: Callable[..., Any], client: openai.OpenAI) -> None:
    connection, events = realtime(model="echo-model")
    events.until("session.created")
    connection.session.update(
        session={
            "type": "realtime",
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
                "output": {"format": {"type": "audio/pcma"}},
            },
        }
    )
    assert events.until("session.updated")[-1]["session"]["audio"]["output"]["format"] == {
        "type": "audio/pcma"
    }
    samples = audio.from_s16le(pcm(QUESTION, rate=8000))
    speak(connection, audio.g711_encode(samples, "pcmu"), rate=8000, width=1, paced=False)
    connection.input_audio_buffer.commit()
    heard = events.until("conversation.item.input_audio_transcription.completed")[-1]["transcript"]
    assert wer(QUESTION, heard) < 0.35
    connection.response.create()
    got = events.until("response.done")
    spoken = audio.g711_decode(audio_of(got), "pcma")
    wav = audio.encode_whole(spoken, "wav", input_rate=8000, output_rate=16000)
    # Eight words through Piper, 8 kHz A-law and Whisper base: a correct stream was once heard as
    # "What is the weather I can pair us today?" (4 of 8 words, WER 0.5). A-law decoded as µ-law,
    # or the reverse, is not heard as speech at all (empty text, WER 1.0).
    assert wer(heard, client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav)).text) <= 0.6


def test_transcription_session_transcribes_turns_and_never_answers(realtime: Callable[..., Any]) -> None:
    connection, events = realtime(model="whisper-1", extra_query={"intent": "transcription"})
    created = events.until("session.created")[-1]["session"]
    assert created["type"] == "transcription"
    speak(connection, pcm(QUESTION))
    got = events.until("conversation.item.input_audio_transcription.completed", timeout=60)
    assert wer(QUESTION, got[-1]["transcript"]) < 0.3
    connection.send({"type": "response.create", "event_id": "evt_r"})
    after = events.until("error")
    assert after[-1]["error"]["event_id"] == "evt_r"
    assert not of(events.seen, "response.created")
    connection.close()
    logged = rows(created["id"])
    assert any(r.endpoint == "/v1/realtime/transcription" and r.stt_ms is not None for r in logged)


def test_malformed_and_unknown_events_are_errors_and_the_socket_stays_open(
    gateway: Server, api_key: Key
) -> None:
    url = gateway.url.replace("http", "ws") + "/v1/realtime?model=echo-model"
    with websockets.sync.client.connect(
        url, additional_headers={"Authorization": f"Bearer {api_key.secret}"}
    ) as ws:
        events = Events(ws)
        events.until("session.created")
        ws.send("{not json")
        assert events.until("error")[-1]["error"]["code"] == "invalid_json"
        ws.send(json.dumps({"type": "session.explode", "event_id": "evt_x"}))
        error = events.until("error")[-1]["error"]
        assert error["event_id"] == "evt_x" and error["param"] == "type"
        ws.send(json.dumps({"type": "conversation.item.delete", "event_id": "evt_d"}))
        error = events.until("error")[-1]["error"]
        assert error["code"] == "missing_required_parameter" and error["param"] == "item_id"
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "***"}))
        assert events.until("error")[-1]["error"]["param"] == "audio"
        ws.send(json.dumps({"type": "conversation.item.retrieve", "item_id": "item_nope"}))
        assert events.until("error")[-1]["error"]["code"] == "item_not_found"
        ws.send(json.dumps({"type": "session.update", "session": {"instructions": "ok"}}))
        assert events.until("session.updated")[-1]["session"]["instructions"] == "ok"


def test_upstream_failure_fails_the_response_not_the_session(realtime: Callable[..., Any]) -> None:
    connection, events = realtime(model="stream-error")
    events.until("session.created")
    say(connection, "Hello.")
    got = events.until("response.done", timeout=30)
    assert got[-1]["response"]["status"] == "failed"
    assert got[-1]["response"]["status_details"]["error"]["type"] == "upstream_error"
    assert of(got, "error")
    connection.session.update(session={"type": "realtime", "instructions": "again"})
    events.until("session.updated")


def handshake_status(gateway: Server, query: str, **kwargs: Any) -> int:
    url = gateway.url.replace("http", "ws") + "/v1/realtime" + query
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        websockets.sync.client.connect(url, **kwargs)
    return int(refused.value.response.status_code)


def test_refused_handshakes_have_their_status_and_an_audit_row(
    gateway: Server, make_key: Callable[..., Key]
) -> None:
    assert (
        handshake_status(
            gateway, "?model=echo-model", additional_headers={"Authorization": "Bearer sk-wrong"}
        )
        == 401
    )
    assert handshake_status(gateway, "?model=echo-model") == 401
    scoped = make_key("scoped", allowed_models=["other-model"])
    auth = {"Authorization": f"Bearer {scoped.secret}"}
    assert handshake_status(gateway, "?model=echo-model", additional_headers=auth) == 403
    unscoped = make_key("unscoped")
    auth = {"Authorization": f"Bearer {unscoped.secret}"}
    assert handshake_status(gateway, "?model=tts-1", additional_headers=auth) == 400  # a speech model
    assert handshake_status(gateway, "", additional_headers=auth) == 400  # no model
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not RequestLog.objects.filter(key_prefix=scoped.prefix).exists():
        time.sleep(0.1)
    row = RequestLog.objects.get(key_prefix=scoped.prefix, endpoint="/v1/realtime")
    assert row.status_code == 403 and row.error_code == "model_not_allowed"


def test_browser_subprotocol_key_and_client_secrets(
    gateway: Server, client: openai.OpenAI, api_key: Key
) -> None:
    url = gateway.url.replace("http", "ws") + "/v1/realtime?model=echo-model"
    offered = ["realtime", "openai-insecure-api-key." + api_key.secret]
    with websockets.sync.client.connect(url, subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"
        assert Events(ws).next()["type"] == "session.created"
    secret = client.realtime.client_secrets.create(
        session={"type": "realtime", "model": "echo-model", "instructions": "From the secret."},
        expires_after={"anchor": "created_at", "seconds": 10},
    )
    assert secret.value.startswith("ek_") and secret.expires_at > time.time()
    with pytest.raises(openai.PermissionDeniedError):  # a secret cannot renew itself
        openai.OpenAI(
            base_url=f"{gateway.url}/v1", api_key=secret.value, max_retries=0
        ).realtime.client_secrets.create()
    assert api_key.secret not in secret.value
    browser = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=secret.value, max_retries=0)
    with browser.realtime.connect(model="echo-model") as connection:
        created = Events(connection).next()
        assert created["session"]["instructions"] == "From the secret."
    with pytest.raises(openai.BadRequestError) as bad:
        client.realtime.client_secrets.create(session={"type": "realtime", "audio": {"output": {"speed": 9}}})
    assert bad.value.body["param"] == "session.audio.output.speed"  # type: ignore[index]
    not_an_object = httpx.post(
        f"{gateway.url}/v1/realtime/client_secrets",
        json=[],
        headers={"Authorization": f"Bearer {api_key.secret}"},
    )
    assert not_an_object.status_code == 400 and not_an_object.json()["error"]["param"] == "body"
    time.sleep(max(0.0, secret.expires_at - time.time()) + 0.5)
    plain = url.replace("?model=echo-model", "?model=echo-model")
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        websockets.sync.client.connect(plain, additional_headers={"Authorization": f"Bearer {secret.value}"})
    assert refused.value.response.status_code == 401


def test_closing_the_socket_stops_the_response_and_logs_the_session(
    realtime: Callable[..., Any], fresh_upstream: Any
) -> None:
    fresh_upstream.reply, fresh_upstream.hold = LONG_REPLY, True
    fresh_upstream.token_delay = 0.02  # a disconnect is seen at a write after it: not all at once
    connection, events = realtime(model="fake-llm")
    session_id = events.until("session.created")[-1]["session"]["id"]
    say(connection, "Tell me the weather.")
    events.until("response.output_audio.delta")
    connection.close()
    fresh_upstream.release.set()
    assert fresh_upstream.wait_for(lambda requests: any(r["disconnected"] for r in requests), timeout=20)
    logged = rows(session_id)
    response_row = next(r for r in logged if r.endpoint == "/v1/realtime/response")
    assert response_row.client_disconnected and response_row.status_code == 499
    session_row = next(r for r in logged if r.endpoint == "/v1/realtime")
    assert session_row.status_code == 200 and session_row.key_prefix


def test_sessions_per_key_are_capped(gateway: Server, make_key: Callable[..., Key]) -> None:
    key = make_key("capped")
    url = gateway.url.replace("http", "ws") + "/v1/realtime?model=echo-model"
    auth = {"Authorization": f"Bearer {key.secret}"}
    held = [websockets.sync.client.connect(url, additional_headers=auth) for _ in range(4)]
    try:
        for ws in held:
            assert Events(ws).next()["type"] == "session.created"
        assert handshake_status(gateway, "?model=echo-model", additional_headers=auth) == 429
    finally:
        for ws in held:
            ws.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with websockets.sync.client.connect(url, additional_headers=auth) as ws:
                assert Events(ws).next()["type"] == "session.created"
                break
        except websockets.exceptions.InvalidStatus:
            time.sleep(0.1)
    else:
        raise AssertionError("the closed sessions' places were not given back")
