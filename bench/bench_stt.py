"""Speech to text: the engine called directly vs the same clip through POST /v1/audio/transcriptions.

    cd /work/main && .venv/bin/python bench/bench_stt.py [--runs N]

One run, the same clips, the same model files, one machine:

- raw:    the engine's faster_whisper.WhisperModel.transcribe(BytesIO(wav)) with faster-whisper's own
          defaults, drained (faster-whisper decodes the WAV itself)
- engine: bench.direct: "whisper-tiny.en" resolved by registry.catalog and its engine taken from this
          process's model cache, then the gateway's pipeline on it: registry.speech.audio.decode and
          registry.speech.stt.transcribe_on, drained (what stt.run's worker does, without HTTP and
          the pool). The overhead figures are against this one.
- http:   the openai SDK's audio.transcriptions.create(model=STT_MODEL) against a fresh gateway
          (bench.gateway.Gateway: daphne, SQLite, the starter registry, VOICEPROXY_INFERENCE_THREADS=2)

All three are warm (one warm-up call each first, so model loads are excluded) and interleaved,
rotating the order each round, so they share the machine's noise. Then the event loop: /health
latency, polled every ~20 ms, idle, while 4 transcriptions of the long clip run at once (3 rounds),
and while one 10 MiB multipart upload is received (answered 404 before any decoding).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the repo root

import httpx  # noqa: E402
import openai  # noqa: E402

from bench.gateway import HEALTH, MODELS, STT_MODEL, Gateway  # noqa: E402
from bench.harness.speech import speech  # noqa: E402
from bench.report import (  # noqa: E402
    Neighbours,
    markdown_table,
    median,
    ms,
    percentile,
    print_machine,
    runs_ms,
    signed,
    yes,
)
from registry.speech.engines.whisper import WhisperEngine  # noqa: E402

if TYPE_CHECKING:
    from bench.direct import Transcriber

CLIPS: dict[str, str] = {
    "10 s": "Please bring the budget report and the list of open issues. We will review the hiring plan, "
    "then discuss the office move. Lunch is served after the session.",
    "3 s": "Open the settings page and turn on dark mode.",
}
LONG = "10 s"
OVERHEAD_TARGET_PCT = 5.0
HEALTH_P99_TARGET_S = 0.050
HEALTH_INTERVAL_S = 0.020
CONCURRENT = 4
LOAD_ROUNDS = 3  # batches of CONCURRENT, so the p99 rests on a few hundred polls, not one tail
UPLOAD_MIB = 10
NEIGHBOURS_LIMIT = 0.2  # cores' worth of other processes' CPU use above which the figures are suspect
IDLE_POLL_S = 2.0


@dataclass
class Clip:
    name: str
    wav: bytes
    seconds: float
    times: dict[str, list[float]] = field(default_factory=lambda: {"raw": [], "engine": [], "http": []})
    decode_s: list[float] = field(default_factory=list)
    http_by_id: dict[str, float] = field(default_factory=dict)  # x-request-id -> client-side seconds
    texts: dict[str, str] = field(default_factory=dict)


class Runner:
    """The three ways of transcribing one clip; each returns its text and records its wall time."""

    def __init__(self, transcriber: Transcriber, client: openai.OpenAI) -> None:
        if not isinstance(transcriber.engine, WhisperEngine):
            raise RuntimeError(f"{transcriber.model.model_id} is not a faster-whisper model")
        self.transcriber = transcriber
        self.whisper = transcriber.engine.model  # the engine's own faster_whisper.WhisperModel
        self.client = client
        self.last_request_id = ""

    def raw(self, clip: Clip) -> str:
        segments, _ = self.whisper.transcribe(io.BytesIO(clip.wav))
        return "".join(s.text for s in segments).strip()  # lazy: the decoding happens here

    def engine_call(self, clip: Clip) -> str:
        text, decode_s = self.transcriber.transcribe(clip.wav)
        clip.decode_s.append(decode_s)
        return text

    def http(self, clip: Clip) -> str:
        raw = self.client.audio.transcriptions.with_raw_response.create(
            model=STT_MODEL, file=("clip.wav", clip.wav, "audio/wav")
        )
        self.last_request_id = raw.headers.get("x-request-id", "")
        return raw.parse().text.strip()

    def timed(self, how: str, clip: Clip, record: bool = True) -> None:
        call: Callable[[Clip], str] = {"raw": self.raw, "engine": self.engine_call, "http": self.http}[how]
        started = time.perf_counter()
        text = call(clip)
        elapsed = time.perf_counter() - started
        if record:
            clip.times[how].append(elapsed)
            if how == "http":
                clip.http_by_id[self.last_request_id] = elapsed
        clip.texts[how] = text


def interleaved(runner: Runner, clips: list[Clip], runs: int) -> None:
    order = ["raw", "engine", "http"]
    for clip in clips:  # warm-up: model loads, first-call allocations, the gateway's caches
        for how in order:
            runner.timed(how, clip, record=False)
        clip.decode_s.clear()
    for i in range(runs):
        rotated = order[i % 3 :] + order[: i % 3]
        for clip in clips:
            for how in rotated:
                runner.timed(how, clip)


def poll_health(url: str, stop: Callable[[], bool]) -> list[float]:
    """GET /health every ~20 ms (sequential, keep-alive) until `stop()`; the latencies in seconds."""
    latencies: list[float] = []
    with httpx.Client(timeout=10) as http:
        http.get(f"{url}/health")  # open the connection outside the figures
        next_at = time.perf_counter()
        while not stop():
            started = time.perf_counter()
            response = http.get(f"{url}/health")
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
            next_at += HEALTH_INTERVAL_S
            time.sleep(max(0.0, next_at - time.perf_counter()))
    return latencies


def loaded_round(gateway: Gateway, clip: Clip, client: openai.OpenAI) -> tuple[list[float], int]:
    """/health latencies while CONCURRENT transcriptions of `clip` run at once; also the failures."""
    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        futures = [
            pool.submit(
                client.audio.transcriptions.create,
                model=STT_MODEL,
                file=("clip.wav", clip.wav, "audio/wav"),
            )
            for _ in range(CONCURRENT)
        ]
        latencies = poll_health(gateway.url, lambda: all(f.done() for f in futures))
        return latencies, sum(f.exception() is not None for f in futures)


def loaded_health(gateway: Gateway, clip: Clip, client: openai.OpenAI) -> tuple[list[float], float, int]:
    """LOAD_ROUNDS loaded rounds: all their /health latencies, a round's mean wall time, the failures."""
    latencies: list[float] = []
    failures = 0
    started = time.perf_counter()
    for _ in range(LOAD_ROUNDS):
        round_latencies, round_failures = loaded_round(gateway, clip, client)
        latencies += round_latencies
        failures += round_failures
    return latencies, (time.perf_counter() - started) / LOAD_ROUNDS, failures


