"""One Wyoming client connection: the events it sends, answered from the registry's models.

    describe                                   -> info
    transcribe?, audio-start, audio-chunk*, audio-stop
                                               -> transcript-start, transcript-chunk*, transcript-stop,
                                                  transcript (the whole text, for clients that do not
                                                  stream)
    synthesize                                 -> audio-start, audio-chunk*, audio-stop
    synthesize-start, synthesize-chunk*, synthesize-stop
                                               -> audio-start, audio-chunk*, audio-stop,
                                                  synthesize-stopped (a `synthesize` sent inside the
                                                  stream, as Home Assistant does for older servers,
                                                  is ignored)

Audio in may be any rate, sample width and channel count a client sends; it is converted in the
pool when it ends. Audio out is 16-bit mono PCM at OUTPUT_RATE, a chunk per piece the engine makes,
sentence by sentence. A failure is an `error` event (its text and the OpenAI error code) and the
connection stays usable. Each transcription and synthesis is one audit row (`wyoming:asr`,
`wyoming:tts`), with its model, timings and audio seconds, failures included.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from django.conf import settings
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.server import AsyncEventHandler
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from registry import audit
from registry.errors import InvalidAudio, InvalidRequest, OpenAIError, as_openai_error
from registry.speech import audio, stt, tts, workers
from registry.speech.engines.base import Samples
from registry.wyoming import catalog

logger = logging.getLogger(__name__)

METHOD = "WYOMING"
ASR, TTS = "wyoming:asr", "wyoming:tts"
OUT_WIDTH, OUT_CHANNELS = 2, 1
CHUNK_BYTES = 4096  # audio out per audio-chunk event, at most
# What one connection may send: an event's data and payload (audio chunks are a few KiB), the audio
# formats it may declare, its audio per transcription (also VOICEPROXY_MAX_AUDIO_SECONDS), and how
# long it may stay silent between events.
MAX_EVENT_BYTES = 1 << 20
MAX_RATE, MAX_WIDTH, MAX_CHANNELS = 192_000, 4, 8
IDLE_SECONDS = 300.0


class EventTooLarge(Exception):
    pass


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The wyoming library's reader, with every length bounded (its own reads whatever a client
    declares). None at the end of the stream or for a malformed header."""
    line = await reader.readline()
    if not line:
        return None
    try:
        header = json.loads(line)
        data_length = int(header.get("data_length") or 0)
        payload_length = int(header.get("payload_length") or 0)
        kind = str(header["type"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not 0 <= data_length <= MAX_EVENT_BYTES or not 0 <= payload_length <= MAX_EVENT_BYTES:
        raise EventTooLarge(f"An event may carry at most {MAX_EVENT_BYTES} bytes of data and of payload.")
    data = header.get("data") if isinstance(header.get("data"), dict) else {}
    if data_length:
        try:
            extra = json.loads(await reader.readexactly(data_length))
        except ValueError:
            return None
        if isinstance(extra, dict):
            data.update(extra)
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=kind, data=data, payload=payload)


def to_samples(data: bytes, *, width: int, channels: int) -> Samples:
    """Interleaved little-endian PCM of any width (1: unsigned 8-bit, 2, 3 or 4: signed) to mono
    float32. Blocking: the pool runs it."""
    frame = width * channels
    data = data[: len(data) - len(data) % frame]
    if width == 1:
        values = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        values = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
        ints = raw[:, 0].astype(np.int32) | raw[:, 1].astype(np.int32) << 8 | raw[:, 2].astype(np.int32) << 16
        values = (np.where(ints >= 1 << 23, ints - (1 << 24), ints)).astype(np.float32) / float(1 << 23)
    else:
        values = np.frombuffer(data, dtype="<i4").astype(np.float32) / float(1 << 31)
    if channels > 1:
        values = values.reshape(-1, channels).mean(axis=1)
    return np.ascontiguousarray(values, dtype=np.float32)


class _Recording:
    """The audio of one transcription as it arrives, kept as sent (converted once, at the end)."""

    def __init__(self, transcribe: Transcribe | None) -> None:
        self.transcribe = transcribe
        self.rate, self.width, self.channels = 16_000, 2, 1
        self.parts: list[bytes] = []
        self.size = 0
        self.too_long = False
        self.bad_format = ""

    def format(self, fmt: AudioStart | AudioChunk) -> None:
        if 0 < fmt.rate <= MAX_RATE and 1 <= fmt.width <= MAX_WIDTH and 1 <= fmt.channels <= MAX_CHANNELS:
            self.rate, self.width, self.channels = fmt.rate, fmt.width, fmt.channels
        else:
            self.bad_format = f"{fmt.rate} Hz, {fmt.width} bytes, {fmt.channels} channels"

    def add(self, chunk: AudioChunk) -> None:
        if not self.parts:
            self.format(chunk)
        # Seconds of audio at the declared format, and never more bytes than an upload may have.
        limit = min(
            settings.VOICEPROXY_MAX_AUDIO_SECONDS * self.rate * self.width * self.channels,
            2 * settings.VOICEPROXY_MAX_AUDIO_BYTES,
        )
        if self.too_long or self.bad_format or self.size + len(chunk.audio) > limit:
            self.too_long = not self.bad_format
            self.parts.clear()  # kept no longer: the transcription will be refused
            return
        self.parts.append(chunk.audio)
        self.size += len(chunk.audio)


class WyomingHandler(AsyncEventHandler):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, client: str) -> None:
        super().__init__(reader, writer)
        self.client = client
        self.transcribe: Transcribe | None = None
        self.recording: _Recording | None = None
        self.text_stream: asyncio.Queue[str | None] | None = None
        self.speaking: asyncio.Task[None] | None = None
        self.streamed_chars = 0
        self.overflowed = False

    async def run(self) -> None:
        """Events until the client leaves, goes quiet for IDLE_SECONDS, or sends one too large."""
        try:
            while True:
                async with asyncio.timeout(IDLE_SECONDS):
                    event = await read_event(self.reader)
                if event is None or not await self.handle_event(event):
                    break
        except TimeoutError:
            logger.info("Wyoming client %s idle for %.0f s: closed", self.client, IDLE_SECONDS)
        except EventTooLarge as exc:
            await self._error(InvalidRequest(str(exc), code="event_too_large"))
        except ValueError:  # an event header past the reader's line limit (64 KiB)
            await self._error(InvalidRequest("An event header is too long.", code="event_too_large"))
        finally:
            await self.disconnect()
            self.writer.close()

    async def handle_event(self, event: Event) -> bool:
        try:
            await self._handle(event)
        except Exception as exc:  # a bug must cost this request, not the connection or the server
            logger.exception("Wyoming %s from %s failed", event.type, self.client)
            await self._error(as_openai_error(exc))
        return True

    async def _handle(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.write_event((await catalog.info()).event())
        elif Transcribe.is_type(event.type):
            self.transcribe = Transcribe.from_event(event)
        elif AudioStart.is_type(event.type):
            self.recording = _Recording(self.transcribe)
            self.recording.format(AudioStart.from_event(event))
        elif AudioChunk.is_type(event.type):
            if self.recording is None:  # chunks without audio-start: the format comes with them
                self.recording = _Recording(self.transcribe)
            self.recording.add(AudioChunk.from_event(event))
        elif AudioStop.is_type(event.type):
            recording, self.recording, self.transcribe = self.recording, None, None
            await self._transcribe(recording or _Recording(None))
        elif SynthesizeStart.is_type(event.type):
            await self._stream_start(SynthesizeStart.from_event(event))
        elif SynthesizeChunk.is_type(event.type):
            if self.text_stream is not None:
                text = SynthesizeChunk.from_event(event).text
                self.streamed_chars += len(text)
                if self.streamed_chars > settings.VOICEPROXY_MAX_TTS_CHARS:  # the rest is not spoken
                    await self._stream_overflow()
                else:
                    self.text_stream.put_nowait(text)
        elif SynthesizeStop.is_type(event.type):
            await self._stream_stop()
        elif Synthesize.is_type(event.type) and self.text_stream is None:
            # (Inside a stream it repeats the streamed text, for older servers: ignored.)
            await self._synthesize(Synthesize.from_event(event))

    async def disconnect(self) -> None:
        if self.speaking is not None:
            self.speaking.cancel()
            await asyncio.gather(self.speaking, return_exceptions=True)

    async def _error(self, error: OpenAIError) -> None:
        await self.write_event(Error(text=error.message, code=str(error.code or error.type)).event())

    # --- speech to text ---------------------------------------------------------------------------

    async def _transcribe(self, recording: _Recording) -> None:
        asked = recording.transcribe or Transcribe()
        with audit.scope(method=METHOD, endpoint=ASR) as record:
            record.bytes_in = recording.size
            try:
                if recording.bad_format:
                    raise InvalidAudio(
                        f"Unsupported audio format ({recording.bad_format}): at most {MAX_RATE} Hz, "
                        f"{MAX_WIDTH} bytes a sample, {MAX_CHANNELS} channels.",
                        param="audio",
                    )
                if recording.too_long:
                    raise InvalidAudio(
                        f"The audio is longer than {settings.VOICEPROXY_MAX_AUDIO_SECONDS:.0f} s "
                        f"or {2 * settings.VOICEPROXY_MAX_AUDIO_BYTES} bytes.",
                        param="audio",
                    )
                samples = await workers.run(
                    to_samples, b"".join(recording.parts), width=recording.width, channels=recording.channels
                )
                options = stt.SttOptions(model=asked.name or None, language=asked.language or None)
                transcript = await stt.stream(
                    api_key=None,
                    source=audio.Pcm(samples, recording.rate),
                    task="transcribe",
                    options=options,
                )
                await self.write_event(TranscriptStart(language=transcript.info.language).event())
                texts: list[str] = []
                async for segment in transcript.segments:
                    if segment.text.strip():
                        texts.append(segment.text)
                        await self.write_event(TranscriptChunk(text=segment.text).event())
                await self.write_event(TranscriptStop().event())
                await self.write_event(
                    Transcript(text="".join(texts).strip(), language=transcript.info.language).event()
                )
            except OpenAIError as exc:
                await self._error(record.fail(exc))

    # --- text to speech ---------------------------------------------------------------------------

    async def _synthesize(self, request: Synthesize) -> None:
        if len(request.text) > settings.VOICEPROXY_MAX_TTS_CHARS:
            with audit.scope(method=METHOD, endpoint=TTS) as record:
                await self._error(record.fail(_too_long()))
            return
        await self._speak(request.voice, _once(request.text), streamed=False)

    async def _stream_overflow(self) -> None:
        """A stream past VOICEPROXY_MAX_TTS_CHARS: what was sent so far is spoken, the rest refused."""
        queue = self.text_stream
        if queue is None or self.overflowed:
            return
        self.overflowed = True
        queue.put_nowait(None)
        if self.speaking is not None:
            await self.speaking
        await self._error(_too_long())

    async def _stream_start(self, start: SynthesizeStart) -> None:
        if self.speaking is not None:  # a new stream before the last one stopped: end that one first
            await self._stream_stop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.text_stream, self.streamed_chars, self.overflowed = queue, 0, False
        self.speaking = asyncio.create_task(self._speak(start.voice, _drain(queue), streamed=True))

    async def _stream_stop(self) -> None:
        queue, speaking = self.text_stream, self.speaking
        self.text_stream = self.speaking = None
        if queue is not None and not self.overflowed:
            queue.put_nowait(None)
        if speaking is not None:
            await speaking
        await self.write_event(SynthesizeStopped().event())

    async def _speak(self, voice: Any, text: AsyncIterator[str], *, streamed: bool) -> None:
        """Speak the text (sentences synthesised as the text completes them), sending audio as it comes."""
        started = False
        with audit.scope(method=METHOD, endpoint=TTS) as record:
            record.usage.streamed = streamed
            characters = 0

            async def counted() -> AsyncIterator[str]:
                nonlocal characters
                async for piece in text:
                    characters += len(piece)
                    record.bytes_in += len(piece.encode())
                    yield piece

            try:
                v = await catalog.voicing(voice)
                format_ = {"rate": tts.OUTPUT_RATE, "width": OUT_WIDTH, "channels": OUT_CHANNELS}
                chunks = tts.speak_stream(v=v, text=counted(), response_format="pcm")
                try:
                    async for piece in chunks:
                        if not started:
                            await self.write_event(AudioStart(**format_).event())
                            started = True
                        for at in range(0, len(piece), CHUNK_BYTES):
                            part = piece[at : at + CHUNK_BYTES]
                            record.bytes_out += len(part)
                            await self.write_event(AudioChunk(audio=part, **format_).event())
                finally:
                    await chunks.aclose()
                if not started:  # nothing to speak: an empty stream, still well formed
                    await self.write_event(AudioStart(**format_).event())
                    started = True
                await self.write_event(AudioStop().event())
            except OpenAIError as exc:
                if started:
                    await self.write_event(AudioStop().event())
                await self._error(record.fail(exc))
            finally:
                record.usage.characters_in = characters or None


async def _once(text: str) -> AsyncIterator[str]:
    yield text


async def _drain(queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    while (piece := await queue.get()) is not None:
        yield piece


def _too_long() -> InvalidRequest:
    limit = settings.VOICEPROXY_MAX_TTS_CHARS
    return InvalidRequest(
        f"The text is longer than {limit} characters.", param="input", code="input_too_long"
    )
