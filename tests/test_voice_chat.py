"""/v1/chat/completions with audio in and out, through the official SDK, against a real loopback upstream."""

from __future__ import annotations

import base64
import io
import json
import re
import time
import wave

import httpx
import openai
import pytest

from bench.harness.speech import speech
from registry import keys
from registry.models import RequestLog, Upstream
from tests.audit_log import audit_row
from tests.wer import wer

QUESTION = "What is the weather like in Paris today?"
ROUND_TRIP_WER_BOUND = 0.5  # Piper -> tiny.en on one short sentence: real speech, not noise (~1.0)
REPLY = "The sky is clear over Paris. It will be warm and sunny this afternoon. Enjoy your walk by the river."
WER_BOUND = 0.25  # Piper -> tiny.en round trips measured at 0 to 10 percent
UPSTREAM_KEY = "sk-upstream-SECRET-never-shown"


@pytest.fixture(autouse=True)
def fresh_upstream(upstream):
    upstream.reset()
    upstream.reply = REPLY
    yield upstream
    upstream.reset()


def audio_message(text: str = QUESTION, fmt: str = "wav") -> dict:
    data = base64.b64encode(speech(text, f".{fmt}")).decode()
    return {
        "role": "user",
        "content": [{"type": "input_audio", "input_audio": {"data": data, "format": fmt}}],
    }


