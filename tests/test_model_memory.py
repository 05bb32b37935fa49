"""The model cache's memory budget (VOICEPROXY_MODEL_MEMORY) with the real engines on CPU: it evicts
idle models to fit, refuses a model larger than the budget, and will not over-fill past models in
use; a preload list warms a server before it reports ready. A CUDA test runs where a GPU is."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
from django.utils import timezone

from bench.harness.speech import piper_voice_path, whisper_model_dir
from registry.errors import ModelMemoryBusy, ModelUnavailable
from registry.models import ServerProcess
from registry.resolved import ResolvedModel
from registry.speech import memory
from registry.speech.cache import ModelCache
from registry.speech.engines.base import EngineSpec
from tests.conftest import Key, Server, server_env


def model(model_id: str, engine: str, source: str, device: str = "cpu") -> ResolvedModel:
    spec = EngineSpec(model_id=model_id, engine=engine, source=source, device=device, compute_type="auto")
    return ResolvedModel(model_id=model_id, task="stt", spec=spec, idle_ttl=900, names=(model_id,), pk=0)


WHISPER = model("whisper", "faster-whisper", str(whisper_model_dir()))
PIPER = model("piper", "piper", str(piper_voice_path()))


def test_sizes_parse_with_their_units() -> None:
    assert memory.parse_size("512MiB") == 512 * 2**20
    assert memory.parse_size("2.5 GB") == 2_500_000_000
    assert memory.parse_budgets("cpu=6GiB, cuda=20GiB") == {"cpu": 6 * 2**30, "cuda": 20 * 2**30}
    assert memory.parse_budgets("8GiB") == {"*": 8 * 2**30}
    with pytest.raises(ValueError, match="not a size"):
        memory.parse_budgets("cpu=lots")


def test_a_model_is_measured_as_it_loads_and_reported(settings: Any) -> None:
    settings.VOICEPROXY_MODEL_MEMORY = ""
    cache = ModelCache()
    with cache.use(PIPER):
        pass
    status = cache.status("piper")
    assert status.state == "loaded" and status.memory_bytes > 0


def test_loading_past_the_budget_evicts_the_least_recently_used_idle_model(settings: Any) -> None:
    settings.VOICEPROXY_MODEL_MEMORY = ""
    cache = ModelCache()
    with cache.use(PIPER):
        pass
    held = cache.status("piper").memory_bytes
    whisper_size = memory.on_disk(str(whisper_model_dir()))  # its estimate: it never loaded here
    # Room for either, not both: loading Whisper unloads Piper first.
    settings.VOICEPROXY_MODEL_MEMORY = f"cpu={held + whisper_size - 1}"
    with cache.use(WHISPER):
        pass
    assert cache.loaded_ids() == ["whisper"]
    assert cache.status("piper").state == "not loaded"


def test_a_model_larger_than_the_budget_is_refused_clearly(settings: Any) -> None:
    size = memory.on_disk(str(whisper_model_dir()))
    settings.VOICEPROXY_MODEL_MEMORY = f"cpu={size - 1}"
    cache = ModelCache()
    with pytest.raises(ModelUnavailable) as refused, cache.use(WHISPER):
        pass
    assert refused.value.code == "model_too_large" and refused.value.status == 503
    assert "VOICEPROXY_MODEL_MEMORY allows" in refused.value.message and "MiB on cpu" in refused.value.message
    assert cache.status("whisper").state == "failed"  # the admin says why
    assert cache.loaded_ids() == []
    settings.VOICEPROXY_MODEL_MEMORY = "cuda=1MiB"  # a budget for another device does not apply
    with cache.use(WHISPER):
        pass
    assert cache.loaded_ids() == ["whisper"]


def test_a_model_in_use_is_not_evicted_to_make_room_and_no_idle_one_goes_for_nothing(settings: Any) -> None:
    from bench.harness.speech import tiny_kokoro_dir

    settings.VOICEPROXY_MODEL_MEMORY = ""
    cache = ModelCache()
    kokoro = model("kokoro", "kokoro", str(tiny_kokoro_dir()))
    with cache.use(kokoro):  # loaded, then idle
        pass
    with cache.use(PIPER):
        held = cache.status("piper").memory_bytes
        settings.VOICEPROXY_MODEL_MEMORY = f"cpu={held + memory.on_disk(str(whisper_model_dir())) - 1}"
        with pytest.raises(ModelMemoryBusy) as busy, cache.use(WHISPER):
            pass
        assert busy.value.status == 503 and busy.value.headers["Retry-After"]
        # Evicting the idle model would not have made room beside Piper: it stays.
        assert sorted(cache.loaded_ids()) == ["kokoro", "piper"]
    with cache.use(WHISPER):  # once Piper is idle, the idle models make way
        pass
    assert cache.loaded_ids() == ["whisper"]


def test_over_http_a_model_past_the_budget_is_a_clear_503(
    registry: Path, tmp_path_factory: pytest.TempPathFactory, api_key: Key
) -> None:
    server = Server(
        server_env(VOICEPROXY_MODEL_MEMORY="cpu=1MiB"), tmp_path_factory.mktemp("tight") / "d.log"
    )
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key.secret, max_retries=0)
        with pytest.raises(openai.InternalServerError) as refused:
            client.audio.speech.create(model="tts-1", voice="alloy", input="Hello.")
        assert refused.value.status_code == 503
        error = refused.value.body
        assert isinstance(error, dict) and error["code"] == "model_too_large"
    finally:
        server.stop()


def test_preloaded_models_are_in_before_the_server_says_ready(
    registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = Server(
        server_env(
            VOICEPROXY_PRELOAD_MODELS="whisper-1,tts-1,no-such-model", VOICEPROXY_HEARTBEAT_SECONDS="0.5"
        ),
        tmp_path_factory.mktemp("preload") / "d.log",
    )
    try:
        import httpx

        # /health/ready says "preloading" until the preload has ended (each model loaded or skipped).
        while (ready := httpx.get(f"{server.url}/health/ready", timeout=30)).status_code != 200:
            assert ready.json()["status"] == "preloading", ready.text
            assert server.process.poll() is None, server.log()
            time.sleep(0.2)
        ready_at = timezone.now()
        # The process's first heartbeat after it said ready reports what its cache holds by then.
        row, polls = None, 0  # heartbeats come every few seconds: 600 polls is a hang
        while row is None or row.heartbeat <= ready_at:
            polls += 1
            assert polls <= 600, "no heartbeat after 600 polls"
            assert server.process.poll() is None, server.log()
            time.sleep(0.2)
            row = ServerProcess.objects.filter(pid=server.process.pid).first()
        loaded = {m["model_id"] for m in row.cache if m["state"] == "loaded"}
        assert {"Systran/faster-whisper-tiny.en", "rhasspy/piper-en_US-joe-medium"} <= loaded, server.log()
        assert "no enabled speech model is named 'no-such-model'" in server.log()
    finally:
        server.stop()


def _cuda() -> bool:
    import ctranslate2

    return ctranslate2.get_cuda_device_count() > 0


gpu = pytest.mark.skipif(not _cuda(), reason="no CUDA GPU on this machine: the CUDA paths run where one is")


@gpu
def test_on_a_gpu_whisper_runs_in_float16_measured_in_gpu_memory(settings: Any) -> None:
    from bench.harness.speech import speech
    from registry.speech import audio

    settings.VOICEPROXY_MODEL_MEMORY = "cuda=64GiB"
    cache = ModelCache()
    on_gpu = model("whisper-gpu", "faster-whisper", str(whisper_model_dir()), device="cuda")
    samples, _ = audio.decode(speech("Hello from the graphics card."), sample_rate=16_000)
    with cache.stt(on_gpu) as engine:
        segments, _info = engine.transcribe(samples, language="en")
        text = "".join(s.text for s in segments).lower()
    status = cache.status("whisper-gpu")
    assert status.device == "cuda" and status.memory_bytes > 0
    assert "graphics" in text or "hello" in text


@gpu
def test_on_a_gpu_kokoro_and_piper_speak(settings: Any) -> None:
    from bench.harness.speech import tiny_kokoro_dir
    from registry.speech.engines.base import VoiceSpec

    settings.VOICEPROXY_MODEL_MEMORY = ""
    cache = ModelCache()
    kokoro = model("kokoro-gpu", "kokoro", str(tiny_kokoro_dir()), device="cuda")
    piper = model("piper-gpu", "piper", str(piper_voice_path()), device="cuda")
    with cache.tts(kokoro) as engine:
        assert sum(len(c) for c in engine.synthesize("Hello.", voice=VoiceSpec("af_heart"))) > 0
    with cache.tts(piper) as engine:
        assert sum(len(c) for c in engine.synthesize("Hello.", voice=VoiceSpec("joe"))) > 0
    assert cache.status("kokoro-gpu").device == "cuda" and cache.status("piper-gpu").device == "cuda"
