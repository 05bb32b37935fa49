"""The Realtime consumer and session in this process, through Channels' WebsocketCommunicator: the
fast cases (configuration, items, refusals, the VAD state machine) without daphne. The services,
the engines and the loopback upstream are the real ones."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from chat.realtime.conversation import heard
from chat.realtime.response import OutputAudio
from chat.realtime.routing import websocket_urlpatterns
from chat.realtime.turns import WINDOW_MS, TurnDetector
from registry.speech import audio
from tests.conftest import Key
from tests.realtime_client import check, of, pcm

APP = URLRouter(websocket_urlpatterns)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def opened(key: str, path: str = "/v1/realtime?model=echo-model") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        APP, path, headers=[(b"authorization", f"Bearer {key}".encode()), (b"host", b"localhost")]
    )
    connected, _ = await communicator.connect(timeout=30)
    assert connected
    assert check(await communicator.receive_json_from(timeout=30))["type"] == "session.created"
    return communicator


async def exchange(
    communicator: WebsocketCommunicator, event: dict[str, Any], until: str
) -> list[dict[str, Any]]:
    await communicator.send_to(text_data=json.dumps(event))
    got = []
    while True:
        got.append(check(await communicator.receive_json_from(timeout=30)))
        if got[-1]["type"] == until:
            return got


def test_session_update_is_atomic_and_names_the_bad_field(registry: Any, api_key: Key) -> None:
    async def main() -> None:
        ws = await opened(api_key.secret)
        bad = {
            "type": "session.update",
            "event_id": "evt_1",
            "session": {"type": "realtime", "instructions": "changed", "max_output_tokens": 0},
        }
        error = (await exchange(ws, bad, "error"))[-1]["error"]
        assert (error["param"], error["event_id"]) == ("session.max_output_tokens", "evt_1")
        unknown = {"type": "session.update", "session": {"type": "realtime", "colour": "blue"}}
        error = (await exchange(ws, unknown, "error"))[-1]["error"]
        assert (error["code"], error["param"]) == ("unknown_parameter", "session.colour")
        kind = {"type": "session.update", "session": {"type": "transcription"}}
        assert (await exchange(ws, kind, "error"))[-1]["error"]["param"] == "session.type"
        ok = {"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 50}}
        session = (await exchange(ws, ok, "session.updated"))[-1]["session"]
        assert (
            session["instructions"] == "" and session["max_output_tokens"] == 50
        )  # the bad update changed nothing
        await ws.disconnect()

    run(main())


def test_items_are_created_retrieved_and_deleted(registry: Any, api_key: Key) -> None:
    async def main() -> None:
        ws = await opened(api_key.secret)
        item = {
            "id": "item_a",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hi"}],
        }
        got = await exchange(ws, {"type": "conversation.item.create", "item": item}, "conversation.item.done")
        assert got[0]["type"] == "conversation.item.added" and got[0]["previous_item_id"] is None
        second = {**item, "id": "item_b"}
        got = await exchange(
            ws,
            {"type": "conversation.item.create", "item": second, "previous_item_id": "root"},
            "conversation.item.done",
        )
        assert got[-1]["previous_item_id"] is None
        again = await exchange(ws, {"type": "conversation.item.create", "item": item}, "error")
        assert again[-1]["error"]["code"] == "item_already_exists"
        retrieved = await exchange(
            ws, {"type": "conversation.item.retrieve", "item_id": "item_a"}, "conversation.item.retrieved"
        )
        assert retrieved[-1]["item"]["content"][0]["text"] == "hi"
        deleted = await exchange(
            ws, {"type": "conversation.item.delete", "item_id": "item_a"}, "conversation.item.deleted"
        )
        assert deleted[-1]["item_id"] == "item_a"
        bad_role = {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "robot", "content": []},
        }
        assert (await exchange(ws, bad_role, "error"))[-1]["error"]["param"] == "item.role"
        truncate_user = {
            "type": "conversation.item.truncate",
            "item_id": "item_b",
            "content_index": 0,
            "audio_end_ms": 0,
        }
        assert (await exchange(ws, truncate_user, "error"))[-1]["error"]["param"] == "item_id"
        await ws.disconnect()

    run(main())


def test_without_the_denial_extension_a_refusal_is_a_plain_close(registry: Any) -> None:
    async def main() -> None:
        communicator = WebsocketCommunicator(
            APP, "/v1/realtime?model=echo-model", headers=[(b"host", b"localhost")]
        )
        connected, _ = await communicator.connect(timeout=30)
        assert not connected

    run(main())


def test_server_vad_dates_speech_with_its_padding_and_stops_after_the_silence() -> None:
    detector = TurnDetector(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
    events: list[tuple[str, float]] = []
    probabilities = [0.0] * 20 + [0.9] * 30 + [0.05] * 10 + [0.9] * 10 + [0.05] * 20
    for p in probabilities:
        events += detector.push(p)
    kinds = [kind for kind, _ in events]
    # The final silence is a pause first: the last stretch is on its way to Whisper before the
    # turn is declared over.
    assert kinds == ["started", "pause", "pause", "stopped"]
    started, pause, last_pause, stopped = (ms for _, ms in events)
    assert started == pytest.approx(20 * WINDOW_MS - 300)
    assert pause == pytest.approx(50 * WINDOW_MS)  # the first silence that lasted PAUSE_MS
    assert last_pause == stopped == pytest.approx(70 * WINDOW_MS)  # where the final silence began


@pytest.mark.parametrize(
    ("end_ms", "expected"),
    [
        (0, ""),
        (1000, "One two three."),
        (1500, "One two three. Four five"),
        (5000, "One two three. Four five six seven."),
    ],
)
def test_truncation_keeps_whole_sentences_then_a_share_of_words(end_ms: int, expected: str) -> None:
    transcript = "One two three. Four five six seven."
    marks = [(14, 1000.0), (35, 2000.0)]
    assert heard(transcript, marks, end_ms) == expected


def test_hostile_events_are_errors_and_the_session_goes_on(registry: Any, api_key: Key) -> None:
    async def main() -> None:
        ws = await opened(api_key.secret)
        hostile = [
            {"type": "session.update", "session": {"audio": {"input": {"format": {"type": []}}}}},
            {
                "type": "session.update",
                "session": {
                    "audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": []}}}
                },
            },
            {"type": "response.create", "response": {"audio": {"output": "x"}}},
            {"type": "input_audio_buffer.append", "audio": ["not", "base64"]},
        ]
        for event in hostile:
            error = (await exchange(ws, event, "error"))[-1]["error"]
            assert error["type"] == "invalid_request_error", error
        await ws.send_to(text_data="[" * 200_000)  # deeper than any JSON parser recurses
        assert check(await ws.receive_json_from(timeout=30))["error"]["code"] == "invalid_json"
        ok = {"type": "session.update", "session": {"type": "realtime", "instructions": "still here"}}
        assert (await exchange(ws, ok, "session.updated"))[-1]["session"]["instructions"] == "still here"
        await ws.disconnect()

    run(main())


@pytest.mark.parametrize("fmt", ["pcmu", "pcma"])
def test_g711_output_keeps_every_sample_of_the_speech(fmt: str) -> None:
    """24 kHz pcm16 in chunks -> 8 kHz G.711: one byte per third of a sample, the resampler's tail too."""
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(24_000) / 24_000)).astype(np.float32)
    out = OutputAudio(fmt)  # type: ignore[arg-type]

    async def convert() -> bytes:
        parts = [await out.convert(audio.s16le(chunk)) for chunk in np.array_split(tone, 37)]
        return b"".join(parts) + await out.rest()

    encoded = run(convert())
    assert abs(len(encoded) - 8000) <= 2, len(encoded)
    # The last 10 ms still carry the tone (not silence or a cut): A 0.3 sine's RMS is ~0.21.
    tail = audio.g711_decode(encoded[-80:], fmt)
    assert 0.15 < float(np.sqrt(np.mean(tail**2))) < 0.25