def pcm16_to_wav(pcm: bytes, rate: int = 24000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


def transcribe(client, data: bytes, name: str = "reply.wav") -> str:
    return client.audio.transcriptions.create(model="whisper-1", file=(name, data)).text


def row_for(raw_headers) -> RequestLog:
    return audit_row(raw_headers["x-request-id"])


def test_spoken_reply_to_spoken_question(client, upstream):
    raw = client.chat.completions.with_raw_response.create(
        model="echo-model",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[audio_message()],
    )
    completion = raw.parse()
    message = completion.choices[0].message
    assert message.content is None
    assert message.audio.id.startswith("audio_")
    assert message.audio.expires_at > time.time()
    # echo-model replies with the user's text: the transcript of our question reached the upstream.
    assert wer(QUESTION, message.audio.transcript) <= WER_BOUND
    # Piper's VITS noise makes each rendering a little different; on an 8-word sentence tiny.en has
    # once heard 3 words wrong ("like in Paris" as "lichen pairs"): a round trip of real speech, not noise.
    heard = transcribe(client, base64.b64decode(message.audio.data))
    assert wer(message.audio.transcript, heard) <= ROUND_TRIP_WER_BOUND
    sent = upstream.last_request["json"]
    assert sent["messages"][0]["content"][0]["type"] == "text"
    assert not {"modalities", "audio", "transcription_model", "speech_model"} & set(sent)
    assert upstream.last_request["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert completion.usage.total_tokens > 0
    row = row_for(raw.headers)
    assert row.status_code == 200 and row.upstream == "loopback" and row.upstream_status == 200
    assert row.stt_ms > 0 and row.llm_ms > 0 and row.tts_ms > 0 and row.audio_seconds_in > 1
    assert row.audio_seconds_out > 1 and row.usage["total_tokens"] == completion.usage.total_tokens


@pytest.mark.parametrize("fmt", ["mp3", "flac", "opus", "aac", "pcm16"])
def test_every_audio_out_format_decodes(client, fmt):
    import av

    completion = client.chat.completions.create(
        model="fake-llm",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": fmt},
        messages=[{"role": "user", "content": "Say something."}],
    )
    data = base64.b64decode(completion.choices[0].message.audio.data)
    if fmt == "pcm16":
        seconds = len(data) / 2 / 24000
    else:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            seconds = sum(f.samples for f in container.decode(stream)) / stream.rate
    assert 3 < seconds < 15


def test_client_key_is_never_forwarded_and_unknown_parameters_are(client, upstream, api_key):
    client.chat.completions.create(
        model="fake-llm",
        messages=[{"role": "user", "content": "hi"}],
        seed=7,
        temperature=0.3,
        max_tokens=50,
        stop=["\n\n"],
        user="u-1",
        metadata={"k": "v"},
        extra_body={"custom_knob": {"a": 1}},
    )
    request = upstream.last_request
    assert api_key.secret not in json.dumps(request["headers"])
    body = request["json"]
    assert body["seed"] == 7 and body["temperature"] == 0.3 and body["max_tokens"] == 50
    assert body["stop"] == ["\n\n"] and body["user"] == "u-1" and body["metadata"] == {"k": "v"}
    assert body["custom_knob"] == {"a": 1}


def test_text_only_requests_pass_through_streaming_included(client, upstream):
    text = client.chat.completions.create(model="fake-llm", messages=[{"role": "user", "content": "hi"}])
    assert text.choices[0].message.content == REPLY
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="fake-llm", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        if c.choices
    ]
    assert "".join(pieces) == REPLY and len(pieces) > 5


def collect_stream(client, **kwargs):
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    audio, transcript, finish_at, last_audio_at, final = b"", "", None, None, None
    for i, chunk in enumerate(chunks):
        for choice in chunk.choices:
            delta_audio = choice.delta.audio
            if delta_audio is not None:
                if delta_audio.data:
                    audio += base64.b64decode(delta_audio.data)
                    last_audio_at = i
                if delta_audio.transcript:
                    transcript += delta_audio.transcript
                if delta_audio.expires_at:
                    final = (i, delta_audio)
            if choice.finish_reason:
                finish_at = i
    return chunks, audio, transcript, finish_at, last_audio_at, final


def test_streamed_spoken_reply(client):
    chunks, audio, transcript, finish_at, last_audio_at, final = collect_stream(
        client,
        model="fake-llm",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=[audio_message()],
        stream_options={"include_usage": True},
    )
    assert transcript == REPLY
    assert len(audio) % 2 == 0 and len(audio) / 2 / 24000 > 3
    assert wer(REPLY, transcribe(client, pcm16_to_wav(audio))) <= WER_BOUND
    assert finish_at is not None and last_audio_at < finish_at
    assert final is not None and final[0] < finish_at and final[0] > last_audio_at  # the last audio delta
    assert final[1].id.startswith("audio_")
    usage = [c for c in chunks if not c.choices]
    assert len(usage) == 1 and usage[0].usage.total_tokens > 0 and chunks[-1] is usage[0]


def test_usage_chunk_only_when_asked(client, upstream):
    chunks, *_ = collect_stream(
        client,
        model="fake-llm",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=[{"role": "user", "content": "hi"}],
    )
    assert all(c.choices for c in chunks)
    assert upstream.last_request["json"]["stream_options"]["include_usage"] is True  # for the audit log


def test_first_audio_leaves_before_the_reply_is_complete(client, upstream):
    # The upstream holds its stream after the first sentence until the test releases it: audio that
    # arrives meanwhile was spoken while the reply was still being generated. Order, not timing.
    upstream.hold = True
    audio_while_held = False
    for chunk in client.chat.completions.create(
        model="fake-llm",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    ):
        for choice in chunk.choices:
            if choice.delta.audio and choice.delta.audio.data and not upstream.release.is_set():
                audio_while_held = True
                upstream.release.set()
    assert audio_while_held


def test_streamed_audio_must_be_pcm16(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="fake-llm",
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"},
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
    assert caught.value.body["param"] == "audio.format"


def test_multi_turn_by_audio_id(client, upstream):
    first = client.chat.completions.create(
        model="fake-llm",
        modalities=["text", "audio"],
        audio={"voice": {"id": "joe"}, "format": "mp3"},
        messages=[{"role": "user", "content": "hi"}],
    )
    audio_id = first.choices[0].message.audio.id
    client.chat.completions.create(
        model="fake-llm",
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "audio": {"id": audio_id}},
            {"role": "user", "content": "and then?"},
        ],
    )
    assert upstream.last_request["json"]["messages"][1] == {"role": "assistant", "content": REPLY}


def test_unknown_audio_id_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="fake-llm",
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "audio": {"id": "audio_nope"}},
            ],
        )
    assert caught.value.code == "invalid_audio_id" and caught.value.body["param"] == "messages[1].audio.id"


def test_resent_audio_is_not_transcribed_again(client):
    message = audio_message("Remember the milk and the eggs please.")
    first = client.chat.completions.with_raw_response.create(model="fake-llm", messages=[message])
    second = client.chat.completions.with_raw_response.create(model="fake-llm", messages=[message])
    assert row_for(first.headers).stt_cache_hits == 0 and row_for(first.headers).stt_ms > 0
    row = row_for(second.headers)
    assert row.stt_cache_hits == 1 and not row.stt_ms


