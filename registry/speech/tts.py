"""Text to speech: resolve a voice, then speak a text, whole or as it grows.

    voicing()         model + voice names -> a `Voicing` (ModelNotFound, InvalidRequest...)
    speak_stream()    a growing text (async iterator of deltas) -> ordered audio chunks: sentences
                      split as they complete, synthesised with bounded parallelism in the pool,
                      each engine chunk forwarded as it comes, timing and audit recorded once
    speak()           /v1/audio/speech: a whole text through speak_stream() (flac: whole), checked
                      before the first byte (a bad request is an ordinary 400, never a broken stream)
    speak_whole()     a whole text as one file whose header carries its real length
    synthesize_on()   the pipeline on a loaded engine; synthesize() gets the engine first. The
                      bench times these very functions.

Text is cleaned of markdown, fenced code and emoji (registry/speech/text.py). Audio leaves at
OPENAI_PCM_RATE (24 kHz) in every format.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
from django.conf import settings

from registry import audit, catalog
from registry.errors import InvalidRequest
from registry.models import ApiKey
from registry.resolved import ResolvedModel
from registry.speech import audio, sources, workers
from registry.speech.cache import model_cache
from registry.speech.engines.base import EngineError, Samples, TextToSpeech, UnknownVoice, VoiceSpec
from registry.speech.text import SentenceSplitter, SpeakableFilter, lead_in, split_sentences

T = TypeVar("T")

OUTPUT_RATE = audio.OPENAI_PCM_RATE
# Formats answered whole, not streamed: a flac's header must carry its total length (libsndfile
# reads a streamed one as 1e11 hours long), and OpenAI streams only pcm, wav, mp3, opus and aac.
WHOLE_FORMATS = ("flac",)
# Formats whose stream is raw s16le (wav behind a streaming header): made on the loop, no codec.
_RAW_FORMATS = ("pcm", "wav")


@dataclass(frozen=True)
class Voicing:
    """A resolved model and voice, and how fast to speak: all a worker needs."""

    model: ResolvedModel
    voice: VoiceSpec
    speed: float = 1.0


async def voicing(
    *,
    api_key: ApiKey | None,
    model: str | None,
    voice: str | None,
    speed: float = 1.0,
    model_param: str = "model",
    voice_param: str = "voice",
) -> Voicing:
    """Resolve model and voice names (ids or aliases); the model's first voice when `voice` is empty.

    Raises ModelNotFound, InvalidRequest and PermissionDenied.
    """
    resolved = await catalog.model_for(task="tts", api_key=api_key, name=model, param=model_param)
    audit.add_model(resolved.model_id)
    if voice:
        spec = await catalog.voice_for(model=resolved, name=voice, param=voice_param)
    else:
        default = await catalog.default_voice(resolved)
        if default is None:
            raise InvalidRequest(
                f"The model '{resolved.model_id}' has no voices registered.",
                param=voice_param,
                code="invalid_voice",
            )
        spec = default
    return Voicing(model=resolved, voice=spec, speed=speed)


def speakable(text: str) -> list[str]:
    """The sentences of `text` worth speaking: markdown, fenced code and emoji removed."""
    speakable_piece = SpeakableFilter()
    return [s for s in map(speakable_piece, split_sentences(text)) if s]


def synthesize_on(engine: TextToSpeech, v: Voicing, sentences: Iterable[str]) -> Iterator[Samples]:
    """Speak `sentences` on a loaded engine: its chunks (at `engine.sample_rate`) as it makes them.

    Work started inside `workers.leading()` is the start of a reply, whose first sound a listener is
    waiting for: if the pool is busy when its first sentence starts, that sentence's first phrase is
    spoken alone (text.lead_in), so that it comes sooner and the rest takes its turn after other
    requests' first sounds. A machine with nothing else to do speaks it whole.

    Blocking: run it in the pool. Raises InvalidRequest when the engine rejects the voice or the text.
    """
    for index, sentence in enumerate(sentences):
        busy = index == 0 and settings.VOICEPROXY_LEAD_IN and workers.is_leading() and workers.crowded()
        for piece in (busy and lead_in(sentence)) or (sentence,):
            try:
                # Other units running in the pool beside this one: the engine uses fewer threads.
                crowded = workers.running() > 1
                yield from engine.synthesize(piece, voice=v.voice, speed=v.speed, crowded=crowded)
            except UnknownVoice as exc:
                raise InvalidRequest(str(exc), param="voice", code="invalid_voice") from exc
            except EngineError as exc:
                raise InvalidRequest(str(exc), param="input", code="synthesis_failed") from exc


def loadable(v: Voicing) -> Voicing:
    """The voicing with a `pypi:` voice source turned into a local path (blocking: in the pool).

    Raises InvalidRequest when the voice's package is gone.
    """
    if not sources.is_pypi(v.voice.source):
        return v
    try:
        source = sources.local(v.voice.source, v.model.spec.download_root)
    except sources.SourceError as exc:
        raise InvalidRequest(f"The voice '{v.voice.name}' cannot be loaded: {exc}", param="voice") from exc
    return replace(v, voice=replace(v.voice, source=source))


def synthesize(v: Voicing, sentences: Iterable[str], *, rate: int = OUTPUT_RATE) -> Iterator[Samples]:
    """Get the engine (loading it if needed), speak, and resample to `rate`. Blocking: run it in the pool."""
    v = loadable(v)
    with model_cache.tts(v.model) as engine:
        resampler = audio.Resampler(engine.sample_rate, rate)
        for chunk in synthesize_on(engine, v, sentences):
            out = resampler.push(chunk)
            if len(out):
                yield out
        tail = resampler.flush()
        if len(tail):
            yield tail


def encoded(v: Voicing, sentences: list[str], fmt: str | None) -> Iterator[tuple[int, Samples | bytes]]:
    """(samples, audio) as the engine speaks: `fmt`'s bytes encoded here, in the same worker (one
    encoder for all the sentences), or float samples when `fmt` is None. Blocking: run it in the pool.

    Synthesis and encoding in one worker thread, sentence after sentence, is what a direct call
    does; handing each chunk to the event loop to encode made Kokoro ~10 % slower through HTTP.
    """
    encoder = audio.StreamEncoder(fmt, input_rate=OUTPUT_RATE) if fmt else None
    for chunk in synthesize(v, sentences):
        yield len(chunk), (encoder.encode(chunk) if encoder else chunk)
    if encoder is not None:
        yield 0, encoder.close()


@dataclass
class _Spoken:
    """What one speaking sent, for the audit scope: recorded once, at its end."""

    samples: int = 0

    def sent(self, samples: int, data: bytes) -> bytes:
        self.samples += samples
        if data:
            audit.mark_first("tts_first_audio_ms")
        return data

    def end(self) -> None:
        audit.usage().add("audio_seconds_out", self.samples / OUTPUT_RATE)


@dataclass
class _Sentence:
    """One sentence's audio, synthesised at once and read in order: (samples, audio) items, then
    None (or an error)."""

    text: str
    given: str  # the piece as the caller gave it (before markdown and emoji were taken out)
    chunks: asyncio.Queue[tuple[int, Samples | bytes] | BaseException | None] = field(
        default_factory=asyncio.Queue
    )
    done: asyncio.Event = field(default_factory=asyncio.Event)  # emitted: its slot may go to the next


async def _synthesize_sentence(
    v: Voicing, sentence: _Sentence, slots: asyncio.Semaphore, raw: bool, *, first: bool
) -> None:
    async with slots:
        started = time.perf_counter()
        items = None
        try:
            # Raw formats are made in the worker (pcm needs no state across sentences); codecs
            # keep one encoder for the whole stream, fed in order by speak_stream(). The first
            # sentence leads: it goes before other requests' later sentences.
            with workers.leading() if first else contextlib.nullcontext():
                items = workers.stream(encoded, v, [sentence.text], "pcm" if raw else None)
            async for chunk in items:
                sentence.chunks.put_nowait(chunk)
        except Exception as exc:  # raised by the emitter, in order
            sentence.chunks.put_nowait(exc)
        finally:
            if items is not None:
                items.close()  # a listener who went away stops synthesis before the next chunk
            audit.usage().span("tts_ms", started)
            sentence.chunks.put_nowait(None)
        # Bounded: a sentence keeps its slot until it has been sent, so at most `parallelism`
        # sentences are synthesised or waiting to be sent at once.
        await sentence.done.wait()


async def speak_stream(
    *,
    v: Voicing,
    text: AsyncIterable[str],
    response_format: str,
    parallelism: int = 1,
    sentences: bool = False,
    on_spoken: Callable[[str, int], None] | None = None,
) -> AsyncGenerator[bytes]:
    """Speak a growing text: ordered audio chunks in `response_format` (a key of audio.FORMATS).

    Sentences are synthesised as soon as the text completes them, up to `parallelism` at once,
    and leave in order; each engine chunk is encoded and sent as it comes. Synthesis errors
    (InvalidRequest for a voice or text the engine rejects, ServerBusy, ModelUnavailable) are
    raised where their sentence's audio would have been. Closing the iterator early stops the
    work. The audit scope gets tts_ms (synthesis time), audio_seconds_out and
    tts_first_audio_ms once. Yields nothing for a text with nothing to speak. With `sentences`,
    each item of `text` is a whole sentence already (split by the caller): spoken as it comes.
    `on_spoken(piece, samples)` is called once a sentence's audio has all been yielded, with the
    piece as given and its length at OUTPUT_RATE (a Realtime reply maps heard audio back to text).
    """
    slots = asyncio.Semaphore(parallelism)
    order: asyncio.Queue[_Sentence | BaseException | None] = asyncio.Queue()
    tasks: list[asyncio.Task[None]] = []
    spoken = _Spoken()
    raw = response_format in _RAW_FORMATS

    async def read() -> None:
        splitter, speakable_piece = SentenceSplitter(), SpeakableFilter()

        def start(pieces: list[str]) -> None:
            for piece in pieces:
                text = speakable_piece(piece)
                if not text:
                    continue
                sentence = _Sentence(text, piece)
                order.put_nowait(sentence)
                tasks.append(
                    asyncio.create_task(_synthesize_sentence(v, sentence, slots, raw, first=not tasks))
                )

        try:
            async for delta in text:
                start([delta] if sentences else splitter.feed(delta))
            start(splitter.flush())
            order.put_nowait(None)
        except Exception as exc:
            order.put_nowait(exc)

    reader = asyncio.create_task(read())
    encoder = None if raw else audio.StreamEncoder(response_format, input_rate=OUTPUT_RATE)
    try:
        if response_format == "wav":
            yield audio.wav_stream_header(OUTPUT_RATE)
        while (sentence := await order.get()) is not None:
            if isinstance(sentence, BaseException):
                raise sentence
            length = 0
            while (chunk := await sentence.chunks.get()) is not None:
                if isinstance(chunk, BaseException):
                    raise chunk
                samples, piece = chunk
                length += samples
                if not isinstance(piece, bytes):  # a codec's stream: one encoder, fed in order
                    assert encoder is not None  # noqa: S101 - only codec formats send samples
                    piece = await workers.run(encoder.encode, piece)
                if spoken.sent(samples, piece):
                    yield piece
            sentence.done.set()
            if on_spoken is not None:
                on_spoken(sentence.given, length)
        if encoder is not None:
            tail = await workers.run(encoder.close)
            if tail:
                yield tail
    finally:
        reader.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(reader, *tasks, return_exceptions=True)
        spoken.end()


async def _once(item: T) -> AsyncIterator[T]:
    yield item


@dataclass
class SpeechStream:
    content_type: str
    chunks: AsyncIterator[bytes]


async def speak(*, v: Voicing, text: str, response_format: str) -> SpeechStream:
    """Start speaking a whole text; returns once the first audio bytes exist (or raised why not)."""
    if not speakable(text):
        raise InvalidRequest("The input has nothing to speak.", param="input", code="empty_input")
    audit.usage().characters_in = len(text)
    if response_format in WHOLE_FORMATS:
        whole = await speak_whole(v=v, text=text, response_format=response_format)
        audit.mark_first("tts_first_audio_ms")
        return SpeechStream(content_type=audio.FORMATS[response_format], chunks=_once(whole))
    # The whole text is known: one worker speaks and encodes it sentence after sentence.
    started, spoken = time.perf_counter(), _Spoken()
    with workers.leading():  # its first sentence goes before other requests' later ones
        items = workers.stream(encoded, v, speakable(text), response_format)
    try:
        first = b""
        while not first:  # the first audio, not a header or an encoder warming up: the voice works
            samples, data = await anext(items)
            first += spoken.sent(samples, data) if isinstance(data, bytes) else b""
    except StopAsyncIteration:
        raise InvalidRequest("The input has nothing to speak.", param="input", code="empty_input") from None
    except BaseException:
        items.close()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            yield first
            async for samples, data in items:
                if isinstance(data, bytes) and spoken.sent(samples, data):
                    yield data
        finally:
            items.close()  # a client that went away stops synthesis before the next chunk
            audit.usage().span("tts_ms", started)
            spoken.end()

    return SpeechStream(content_type=audio.FORMATS[response_format], chunks=body())


async def speech(
    *, api_key: ApiKey | None, model: str | None, voice: str, speed: float, text: str, response_format: str
) -> SpeechStream:
    """/v1/audio/speech: resolve the model and voice, then start speaking."""
    v = await voicing(api_key=api_key, model=model, voice=voice, speed=speed)
    return await speak(v=v, text=text, response_format=response_format)


def _whole(v: Voicing, sentences: list[str], fmt: str) -> tuple[bytes, float]:
    parts = list(synthesize(v, sentences))
    if not parts:
        raise InvalidRequest("The reply has nothing to speak.", code="empty_input")
    samples = np.concatenate(parts)
    return audio.encode_whole(samples, fmt, input_rate=OUTPUT_RATE), audio.seconds(samples, OUTPUT_RATE)


async def speak_whole(*, v: Voicing, text: str, response_format: str) -> bytes:
    """The whole of `text` spoken and encoded as one file (a wav header with real sizes)."""
    sentences = speakable(text)
    if not sentences:
        raise InvalidRequest("The reply has nothing to speak.", code="empty_input")
    started = time.perf_counter()
    data, seconds = await workers.run(_whole, v, sentences, response_format)
    usage = audit.usage()
    usage.span("tts_ms", started)
    usage.add("audio_seconds_out", seconds)
    return data