def idle_health(gateway: Gateway) -> list[float]:
    deadline = time.perf_counter() + IDLE_POLL_S
    return poll_health(gateway.url, lambda: time.perf_counter() >= deadline)


def upload_health(gateway: Gateway) -> tuple[list[float], float]:
    """/health latencies while one UPLOAD_MIB multipart upload is received; and the upload's own seconds.

    The model name is unknown, so the gateway answers 404 before decoding: what is measured is
    receiving and parsing the body, not inference.
    """
    payload = os.urandom(UPLOAD_MIB * 1024 * 1024)
    done = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        polling = pool.submit(poll_health, gateway.url, done.is_set)
        time.sleep(5 * HEALTH_INTERVAL_S)  # a few quiet polls first
        started = time.perf_counter()
        httpx.post(
            f"{gateway.url}/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {gateway.key}"},
            data={"model": "no-such-model"},
            files={"file": ("upload.wav", payload, "audio/wav")},
            timeout=60,
        )
        upload_s = time.perf_counter() - started
        time.sleep(5 * HEALTH_INTERVAL_S)
        done.set()
        return polling.result(), upload_s


def rtf(seconds: float, clip: Clip) -> str:
    """Real-time factor: processing time / audio duration (below 1: faster than real time)."""
    return f"RTF {seconds / clip.seconds:.3f}"


def latency_line(name: str, values: list[float]) -> str:
    p50, p99 = percentile(values, 50), percentile(values, 99)
    return f"  {name:<34} n={len(values):<4} p50 {ms(p50):>9}  p99 {ms(p99):>9}  max {ms(max(values)):>9}"


def fixed_costs(gateway: Gateway, clips: list[Clip]) -> list[tuple[str, float]]:
    """Medians of requests that do the gateway's per-request work without decode or inference."""
    # Unknown model: upload, multipart parse, auth, the catalog lookup, the error, the audit row;
    # stt.run() raises before decoding, so no decode and no inference.
    uploads = [
        (
            f"POST transcriptions, {clip.name} clip ({len(clip.wav) // 1024} KiB), unknown model: 404",
            "POST",
            "/v1/audio/transcriptions",
            {"data": {"model": "no-such-model"}, "files": {"file": ("clip.wav", clip.wav, "audio/wav")}},
        )
        for clip in clips
    ]
    return gateway.request_costs([HEALTH, MODELS, *uploads])