def test_n_2_speaks_each_choice(client, upstream):
    upstream.replies = ["The first answer is short.", "The second answer is different."]
    completion = client.chat.completions.create(
        model="fake-llm",
        n=2,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "hi"}],
    )
    assert len(completion.choices) == 2
    for choice, expected in zip(completion.choices, upstream.replies, strict=True):
        assert choice.message.audio.transcript == expected
        assert wer(expected, transcribe(client, base64.b64decode(choice.message.audio.data))) <= WER_BOUND
    assert completion.choices[0].message.audio.id != completion.choices[1].message.audio.id


def test_tool_calls_are_returned_unspoken(client):
    completion = client.chat.completions.create(
        model="tool-model",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "weather?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    )
    message = completion.choices[0].message
    assert message.audio is None and message.tool_calls[0].function.name == "get_weather"
    assert completion.choices[0].finish_reason == "tool_calls"


def test_text_beside_tool_calls_is_spoken(client):
    completion = client.chat.completions.create(
        model="tool-text-model",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "weather?"}],
    )
    message = completion.choices[0].message
    assert message.audio.transcript == "Let me check the weather." and message.tool_calls


def test_streamed_tool_calls_pass_through(client):
    chunks, audio, *_ = collect_stream(
        client,
        model="tool-model",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "tool", "tool_call_id": "x", "content": "sunny"},
        ],
    )
    calls = [tc for c in chunks for ch in c.choices for tc in (ch.delta.tool_calls or [])]
    assert calls and calls[0].function.name == "get_weather" and audio == b""


def test_upstream_4xx_passes_through(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="error-400", messages=[{"role": "user", "content": "hi"}])
    assert "bad thing from upstream" in caught.value.message and caught.value.code == "upstream_bad"


def test_upstream_unreachable_is_502_and_timeout_504(client):
    Upstream.objects.update_or_create(
        name="dead", defaults={"base_url": "http://127.0.0.1:9/v1", "chat_models": ["dead-llm"], "timeout": 2}
    )
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="dead-llm", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="slow-model", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 504 and "3 s" in caught.value.message


@pytest.mark.parametrize("model", ["cut-stream", "stream-error"])
def test_a_stream_cut_upstream_ends_with_an_error_event(client, model):
    with pytest.raises(openai.APIError) as caught:
        list(
            client.chat.completions.create(
                model=model,
                modalities=["text", "audio"],
                audio={"voice": "alloy", "format": "pcm16"},
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
            )
        )
    assert "upstream" in str(caught.value.message).lower()


