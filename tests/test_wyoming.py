"""The Wyoming server (`manage.py wyoming`) as Home Assistant uses it: the `wyoming` library's own
async client against a live server on loopback, on the session's registry and test database."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.utils import timezone
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.event import async_read_event as read_event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from bench.harness import speech
from bench.harness.daphne import ROOT, free_port
from registry.models import SpeechToTextModel, TextToSpeechModel, Voice
from registry.speech import audio
from tests.audit_log import audit_rows
from tests.conftest import server_env
from tests.wer import wer

QUESTION = "Turn on the kitchen lights and set the temperature to twenty degrees."
PIPER = "rhasspy/piper-en_US-joe-medium"
MAX_CHARS = 300  # the fixture server's VOICEPROXY_MAX_TTS_CHARS


class WyomingProcess:
    def __init__(self, log_path: Path, *args: str, **env: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "wyoming", "--port", str(self.port), *args],
                cwd=ROOT,
                env=server_env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, log_path.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the Wyoming server did not listen:\n{log_path.read_text()}")

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def wyoming(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WyomingProcess]:
    server = WyomingProcess(
        tmp_path_factory.mktemp("wyoming") / "wyoming.log",
        "--allow",
        "127.0.0.1,::1",
        VOICEPROXY_MAX_TTS_CHARS=str(MAX_CHARS),
    )
    yield server
    assert server.stop() == 0, server.log_path.read_text()


def talk(port: int, events: list[Event], *, until: str, stop_on_error: bool = True) -> list[Event]:
    """Send the events, then read until an event of type `until` (or an error) arrives."""

    async def run() -> list[Event]:
        received: list[Event] = []
        async with AsyncTcpClient("127.0.0.1", port) as client:
            for event in events:
                await client.write_event(event)
            while True:
                event = await asyncio.wait_for(client.read_event(), timeout=120)
                assert event is not None, (
                    f"the server closed the connection after {[e.type for e in received]}"
                )
                received.append(event)
                if event.type == until or (stop_on_error and event.type == "error"):
                    break
        return received

    return asyncio.run(run())


def spoken(events: list[Event]) -> tuple[np.ndarray, int]:
    start = next(AudioStart.from_event(e) for e in events if AudioStart.is_type(e.type))
    assert (start.width, start.channels) == (2, 1)
    data = b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))
    return audio.from_s16le(data), start.rate


def transcribe_back(samples: np.ndarray, rate: int, client: Any) -> str:
    wav = audio.encode_whole(samples, "wav", input_rate=rate)
    return client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav)).text


def audio_events(wav: bytes, *, rate: int, width: int, channels: int, chunk: int = 1024) -> list[Event]:
    """The speech as a client might send it: this rate, sample width and channel count, in chunks."""
    samples, _ = audio.decode(wav, sample_rate=rate)
    if width == 2:
        mono = audio.s16le(samples)
        frames = np.frombuffer(mono, dtype="<i2")
    else:  # 4: signed 32-bit
        frames = (np.clip(samples, -1, 1) * (2**31 - 1)).astype("<i4")
    data = np.repeat(frames, channels).tobytes()
    fmt = {"rate": rate, "width": width, "channels": channels}
    chunks = [AudioChunk(audio=data[i : i + chunk], **fmt).event() for i in range(0, len(data), chunk)]
    return [AudioStart(**fmt).event(), *chunks, AudioStop().event()]


def test_describe_lists_the_registry_and_follows_its_changes(wyoming: WyomingProcess) -> None:
    info = Info.from_event(talk(wyoming.port, [Describe().event()], until="info")[-1])
    stt_ids = set(SpeechToTextModel.objects.filter(enabled=True).values_list("model_id", flat=True))
    assert {m.name for p in info.asr for m in p.models} == stt_ids
    tiny = next(m for p in info.asr for m in p.models if m.name == "Systran/faster-whisper-tiny.en")
    assert tiny.languages == ["en"]  # English-only checkpoint
    assert info.asr[0].supports_transcript_streaming and info.tts[0].supports_synthesize_streaming
    voices = {v.name: v for p in info.tts for v in p.voices}
    enabled = Voice.objects.filter(enabled=True, model__enabled=True)
    assert len(voices) == enabled.count()
    joe = next(v for v in enabled if v.model.model_id == PIPER)
    assert any(name.endswith(joe.name) and v.languages == [joe.language] for name, v in voices.items())

    piper = TextToSpeechModel.objects.get(model_id=PIPER)
    added = Voice.objects.create(model=piper, name="wyoming-test-voice", language="en_GB")
    try:
        info = Info.from_event(talk(wyoming.port, [Describe().event()], until="info")[-1])
        listed = {v.name: v for p in info.tts for v in p.voices}
        assert listed["wyoming-test-voice"].languages == ["en_GB"]
    finally:
        added.delete()
    info = Info.from_event(talk(wyoming.port, [Describe().event()], until="info")[-1])
    assert "wyoming-test-voice" not in {v.name for p in info.tts for v in p.voices}


@pytest.mark.parametrize(("rate", "width", "channels"), [(16_000, 2, 1), (22_050, 2, 2), (48_000, 4, 1)])
def test_streamed_speech_transcribes_as_the_openai_endpoint_does(
    wyoming: WyomingProcess, client: Any, rate: int, width: int, channels: int
) -> None:
    wav = speech.speech(QUESTION)
    since = timezone.now() - timedelta(seconds=1)
    events = talk(
        wyoming.port,
        [
            Transcribe(name="whisper-1", language="en").event(),
            *audio_events(wav, rate=rate, width=width, channels=channels),
        ],
        until="transcript",
    )
    types = [e.type for e in events]
    assert types[0] == "transcript-start" and types[-2:] == ["transcript-stop", "transcript"], types
    assert all(t == "transcript-chunk" for t in types[1:-2]) and len(types) > 3
    transcript = Transcript.from_event(events[-1])
    chunks = "".join(TranscriptChunk.from_event(e).text for e in events if TranscriptChunk.is_type(e.type))
    assert transcript.text == chunks.strip()
    assert TranscriptStart.from_event(events[0]).language == "en"
    over_http = client.audio.transcriptions.create(model="whisper-1", file=("q.wav", wav)).text
    assert wer(QUESTION, transcript.text) < 0.25
    assert wer(over_http, transcript.text) < 0.25

    row = audit_rows(endpoint="wyoming:asr", created__gte=since)[-1]
    assert (row.status_code, row.method, row.route) == (200, "WYOMING", "wyoming:asr")
    assert row.model_names == "Systran/faster-whisper-tiny.en"
    assert row.audio_seconds_in == pytest.approx(audio.decode(wav, sample_rate=16_000)[1], abs=0.05)
    assert row.stt_ms and row.stt_ms > 0
    assert TranscriptStop.is_type(events[-2].type)


def test_synthesize_speaks_the_text(wyoming: WyomingProcess, client: Any) -> None:
    text = "The front door is locked and the garage is closed."
    since = timezone.now() - timedelta(seconds=1)
    events = talk(
        wyoming.port, [Synthesize(text=text, voice=SynthesizeVoice(name="joe")).event()], until="audio-stop"
    )
    assert events[0].type == "audio-start" and events[-1].type == "audio-stop"
    samples, rate = spoken(events)
    assert len(samples) > rate  # more than a second of speech
    assert wer(text, transcribe_back(samples, rate, client)) < 0.35
    row = audit_rows(endpoint="wyoming:tts", created__gte=since)[-1]
    assert row.status_code == 200 and row.model_names == PIPER
    assert row.characters_in == len(text)
    assert row.audio_seconds_out == pytest.approx(len(samples) / rate, abs=0.05)


def test_streaming_synthesis_of_a_three_part_text(wyoming: WyomingProcess, client: Any) -> None:
    parts = ["It is sunny in Paris ", "with a light breeze. ", "Tomorrow it will rain."]
    voice = SynthesizeVoice(name="joe")
    events = talk(
        wyoming.port,
        [
            SynthesizeStart(voice=voice).event(),
            *[SynthesizeChunk(text=p).event() for p in parts],
            Synthesize(text="".join(parts), voice=voice).event(),  # Home Assistant's copy for old servers
            SynthesizeStop().event(),
        ],
        until="synthesize-stopped",
    )
    types = [e.type for e in events]
    assert types[0] == "audio-start" and types[-2:] == ["audio-stop", "synthesize-stopped"], types
    assert types.count("audio-start") == 1  # the repeated `synthesize` was not spoken again
    samples, rate = spoken(events)
    heard = transcribe_back(samples, rate, client)
    assert wer("".join(parts), heard) < 0.35
    assert SynthesizeStopped.is_type(events[-1].type)


def test_a_wrong_model_or_voice_is_an_error_event(wyoming: WyomingProcess) -> None:
    wav = speech.speech("hello there")
    events = talk(
        wyoming.port,
        [Transcribe(name="no-such-model").event(), *audio_events(wav, rate=16_000, width=2, channels=1)],
        until="transcript",
    )
    error = Error.from_event(events[-1])
    assert error.code == "model_not_found" and "no-such-model" in error.text
    events = talk(
        wyoming.port,
        [Synthesize(text="Hello.", voice=SynthesizeVoice(name="nobody")).event()],
        until="audio-stop",
    )
    error = Error.from_event(events[-1])
    assert error.code == "invalid_voice" and "nobody" in error.text
    # The connection stays usable after an error.
    events = talk(
        wyoming.port,
        [Synthesize(text="Hi.", voice=SynthesizeVoice(name="nobody")).event(), Describe().event()],
        until="info",
        stop_on_error=False,
    )
    assert [e.type for e in events] == ["error", "info"]
    failed = audit_rows(
        count=2, endpoint__startswith="wyoming:", error_code__in=["model_not_found", "invalid_voice"]
    )
    assert {"model_not_found", "invalid_voice"} <= {row.error_code for row in failed}


def test_a_client_outside_the_allow_list_is_refused(
    registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    since = timezone.now() - timedelta(seconds=1)
    server = WyomingProcess(tmp_path_factory.mktemp("wyoming-lan") / "w.log", "--allow", "192.168.77.0/24")
    try:
        events = talk(server.port, [Describe().event()], until="info")
    finally:
        assert server.stop() == 0
    assert [e.type for e in events] == ["error"]
    assert Error.from_event(events[0]).code == "client_not_allowed"
    row = audit_rows(endpoint="wyoming:connect", created__gte=since)[-1]
    assert row.status_code == 403 and "127.0.0.1" in row.error_message


def test_the_wyoming_process_reports_its_model_cache(wyoming: WyomingProcess) -> None:
    from registry.models import ServerProcess

    talk(
        wyoming.port,
        [Synthesize(text="Hello.", voice=SynthesizeVoice(name="joe")).event()],
        until="audio-stop",
    )
    spoken_at = timezone.now()
    # The process's first heartbeat after the reply was spoken reports the voice's model as loaded.
    row, polls = None, 0  # heartbeats come every few seconds: 600 polls is a hang
    while row is None or row.heartbeat <= spoken_at:
        polls += 1
        assert polls <= 600, "no heartbeat after 600 polls"
        assert wyoming.process.poll() is None, wyoming.log_path.read_text()
        time.sleep(0.2)
        row = ServerProcess.objects.filter(pid=wyoming.process.pid).first()
    loaded = {m.get("model_id") for m in row.cache if m.get("state") == "loaded"}
    assert PIPER in loaded, f"the Wyoming process's cache: {row.cache}"


def test_what_a_client_may_send_is_bounded(wyoming: WyomingProcess) -> None:
    events = talk(
        wyoming.port,
        [Synthesize(text="Hello there. " * 40, voice=SynthesizeVoice(name="joe")).event()],
        until="audio-stop",
    )
    assert Error.from_event(events[-1]).code == "input_too_long"
    events = talk(
        wyoming.port,
        [
            AudioStart(rate=10**9, width=4, channels=1_000_000).event(),
            AudioChunk(rate=10**9, width=4, channels=1_000_000, audio=b"\0" * 1024).event(),
            AudioStop().event(),
        ],
        until="transcript",
    )
    error = Error.from_event(events[-1])
    assert error.code == "invalid_audio" and "Unsupported audio format" in error.text
    # A stream past the character limit: what came within it is spoken, then an error, then the end.
    voice = SynthesizeVoice(name="joe")
    events = talk(
        wyoming.port,
        [
            SynthesizeStart(voice=voice).event(),
            SynthesizeChunk(text="The lights are on. ").event(),
            SynthesizeChunk(text="x" * MAX_CHARS).event(),
            SynthesizeChunk(text="More text that is never spoken. ").event(),
            SynthesizeStop().event(),
        ],
        until="synthesize-stopped",
        stop_on_error=False,
    )
    types = [e.type for e in events]
    assert "audio-chunk" in types and "error" in types and types[-1] == "synthesize-stopped", types
    assert Error.from_event(events[types.index("error")]).code == "input_too_long"
    # An event that declares a payload larger than any audio chunk: refused, the connection closed.

    async def oversized() -> list[Event]:
        reader, writer = await asyncio.open_connection("127.0.0.1", wyoming.port)
        writer.write(b'{"type": "audio-chunk", "payload_length": 1000000000}\n')
        await writer.drain()
        got = []
        while (event := await asyncio.wait_for(read_event(reader), timeout=30)) is not None:
            got.append(event)
        writer.close()
        return got

    got = asyncio.run(oversized())
    assert [e.type for e in got] == ["error"] and Error.from_event(got[0]).code == "event_too_large"
