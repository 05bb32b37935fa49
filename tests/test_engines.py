"""The engines and registry/audio.py, called directly (no Django, no server) with the real offline models."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest

from bench.harness.speech import ROOT, hub_cache, piper_voice_path, speech, tiny_kokoro_dir, whisper_model_dir
from registry.speech import audio
from registry.speech.engines import ENGINE_TASKS, ENGINES, engine_class
from registry.speech.engines.base import EngineError, EngineSpec, UnknownVoice, VoiceSpec
from tests.wer import wer

SENTENCES = [
    "Open the settings page and turn on the microphone.",
    "The weather today is sunny with a light breeze from the west.",
]


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def container(samples: np.ndarray, rate: int, fmt: str, codec: str, *, stereo: bool = False) -> bytes:
    """Encode with PyAV itself (not speech.audio), so decode() is checked against FFmpeg's own muxers."""
    buf = io.BytesIO()
    layout = "stereo" if stereo else "mono"
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        planes = np.stack([samples, samples * 0.5]) if stereo else samples.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes), format="fltp", layout=layout)
        frame.sample_rate = rate
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def spec(engine: str, source: Path | str, **kwargs: object) -> EngineSpec:
    return EngineSpec(model_id=f"test-{engine}", engine=engine, source=str(source), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def whisper():
    return engine_class("faster-whisper")(spec("faster-whisper", whisper_model_dir(), cpu_threads=2))


@pytest.fixture(scope="module")
def piper():
    return engine_class("piper")(spec("piper", piper_voice_path()))


@pytest.fixture(scope="module")
def kokoro():
    return engine_class("kokoro")(spec("kokoro", tiny_kokoro_dir()))


def transcript(whisper, samples: np.ndarray, **options: object) -> str:
    segments, _ = whisper.transcribe(samples, **options)
    return " ".join(s.text.strip() for s in segments)


# --- the engine table ---------------------------------------------------------------------------


def test_importing_the_engine_table_loads_no_ml_library():
    code = (
        "import sys, registry.speech.engines as e; "
        "heavy = {'torch', 'ctranslate2', 'onnxruntime', 'faster_whisper', 'kokoro', 'piper', 'av'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_engine_has_a_task_and_an_importable_class():
    assert set(ENGINE_TASKS) == set(ENGINES)
    assert {name: engine_class(name).__name__ for name in ENGINES} == {
        "faster-whisper": "WhisperEngine",
        "kokoro": "KokoroEngine",
        "piper": "PiperEngine",
    }
    with pytest.raises(KeyError):
        engine_class("espeak")


def load_by_hub_names(cache: Path) -> dict[str, object]:
    """Build each engine by its hub name from `cache`; runs in a child with HF_HUB_OFFLINE=1 (below)."""
    root = str(cache)
    whisper = engine_class("faster-whisper")(spec("faster-whisper", "tiny.en", download_root=root))
    piper = engine_class("piper")(spec("piper", "en_US-joe-medium", download_root=root))
    kokoro = engine_class("kokoro")(spec("kokoro", "hexgrad/Kokoro-82M", download_root=root))
    try:
        kokoro.synthesize("Hello.", voice=VoiceSpec("zf_nobody"))
        unknown = "accepted"
    except UnknownVoice:
        unknown = "UnknownVoice"
    return {
        "whisper": sorted(whisper.languages),
        "piper": piper.voices(),
        "kokoro_voices": kokoro.voices(),  # the hub is unreachable: what the cache holds
        "kokoro_samples": sum(len(c) for c in kokoro.synthesize("Hello.", voice=VoiceSpec("af_heart"))),
        "kokoro_unknown": unknown,
    }


def test_engines_load_hub_names_from_download_root(tmp_path):
    # A child process, because huggingface_hub reads HF_HUB_OFFLINE once, at import.
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_engines", str(hub_cache(tmp_path / "hub"))],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["whisper"] == ["en"]
    assert report["piper"] == ["en_US-joe-medium"]
    assert report["kokoro_voices"] == ["af_heart", "am_adam"]
    assert report["kokoro_samples"] > 0
    assert report["kokoro_unknown"] == "UnknownVoice"


# --- faster-whisper ------------------------------------------------------------------------------


def test_whisper_transcribes_espeak_speech(whisper):
    assert (whisper.device, whisper.multilingual, whisper.languages) == ("cpu", False, frozenset({"en"}))
    for sentence in SENTENCES:
        samples, _ = audio.decode(speech(sentence), sample_rate=whisper.sample_rate)
        hypothesis = transcript(whisper, samples, language="en", vad_filter=True)
        assert wer(sentence, hypothesis) < 0.3, hypothesis


def test_whisper_reads_mp3_uploads_through_decode(whisper):
    samples, duration = audio.decode(speech(SENTENCES[0], ".mp3"))
    assert 2.0 < duration < 6.0
    assert wer(SENTENCES[0], transcript(whisper, samples)) < 0.3


def test_whisper_word_timestamps_are_ordered_and_inside_the_clip(whisper):
    samples, duration = audio.decode(speech(SENTENCES[1]))
    segments, info = whisper.transcribe(samples, word_timestamps=True, temperature=0.0)
    words = [w for s in segments for w in (s.words or [])]
    assert info.language == "en"
    assert info.duration == pytest.approx(duration, abs=0.01)
    assert len(words) >= 8
    for earlier, later in zip(words, words[1:], strict=False):
        assert earlier.end <= later.start + 1e-6
    for w in words:
        assert 0.0 <= w.start <= w.end <= duration + 0.05
        assert isinstance(w.start, float)  # not numpy scalars: these end up in JSON
        assert 0.0 <= w.probability <= 1.0


def test_whisper_unknown_language_is_an_engine_error(whisper):
    samples, _ = audio.decode(speech(SENTENCES[0]))
    with pytest.raises(EngineError, match="'xx'"):
        whisper.transcribe(samples, language="xx")
    # A real language this English-only model lacks: faster-whisper alone would quietly use English.
    with pytest.raises(EngineError, match="English-only"):
        whisper.transcribe(samples, language="fr")


def test_whisper_english_only_model_refuses_to_translate(whisper):
    samples, _ = audio.decode(speech(SENTENCES[0]))
    with pytest.raises(EngineError, match="cannot translate"):
        whisper.transcribe(samples, task="translate")


def test_whisper_missing_model_directory_is_an_engine_error(tmp_path):
    with pytest.raises(EngineError, match="Could not load"):
        engine_class("faster-whisper")(spec("faster-whisper", tmp_path))


# --- Piper -------------------------------------------------------------------------------------


def test_piper_speaks_at_a_plausible_length_and_speed_2_shortens_it(piper):
    assert piper.voices() == ["en_US-joe-medium"]
    assert piper.sample_rate == 22_050
    text = "Please call Stella. Ask her to bring these things with her from the store."
    chunks = list(piper.synthesize(text, voice=VoiceSpec("joe"), speed=1.0))
    assert len(chunks) == 2  # one chunk per sentence, as Piper produces them
    assert all(c.dtype == np.float32 and np.abs(c).max() <= 1.0 for c in chunks)
    normal = sum(len(c) for c in chunks) / piper.sample_rate
    assert 2.5 < normal < 8.0  # 14 words at roughly 2-5 words a second
    fast = sum(len(c) for c in piper.synthesize(text, voice=VoiceSpec("joe"), speed=2.0)) / piper.sample_rate
    assert 0.35 < fast / normal < 0.7


def test_piper_speech_is_understood_by_whisper(piper, whisper):
    samples = np.concatenate(list(piper.synthesize(SENTENCES[0], voice=VoiceSpec("en_US-joe-medium"))))
    at_16k = audio.resample(samples, piper.sample_rate, whisper.sample_rate)
    assert wer(SENTENCES[0], transcript(whisper, at_16k, language="en")) <= 0.25  # 2 slips in 9 words


def test_engine_threads_are_set_as_the_spec_says():
    # The pool's threads times each engine's must not oversubscribe the cores (settings:
    # VOICEPROXY_ENGINE_THREADS); 0 keeps the library's default.
    # Piper: a session for calls alone on the CPU, one with fewer threads for calls beside others.
    piper = engine_class("piper")(spec("piper", piper_voice_path(), cpu_threads=2, shared_threads=1))
    assert piper.voice.session.get_session_options().intra_op_num_threads == 2
    assert piper.shared_voice.session.get_session_options().intra_op_num_threads == 1
    alone = np.concatenate(list(piper.synthesize("Hello there.", voice=VoiceSpec(name="joe"))))
    crowded = np.concatenate(
        list(piper.synthesize("Hello there.", voice=VoiceSpec(name="joe"), crowded=True))
    )
    assert 0.8 < len(crowded) / len(alone) < 1.25  # the same voice either way (VITS noise aside)
    default = engine_class("piper")(spec("piper", piper_voice_path()))
    assert default.voice.session.get_session_options().intra_op_num_threads == 0
    assert default.shared_voice is default.voice
    import torch

    before = torch.get_num_threads()
    try:
        kokoro = engine_class("kokoro")(spec("kokoro", tiny_kokoro_dir(), cpu_threads=2, shared_threads=1))
        assert torch.get_num_threads() == 2
        list(kokoro.synthesize("Hi.", voice=VoiceSpec(name="af_heart"), crowded=True))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_piper_rejects_a_missing_file_and_a_bad_speed(piper, tmp_path):
    with pytest.raises(EngineError):
        engine_class("piper")(spec("piper", tmp_path / "nope.onnx"))
    with pytest.raises(EngineError, match="speed"):
        piper.synthesize("Hello.", voice=VoiceSpec("joe"), speed=0)


# --- Kokoro ------------------------------------------------------------------------------------


def test_kokoro_yields_24khz_float32_chunks(kokoro):
    assert kokoro.voices() == ["af_heart", "am_adam"]
    assert (kokoro.sample_rate, kokoro.device) == (24_000, "cpu")
    chunks = list(
        kokoro.synthesize("Hello world.\nA second line.", voice=VoiceSpec("af_heart", language="en-us"))
    )
    assert len(chunks) == 2  # KPipeline splits on newlines
    for chunk in chunks:
        assert chunk.dtype == np.float32 and chunk.ndim == 1
        assert 0.2 < len(chunk) / 24_000 < 5.0  # the biased random duration head: ~60 ms a phoneme
        assert np.isfinite(chunk).all() and np.abs(chunk).max() < 1.5


def test_kokoro_speed_shortens_the_audio(kokoro):
    text = "The weather today is sunny."
    normal = sum(len(c) for c in kokoro.synthesize(text, voice=VoiceSpec("am_adam"), speed=1.0))
    fast = sum(len(c) for c in kokoro.synthesize(text, voice=VoiceSpec("am_adam"), speed=2.0))
    assert fast < 0.8 * normal


def test_kokoro_unknown_voice_raises_before_any_synthesis(kokoro):
    with pytest.raises(UnknownVoice):
        kokoro.synthesize("Hello.", voice=VoiceSpec("zf_nobody"))
    with pytest.raises(UnknownVoice):
        kokoro.synthesize("Hello.", voice=VoiceSpec("../voices/af_heart"))  # a name, never a path
    with pytest.raises(UnknownVoice):
        kokoro.synthesize("Hello.", voice=VoiceSpec("custom", source=str(tiny_kokoro_dir() / "missing.pt")))


def test_kokoro_voice_from_an_explicit_file_and_a_mix(kokoro):
    voices = tiny_kokoro_dir() / "voices"
    single = VoiceSpec("custom", source=str(voices / "af_heart.pt"))
    mixed = VoiceSpec("mix", source=f"{voices / 'af_heart.pt'},{voices / 'am_adam.pt'}")
    for voice in (single, mixed):
        assert sum(len(c) for c in kokoro.synthesize("Hi there.", voice=voice)) > 0


def test_kokoro_serves_concurrent_callers(kokoro):
    def speak(text: str) -> int:
        return sum(len(c) for c in kokoro.synthesize(text, voice=VoiceSpec("af_heart")))

    with ThreadPoolExecutor(max_workers=3) as pool:
        lengths = list(pool.map(speak, ["One two three.", "Four five six.", "Seven eight nine."]))
    assert all(n > 0 for n in lengths)


# --- audio: decode -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "codec"),
    [
        ("wav", "pcm_s16le"),
        ("mp3", "libmp3lame"),
        ("ogg", "libopus"),
        ("flac", "flac"),
        ("ipod", "aac"),  # .m4a
        ("webm", "libopus"),
    ],
)
def test_decode_reads_common_upload_formats_to_mono_16k(fmt, codec):
    rate = 48_000 if codec == "libopus" else 44_100
    data = container(tone(1.5, rate), rate, fmt, codec, stereo=True)
    samples, duration = audio.decode(data, sample_rate=16_000)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert duration == pytest.approx(1.5, abs=0.1)  # lossy codecs add some priming/padding
    assert len(samples) == pytest.approx(duration * 16_000, abs=1)
    assert 0.1 < np.abs(samples).max() <= 1.0


def test_decode_reads_an_upload_file_in_place(tmp_path):
    path = tmp_path / "upload.flac"
    path.write_bytes(container(tone(1.0, 16_000), 16_000, "flac", "flac"))
    with path.open("rb") as upload:
        upload.read(10)  # sniffed by someone before us
        assert audio.decode(upload)[1] == pytest.approx(1.0, abs=0.01)
    with pytest.raises(audio.AudioError):
        audio.decode(io.BytesIO(b""))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"this is a text file, not audio\n" * 50,
        b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(60),  # a WAV header with nothing valid behind it
        bytes(range(256)) * 20,
    ],
    ids=["empty", "text", "broken-wav", "noise"],
)
def test_decode_rejects_what_is_not_audio(data):
    with pytest.raises(audio.AudioError, match="could not be decoded"):
        audio.decode(data)


