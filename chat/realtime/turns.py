"""The input audio buffer of a Realtime session, and how turns are found in it and transcribed.

    InputAudio      the appended audio at the client's rate, on the session's timeline (ms since
                    the session's first appended sample), from the last commit on
    SpeechProbe     Silero VAD (faster-whisper's model) over the audio as it arrives: one
                    probability per 32 ms window, computed in the worker pool
    TurnDetector    OpenAI's server_vad over those probabilities: speech started (less the prefix
                    padding), pauses within a turn, speech stopped after `silence_duration_ms`
    TurnTranscript  a turn transcribed while it is spoken: at each pause the turn so far goes to the
                    pool (a guess the next pause replaces), so when the silence has lasted long
                    enough to end the turn, its transcript is mostly or wholly done; a long turn is
                    fixed a stretch at a time, so no guess re-hears more than STRETCH_MS

No events and no sockets here: session.py turns what these report into server events.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from registry.speech import audio, workers
from registry.speech.engines.base import Samples

VAD_RATE = 16_000
WINDOW = 512  # Silero's window at 16 kHz: 32 ms
WINDOW_MS = WINDOW * 1000 / VAD_RATE
# A pause this long inside a turn starts transcribing the turn so far. Shorter than any sensible
# silence_duration_ms (OpenAI's default is 500), long enough not to fire between words. Measured
# (bench/bench_realtime.py): transcribing a stretch per pause, each prompted by the last, cost a
# whole Whisper pass (30 s windows, whatever the length) per stretch, one after another: 630 ms
# from speech_stopped to the transcript of a 3 s question, against ~150 ms for the clip whole.
PAUSE_MS = 240.0
STRETCH_MS = 10_000.0  # a pause after this much of a turn fixes the stretch: later guesses start there
STRETCH_MAX_MS = 20_000.0  # a stretch spoken without a pause is cut here (Whisper hears 30 s at most)
# A stretch is transcribed with this much of the audio around it: Whisper mishears words cut flush.
STRETCH_MARGIN_MS = 150.0


class InputAudio:
    """Mono float samples at `rate`, from `start_ms` of the session's timeline to `end_ms`."""

    def __init__(self, rate: int, start_ms: float = 0.0) -> None:
        self.rate = rate
        self._chunks: list[Samples] = []
        self._length = 0  # samples held
        self._offset = round(start_ms * rate / 1000)  # samples of the timeline before the first one held

    @property
    def start_ms(self) -> float:
        return self._offset * 1000 / self.rate

    @property
    def end_ms(self) -> float:
        return (self._offset + self._length) * 1000 / self.rate

    @property
    def empty(self) -> bool:
        return self._length == 0

    def append(self, samples: Samples) -> None:
        self._chunks.append(samples)
        self._length += len(samples)

    def _whole(self) -> Samples:
        if len(self._chunks) != 1:
            self._chunks = [np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)]
        return self._chunks[0]

    def _index(self, ms: float) -> int:
        return min(self._length, max(0, round(ms * self.rate / 1000) - self._offset))

    def between(self, start_ms: float, end_ms: float) -> Samples:
        return self._whole()[self._index(start_ms) : self._index(end_ms)]

    def drop_until(self, ms: float) -> None:
        """Forget the audio before `ms` (a committed turn's)."""
        cut = self._index(ms)
        self._chunks = [self._whole()[cut:]]
        self._length -= cut
        self._offset += cut

    def clear(self) -> None:
        self.drop_until(self.end_ms)


@functools.cache
def _silero() -> Any:
    from faster_whisper.vad import get_vad_model  # onnxruntime: loaded on the first session

    return get_vad_model()


def _probabilities(windows: Samples) -> list[float]:
    """Speech probability of each 512-sample window after the first (which is context only).
    Blocking: the pool runs it."""
    return [float(p) for p in _silero()(windows)[1:]]


class SpeechProbe:
    """Speech probabilities of the audio as it arrives, one per 32 ms window, in order."""

    def __init__(self, rate: int) -> None:
        self._resampler = audio.Resampler(rate, VAD_RATE)
        self._pending = np.zeros(0, dtype=np.float32)
        self._context = np.zeros(WINDOW, dtype=np.float32)  # the window before, as Silero's context

    def feed(self, samples: Samples) -> None:
        self._pending = np.concatenate([self._pending, self._resampler.push(samples)])

    async def probabilities(self) -> list[float]:
        """The probabilities of every whole window received so far and not yet scored."""
        whole = len(self._pending) // WINDOW * WINDOW
        if not whole:
            return []
        windows = np.concatenate([self._context, self._pending[:whole]])
        self._context = self._pending[whole - WINDOW : whole]
        self._pending = self._pending[whole:]
        with workers.leading():  # a few ms that decide when a reply may start: ahead of later units
            return await workers.run(_probabilities, windows)


TurnEvent = tuple[Literal["started", "pause", "cut", "stopped"], float]


