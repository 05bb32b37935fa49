"""The small interface every speech engine implements.

Engines run in worker threads: they may block, and they never import Django, touch the ORM or
the event loop (so `bench/` can call them directly). The model cache (`registry/speech/cache.py`) is
the only place that constructs them, from a frozen `EngineSpec`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]
"""Mono float32 audio in [-1, 1] at the engine's `sample_rate`."""

Task = Literal["transcribe", "translate"]


class EngineError(Exception):
    """An engine could not do what was asked (bad source, unknown voice...). The message is safe to show."""


class UnknownVoice(EngineError):
    """The voice asked for is not in the model's source."""


class UnsupportedLanguage(EngineError):
    """The language asked for is not one the model knows."""


class CannotTranslate(EngineError):
    """Translation asked of an English-only model."""


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to build one engine; hashable, so it keys the model cache."""

    model_id: str
    engine: str  # "faster-whisper", "kokoro", "piper"
    source: str  # hub repo id or local path
    device: str = "auto"  # "auto", "cpu", "cuda"
    compute_type: str = "auto"
    download_root: str = ""  # where hub downloads go; "" means the library's default
    cpu_threads: int = 0  # CPU threads for a call that has the machine to itself; 0: the library's default
    shared_threads: int = 0  # ... for a call with other engine work beside it (`crowded`); 0: cpu_threads
    workers: int = 1  # calls one loaded model may run at once (CTranslate2's num_workers)


@dataclass(frozen=True)
class VoiceSpec:
    name: str
    source: str = ""  # a file path or hub path; "" means: find `name` in the model's source
    language: str = ""


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: list[Word] | None = None


@dataclass(frozen=True)
class TranscriptionInfo:
    language: str
    language_probability: float
    duration: float  # seconds of input audio


Piece = list[dict[str, int]]  # a long clip's piece: its stretches of speech, {"start", "end"} in samples


class SpeechToText(Protocol):
    sample_rate: int  # what `transcribe` expects, 16 kHz for Whisper
    device: str  # where it actually runs: "cpu" or "cuda"
    multilingual: bool  # False for English-only models: they cannot translate
    languages: frozenset[str]  # language codes the model knows

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
        """Start transcribing; segments are decoded lazily as the iterator is drained.

        Audio without speech gives no segments. Long audio goes better through `plan` and
        `transcribe_piece`.

        Raises UnsupportedLanguage, CannotTranslate, or EngineError for bad VAD parameters.
        """
        ...

    def plan(
        self,
        samples: Samples,
        *,
        task: Task = "transcribe",
        language: str | None = None,
        vad_parameters: dict[str, float] | None = None,
    ) -> tuple[list[Piece], TranscriptionInfo]:
        """Long audio cut into pieces to decode apart (`transcribe_piece`), and its language.
        Raises as `transcribe` does."""
        ...

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
        """One piece's segments, on the clip's timeline (ids from 0: the caller numbers them)."""
        ...


class TextToSpeech(Protocol):
    sample_rate: int  # native output rate
    device: str

    def voices(self) -> list[str]:
        """Names of the voices found in the model's source."""
        ...

    def synthesize(
        self, text: str, *, voice: VoiceSpec, speed: float = 1.0, crowded: bool = False
    ) -> Iterator[Samples]:
        """Speak one piece of text; yields audio chunks as the engine produces them. `crowded`: other
        engine work runs beside this call, so it should use `shared_threads` where the engine can.

        Raises UnknownVoice when the voice cannot be found.
        """
        ...