def test_decode_rejects_a_truncated_flac():
    data = container(tone(1.0, 16_000), 16_000, "flac", "flac")
    with pytest.raises(audio.AudioError):
        audio.decode(data[:60])  # the header without its frames


def test_decode_enforces_a_length_limit():
    data = container(tone(3.0, 16_000), 16_000, "wav", "pcm_s16le")
    assert audio.decode(data, max_seconds=5)[1] == pytest.approx(3.0)
    with pytest.raises(audio.AudioError, match="longer than"):
        audio.decode(data, max_seconds=2)


def test_resample_keeps_the_duration():
    out = audio.resample(tone(1.0, 22_050), 22_050, 16_000)
    assert out.dtype == np.float32
    assert len(out) == pytest.approx(16_000, abs=2)


# --- audio: encode -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(audio.FORMATS))
def test_stream_encoder_streams_and_round_trips(fmt):
    chunk = tone(1.0, 22_050)  # Piper's rate: the encoder resamples to 24 kHz
    encoder = audio.StreamEncoder(fmt, input_rate=22_050)
    before_close = [encoder.encode(chunk) for _ in range(3)]
    body = b"".join(before_close) + encoder.close()
    # True streaming: the bulk of the stream leaves before close(), not just a header.
    assert sum(len(b) for b in before_close) > 0.5 * len(body)
    assert any(len(b) > 1000 for b in before_close)
    if fmt == "pcm":
        assert len(body) == pytest.approx(2 * 3 * 24_000, abs=64)
        return
    samples, duration = audio.decode(body, sample_rate=24_000)
    assert duration == pytest.approx(3.0, abs=0.1)
    assert np.abs(samples).max() == pytest.approx(0.3, abs=0.05)