@dataclass
class Figures:
    """One clip's medians (seconds), from the interleaved runs and the gateway's audit rows."""

    clip: Clip
    raw: float
    engine: float
    http: float
    decode: float
    paired: float  # median of the per-round HTTP - engine differences
    non_inference: float  # per request: client total - the gateway's inference time - decode
    server: float  # RequestLog.duration_ms: the audit middleware's start to just before its INSERT
    stt: float  # RequestLog.stt_ms: the inference in the pool, queue wait included, decode excluded

    @property
    def overhead(self) -> float:
        return self.http - self.engine

    @property
    def overhead_pct(self) -> float:
        return 100 * self.overhead / self.engine


def figures_for(clip: Clip, gateway: Gateway) -> Figures:
    audit = gateway.audit_rows(clip.http_by_id, ["stt_ms", "duration_ms"])
    rows = [(total, audit[rid]) for rid, total in clip.http_by_id.items() if audit.get(rid, {}).get("stt")]
    if len(rows) != len(clip.http_by_id):
        raise RuntimeError(
            f"{len(clip.http_by_id) - len(rows)} HTTP runs of the {clip.name} clip have no audit row"
        )
    decode = median(clip.decode_s)
    return Figures(
        clip=clip,
        raw=median(clip.times["raw"]),
        engine=median(clip.times["engine"]),
        http=median(clip.times["http"]),
        decode=decode,
        paired=median([h - e for h, e in zip(clip.times["http"], clip.times["engine"], strict=True)]),
        non_inference=median([total - row["stt"] - decode for total, row in rows]),
        server=median([row["duration"] for _, row in rows]),
        stt=median([row["stt"] for _, row in rows]),
    )


def print_figures(f: Figures) -> None:
    clip = f.clip
    print(f"{clip.name} clip ({clip.seconds:.2f} s audio):")
    print(f"  raw faster-whisper (BytesIO in)      {ms(f.raw):>9}   {rtf(f.raw, clip)}")
    print(f"  engine (decode + transcribe)         {ms(f.engine):>9}   {rtf(f.engine, clip)}")
    print(f"    of which decode (registry.speech.audio)   {ms(f.decode):>9}")
    print(f"  HTTP /v1/audio/transcriptions (SDK)  {ms(f.http):>9}   {rtf(f.http, clip)}")
    print(f"  overhead: HTTP median - engine median             {signed(f.overhead, f.engine)}")
    print(f"  overhead: median of same-round differences        {signed(f.paired, f.engine)}")
    print(f"  overhead: client total - gateway inference - decode  {signed(f.non_inference, f.engine)}")
    print(f"  HTTP median - raw median                          {signed(f.http - f.raw, f.raw)}")
    runs = "; ".join(f"{h} {runs_ms(clip.times[h])}" for h in ("raw", "engine", "http"))
    print(f"  runs (ms): {runs}")
    if len(set(clip.texts.values())) != 1:
        print(f"  NOTE: the texts differ: {clip.texts}")
    else:
        print(f"  text (all three): {clip.texts['http']!r}")


def print_split(f: Figures) -> None:
    print(
        f"  {f.clip.name}: client {ms(f.http)} = in the audit middleware {ms(f.server)} "
        f"[inference {ms(f.stt)} (direct {ms(f.engine - f.decode)}) + the rest {ms(f.server - f.stt)}, "
        f"decode ~{ms(f.decode)} of it] + outside it {ms(f.http - f.server)} "
        "[SDK, TCP, daphne, body, audit INSERT]"
    )