def test_client_disconnect_stops_the_upstream(gateway, api_key, upstream):
    upstream.token_delay = 0.1
    upstream.reply = " ".join(["This is a long sentence that keeps going."] * 30)
    body = {
        "model": "fake-llm",
        "stream": True,
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "pcm16"},
        "messages": [{"role": "user", "content": "hi"}],
    }
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {api_key.secret}"},
        timeout=30,
    ) as response:
        request_id = response.headers["x-request-id"]
        next(response.iter_bytes())
    assert upstream.wait_for(lambda requests: requests and requests[-1]["disconnected"], timeout=10)
    row = row_for({"x-request-id": request_id})
    assert row.client_disconnected and row.streamed


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "fake-llm", "messages": "hi"}, 400, "messages"),
        ({"model": "fake-llm", "messages": []}, 400, "messages"),
        ({"model": "fake-llm", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ({"model": "fake-llm"}, 400, "messages"),
        (
            {"model": "fake-llm", "modalities": [{}], "messages": [{"role": "user", "content": "x"}]},
            400,
            "modalities",
        ),
        (
            {
                "model": "fake-llm",
                "modalities": ["text", "audio"],
                "audio": {"voice": "alloy", "format": ["wav"]},
                "messages": [{"role": "user", "content": "x"}],
            },
            400,
            "audio.format",
        ),
        ({"model": "fake-llm", "n": 10, "messages": [{"role": "user", "content": "x"}]}, 400, "n"),
        (
            {
                "model": "fake-llm",
                "modalities": ["text", "audio"],
                "messages": [{"role": "user", "content": "x"}],
            },
            400,
            "audio",
        ),
        (
            {
                "model": "fake-llm",
                "modalities": ["text", "audio"],
                "audio": {"voice": "alloy", "format": "ogg"},
                "messages": [{"role": "user", "content": "x"}],
            },
            400,
            "audio.format",
        ),
        (
            {
                "model": "fake-llm",
                "modalities": ["text", "audio"],
                "audio": {"voice": "nobody", "format": "pcm16"},
                "messages": [{"role": "user", "content": "x"}],
            },
            400,
            "audio.voice",
        ),
        (
            {
                "model": "fake-llm",
                "modalities": ["text", "audio"],
                "audio": {"voice": "alloy", "format": "pcm16"},
                "speech_model": "no-such-tts",
                "messages": [{"role": "user", "content": "x"}],
            },
            404,
            "speech_model",
        ),
        (
            {
                "model": "fake-llm",
                "transcription_model": "tts-1",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
                        ],
                    }
                ],
            },
            400,
            "transcription_model",
        ),
        (
            {
                "model": "fake-llm",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}}
                        ],
                    }
                ],
            },
            400,
            "messages[0].content[0].input_audio.format",
        ),
        (
            {
                "model": "fake-llm",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}],
                    }
                ],
            },
            400,
            "messages[0].content[0].input_audio.data",
        ),
        (
            {
                "model": "fake-llm",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_audio",
                                "input_audio": {
                                    "data": base64.b64encode(b"not audio at all" * 50).decode(),
                                    "format": "wav",
                                },
                            }
                        ],
                    }
                ],
            },
            400,
            "messages[0].content[0].input_audio.data",
        ),
    ],
)
def test_bad_requests_are_clear_errors_before_the_stream(http, body, status, param):
    for stream in (False, True):
        response = http.post("/v1/chat/completions", json={**body, "stream": stream})
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["param"] == param, error
        row = audit_row(response.headers["x-request-id"])
        assert row.status_code == status and row.error_message == error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": 5}, "model"),
        (
            {"messages": [{"role": "user", "content": [{"type": 5, "text": "hi"}]}]},
            "messages[0].content[0].type",
        ),
    ],
)
def test_a_value_of_the_wrong_json_type_is_a_400_naming_it(http, body, param):
    request = {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}], **body}
    response = http.post("/v1/chat/completions", json=request)
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_stream_options_without_stream_is_a_400_as_openai_answers(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="fake-llm",
            messages=[{"role": "user", "content": "hi"}],
            stream_options={"include_usage": True},
        )
    assert caught.value.body["param"] == "stream_options"  # type: ignore[index]


def test_malformed_json_is_a_400(http):
    response = http.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_body"


def test_unsupported_content_type_is_a_415(http):
    response = http.post("/v1/chat/completions", content=b"hi", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and set(response.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }


def test_the_upstream_key_never_leaks(client, gateway):
    # The upstream refusing the gateway's key is the gateway's problem (502), not the client's 401.
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="error-401", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502 and "refused the gateway's credentials" in caught.value.message
    assert UPSTREAM_KEY not in caught.value.response.text
    audit_row(caught.value.response.headers["x-request-id"])  # written, so the checks below see it
    assert UPSTREAM_KEY not in gateway.log()
    assert UPSTREAM_KEY not in json.dumps(list(RequestLog.objects.values()), default=str)
    assert UPSTREAM_KEY not in json.dumps(client.models.list().model_dump())
    assert UPSTREAM_KEY.encode() not in b"".join(
        r.encode() for r in Upstream.objects.values_list("api_key_encrypted", flat=True)
    )


def test_a_client_gone_before_the_response_still_gets_an_audit_row(gateway, api_key):
    body = {"model": "slow-model", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {api_key.secret}", "x-request-id": "gone-early-1"},
            timeout=1,
        )
    row = row_for({"x-request-id": "gone-early-1"})
    assert row.client_disconnected and row.status_code == 499


# --- what real upstreams do (llama.cpp, reasoning models): the loopback upstream imitates each ---


def voice_stream(client, model: str, **kwargs):
    return collect_stream(
        client,
        model=model,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=[{"role": "user", "content": "hi"}],
        **kwargs,
    )


def test_a_cut_upstream_first_finishes_speaking_what_was_sent(client):
    # cut-stream sends "The sky" and hangs up: that text reached the client, so its audio does too.
    events = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(
            model="cut-stream",
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "pcm16"},
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        ):
            events.extend(chunk.choices)
    assert "upstream" in str(caught.value.message).lower()
    transcript = "".join(c.delta.audio.transcript or "" for c in events if c.delta.audio)
    audio = b"".join(
        base64.b64decode(c.delta.audio.data) for c in events if c.delta.audio and c.delta.audio.data
    )
    # Its audio is "The sky" spoken: as long as the same words spoken by /v1/audio/speech.
    alone = client.audio.speech.create(
        model="tts-1", voice="alloy", input="The sky", response_format="pcm"
    ).content
    assert transcript == "The sky" and len(audio) == pytest.approx(len(alone), rel=0.15)