@dataclass
class TurnDetector:
    """OpenAI's server_vad as a state machine over window probabilities (times in session ms).

    `started` at the first window above `threshold`, dated `prefix_padding_ms` earlier; `pause`
    when a stretch of speech is followed by PAUSE_MS below it; `cut` when one has run STRETCH_MAX_MS
    without a pause; `stopped`
    after `silence_duration_ms` below it, dated where the silence began.
    """

    threshold: float = 0.5
    prefix_padding_ms: float = 300
    silence_duration_ms: float = 500
    clock_ms: float = 0.0  # the end of the last window scored
    speaking: bool = False
    silence_from: float | None = None
    stretch_from: float = 0.0
    paused: bool = False

    def push(self, probability: float) -> list[TurnEvent]:
        start, self.clock_ms = self.clock_ms, self.clock_ms + WINDOW_MS
        events: list[TurnEvent] = []
        # Silero's own hysteresis: speech goes on until the probability falls well below the threshold.
        if not self.speaking:
            if probability >= self.threshold:
                self.speaking, self.silence_from, self.paused = True, None, False
                self.stretch_from = max(0.0, start - self.prefix_padding_ms)
                events.append(("started", self.stretch_from))
            return events
        if probability >= max(self.threshold - 0.15, 0.01):
            if self.paused:  # speech again after a pause: a new stretch begins at the pause
                self.paused = False
            self.silence_from = None
            if self.clock_ms - self.stretch_from >= STRETCH_MAX_MS:
                events.append(("cut", self.clock_ms))
                self.stretch_from = self.clock_ms
            return events
        if self.silence_from is None:
            self.silence_from = start
        silent = self.clock_ms - self.silence_from
        if silent >= self.silence_duration_ms:
            self.speaking = False
            events.append(("stopped", self.silence_from))
        elif silent >= PAUSE_MS and not self.paused:
            self.paused = True
            events.append(("pause", self.silence_from))
            self.stretch_from = self.silence_from
        return events


Transcribe = Callable[[Samples, str], Awaitable[str]]


@dataclass
class TurnTranscript:
    """One user turn, transcribed while it is spoken.

    `pause(ms)` starts transcribing the current stretch (from the last fixed point to `ms`) as a
    guess, replacing the previous guess; once the stretch is STRETCH_MS long the pause fixes it
    instead, and `cut(ms)` always does. `finish(end_ms)` keeps the last guess when no speech
    followed it (the usual end: the final silence was a pause first), else transcribes the rest,
    and returns the whole text once every part is done. Each part is prompted with the session's
    prompt and the text of the fixed parts already done.
    """

    buffer: InputAudio
    start_ms: float
    transcribe: Transcribe
    prompt: str = ""
    fixed: list[asyncio.Task[str]] = field(default_factory=list)
    stretch_from: float = field(init=False)
    guess: tuple[float, asyncio.Task[str]] | None = None

    def __post_init__(self) -> None:
        self.stretch_from = self.start_ms

    def _start(self, start_ms: float, end_ms: float) -> asyncio.Task[str]:
        samples = self.buffer.between(start_ms, min(end_ms + STRETCH_MARGIN_MS, self.buffer.end_ms))
        done = [
            task.result()
            for task in self.fixed
            if task.done() and not task.cancelled() and not task.exception()
        ]
        prompt = " ".join(filter(None, [self.prompt, *done]))[-800:]
        task = asyncio.ensure_future(self.transcribe(samples, prompt))
        task.add_done_callback(_retrieved)
        return task

    def _drop_guess(self) -> None:
        if self.guess is not None:
            self.guess[1].cancel()
            self.guess = None

    def pause(self, ms: float) -> None:
        if ms - self.stretch_from < WINDOW_MS * 4:
            return  # nothing worth hearing yet
        if ms - self.stretch_from >= STRETCH_MS:
            self.cut(ms)
            return
        self._drop_guess()
        self.guess = (ms, self._start(self.stretch_from, ms))

    def cut(self, ms: float) -> None:
        self._drop_guess()
        self.fixed.append(self._start(self.stretch_from, ms))
        self.stretch_from = ms

    def finish(self, end_ms: float) -> asyncio.Future[str]:
        """Take the rest (up to `end_ms`) now, while the buffer still holds it; the future gives the
        whole text once every part is done."""
        parts = list(self.fixed)
        if self.guess is not None and self.guess[0] >= end_ms - WINDOW_MS:
            parts.append(self.guess[1])  # nothing was said after the pause it heard
            self.guess = None
        elif end_ms - self.stretch_from >= WINDOW_MS * 2 or not parts:
            self._drop_guess()
            parts.append(self._start(self.stretch_from, end_ms))
        self._drop_guess()
        return asyncio.ensure_future(joined(parts))

    def cancel(self) -> None:
        self._drop_guess()
        for task in self.fixed:
            task.cancel()


async def joined(parts: list[asyncio.Task[str]]) -> str:
    """The parts' texts in order; the first failure raised once all have ended (none is left running)."""
    results = await asyncio.gather(*parts, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return " ".join(str(text).strip() for text in results if str(text).strip())


def _retrieved(task: asyncio.Task[str]) -> None:
    """A replaced guess's failure is nobody's: marked as seen, not logged as never retrieved."""
    if not task.cancelled():
        task.exception()
