"""A request's stages on its timeline: where the admin's waterfall draws each bar.

An audit row keeps how long each stage took (`stt_ms`, `llm_ms`, `tts_ms`: wall-clock time covered
by the stage's work) and two moments (`llm_first_token_ms`, `tts_first_audio_ms`, from the start of
the request), not when each stage began. So starts are inferred: speech to text comes first (a
voice chat transcribes its audio before it asks the upstream), the LLM follows it, and speech
starts no later than its first audio nor than the moment that lets it end with the request, and
no earlier than the LLM's first token (it speaks what the LLM writes, so in a streamed reply the
two overlap).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bar:
    stage: str  # "stt", "llm", "tts" or "total"
    start_ms: float
    length_ms: float
    left: float  # percent of the timeline
    width: float
    mark_ms: float | None = None  # the stage's first event, from the request's start
    mark_left: float | None = None
    mark_label: str = ""


@dataclass(frozen=True)
class Timeline:
    span_ms: float  # the axis: the request's duration, or the latest stage end if later
    bars: list[Bar]


def timeline(
    *,
    duration_ms: float | None,
    stt_ms: float | None = None,
    llm_ms: float | None = None,
    llm_first_token_ms: float | None = None,
    tts_ms: float | None = None,
    tts_first_audio_ms: float | None = None,
) -> Timeline | None:
    """The bars of the stages that ran, plus the whole request's; None when nothing was timed."""
    placed: list[tuple[str, float, float, float | None, str]] = []  # stage, start, length, mark, label
    after_stt = 0.0
    if stt_ms is not None:
        placed.append(("stt", 0.0, stt_ms, None, ""))
        after_stt = stt_ms
    speech_earliest = after_stt
    if llm_ms is not None:
        start = after_stt if llm_first_token_ms is None else min(after_stt, llm_first_token_ms)
        placed.append(("llm", start, llm_ms, llm_first_token_ms, "first token"))
        speech_earliest = llm_first_token_ms if llm_first_token_ms is not None else start
    if tts_ms is not None:
        ends_with_request = None if duration_ms is None else duration_ms - tts_ms
        latest = [m for m in (tts_first_audio_ms, ends_with_request) if m is not None]
        start = max(speech_earliest, min(latest, default=speech_earliest))
        if tts_first_audio_ms is not None:  # its first audio came from speech already running
            start = min(start, tts_first_audio_ms)
        placed.append(("tts", max(start, 0.0), tts_ms, tts_first_audio_ms, "first audio"))
    if not placed and duration_ms is None:
        return None
    total = duration_ms or 0.0
    ends = [start + length for _, start, length, _, _ in placed]
    marks = [mark for *_, mark, _ in placed if mark is not None]
    span = max([total, *ends, *marks, 1.0])

    def percent(ms: float) -> float:
        return round(100 * ms / span, 2)

    bars = [
        Bar(
            stage=stage,
            start_ms=start,
            length_ms=length,
            left=percent(start),
            width=max(percent(length), 0.5),  # a 2 ms stage of a 10 s request still shows
            mark_ms=mark,
            mark_left=None if mark is None else percent(mark),
            mark_label=label if mark is not None else "",
        )
        for stage, start, length, mark, label in placed
    ]
    if duration_ms is not None:
        bars.append(Bar("total", 0.0, duration_ms, 0.0, max(percent(duration_ms), 0.5)))
    return Timeline(span_ms=span, bars=bars)
