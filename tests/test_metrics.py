"""/metrics: Prometheus text that parses, counters that move with real requests, access by address
or bearer token, and one sum over several server processes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from prometheus_client.parser import text_string_to_metric_families

from bench.harness.speech import piper_voice_path, speech
from registry.api.metrics import MetricsEndpoint
from tests.conftest import ROOT, Server, server_env
from tests.realtime_client import Events

TINY = "Systran/faster-whisper-tiny.en"
PIPER = "rhasspy/piper-en_US-joe-medium"
Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str, **headers: str) -> Samples:
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def parse(text: bytes | str) -> Samples:
    text = text.decode() if isinstance(text, bytes) else text
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items()))


Wanted = tuple[str, dict[str, str], float]


def want(name: str, amount: float = 1, **labels: str) -> Wanted:
    """`name`{labels} should grow by at least `amount`."""
    return name, labels, amount


def moved(url: str, before: Samples, *wanted: Wanted) -> Samples:
    """Scrape until every wanted sum has grown: a request is counted as it ends, which for a stream
    is just after the client has read its last byte."""
    deadline = time.monotonic() + 30
    while True:
        after = scrape(url)
        short = [
            (name, labels, total(before, name, **labels), total(after, name, **labels))
            for name, labels, amount in wanted
            if total(after, name, **labels) - total(before, name, **labels) < amount
        ]
        if not short:
            return after
        if time.monotonic() > deadline:
            pytest.fail(f"metrics did not move (name, labels, before, after): {short}")
        time.sleep(0.2)


def test_metrics_parse_and_histograms_have_buckets(gateway: Server) -> None:
    httpx.get(f"{gateway.url}/v1/models", timeout=30)  # a 401: at least one request observed
    samples = moved(gateway.url, [], want("voiceproxy_requests_total", route="/v1/models"))
    buckets = [
        (ls, v)
        for n, ls, v in samples
        if n == "voiceproxy_request_duration_seconds_bucket" and ls["route"] == "/v1/models"
    ]
    assert {"0.1", "1.0", "+Inf"} <= {ls["le"] for ls, _ in buckets}
    counts = total(samples, "voiceproxy_request_duration_seconds_count", route="/v1/models")
    assert (
        total(samples, "voiceproxy_request_duration_seconds_bucket", route="/v1/models", le="+Inf") == counts
    )
    assert {"voiceproxy_realtime_sessions", "voiceproxy_errors_total"} <= {n for n, _, _ in samples}


def test_counters_move_after_real_requests(
    gateway: Server, client: openai.OpenAI, openai_client: Callable[..., openai.OpenAI]
) -> None:
    before = scrape(gateway.url)
    client.audio.transcriptions.create(
        model=TINY, file=("speech.wav", speech("Please open the settings page.", ".wav"), "audio/wav")
    )
    client.audio.speech.create(model=PIPER, voice="joe", input="Hello from the metrics test.").read()
    question = base64.b64encode(speech("What is the weather like in Paris?", ".wav")).decode()
    client.chat.completions.create(
        model="fake-llm",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": question, "format": "wav"}}],
            }
        ],
    )
    with pytest.raises(openai.AuthenticationError):
        openai_client(api_key="sk-not-a-key").models.list()
    after = moved(
        gateway.url,
        before,
        want("voiceproxy_requests_total", route="/v1/audio/transcriptions", status="200", model=TINY),
        want("voiceproxy_requests_total", route="/v1/audio/speech", status_class="2xx", model=PIPER),
        want("voiceproxy_requests_total", route="/v1/chat/completions", status="200", model="fake-llm"),
        want("voiceproxy_requests_total", route="/v1/models", status="401", status_class="4xx"),
        want(
            "voiceproxy_errors_total",
            route="/v1/models",
            type="authentication_error",
            code="invalid_api_key",
        ),
        want("voiceproxy_request_duration_seconds_count", route="/v1/audio/transcriptions", model=TINY),
        want("voiceproxy_stage_duration_seconds_count", 2, stage="stt", model=TINY),
        want("voiceproxy_stage_duration_seconds_count", 2, stage="tts", model=PIPER),
        want("voiceproxy_stage_duration_seconds_count", stage="tts_first_audio", model=PIPER),
        want("voiceproxy_stage_duration_seconds_count", stage="llm", model="fake-llm"),
        want("voiceproxy_audio_seconds_total", 2.0, direction="in", model=TINY),
        want("voiceproxy_audio_seconds_total", 2.0, direction="out", model=PIPER),
        want("voiceproxy_upstream_requests_total", upstream="loopback", status="200"),
        want("voiceproxy_upstream_duration_seconds_count", upstream="loopback"),
    )
    # The gateway holds both models (a gauge summed over the live processes), loaded and timed.
    assert total(after, "voiceproxy_models_loaded", model=TINY) >= 1
    assert total(after, "voiceproxy_models_loaded", model=PIPER) >= 1
    assert total(after, "voiceproxy_model_loads_total", model=TINY, result="ok") >= 1
    assert total(after, "voiceproxy_model_load_seconds_count", model=TINY) >= 1
    assert {"waiting", "running"} <= {ls["state"] for n, ls, _ in after if n == "voiceproxy_pool_units"}


def test_unknown_names_are_bounded_labels(gateway: Server, client: openai.OpenAI) -> None:
    before = scrape(gateway.url)
    name = f"no-such-model-{uuid.uuid4().hex}"
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model=name, voice="joe", input="hi")
    httpx.get(f"{gateway.url}/v1/{name}", timeout=30)
    after = moved(
        gateway.url,
        before,
        want("voiceproxy_errors_total", route="/v1/audio/speech", code="model_not_found"),
    )
    moved(gateway.url, before, want("voiceproxy_requests_total", route="(unknown)"))
    assert not any(name in json.dumps(labels) for _, labels, _ in after)


def test_a_refused_pool_call_is_counted(settings: object) -> None:
    # A full pool is made here, in this process (reservations hold slots without running anything);
    # a scrape merges this process's files too.
    from registry import metrics
    from registry.errors import ServerBusy
    from registry.speech import workers

    settings.VOICEPROXY_QUEUE_LIMIT = 0  # type: ignore[attr-defined]
    before = total(parse(metrics.exposition()[0]), "voiceproxy_pool_rejections_total")
    held = []
    try:
        with pytest.raises(ServerBusy):
            for _ in range(workers.capacity() + 1):
                held.append(workers.reservation())
    finally:
        for reserved in held:
            workers.release(reserved)
    assert total(parse(metrics.exposition()[0]), "voiceproxy_pool_rejections_total") == before + 1


def test_model_cache_changes_are_counted(tmp_path: Path) -> None:
    # In this process, with its own cache and unique model ids: a scrape merges this process's files.
    from registry import metrics
    from registry.errors import ModelUnavailable
    from registry.resolved import ResolvedModel
    from registry.speech.cache import ModelCache
    from registry.speech.engines.base import EngineSpec

    def resolved(model_id: str, source: str) -> ResolvedModel:
        spec = EngineSpec(model_id=model_id, engine="piper", source=source, device="cpu", compute_type="auto")
        return ResolvedModel(model_id=model_id, task="tts", spec=spec, idle_ttl=900, names=(model_id,), pk=0)

    def now(name: str, **labels: str) -> float:
        return total(parse(metrics.exposition()[0]), name, **labels)

    good = resolved(f"metrics-piper-{uuid.uuid4().hex[:8]}", str(piper_voice_path()))
    bad = resolved(f"metrics-missing-{uuid.uuid4().hex[:8]}", str(tmp_path / "none.onnx"))
    cache = ModelCache()
    with cache.use(good):
        pass
    assert now("voiceproxy_models_loaded", model=good.model_id, device="cpu") == 1
    assert now("voiceproxy_model_loads_total", model=good.model_id, result="ok") == 1
    assert now("voiceproxy_model_load_seconds_count", model=good.model_id) == 1
    assert cache.unload(good.model_id)
    assert now("voiceproxy_models_loaded", model=good.model_id) == 0
    assert now("voiceproxy_model_unloads_total", model=good.model_id, reason="admin") == 1
    with pytest.raises(ModelUnavailable), cache.use(bad):
        pass
    assert now("voiceproxy_model_loads_total", model=bad.model_id, result="failed") == 1
    assert now("voiceproxy_models_loaded", model=bad.model_id) == 0


def test_open_realtime_sessions_are_a_gauge(gateway: Server, api_key: Any) -> None:
    def sessions() -> float:
        return total(scrape(gateway.url), "voiceproxy_realtime_sessions")

    def until(predicate: Callable[[float], bool]) -> None:
        deadline = time.monotonic() + 30
        while not predicate(sessions()):
            if time.monotonic() > deadline:
                pytest.fail(f"realtime sessions stayed at {sessions()}")
            time.sleep(0.2)

    before = sessions()
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=api_key.secret, max_retries=0)
    with client.realtime.connect(model="fake-llm") as connection:
        assert Events(connection).next()["type"] == "session.created"
        until(lambda now: now >= before + 1)
    until(lambda now: now <= before)


# --- access ----------------------------------------------------------------------------------------

TOKEN = f"metrics-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def guarded(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that lets no loopback client scrape without the token."""
    env = server_env(VOICEPROXY_METRICS_ALLOW="192.0.2.0/24", VOICEPROXY_METRICS_TOKEN=TOKEN)
    server = Server(env, tmp_path_factory.mktemp("guarded") / "daphne.log")
    yield server
    server.stop()


