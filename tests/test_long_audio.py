"""Silence and long audio through /v1/audio/transcriptions and /translations, with the official SDK.

Silence transcribes as nothing in every format (Whisper alone hears "You"); audio of 30 s or more
is decoded as VAD-cut pieces in batches, its segments and words on the original timeline.
"""

from __future__ import annotations

import io
import math
import re
import wave

import numpy as np
import pytest

from bench.harness.speech import speech
from tests.test_transcriptions import ENGLISH_FUNCTION_WORDS, SPANISH_WORDS
from tests.wer import wer
from tests.wer import words as words_of

WER_BOUND = 0.25  # as tests/test_transcriptions.py: tiny.en on espeak speech measures 0 to 10 percent
RATE = 16_000

FIRST = (
    "Good morning everyone, and thank you for joining the planning meeting. "
    "First, we will review the budget report that finance sent on Monday. "
    "Then we will discuss the hiring plan and the two open roles for engineers."
)
SECOND = (
    "The office move is scheduled for the second week of March. "
    "Every desk must be cleared by Friday afternoon, and the movers arrive early on Saturday. "
    "Lunch is served in the main hall after the session."
)
SENTENCE = "Please open the settings page and turn on the dark mode."
LEAD_S, GAP_S, TAIL_S = 2.0, 6.0, 2.0
SPANISH = (
    "El gato duerme en la casa. Mañana vamos a la playa con mis amigos. "
    "Mi hermana trabaja en un hospital grande en el centro de la ciudad. "
    "Los domingos comemos juntos en casa de mis padres."
)
ENGLISH_WORDS = {"cat", "house", "beach", "friends", "sister", "hospital", "city", "sundays", "parents"}


def frames(wav: bytes) -> bytes:
    with wave.open(io.BytesIO(wav)) as src:
        if (src.getframerate(), src.getnchannels(), src.getsampwidth()) != (RATE, 1, 2):
            raise ValueError("speak.sh writes 16 kHz mono 16-bit")
        return src.readframes(src.getnframes())


def silence(seconds: float) -> bytes:
    return b"\x00\x00" * int(seconds * RATE)


def wav_of(*parts: bytes) -> bytes:
    """16 kHz mono 16-bit WAV of the raw frames given, one after another."""
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setnchannels(1)
        dst.setsampwidth(2)
        dst.setframerate(RATE)
        dst.writeframes(b"".join(parts))
    return out.getvalue()


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / RATE


class LongClip:
    """LEAD_S of silence, FIRST, GAP_S of silence, SECOND, TAIL_S of silence: over 30 s, so batched."""

    def __init__(self) -> None:
        first, second = frames(speech(FIRST)), frames(speech(SECOND))
        self.first_end = LEAD_S + seconds(first)
        self.second_start = self.first_end + GAP_S
        self.speech_end = self.second_start + seconds(second)
        self.wav = wav_of(silence(LEAD_S), first, silence(GAP_S), second, silence(TAIL_S))
        self.duration = self.speech_end + TAIL_S
        self.text = f"{FIRST} {SECOND}"


@pytest.fixture(scope="module")
def long_clip() -> LongClip:
    clip = LongClip()
    assert 35 < clip.duration < 60
    return clip


# --- silence -------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1.0, 5.0, 35.0])
def test_silence_is_empty_text_and_usage_counts_its_duration(client, length):
    result = client.audio.transcriptions.create(model="whisper-1", file=("s.wav", wav_of(silence(length))))
    assert result.text == ""
    assert result.usage.seconds == math.ceil(length)


def test_silence_is_empty_in_every_response_format(client):
    data = wav_of(silence(5.0))

    def create(response_format: str, **kwargs):
        return client.audio.transcriptions.create(
            model="whisper-1", file=("s.wav", data), response_format=response_format, **kwargs
        )

    assert create("text").strip() == ""
    assert create("srt").strip() == ""
    assert create("vtt").strip() == "WEBVTT"
    verbose = create("verbose_json", timestamp_granularities=["word", "segment"])
    assert (verbose.text, verbose.segments, verbose.words) == ("", [], [])
    assert verbose.duration == pytest.approx(5.0, abs=0.01) and verbose.usage.seconds == 5
    assert verbose.language == "english"
    logprobs = client.audio.transcriptions.create(
        model="whisper-1", file=("s.wav", data), include=["logprobs"]
    )
    assert logprobs.text == "" and not logprobs.logprobs


@pytest.mark.parametrize("length", [5.0, 35.0])
def test_a_stream_of_silence_is_one_empty_done_event(client, length):
    events = list(
        client.audio.transcriptions.create(
            model="whisper-1", file=("s.wav", wav_of(silence(length))), stream=True
        )
    )
    assert [(e.type, e.text) for e in events] == [("transcript.text.done", "")]