def user_text(item_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {
            "id": item_id,
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


def test_a_committed_turn_is_billed_by_its_audio_and_follows_the_item_before(
    registry: Any, api_key: Key
) -> None:
    async def main() -> None:
        ws = await opened(api_key.secret)
        manual = {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        }
        await exchange(ws, manual, "session.updated")
        await exchange(ws, user_text("item_first", "Hello."), "conversation.item.done")
        spoken = pcm("Please open the settings page.", silence_s=0.5)
        append = {"type": "input_audio_buffer.append", "audio": base64.b64encode(spoken).decode()}
        await ws.send_to(text_data=json.dumps(append))
        got = await exchange(ws, {"type": "input_audio_buffer.commit"}, "conversation.item.done")
        committed = of(got, "input_audio_buffer.committed")[0]
        done = got[-1]
        assert committed["previous_item_id"] == "item_first" == done["previous_item_id"]
        assert done["item"]["id"] == committed["item_id"]
        # Usage is the turn's audio (what OpenAI bills), not the time the transcription took.
        completed = of(got, "conversation.item.input_audio_transcription.completed")[0]
        assert completed["usage"]["seconds"] == pytest.approx(len(spoken) / 2 / 24_000, abs=0.05)
        assert "settings" in completed["transcript"].lower()
        await ws.disconnect()

    run(main())


def test_a_reply_cut_short_by_max_output_tokens_is_incomplete(registry: Any, api_key: Key) -> None:
    async def main() -> None:
        ws = await opened(api_key.secret)
        limit = {
            "type": "session.update",
            "session": {"type": "realtime", "output_modalities": ["text"], "max_output_tokens": 3},
        }
        session = (await exchange(ws, limit, "session.updated"))[-1]["session"]
        assert session["audio"]["output"]["voice"]  # the voice spoken when none is named
        await exchange(ws, user_text("item_q", "one two three four five"), "conversation.item.done")
        got = await exchange(ws, {"type": "response.create"}, "response.done")
        response = got[-1]["response"]
        assert (response["status"], response["status_details"]) == (
            "incomplete",
            {"type": "incomplete", "reason": "max_output_tokens"},
        )
        assert response["output"][0]["status"] == "incomplete"
        assert of(got, "response.output_text.done")[0]["text"] == "one two three"
        # The assistant's item follows the question in the conversation.
        assert of(got, "conversation.item.done")[0]["previous_item_id"] == "item_q"
        # Under the limit the same question is answered whole.
        roomy = {"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 50}}
        await exchange(ws, roomy, "session.updated")
        again = (await exchange(ws, {"type": "response.create"}, "response.done"))[-1]["response"]
        assert (again["status"], again["status_details"]) == ("completed", None)
        await ws.disconnect()

    run(main())


def test_a_refused_truncate_does_not_cut_the_reply_being_spoken(
    registry: Any, api_key: Key, upstream: Any
) -> None:
    upstream.reset()
    upstream.reply = "The first sentence is short. The second one is a little longer than that. The end."
    upstream.token_delay = 0.05

    async def main() -> None:
        ws = await opened(api_key.secret, "/v1/realtime?model=fake-llm")
        got = await exchange(ws, {"type": "response.create"}, "response.output_audio.delta")
        item_id = of(got, "response.output_item.added")[0]["item"]["id"]
        bad = {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": -5,
        }
        rest = await exchange(ws, bad, "response.done")
        [error] = of(rest, "error")
        assert (error["error"]["param"], error["error"]["code"]) == ("audio_end_ms", "invalid_value")
        assert rest[-1]["response"]["status"] == "completed"  # refused, so nothing changed
        assert of(rest, "response.output_audio_transcript.done")[0]["transcript"] == upstream.reply
        await ws.disconnect()

    try:
        run(main())
    finally:
        upstream.reset()


def test_items_in_the_beta_s_shapes_are_given_in_the_ga_s(registry: Any, api_key: Key) -> None:
    async def main() -> None:
        ws = await opened(api_key.secret)
        item = {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": "beta text"}, {"type": "audio", "transcript": "said"}],
        }
        got = await exchange(ws, {"type": "conversation.item.create", "item": item}, "conversation.item.done")
        parts = got[-1]["item"]["content"]  # check() has held each event to the SDK's types
        assert [p["type"] for p in parts] == ["output_text", "output_audio"] and parts[0][
            "text"
        ] == "beta text"
        untyped = (await exchange(ws, {"event_id": "evt_x", "item": {}}, "error"))[-1]["error"]
        assert (untyped["code"], untyped["param"], untyped["event_id"]) == (
            "missing_required_parameter",
            "type",
            "evt_x",
        )
        await ws.disconnect()

    run(main())


def test_a_message_is_done_before_the_tool_call_that_follows_it(registry: Any, api_key: Key) -> None:
    """tool-text-model says "Let me check the weather." and then calls get_weather: the spoken
    message ends (its last audio, then its done events) before the call's item is added."""

    async def main() -> None:
        ws = await opened(api_key.secret, "/v1/realtime?model=tool-text-model")
        weather = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
        tools = {"type": "session.update", "session": {"type": "realtime", "tools": [weather]}}
        await exchange(ws, tools, "session.updated")
        got = await exchange(ws, {"type": "response.create"}, "response.done")
        seen = [(e["type"], e.get("output_index")) for e in got]
        message_done = seen.index(("response.output_item.done", 0))
        last_audio = max(i for i, kind in enumerate(seen) if kind == ("response.output_audio.delta", 0))
        assert last_audio < message_done < seen.index(("response.output_item.added", 1))
        output = got[-1]["response"]["output"]
        assert [(o["type"], o["status"]) for o in output] == [
            ("message", "completed"),
            ("function_call", "completed"),
        ]
        assert output[0]["content"][0]["transcript"] and output[1]["name"] == "get_weather"
        await ws.disconnect()

    run(main())
