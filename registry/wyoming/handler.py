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
from registry.errors import InvalidAudio, OpenAIError, as_openai_error
from registry.speech import audio, stt, tts, workers
from registry.speech.engines.base import Samples
from registry.wyoming import catalog

logger = logging.getLogger(__name__)

METHOD = "WYOMING"
ASR, TTS = "wyoming:asr", "wyoming:tts"
OUT_WIDTH, OUT_CHANNELS = 2, 1
CHUNK_BYTES = 4096  # audio out per audio-chunk event, at most


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

    def format(self, fmt: AudioStart | AudioChunk) -> None:
        if fmt.rate > 0 and fmt.width in (1, 2, 3, 4) and fmt.channels > 0:
            self.rate, self.width, self.channels = fmt.rate, fmt.width, fmt.channels

    def add(self, chunk: AudioChunk) -> None:
        if not self.parts:
            self.format(chunk)
        limit = settings.VOICEPROXY_MAX_AUDIO_SECONDS * self.rate * self.width * self.channels
        if self.size + len(chunk.audio) > limit:
            self.too_long = True
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
                self.text_stream.put_nowait(SynthesizeChunk.from_event(event).text)
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
                if recording.too_long:
                    raise InvalidAudio(
                        f"The audio is longer than {settings.VOICEPROXY_MAX_AUDIO_SECONDS:.0f} s.",
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
        await self._speak(request.voice, _once(request.text), streamed=False)

    async def _stream_start(self, start: SynthesizeStart) -> None:
        if self.speaking is not None:  # a new stream before the last one stopped: end that one first
            await self._stream_stop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.text_stream = queue
        self.speaking = asyncio.create_task(self._speak(start.voice, _drain(queue), streamed=True))

    async def _stream_stop(self) -> None:
        queue, speaking = self.text_stream, self.speaking
        self.text_stream = self.speaking = None
        if queue is not None:
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