def test_sse_comments_are_relayed_in_voice_and_text_streams(http):
    for body in (
        {"model": "ping-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        {
            "model": "ping-model",
            "stream": True,
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "pcm16"},
            "messages": [{"role": "user", "content": "hi"}],
        },
    ):
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = [line for line in response.iter_lines() if line]
        assert response.status_code == 200
        assert lines[:2] == [": ping", ": ping"] and lines[-1] == "data: [DONE]"


def test_an_upstream_silent_past_its_timeout_is_a_real_504(http, upstream):
    # slow-first-event sends 200 headers at once and its first event after 5 s; the loopback
    # upstream's timeout is 3 s: the gateway waits for that first event before answering.
    body = {
        "model": "slow-first-event",
        "stream": True,
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "pcm16"},
        "messages": [{"role": "user", "content": "hi"}],
    }
    for streamed_voice in (body, {k: v for k, v in body.items() if k not in ("modalities", "audio")}):
        response = http.post("/v1/chat/completions", json=streamed_voice)
        assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
        assert audit_row(response.headers["x-request-id"]).status_code == 504


def test_a_reasoning_only_reply_to_a_voice_request_is_a_clear_error(client, http):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="reasoning-model",
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"},
            messages=[{"role": "user", "content": "hi"}],
        )
    assert caught.value.status_code == 502 and caught.value.code == "no_content_to_speak"
    # Streamed, the same error ends the stream, and the audit row records it with its status.
    with http.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "reasoning-model",
            "stream": True,
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "pcm16"},
            "messages": [{"role": "user", "content": "hi"}],
        },
    ) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert response.status_code == 200 and events[-1]["error"]["code"] == "no_content_to_speak"
    assert any(c["choices"] and c["choices"][0]["delta"].get("reasoning_content") for c in events[:-1])
    row = audit_row(response.headers["x-request-id"])
    assert row.status_code == 502 and row.error_code == "no_content_to_speak" and row.streamed
    # Text out, the same reply passes as the upstream sent it.
    text = client.chat.completions.create(
        model="reasoning-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert text.choices[0].message.content == ""


def test_replies_name_the_model_the_client_asked_for(client):
    whole = client.chat.completions.create(model="path-model", messages=[{"role": "user", "content": "hi"}])
    voiced = client.chat.completions.create(
        model="path-model",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "hi"}],
    )
    text_chunks = list(
        client.chat.completions.create(
            model="path-model", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    voice_chunks, *_ = voice_stream(client, "path-model", stream_options={"include_usage": True})
    names = {whole.model, voiced.model} | {c.model for c in text_chunks + voice_chunks}
    assert names == {"path-model"}


def test_usage_sent_per_choice_is_added_up(client):
    chunks, *_ = voice_stream(client, "usage-per-choice", n=2, stream_options={"include_usage": True})
    usage = [c.usage for c in chunks if c.usage is not None]
    words = len(REPLY.split())
    assert len(usage) == 1 and usage[0].completion_tokens == 2 * words
    assert usage[0].total_tokens == usage[0].prompt_tokens + 2 * words


def test_streamed_voice_chunks_keep_logprobs(client):
    chunks, _, transcript, *_ = voice_stream(client, "logprobs-model", logprobs=True)
    with_text = [ch for c in chunks for ch in c.choices if ch.delta.audio and ch.delta.audio.transcript]
    assert with_text and all(ch.logprobs and ch.logprobs.content for ch in with_text)
    assert "".join(t.token for ch in with_text for t in ch.logprobs.content) == transcript == REPLY


def test_an_upstream_4xx_error_object_passes_through_whole(http):
    response = http.post(
        "/v1/chat/completions",
        json={"model": "error-400-llama", "messages": [{"role": "user", "content": "x"}]},
    )
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == 400 and isinstance(error["code"], int)
    assert error["n_prompt_tokens"] == 4103 and error["n_ctx"] == 2048
    assert error["type"] == "exceed_context_size_error" and "context size" in error["message"]
    assert audit_row(response.headers["x-request-id"]).error_code == "400"


def test_a_tool_call_without_text_has_null_content(client):
    completion = client.chat.completions.create(
        model="tool-empty-model",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "weather?"}],
    )
    message = completion.choices[0].message
    assert message.content is None and message.audio is None and message.tool_calls