def test_low_noise_is_not_speech_on_the_multilingual_model(client):
    # White noise at -60 dBFS, 35 s: Whisper base alone spends seconds decoding it.
    noise = (np.random.default_rng(14).standard_normal(35 * RATE) * 32768 / 1000).astype("<i2").tobytes()
    result = client.audio.transcriptions.create(
        model="whisper-base", file=("n.wav", wav_of(noise)), response_format="verbose_json"
    )
    assert (result.text, result.segments) == ("", [])
    assert result.usage.seconds == 35


def test_speech_between_silences_is_transcribed_whole(client):
    data = wav_of(silence(3.0), frames(speech(SENTENCE)), silence(3.0))
    result = client.audio.transcriptions.create(
        model="whisper-1", file=("p.wav", data), response_format="verbose_json"
    )
    assert wer(SENTENCE, result.text) <= WER_BOUND, result.text


def test_quiet_speech_is_still_speech(client):
    # The sentence at -30 dB (a 16-bit peak of about 700): the no-speech check must not drop it.
    quiet = np.frombuffer(frames(speech(SENTENCE)), dtype="<i2") // 32
    data = wav_of(quiet.astype("<i2").tobytes())
    result = client.audio.transcriptions.create(model="whisper-1", file=("q.wav", data))
    assert wer(SENTENCE, result.text) <= WER_BOUND, result.text


def test_short_speech_in_long_silence_is_found(client):
    # 38 s in all: the batched path, whose pieces are what VAD hears; the sentence must be one of them.
    data = wav_of(silence(10.0), frames(speech(SENTENCE)), silence(25.0))
    result = client.audio.transcriptions.create(
        model="whisper-1", file=("p.wav", data), response_format="verbose_json"
    )
    assert wer(SENTENCE, result.text) <= WER_BOUND, result.text
    assert result.segments and all(9.0 <= s.start < s.end <= 15.0 for s in result.segments), result.segments
    assert result.usage.seconds == math.ceil(result.duration) == 39


# --- long audio ----------------------------------------------------------------------------------


def test_long_audio_segments_and_words_are_ordered_on_the_original_timeline(client, long_clip):
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=("long.wav", long_clip.wav),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert wer(long_clip.text, result.text) <= WER_BOUND, result.text
    assert result.duration == pytest.approx(long_clip.duration, abs=0.01)
    segments = result.segments
    assert [s.id for s in segments] == list(range(len(segments)))
    assert all(a.start < a.end <= b.start for a, b in zip(segments, segments[1:], strict=False))
    # The silence before the speech is not squeezed out of the timeline...
    assert LEAD_S - 1.0 <= segments[0].start <= LEAD_S + 0.5
    # ...and the last segment ends where the speech does (VAD pads speech by 0.4 s).
    assert abs(segments[-1].end - long_clip.speech_end) <= 1.0, (segments[-1].end, long_clip.speech_end)
    words = result.words
    assert all(a.start <= a.end <= b.start + 0.01 for a, b in zip(words, words[1:], strict=False))
    assert wer(long_clip.text, " ".join(w.word for w in words)) <= WER_BOUND
    # No word in the gap between the paragraphs: the second starts after it, on the clip's clock.
    gap = (long_clip.first_end + 0.5, long_clip.second_start - 0.5)
    assert not [w for w in words if gap[0] < (w.start + w.end) / 2 < gap[1]]
    # The second paragraph's first word heard (whatever it was heard as) starts where it was said.
    second = next(w for w in words if w.start > long_clip.first_end + 0.5)
    assert long_clip.second_start - 0.5 <= second.start <= long_clip.second_start + 2.0, second


def test_long_audio_streams_in_order_and_the_deltas_make_the_done_text(client, long_clip):
    events = list(
        client.audio.transcriptions.create(model="whisper-1", file=("long.wav", long_clip.wav), stream=True)
    )
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert events[-1].type == "transcript.text.done" and [e.type for e in events[:-1]] == [
        "transcript.text.delta"
    ] * len(deltas)
    assert deltas and "".join(deltas) == events[-1].text
    assert wer(long_clip.text, events[-1].text) <= WER_BOUND, events[-1].text
    # In order: the first paragraph's opening words come first.
    assert {"good", "morning", "everyone"} & set(words_of(events[-1].text)[:4]), events[-1].text


def test_long_audio_honours_prompt_temperature_and_server_vad(client, long_clip):
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=("long.wav", long_clip.wav),
        response_format="srt",
        language="en",
        prompt="Planning meeting: budget, hiring, office move.",
        temperature=0.0,
        chunking_strategy={"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 500},
    )
    cues = re.findall(r"(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n(.+)", result)
    assert cues
    assert cues == sorted(cues)
    assert wer(long_clip.text, " ".join(text for *_, text in cues)) <= WER_BOUND, result