def summary_rows(
    results: list[Figures], idle: list[float], loaded: list[float], uploading: list[float]
) -> list[list[str]]:
    rows: list[list[str]] = []
    for f in results:
        name, target = f.clip.name, f.clip.name == LONG
        aim = f"< {OVERHEAD_TARGET_PCT:g} %" if target else ""
        rows += [
            [
                f"{name} clip ({f.clip.seconds:.1f} s audio): engine, decode + transcribe",
                f"{ms(f.engine)}, {rtf(f.engine, f.clip)}",
                "",
                "",
            ],
            [f"{name} clip: through HTTP, openai SDK", f"{ms(f.http)}, {rtf(f.http, f.clip)}", "", ""],
            [
                f"{name} clip: gateway overhead, HTTP median - engine median",
                signed(f.overhead, f.engine),
                aim,
                yes(f.overhead_pct < OVERHEAD_TARGET_PCT) if target else "",
            ],
            [
                f"{name} clip: gateway overhead per request, HTTP - its own inference - decode",
                signed(f.non_inference, f.engine),
                aim,
                yes(100 * f.non_inference / f.engine < OVERHEAD_TARGET_PCT) if target else "",
            ],
        ]
    loaded_p99 = percentile(loaded, 99)
    rows += [
        ["/health p99 (max), idle", f"{ms(percentile(idle, 99))} ({ms(max(idle))})", "", ""],
        [
            f"/health p99 (max), {CONCURRENT} concurrent {LONG} transcriptions, {len(loaded)} polls",
            f"{ms(loaded_p99)} ({ms(max(loaded))})",
            f"< {HEALTH_P99_TARGET_S * 1000:g} ms",
            yes(loaded_p99 < HEALTH_P99_TARGET_S),
        ],
        [f"/health max while one {UPLOAD_MIB} MiB multipart upload is received", ms(max(uploading)), "", ""],
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=9, help="timed runs per clip and method (default 9, min 5)"
    )
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    bench_started = time.perf_counter()

    neighbours = Neighbours()
    neighbours.start()
    facts, _ = print_machine()
    wavs = {name: speech(text) for name, text in CLIPS.items()}

    with Gateway() as gateway, gateway.engines() as engines:
        transcriber = engines.stt(STT_MODEL)
        spec = transcriber.model.spec
        device = getattr(transcriber.engine, "device", "?")  # WhisperEngine's resolved device
        setup_s = time.perf_counter() - bench_started
        clips = [Clip(name=name, wav=wav, seconds=transcriber.decode(wav)[1]) for name, wav in wavs.items()]
        described = (
            f"{c.name}: {c.seconds:.2f} s of espeak-ng speech, {len(c.wav)} bytes WAV" for c in clips
        )
        print("clips:   " + ", ".join(described))
        print(
            f"gateway: {gateway.url}, ready with the direct engine in {setup_s:.1f} s; "
            f"model {spec.model_id} (device {spec.device} -> {device}, "
            f"compute_type {spec.compute_type}, cpu_threads {spec.cpu_threads})"
        )
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=120)

        print(f"\n== Latency, warm, median of {args.runs} interleaved runs (raw / engine / http) ==")
        interleaved(Runner(transcriber, client), clips, args.runs)
        results = [figures_for(clip, gateway) for clip in clips]
        for f in results:
            print_figures(f)

        print("\n== Where the HTTP time goes (medians; the split is from the gateway's RequestLog rows) ==")
        for f in results:
            print_split(f)
        for name, value in fixed_costs(gateway, clips):
            print(f"  {name:<66} {ms(value):>8}")

        print(f"\n== Event loop: GET /health every {HEALTH_INTERVAL_S * 1000:.0f} ms ==")
        idle = idle_health(gateway)
        long_clip = next(c for c in clips if c.name == LONG)
        loaded, round_s, failures = loaded_health(gateway, long_clip, client)
        print(latency_line("idle", idle))
        print(latency_line(f"{CONCURRENT} concurrent {LONG} transcriptions", loaded))
        print(
            f"  {LOAD_ROUNDS} rounds of {CONCURRENT}: {round_s:.2f} s per round "
            f"({CONCURRENT * long_clip.seconds / round_s:.1f} s of audio per second); failures: {failures}"
        )
        uploading, upload_s = upload_health(gateway)
        print(latency_line(f"one {UPLOAD_MIB} MiB upload (404, no decode)", uploading))
        print(f"  the upload itself took {ms(upload_s)}")

    long = next(f for f in results if f.clip.name == LONG)
    overhead_ok = long.overhead_pct < OVERHEAD_TARGET_PCT
    loop_ok = percentile(loaded, 99) < HEALTH_P99_TARGET_S
    print("\n== Summary (Markdown) ==\n")
    print(
        f"{facts['cores']} cores, {facts['cpu']}; Python {facts['python']}, Django {facts['django']}, "
        f"daphne {facts['daphne']}, faster-whisper {facts['faster-whisper']}, "
        f"CTranslate2 {facts['ctranslate2']}; {spec.model_id} on {device} (compute_type "
        f"{spec.compute_type}), VOICEPROXY_INFERENCE_THREADS=2, SQLite. Warm medians of {args.runs} "
        "interleaved runs, espeak-ng WAV clips; `bench/bench_stt.py`.\n"
    )
    print(
        markdown_table(["measure", "value", "target", "met"], summary_rows(results, idle, loaded, uploading))
    )
    others = neighbours.cores()
    print(f"\nOther processes used {others:.2f} cores on average during the run (of {os.cpu_count()}).")
    if others > NEIGHBOURS_LIMIT:
        print("WARNING: other work shared the CPUs; these figures are noisier than a quiet machine's.")
    robust_ok = 100 * long.non_inference / long.engine < OVERHEAD_TARGET_PCT
    print(
        f"\n(bench wall time {time.perf_counter() - bench_started:.0f} s; targets met: gateway overhead "
        f"{'yes' if overhead_ok else 'NO'} by medians, {'yes' if robust_ok else 'NO'} per request; "
        f"event loop {'yes' if loop_ok else 'NO'})"
    )


if __name__ == "__main__":
    main()