def test_audio_without_audio_in_modalities_is_accepted_and_ignored(client):
    for stream in (False, True):
        reply = client.chat.completions.create(
            model="fake-llm",
            audio={"voice": "alloy", "format": "wav"},
            messages=[{"role": "user", "content": "hi"}],
            stream=stream,
        )
        if stream:
            chunks = list(reply)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
            assert all(c.choices[0].delta.audio is None for c in chunks if c.choices)
        else:
            assert reply.choices[0].message.content == REPLY and reply.choices[0].message.audio is None


def test_an_unknown_model_is_refused_before_any_transcription(client, http):
    response = http.post(
        "/v1/chat/completions",
        json={"model": "no-such-llm-anywhere", "messages": [audio_message()]},
    )
    # The loopback upstream is the default, so routing cannot fail here: a disabled default shows it.
    assert response.status_code == 200
    Upstream.objects.filter(name="loopback").update(is_default=False)
    try:
        response = http.post(
            "/v1/chat/completions",
            json={"model": "no-such-llm-anywhere", "messages": [audio_message("A brand new question.")]},
        )
    finally:
        Upstream.objects.filter(name="loopback").update(is_default=True)
    row = audit_row(response.headers["x-request-id"])
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert row.stt_ms is None and row.audio_seconds_in is None  # routed before transcribing


def test_no_stage_time_is_longer_than_the_request(client):
    # Two audio parts transcribed at once, and sentences synthesised two at a time: each stage's
    # time is the wall-clock time its work covered, so none exceeds the request's duration.
    message = audio_message()
    message["content"].append(audio_message("And what about tomorrow morning?")["content"][0])
    raw = client.chat.completions.with_raw_response.create(
        model="fake-llm",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=[message],
        stream=True,
    )
    list(raw.parse())
    row = row_for(raw.headers)
    assert row.stt_ms and row.tts_ms and row.llm_ms
    assert max(row.stt_ms, row.tts_ms, row.llm_ms, row.tts_first_audio_ms) <= row.duration_ms


def test_an_unreachable_upstream_fails_without_waiting_for_transcription(client):
    Upstream.objects.update_or_create(
        name="down", defaults={"base_url": "http://127.0.0.1:9/v1", "chat_models": ["down-llm"], "timeout": 2}
    )
    long_question = audio_message(" ".join([QUESTION] * 6))  # ~15 s of speech: seconds to transcribe
    raw = client.chat.completions.with_raw_response
    with pytest.raises(openai.APIStatusError) as caught:
        raw.create(model="down-llm", messages=[long_question])
    assert caught.value.status_code == 502
    row = audit_row(caught.value.response.headers["x-request-id"])
    # The connect was refused while the transcription still ran: it was cancelled, not finished.
    assert row.status_code == 502 and row.stt_ms is None


