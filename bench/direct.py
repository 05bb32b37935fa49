"""The benchmarks' direct side: the gateway's own speech pipelines, called in this process without HTTP.

In the two steps the services take in their worker pool: get the engine, then run the pipeline on it.

- `Engines` resolves what a client names through the registry (`registry.catalog.model_for`,
  `registry.speech.tts.voicing`, each in an audit scope as a request's are) and takes each engine
  from this process's model cache (`registry.speech.cache.model_cache`), holding it for the `with`
  block so that it is neither evicted nor reaped between timed calls. The gateway's daphne loads its
  own: the two share the model files and the EngineSpec, nothing else.
- `Transcriber.transcribe()`: `registry.speech.audio.decode` at `stt.SAMPLE_RATE` with the gateway's
  duration cap, then `stt.transcribe_on`, drained.
- `Speaker.stream()`: `tts.speakable`, then `tts.synthesize_on` sentence by sentence, each chunk
  through one `audio.StreamEncoder` as it comes. `Speaker.whole()`: `tts.synthesize_on`,
  concatenated, `audio.encode_whole`. The encoders take the engine's rate and resample to OpenAI's
  24 kHz themselves; what the service adds around the engine (its pool, a resampler ahead of the
  encoder, the audit record) is what the benchmarks count as the gateway's.

Everything here blocks in the calling thread and times itself with perf_counter. Import this module
after `Gateway.use_settings()`: the services import the registry's models.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Self, TypeVar

import numpy as np
from django.conf import settings

from registry import audit, catalog
from registry.resolved import ResolvedModel
from registry.speech import audio, stt, tts
from registry.speech.cache import model_cache
from registry.speech.engines.base import Samples, SpeechToText, TextToSpeech

T = TypeVar("T")


def resolve(lookup: Callable[[], Awaitable[T]]) -> T:
    """Await a registry lookup in its own audit scope (method BENCH), as a request's lookups run."""

    async def in_scope() -> T:
        with audit.scope(method="BENCH", endpoint="bench/resolve"):
            return await lookup()

    return asyncio.run(in_scope())


@dataclass(frozen=True)
class Transcriber:
    model: ResolvedModel
    engine: SpeechToText

    def decode(self, wav: bytes) -> tuple[Samples, float]:
        """16 kHz mono samples and their seconds, as the gateway decodes an upload."""
        return audio.decode(
            wav, sample_rate=stt.SAMPLE_RATE, max_seconds=settings.VOICEPROXY_MAX_AUDIO_SECONDS
        )

    def transcribe(self, wav: bytes, options: stt.SttOptions | None = None) -> tuple[str, float]:
        """The transcript of `wav` and the seconds its decoding took. Raises InvalidRequest, AudioError."""
        started = time.perf_counter()
        samples, _ = self.decode(wav)
        decoded = time.perf_counter() - started
        segments, _ = stt.transcribe_on(
            self.engine,
            samples,
            model_id=self.model.model_id,
            task="transcribe",
            options=options or stt.SttOptions(),
        )
        return "".join(s.text for s in segments).strip(), decoded  # lazy: draining is the decoding


@dataclass(frozen=True)
class Spoken:
    first_s: float  # start -> the first non-empty encoded bytes
    total_s: float  # start -> the encoder closed
    audio_s: float  # seconds of audio the engine produced
    nbytes: int
    sentence_done_s: tuple[float, ...] = ()  # start -> each sentence synthesised and encoded
    sentence_audio_s: tuple[float, ...] = ()  # each sentence's audio seconds


@dataclass(frozen=True)
class Speaker:
    voicing: tts.Voicing
    engine: TextToSpeech

    def stream(self, text: str, fmt: str) -> Spoken:
        """Speak `text` as a stream of `fmt` bytes, timed from the call to each event."""
        started = time.perf_counter()
        rate = self.engine.sample_rate
        encoder = audio.StreamEncoder(fmt, input_rate=rate)
        first = 0.0
        nbytes = samples = 0
        done: list[float] = []
        lengths: list[float] = []
        for sentence in tts.speakable(text):
            before = samples
            for chunk in tts.synthesize_on(self.engine, self.voicing, [sentence]):
                samples += len(chunk)
                data = encoder.encode(chunk)
                if data and not first:
                    first = time.perf_counter() - started
                nbytes += len(data)
            done.append(time.perf_counter() - started)
            lengths.append((samples - before) / rate)
        nbytes += len(encoder.close())
        total = time.perf_counter() - started
        return Spoken(
            first_s=first or total,
            total_s=total,
            audio_s=samples / rate,
            nbytes=nbytes,
            sentence_done_s=tuple(done),
            sentence_audio_s=tuple(lengths),
        )

    def whole(self, text: str, fmt: str) -> tuple[bytes, float]:
        """`text` spoken and encoded as one `fmt` file; (the file, its audio seconds)."""
        samples = np.concatenate(list(tts.synthesize_on(self.engine, self.voicing, tts.speakable(text))))
        rate = self.engine.sample_rate
        return audio.encode_whole(samples, fmt, input_rate=rate), audio.seconds(samples, rate)


class Engines:
    """Engines from this process's model cache, held until the `with` block ends."""

    def __init__(self) -> None:
        self.held = ExitStack()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.held.close()

    def stt(self, name: str | None) -> Transcriber:
        """The STT model the gateway resolves for `name` (id or alias; None: the default), loaded."""
        model = resolve(lambda: catalog.model_for(task="stt", api_key=None, name=name))
        return Transcriber(model, self.held.enter_context(model_cache.stt(model)))

    def tts(self, model: str | None, voice: str) -> Speaker:
        """The TTS model and voice the gateway resolves for these names (None: the default model), loaded."""
        voicing = resolve(lambda: tts.voicing(api_key=None, model=model, voice=voice))
        # The voice as the service hands it to the engine (a `pypi:` source made a local path).
        return Speaker(tts.loadable(voicing), self.held.enter_context(model_cache.tts(voicing.model)))