def test_loopback_scrapes_by_default(gateway: Server) -> None:
    assert scrape(gateway.url)


def test_an_address_outside_the_allow_list_needs_the_token(guarded: Server) -> None:
    refused = httpx.get(f"{guarded.url}/metrics", timeout=30)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "metrics_not_allowed"
    wrong = httpx.get(f"{guarded.url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    assert wrong.json()["error"] == {
        "message": "The metrics token is not valid.",
        "type": "authentication_error",
        "param": None,
        "code": "invalid_metrics_token",
    }
    assert scrape(guarded.url, Authorization=f"Bearer {TOKEN}")
    assert httpx.post(f"{guarded.url}/metrics", timeout=30).status_code == 405
    assert httpx.get(f"{guarded.url}/health", timeout=30).status_code == 200


def endpoint_refusal(client: str, authorization: str = "") -> int | None:
    scope = {"type": "http", "path": "/metrics", "method": "GET", "client": (client, 5000)}
    headers = {b"authorization": authorization.encode()} if authorization else {}
    refusal = MetricsEndpoint(app=None).refusal(scope, headers)
    return refusal.status if refusal else None


def test_allow_list_takes_networks_and_mapped_addresses(settings: object) -> None:
    settings.VOICEPROXY_METRICS_ALLOW = ["10.1.0.0/16", "2001:db8::/32"]  # type: ignore[attr-defined]
    settings.VOICEPROXY_METRICS_TOKEN = ""  # type: ignore[attr-defined]
    assert endpoint_refusal("10.1.2.3") is None
    assert endpoint_refusal("::ffff:10.1.2.3") is None
    assert endpoint_refusal("2001:db8::5") is None
    assert endpoint_refusal("127.0.0.1") == 403
    assert endpoint_refusal("127.0.0.1", "Bearer anything") == 403  # no token set: none works
    settings.VOICEPROXY_METRICS_ALLOW = ["10.1.0.0/16", "not-an-address"]  # type: ignore[attr-defined]
    with pytest.raises(ImproperlyConfigured, match="not-an-address"):
        MetricsEndpoint(app=None)


