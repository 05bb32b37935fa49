"""The model cache with the real engines: single-flight loading, LRU bound, idle TTL, failures and retries."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.harness.speech import piper_voice_path, whisper_model_dir
from registry.errors import ModelUnavailable
from registry.resolved import ResolvedModel
from registry.speech.cache import ModelCache
from registry.speech.engines.base import EngineSpec


def model(model_id: str, engine: str, source: str, ttl: int = 900) -> ResolvedModel:
    spec = EngineSpec(model_id=model_id, engine=engine, source=source, device="auto", compute_type="auto")
    return ResolvedModel(model_id=model_id, task="stt", spec=spec, idle_ttl=ttl, names=(model_id,), pk=0)


WHISPER = model("whisper", "faster-whisper", str(whisper_model_dir()))
PIPER = model("piper", "piper", str(piper_voice_path()))


def test_concurrent_first_uses_load_once_and_share_the_engine():
    cache = ModelCache()
    seen: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def use() -> None:
        barrier.wait()
        with cache.use(WHISPER) as engine, lock:
            seen.append(id(engine))

    with ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(use) for _ in range(6)]:
            future.result()
    assert len(set(seen)) == 1
    status = cache.status("whisper")
    assert status.state == "loaded" and status.uses == 6 and status.in_use == 0 and status.device == "cpu"


def test_least_recently_used_idle_model_is_evicted_past_the_bound(settings):
    settings.VOICEPROXY_MODEL_CACHE_SIZE = 1
    cache = ModelCache()
    with cache.use(WHISPER):
        pass
    with cache.use(PIPER):
        pass
    assert cache.loaded_ids() == ["piper"]
    assert cache.status("whisper").state == "not loaded"


def test_a_model_in_use_is_not_evicted(settings):
    settings.VOICEPROXY_MODEL_CACHE_SIZE = 1
    cache = ModelCache()
    with cache.use(WHISPER), cache.use(PIPER):
        assert sorted(cache.loaded_ids()) == ["piper", "whisper"]


def test_idle_models_are_unloaded_after_their_ttl():
    cache = ModelCache()
    # ttl 3 s, not 1: the first reap must come before it runs out, even on a stalled busy machine.
    short = model("short", "piper", str(piper_voice_path()), ttl=3)
    forever = model("forever", "faster-whisper", str(whisper_model_dir()), ttl=0)
    for m in (forever, short):
        with cache.use(m):
            pass
    assert cache.reap() == []
    time.sleep(3.2)
    assert cache.reap() == ["short"]
    assert cache.loaded_ids() == ["forever"]  # ttl 0 keeps a model loaded


def test_a_failed_load_is_reported_and_retried(tmp_path):
    cache = ModelCache()
    target = tmp_path / "model"
    broken = model("broken", "faster-whisper", str(target))
    with pytest.raises(ModelUnavailable) as caught, cache.use(broken):
        pass
    assert "broken" in caught.value.message and caught.value.status == 503
    assert cache.status("broken").state == "failed" and cache.status("broken").error
    target.symlink_to(whisper_model_dir())  # the operator fixes the source: the next use loads it
    with cache.use(broken) as engine:
        assert engine.sample_rate == 16000
    assert cache.status("broken").state == "loaded" and not cache.status("broken").error


def test_unload_drops_the_model():
    cache = ModelCache()
    with cache.use(PIPER):
        pass
    assert cache.unload("piper") is True
    assert cache.status("piper").state == "not loaded" and cache.unload("piper") is False
