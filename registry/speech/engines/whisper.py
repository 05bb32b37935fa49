"""faster-whisper (CTranslate2 Whisper) as a SpeechToText engine."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator

import ctranslate2
import faster_whisper
import numpy as np
from faster_whisper.transcribe import restore_speech_timestamps
from faster_whisper.vad import VadOptions, get_speech_timestamps

from registry.speech.engines.base import (
    CannotTranslate,
    EngineError,
    EngineSpec,
    Piece,
    Samples,
    Segment,
    Task,
    TranscriptionInfo,
    UnsupportedLanguage,
    Word,
)

logger = logging.getLogger(__name__)

# faster-whisper's own default: start greedy, and fall back to sampling at rising temperatures
# when a window's output looks like a loop or has a low log-probability.
_DEFAULT_TEMPERATURES: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

# The silence check looks at the first 2 s, then the next 4 s, 8 s... and stops at the first speech:
# Silero VAD costs ~2 ms per second of audio on 2 cores, so a clip that starts speaking pays a few
# ms, and only audio without speech is read to its end (60 s: ~110 ms), where Whisper would have
# spent 0.5-16 s decoding it into "You" or nothing (bench/bench_long_audio.py).
_FIRST_LOOK_S = 2.0


def has_speech(samples: Samples, vad: VadOptions, sample_rate: int = 16_000) -> bool:
    """Whether Silero VAD (faster-whisper's) hears speech anywhere in `samples`: any frame at or
    above `vad.threshold`. Blocking; stops at the first speech found."""
    start, length = 0, int(_FIRST_LOOK_S * sample_rate)
    while start < len(samples):
        if get_speech_timestamps(samples[start : start + length], vad, sampling_rate=sample_rate):
            return True
        start += length
        length *= 2
    return False


PIECE_S = 30.0  # a long clip's piece: at most this much speech, one Whisper window


def pieces_of(spans: list[dict[str, int]], sample_rate: int = 16_000) -> list[Piece]:
    """VAD's speech spans (each at most PIECE_S long) gathered in order into pieces of at most
    PIECE_S of speech each."""
    pieces: list[Piece] = []
    length, limit = 0, int(PIECE_S * sample_rate)
    for span in spans:
        if not pieces or length + span["end"] - span["start"] > limit:
            pieces.append([])
            length = 0
        pieces[-1].append(span)
        length += span["end"] - span["start"]
    return pieces


def speech_of(samples: Samples, piece: Piece) -> Samples:
    """A piece's speech, its stretches one after another (the silence between them left out)."""
    return np.concatenate([samples[span["start"] : span["end"]] for span in piece])


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when CTranslate2 sees a GPU, else "cpu"; anything else as given."""
    if device == "auto":
        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    return device


def resolve_compute_type(compute_type: str, device: str) -> str:
    # int8 on CPU: the published models are float16, which CPUs emulate slowly (faster-whisper's
    # "default" also warns about it); float16 is the native fast path on GPUs.
    if compute_type == "auto":
        return "float16" if device == "cuda" else "int8"
    return compute_type


class WhisperEngine:
    """One loaded faster-whisper model.

    Source: a directory holding a CTranslate2 Whisper model (model.bin, config.json,
    tokenizer.json...) or a hub id ("Systran/faster-whisper-small", or a size such as "tiny.en"),
    downloaded on construction into `download_root` or the Hugging Face cache. Construction
    blocks (download + load) and raises EngineError when the model cannot be loaded.

    Thread-safe: CTranslate2 queues concurrent `generate` calls on its worker(s), and faster-whisper
    keeps no per-call state on the model object.
    """

    sample_rate: int = 16_000

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.device = resolve_device(spec.device)
        compute_type = resolve_compute_type(spec.compute_type, self.device)
        try:
            self.model = faster_whisper.WhisperModel(
                spec.source,
                device=self.device,
                compute_type=compute_type,
                cpu_threads=max(spec.cpu_threads, 0),
                # One CTranslate2 worker serialises concurrent calls (two 6 s clips at once: 958 ms,
                # against 668 ms with two workers, which share the weights: +1 MiB for base).
                num_workers=max(spec.workers, 1),
                # Only used for hub ids; a local directory is read in place.
                download_root=spec.download_root or None,
            )
        except Exception as exc:  # hub errors, missing files, unsupported compute types: all one answer
            kind = "directory" if os.path.isdir(spec.source) else "model"
            raise EngineError(f"Could not load the Whisper {kind} {spec.source!r}: {exc}") from exc
        self.multilingual: bool = bool(self.model.model.is_multilingual)
        self.languages: frozenset[str] = frozenset(self.model.supported_languages)
        logger.info(
            "loaded whisper %s on %s (%s, %s)",
            spec.source,
            self.device,
            compute_type,
            "multilingual" if self.multilingual else "English-only",
        )

    def _check(self, task: Task, language: str | None) -> None:
        if language is not None and language not in self.languages:
            if self.multilingual:
                raise UnsupportedLanguage(f"Unsupported language {language!r}: this model does not know it.")
            # faster-whisper would warn and silently transcribe as English instead.
            raise UnsupportedLanguage(f"Unsupported language {language!r}: this model is English-only.")
        if task == "translate" and not self.multilingual:
            raise CannotTranslate(
                "This model is English-only and cannot translate; use a multilingual model."
            )

    def plan(
        self,
        samples: Samples,
        *,
        task: Task = "transcribe",
        language: str | None = None,
        vad_parameters: dict[str, float] | None = None,
    ) -> tuple[list[Piece], TranscriptionInfo]:
        """Long audio's plan: the speech Silero VAD finds, in pieces of up to PIECE_S of speech (the
        cut BatchedInferencePipeline makes), and the language, detected once on the first piece
        (a multilingual model asked for none), so that every piece is heard in the same one.
        Blocking. No speech: no pieces. Raises as `transcribe` does."""
        self._check(task, language)
        params = dict(vad_parameters or {"min_silence_duration_ms": 160})  # BatchedInferencePipeline's
        params.pop("max_speech_duration_s", None)
        try:
            vad = VadOptions(**params, max_speech_duration_s=PIECE_S)
        except TypeError as exc:
            raise EngineError(f"Unknown VAD parameter: {exc}") from exc
        pieces = pieces_of(
            get_speech_timestamps(samples, vad, sampling_rate=self.sample_rate), self.sample_rate
        )
        duration = len(samples) / self.sample_rate
        if language is not None or not self.multilingual:
            return pieces, TranscriptionInfo(
                language=language or "en", language_probability=1.0, duration=duration
            )
        if not pieces:
            return pieces, TranscriptionInfo(language="en", language_probability=0.0, duration=duration)
        detected, probability, _ = self.model.detect_language(audio=speech_of(samples, pieces[0]))
        return pieces, TranscriptionInfo(
            language=detected, language_probability=float(probability), duration=duration
        )

    def transcribe_piece(
        self,
        samples: Samples,
        piece: Piece,
        *,
        task: Task = "transcribe",
        language: str = "en",
        prompt: str | None = None,
        temperature: float | None = None,
        word_timestamps: bool = False,
    ) -> list[Segment]:
        """One piece of `plan`: its speech as one window, one segment (BatchedInferencePipeline's
        decoding: `prompt` given, one temperature, else 0), on the clip's timeline. Blocking.
        Pieces are independent, so several may be decoded at once (CTranslate2's workers)."""
        speech = speech_of(samples, piece)
        segments, _ = faster_whisper.BatchedInferencePipeline(self.model).transcribe(
            speech,
            task=task,
            language=language,
            initial_prompt=prompt or None,
            temperature=0.0 if temperature is None else temperature,
            word_timestamps=word_timestamps,
            clip_timestamps=[{"start": 0.0, "end": len(speech) / self.sample_rate}],
            batch_size=1,
            # One segment per piece: with timestamps inside a piece, text after its last timestamp
            # was lost ("Thank you all for listening", WER 0.054 instead of 0.012 on the 60 s bench
            # clip) and neighbouring segments overlapped.
            without_timestamps=True,
        )
        return list(_segments(restore_speech_timestamps(segments, piece, self.sample_rate)))

    def transcribe(
        self,
        samples: Samples,
        *,
        task: Task = "transcribe",
        language: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        word_timestamps: bool = False,
        vad_filter: bool = False,
        vad_parameters: dict[str, float] | None = None,
    ) -> tuple[Iterator[Segment], TranscriptionInfo]:
        """Start transcribing 16 kHz mono float32 `samples`.

        Audio in which Silero VAD hears no speech (its threshold: `vad_parameters`' or 0.5) gives no
        segments, without decoding: Whisper hears "You" in silence. Otherwise one 30 s window after
        another (faster-whisper's WhisperModel.transcribe). Long audio is better cut into pieces
        (`plan`, `transcribe_piece`).

        Blocks for feature extraction, VAD and (with `language=None` on a multilingual model)
        language detection; the segments are decoded lazily while the iterator is drained, so drain
        it in the worker thread. Raises EngineError for a language the model does not know, for
        `task="translate"` on an English-only model, and for unknown VAD parameters.
        """
        self._check(task, language)
        try:
            vad_options = VadOptions(**vad_parameters) if vad_parameters else None
        except TypeError as exc:
            raise EngineError(f"Unknown VAD parameter: {exc}") from exc
        if not has_speech(samples, vad_options or VadOptions(), self.sample_rate):
            return iter(()), TranscriptionInfo(
                language=language or "en",
                language_probability=1.0 if language or not self.multilingual else 0.0,
                duration=len(samples) / self.sample_rate,
            )
        segments, info = self.model.transcribe(
            samples,
            task=task,
            language=language,
            initial_prompt=prompt or None,
            temperature=_DEFAULT_TEMPERATURES if temperature is None else temperature,
            word_timestamps=word_timestamps,
            vad_filter=vad_filter,
            vad_parameters=vad_options,
        )
        return _segments(segments), TranscriptionInfo(
            language=info.language,
            language_probability=float(info.language_probability),
            duration=float(info.duration),
        )


def _segments(segments: Iterable[faster_whisper.transcribe.Segment]) -> Iterator[Segment]:
    # A generator, so faster-whisper's own laziness survives the mapping. Numbers go through
    # float()/int(): word timings come back as numpy scalars, which json cannot serialise.
    # ids count from 0, as OpenAI's do (faster-whisper's start at 1): clients use them as indexes.
    for index, s in enumerate(segments):
        words = None
        if s.words is not None:
            words = [
                Word(start=float(w.start), end=float(w.end), word=w.word, probability=float(w.probability))
                for w in s.words
            ]
        yield Segment(
            id=index,
            seek=int(s.seek),
            start=float(s.start),
            end=float(s.end),
            text=s.text,
            tokens=[int(t) for t in s.tokens],
            temperature=float(s.temperature or 0.0),
            avg_logprob=float(s.avg_logprob),
            compression_ratio=float(s.compression_ratio),
            no_speech_prob=float(s.no_speech_prob),
            words=words,
        )