# --- several processes -----------------------------------------------------------------------------


def test_two_processes_are_summed_and_an_ended_one_keeps_its_counts(gateway: Server, tmp_path: Path) -> None:
    second = Server(server_env(), tmp_path / "second.log")  # the same data dir: the same metrics dir
    try:
        labels = {"route": "/v1/audio/speech", "status": "401"}
        before = scrape(gateway.url)
        for _ in range(3):
            assert httpx.post(f"{second.url}/v1/audio/speech", json={}, timeout=30).status_code == 401
        # Served by the second process, scraped from the first: one sum over both.
        from_first = moved(gateway.url, before, want("voiceproxy_requests_total", 3, **labels))
        from_second = scrape(second.url)
        assert total(from_second, "voiceproxy_requests_total", **labels) == total(
            from_first, "voiceproxy_requests_total", **labels
        )
        pid = second.process.pid
        assert (settings.VOICEPROXY_METRICS_DIR / f"gauge_livesum_{pid}.db").exists()
    finally:
        second.stop()
    # Its live gauges left with it; its counters stay in the sum.
    assert not (settings.VOICEPROXY_METRICS_DIR / f"gauge_livesum_{pid}.db").exists()
    assert (settings.VOICEPROXY_METRICS_DIR / f"counter_{pid}.db").exists()
    after = scrape(gateway.url)
    assert (
        total(after, "voiceproxy_requests_total", **labels)
        >= total(before, "voiceproxy_requests_total", **labels) + 3
    )


STALE = """
import os, sys
from prometheus_client.mmap_dict import MmapedDict, mmap_key

def ghost(pid, model):
    labels = ["model", "device"], [model, "cpu"]
    path = os.path.join(os.environ["VOICEPROXY_METRICS_DIR"], f"gauge_livesum_{pid}.db")
    d = MmapedDict(path)
    d.write_value(mmap_key("voiceproxy_models_loaded", "voiceproxy_models_loaded", *labels, ""), 1.0, 0.0)
    d.close()

ghost(os.getpid(), "left-by-a-killed-process-with-my-pid")
ghost(int(sys.argv[1]), "another-live-process")
import django
django.setup()
from registry import metrics
sys.stdout.write(metrics.exposition()[0].decode())
"""


def test_a_starting_process_drops_live_gauges_left_under_its_own_pid_only(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    env = server_env(VOICEPROXY_METRICS_DIR=str(directory), VOICEPROXY_DATA_DIR=str(tmp_path))
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # as settings will set it, before prometheus_client
    directory.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", STALE, "4194000"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "another-live-process" in out
    assert "left-by-a-killed-process-with-my-pid" not in out