@pytest.mark.parametrize("model", ["echo-key-400", "echo-key-500", "echo-key-stream"])
def test_an_upstream_echoing_its_key_never_shows_it(http, model):
    # Whole, masked (first 8 and last 4), or a prefix left by a cut: none of it reaches the client or the log.
    forms = [UPSTREAM_KEY, UPSTREAM_KEY[:9], f"{UPSTREAM_KEY[:8]}****{UPSTREAM_KEY[-4:]}", UPSTREAM_KEY[8:20]]
    for voice in (False, True):
        body = {
            "model": model,
            "stream": model.endswith("stream"),
            "messages": [{"role": "user", "content": "hi"}],
        }
        if voice:
            body.update(modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"})
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code != 200 or "error" in response.text
        row = audit_row(response.headers["x-request-id"])
        seen = response.text + row.error_message + row.error_code + row.error_type
        assert not [form for form in forms if form in seen], seen


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_quoting_the_upstream_key_is_given_without_it(http, stream):
    forms = [UPSTREAM_KEY, f"{UPSTREAM_KEY[:8]}****{UPSTREAM_KEY[-4:]}"]
    for voice in (False, True):
        body = {"model": "echo-key-reply", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
        if voice:
            body.update(modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"})
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200
        if stream:  # the text as a client puts it together from the deltas
            deltas = [
                json.loads(line[6:])["choices"][0]["delta"]
                for line in response.text.splitlines()
                if line.startswith("data: {") and json.loads(line[6:])["choices"]
            ]
            text = "".join(d.get("content") or (d.get("audio") or {}).get("transcript") or "" for d in deltas)
        else:
            message = response.json()["choices"][0]["message"]
            text = message["content"] or message["audio"]["transcript"]
        assert text.startswith("Your key is [upstream key]"), text
        assert not [form for form in forms if form in text + response.text], text


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
def test_a_key_split_across_deltas_is_redacted_however_it_is_split(size):
    said = f"Your key is {UPSTREAM_KEY}, or {UPSTREAM_KEY[:8]}****{UPSTREAM_KEY[-4:]}; the upstream said so."
    redactor = keys.StreamRedactor(UPSTREAM_KEY, "[k]")
    out = "".join(redactor.feed(said[i : i + size]) for i in range(0, len(said), size)) + redactor.flush()
    assert UPSTREAM_KEY[1:9] not in out and UPSTREAM_KEY[-12:] not in out, out  # its first character may show
    assert out.startswith("Your key is ") and out.endswith(" the upstream said so."), out
    plain = "The weather in Paris is mild today, with a light wind from the west."
    redactor = keys.StreamRedactor(UPSTREAM_KEY, "[k]")
    given = [redactor.feed(word) for word in re.findall(r"\s*\S+", plain)] + [redactor.flush()]
    assert "".join(given) == plain


def test_text_held_back_still_goes_when_the_upstream_sends_no_finish_reason():
    from chat.upstream import DeltaRedactor

    redact = DeltaRedactor(UPSTREAM_KEY)
    chunks = [
        {
            "id": "c1",
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
        }
        for piece in ("It was ", "sk-up")  # a tail that may start the key: held
    ]
    for chunk in chunks:
        redact(chunk)
    rest = redact.rest()
    assert rest is not None and (rest["id"], rest["model"]) == ("c1", "m")
    said = [c["choices"][0]["delta"]["content"] for c in [*chunks, rest]]
    assert said == ["It was ", "", "sk-up"]
    assert redact.rest() is None  # given once
    # Tool arguments held back go with the finish_reason, even in a chunk whose tool_calls is null.
    calls = DeltaRedactor(UPSTREAM_KEY)
    call = {"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"k": "sk-up'}}
    calls({"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]})
    last = {"choices": [{"index": 0, "delta": {"tool_calls": None}, "finish_reason": "tool_calls"}]}
    calls(last)
    sent = (
        call["function"]["arguments"] + last["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
    )
    assert sent == '{"k": "sk-up'


def test_a_malformed_event_in_a_text_stream_ends_it_with_an_api_error(client):
    with pytest.raises(openai.APIError) as caught:  # not the SDK's own JSON error
        list(
            client.chat.completions.create(
                model="malformed-stream", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    assert "malformed stream event" in caught.value.message


def test_a_speech_model_is_not_a_chat_model(make_key, openai_client, upstream):
    scoped = openai_client(api_key=make_key("whisper-only", allowed_models=["whisper-1"]).secret)
    before = len(upstream.requests)
    for client in (scoped, openai_client()):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="whisper-1", messages=[{"role": "user", "content": "hi"}])
        assert caught.value.code == "wrong_model_type" and caught.value.body["param"] == "model"
    assert len(upstream.requests) == before  # nothing reached the default upstream


def test_an_audio_id_belongs_to_the_key_that_made_it(make_key, openai_client, upstream):
    mine, theirs = (
        openai_client(api_key=make_key("owner").secret),
        openai_client(api_key=make_key("other").secret),
    )
    first = mine.chat.completions.create(
        model="fake-llm",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "hi"}],
    )
    turn = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "audio": {"id": first.choices[0].message.audio.id}},
        {"role": "user", "content": "And then?"},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        theirs.chat.completions.create(model="fake-llm", messages=turn)
    assert caught.value.code == "invalid_audio_id"  # the same answer as an unknown id
    assert mine.chat.completions.create(model="fake-llm", messages=turn).choices[0].message.content == REPLY
    assert upstream.last_request["json"]["messages"][1] == {"role": "assistant", "content": REPLY}
