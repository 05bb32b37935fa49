"""The speech services from plain async code: no HTTP request, no daphne, an audit scope opened here.

What a WebSocket consumer, a management command or the bench does: open `audit.scope()`, call the
services, and find the scope's RequestLog row written, failures included.
"""

from __future__ import annotations

import asyncio
import io
import uuid
import wave
from collections.abc import AsyncIterator

import pytest
from django.utils import timezone

from bench.harness import speech
from registry import access, audit
from registry.errors import AuthenticationFailed, InvalidAudio
from registry.speech import audio, stt, tts
from tests.audit_log import audit_row
from tests.wer import wer

QUESTION = "Please open the settings page and turn on the dark mode."
REPLY = "The weather is sunny today. Take a hat and some water with you."
WER_BOUND = 0.2  # Piper joe or espeak -> tiny.en, as in test_speech.py


@pytest.fixture(scope="module")
def question_wav(registry) -> bytes:
    return speech.speech(QUESTION)


def pcm_of(wav_bytes: bytes) -> audio.Pcm:
    """The raw frames of a 16-bit mono wav, as a Realtime client would send them."""
    with wave.open(io.BytesIO(wav_bytes)) as reader:
        assert reader.getsampwidth() == 2 and reader.getnchannels() == 1
        return audio.Pcm(audio.from_s16le(reader.readframes(reader.getnframes())), reader.getframerate())


def test_transcription_from_bytes_and_from_pcm_writes_audit_rows(question_wav):
    async def main() -> list[tuple[audit.AuditRecord, stt.Transcript]]:
        results = []
        for source in (question_wav, pcm_of(question_wav)):
            with audit.scope(method="TEST", endpoint="test/transcribe") as record:
                results.append(
                    (record, await stt.transcribe(api_key=None, source=source, options=stt.SttOptions()))
                )
        return results

    (bytes_record, from_bytes), (pcm_record, from_pcm) = asyncio.run(main())
    assert wer(QUESTION, from_bytes.text) <= WER_BOUND
    assert wer(QUESTION, from_pcm.text) <= WER_BOUND
    assert from_pcm.duration == pytest.approx(from_bytes.duration, abs=0.05)
    for record in (bytes_record, pcm_record):
        row = audit_row(record.request_id)
        assert row.status_code == 200 and row.endpoint == "test/transcribe"
        assert row.model_names == "Systran/faster-whisper-tiny.en"
        assert row.stt_ms > 0 and row.audio_seconds_in == pytest.approx(from_bytes.duration, abs=0.05)


def test_a_failure_inside_a_scope_is_raised_and_recorded():
    request_id = f"req_{uuid.uuid4().hex}"

    async def main() -> None:
        with audit.scope(method="TEST", endpoint="test/bad-audio", request_id=request_id):
            await stt.transcribe(api_key=None, source=b"this is not audio" * 20, options=stt.SttOptions())

    with pytest.raises(InvalidAudio):
        asyncio.run(main())
    row = audit_row(request_id)
    assert row.status_code == 400 and row.error_code == "invalid_audio" and row.endpoint == "test/bad-audio"


async def deltas(text: str, size: int = 7) -> AsyncIterator[str]:
    """The text as an LLM streams it: a few characters at a time, with pauses."""
    for start in range(0, len(text), size):
        await asyncio.sleep(0)
        yield text[start : start + size]


def test_streamed_speech_of_a_growing_text_is_ordered_and_audited(registry):
    async def main() -> tuple[audit.AuditRecord, list[bytes], stt.Transcript]:
        with audit.scope(method="TEST", endpoint="test/speak-stream") as record:
            voicing = await tts.voicing(api_key=None, model=None, voice="alloy")
            chunks = [
                chunk
                async for chunk in tts.speak_stream(
                    v=voicing, text=deltas(REPLY), response_format="pcm", parallelism=2
                )
            ]
        pcm = audio.Pcm(audio.from_s16le(b"".join(chunks)), tts.OUTPUT_RATE)
        heard = await stt.transcribe(api_key=None, source=pcm, options=stt.SttOptions())
        return record, chunks, heard

    record, chunks, heard = asyncio.run(main())
    # Two sentences, each spoken as its own piece, in the order they were written.
    assert len(chunks) >= 2
    assert wer(REPLY, heard.text) <= WER_BOUND
    row = audit_row(record.request_id)
    assert row.status_code == 200 and row.model_names == "rhasspy/piper-en_US-joe-medium"
    assert row.tts_ms > 0 and row.tts_first_audio_ms is not None
    assert row.audio_seconds_out == pytest.approx(len(b"".join(chunks)) / 2 / tts.OUTPUT_RATE, rel=0.01)


@pytest.mark.parametrize("fmt", ["mp3", "wav", "flac", "opus"])
def test_streamed_speech_in_a_container_format_is_one_valid_stream(registry, fmt):
    async def main() -> bytes:
        with audit.scope(method="TEST", endpoint="test/speak-stream-format"):
            voicing = await tts.voicing(api_key=None, model=None, voice="alloy")
            stream = tts.speak_stream(v=voicing, text=deltas(REPLY), response_format=fmt)
            return b"".join([chunk async for chunk in stream])

    body = asyncio.run(main())
    samples, seconds = audio.decode(body, sample_rate=16_000)
    heard = asyncio.run(
        stt.transcribe(api_key=None, source=audio.Pcm(samples, 16_000), options=stt.SttOptions())
    )
    assert seconds > 2 and wer(REPLY, heard.text) <= WER_BOUND


def test_a_text_with_nothing_to_speak_yields_no_audio(registry):
    async def main() -> list[bytes]:
        voicing = await tts.voicing(api_key=None, model=None, voice="alloy")
        return [
            chunk
            async for chunk in tts.speak_stream(v=voicing, text=deltas("``` 👍 ```"), response_format="pcm")
        ]

    assert asyncio.run(main()) == []


def test_keys_are_checked_without_a_request(make_key):
    key = make_key("service-test")
    revoked = make_key("service-revoked", revoked_at=timezone.now())

    async def main() -> audit.AuditRecord:
        with audit.scope(method="TEST", endpoint="test/authenticate") as record:
            assert (await access.aauthenticate(key.secret)).pk == key.row.pk
        return record

    record = asyncio.run(main())
    row = audit_row(record.request_id)
    assert row.key_prefix == key.prefix and row.api_key_id == key.row.pk
    with pytest.raises(AuthenticationFailed, match="revoked"):
        access.authenticate(revoked.secret)
    with pytest.raises(AuthenticationFailed, match="Incorrect API key"):
        access.authenticate("vp-not-a-key-at-all")