def test_long_spanish_audio_is_detected_and_translated_on_the_multilingual_model(client):
    pcm = frames(speech(SPANISH, voice="es"))
    data = wav_of(pcm, silence(1.0), pcm, silence(1.0), pcm)  # over 30 s: the batched path
    result = client.audio.translations.create(
        model="whisper-base", file=("es.wav", data), response_format="verbose_json"
    )
    assert result.duration > 30
    assert result.language == "spanish"
    words = set(re.findall(r"[a-z]+", result.text.lower()))
    # English out, not the Spanish heard: what Whisper base makes of espeak's Spanish varies from
    # run to run (its temperature fallback samples; a batched piece may even stay Spanish), so the
    # test asks for mostly English, not for a good translation.
    assert len(words & (ENGLISH_WORDS | ENGLISH_FUNCTION_WORDS)) >= 3, result.text
    assert len(words & SPANISH_WORDS) < len(words & (ENGLISH_WORDS | ENGLISH_FUNCTION_WORDS)), result.text


def test_a_long_transcription_decodes_its_pieces_at_once_and_gives_them_in_order(
    registry, settings, monkeypatch
):
    """Over 30 s of speech is two pieces; with two pool threads both are decoded at once (the first
    waits, in the pool, until the second has started: a pool that ran them one after the other would
    fail here, not hang), and their segments come back in order on the clip's timeline."""
    import asyncio
    import threading

    from registry import audit
    from registry.speech import audio, stt, workers
    from registry.speech.engines.whisper import WhisperEngine

    settings.VOICEPROXY_INFERENCE_THREADS = 2
    previous, workers._scheduler = workers._scheduler, workers.Scheduler(2)
    second_started, calls, lock = threading.Event(), [], threading.Lock()
    decode = WhisperEngine.transcribe_piece

    def piece(self, samples, piece, **options):
        with lock:
            index = len(calls)
            calls.append(piece[0]["start"])
        if index == 1:
            second_started.set()
        elif index == 0:
            assert second_started.wait(60), "the second piece did not start while the first was decoded"
        return decode(self, samples, piece, **options)

    monkeypatch.setattr(WhisperEngine, "transcribe_piece", piece)
    first, second = frames(speech(FIRST)), frames(speech(SECOND))
    pcm = first + silence(1.0) + second + silence(1.0) + first
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768

    async def main() -> stt.Transcript:
        with audit.scope(method="TEST", endpoint="test/long-pieces"):
            return await stt.transcribe(
                api_key=None, source=audio.Pcm(samples, RATE), options=stt.SttOptions()
            )

    try:
        result = asyncio.run(main())
    finally:
        workers._scheduler.close()
        workers._scheduler = previous
    assert len(calls) == 2 and calls[0] < calls[1]  # the pieces, started in the clip's order
    segments = result.segments
    assert [s.id for s in segments] == list(range(len(segments)))
    assert all(a.end <= b.start + 0.01 for a, b in zip(segments, segments[1:], strict=False))
    assert segments[-1].start >= seconds(first + silence(1.0) + second)  # the last piece: the clip's end
    assert wer(f"{FIRST} {SECOND} {FIRST}", result.text) <= WER_BOUND, result.text


def test_a_long_transcription_in_a_context_holding_a_reservation_uses_it(registry, settings):
    """A Realtime session holds a reservation; its long turn is transcribed on it even when the pool
    has no room left for another (it was refused with ServerBusy before pieces lent it)."""
    import asyncio

    from registry import audit
    from registry.speech import audio, stt, workers

    settings.VOICEPROXY_QUEUE_LIMIT = 0
    first = frames(speech(FIRST))
    pcm = first + silence(1.0) + frames(speech(SECOND)) + silence(1.0) + first
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    mine, others = workers.reservation(), []
    try:
        while workers.in_flight() < workers.capacity():  # the rest of the pool taken
            others.append(workers.reservation())

        async def main() -> stt.Transcript:
            workers.use(mine)
            with audit.scope(method="TEST", endpoint="test/long-lent"):
                return await stt.transcribe(
                    api_key=None, source=audio.Pcm(samples, RATE), options=stt.SttOptions()
                )

        result = asyncio.run(main())
        assert wer(f"{FIRST} {SECOND} {FIRST}", result.text) <= WER_BOUND, result.text
        assert mine.open  # lent, not given back: the session still holds it
    finally:
        for reserved in [mine, *others]:
            workers.release(reserved)