def test_pcm_is_raw_s16le_at_24khz():
    samples = tone(1.0, 24_000)
    body = audio.encode_whole(samples, "pcm", input_rate=24_000)
    assert len(body) == 2 * len(samples)
    decoded = np.frombuffer(body, dtype="<i2").astype(np.float32) / 32767
    assert np.allclose(decoded, samples, atol=1e-4)


def test_streamed_wav_says_unknown_length_and_whole_wav_has_real_sizes():
    samples = tone(0.5, 24_000)
    encoder = audio.StreamEncoder("wav", input_rate=24_000)
    streamed = encoder.encode(samples) + encoder.close()
    assert struct.unpack_from("<I", streamed, 4)[0] == 0xFFFFFFFF
    assert struct.unpack_from("<I", streamed, 40)[0] == 0xFFFFFFFF
    whole = audio.encode_whole(samples, "wav", input_rate=24_000)
    assert struct.unpack_from("<I", whole, 4)[0] == len(whole) - 8
    assert struct.unpack_from("<I", whole, 40)[0] == 2 * len(samples) == len(whole) - 44
    assert struct.unpack_from("<I", whole, 24)[0] == 24_000
    assert audio.decode(whole, sample_rate=24_000)[1] == pytest.approx(0.5, abs=0.001)


def test_encoder_output_rate_and_content_types():
    encoder = audio.StreamEncoder("flac", input_rate=22_050, output_rate=16_000)
    body = encoder.encode(tone(1.0, 22_050)) + encoder.close()
    with av.open(io.BytesIO(body)) as decoded:
        assert decoded.streams.audio[0].sample_rate == 16_000
    # pcm has no header to carry a rate, so it is always OpenAI's 24 kHz
    assert audio.StreamEncoder("pcm", input_rate=22_050, output_rate=16_000).output_rate == 24_000
    assert audio.FORMATS["mp3"] == "audio/mpeg" and audio.FORMATS["opus"] == "audio/ogg"
    with pytest.raises(audio.AudioError, match="Unknown audio format"):
        audio.StreamEncoder("ogg", input_rate=24_000)


if __name__ == "__main__":  # the child of test_engines_load_hub_names_from_download_root
    print(json.dumps(load_by_hub_names(Path(sys.argv[1]))))
