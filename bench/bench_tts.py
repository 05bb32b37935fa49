"""Text to speech: the engine called directly vs the same text through POST /v1/audio/speech.

    cd /work/main && .venv/bin/python bench/bench_tts.py [--runs N] [--piper-runs N] [--formats pcm,mp3]

One run, one 3-sentence text, the same model files, one machine, two engines:

- Kokoro: full-size Kokoro-82M with random weights (shared/recipes/make_tiny_kokoro.py --full, made once
  into .cache/kokoro-full), registered as "kokoro-full" with voice af_heart by `manage.py loadregistry`.
- Piper: the starter's default, "tts-1" with voice "alloy" (en_US-joe-medium).

- direct: KokoroEngine / PiperEngine built from the EngineSpec the gateway resolves (registry.catalog, in
          this process, on the gateway's database), `registry.speech.tts.speakable(text)`, `synthesize()` per
          sentence, `registry.speech.audio.StreamEncoder(FORMAT)`: the work of tts.encoded(), without HTTP.
- http:   the openai SDK's audio.speech.with_streaming_response.create(stream_format="audio"), the body
          read chunk by chunk, against a fresh gateway (bench.common.Gateway: daphne, SQLite, the starter
          registry, VOICEPROXY_INFERENCE_THREADS=2).

Both warm (warm-up calls first: model loads, Kokoro's G2P, first-call allocations) and interleaved, the
order alternating each round, a short pause between calls. Per call: time to the first audio byte and to
the whole body; real-time factor = synthesis time / audio seconds. Kokoro's random weights sound like
noise, but its durations are deterministic (the same text gives the same length every call); Piper's
VITS duration noise makes its length vary a little per call, so the overhead is also given per second
of audio (the RTF ratio).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the repo root

import httpx  # noqa: E402
import openai  # noqa: E402

from bench.common import Gateway, machine_facts, markdown_table, median, warn_if_busy  # noqa: E402
from bench.direct_speech import Spoken, speak_stream  # noqa: E402
from bench.registry_setup import kokoro_full_dir, load_registry, tts_target, use_gateway_settings  # noqa: E402
from bench.service_costs import service_costs  # noqa: E402
from registry.speech.engines.base import TextToSpeech, VoiceSpec  # noqa: E402

TEXT = (
    "The train leaves the station at nine every morning. "
    "Passengers should arrive a few minutes early. "
    "Tickets can be bought on board or online."
)
FIRST_BYTE_TARGET_PCT = 40.0
OVERHEAD_TARGET_PCT = 5.0
SETTLE_S = 0.15  # between calls: lets the other side's threads go idle (torch/onnxruntime spin-waits)
BUSY_LOAD = 1.0
PCM_BYTES_PER_S = 24_000 * 2  # s16le mono at OpenAI's 24 kHz


@dataclass(frozen=True)
class Case:
    name: str  # "kokoro", "piper"
    model: str  # what the client names
    voice: str


CASES = [Case("kokoro", "kokoro-full", "af_heart"), Case("piper", "tts-1", "alloy")]


@dataclass(frozen=True)
class HttpSpoken:
    first_s: float
    total_s: float
    nbytes: int
    request_id: str


@dataclass
class Series:
    """One engine and format: every timed call of both sides, round by round."""

    case: Case
    fmt: str
    direct: list[Spoken] = field(default_factory=list)
    http: list[HttpSpoken] = field(default_factory=list)
    audit: dict[str, dict[str, float]] = field(default_factory=dict)  # request id -> RequestLog fields

    def http_audio_s(self, call: HttpSpoken) -> float:
        seconds = self.audit.get(call.request_id, {}).get("audio_seconds_out")
        if seconds:
            return float(seconds)
        return call.nbytes / PCM_BYTES_PER_S  # exact for pcm only; the audit row is always there in practice


def http_speak(client: openai.OpenAI, case: Case, fmt: str) -> HttpSpoken:
    started = time.perf_counter()
    first = 0.0
    nbytes = 0
    with client.audio.speech.with_streaming_response.create(
        model=case.model, voice=case.voice, input=TEXT, response_format=fmt, stream_format="audio"
    ) as response:
        for data in response.iter_bytes():
            if data and not first:
                first = time.perf_counter() - started
            nbytes += len(data)
        total = time.perf_counter() - started
        request_id = response.headers.get("x-request-id", "")
    return HttpSpoken(first_s=first, total_s=total, nbytes=nbytes, request_id=request_id)


def run_rounds(
    series: list[Series],
    engines: dict[str, tuple[TextToSpeech, VoiceSpec]],
    client: openai.OpenAI,
    sentences: list[str],
    runs: dict[str, int],
) -> None:
    """`runs[case name]` timed calls per side; rounds visit every series still short of its count."""
    for s in series:  # warm-up, untimed: two of each (Kokoro's second call is still slower than the rest)
        engine, voice = engines[s.case.name]
        for _ in range(2):
            speak_stream(engine, voice, sentences, s.fmt)
            http_speak(client, s.case, s.fmt)
    for i in range(max(runs.values())):
        for s in series:
            if i >= runs[s.case.name]:
                continue
            engine, voice = engines[s.case.name]
            sides = ["direct", "http"] if i % 2 == 0 else ["http", "direct"]
            for side in sides:
                time.sleep(SETTLE_S)
                if side == "direct":
                    s.direct.append(speak_stream(engine, voice, sentences, s.fmt))
                else:
                    s.http.append(http_speak(client, s.case, s.fmt))


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.0f} ms" if abs(value) >= 100 else f"{value:.1f} ms"


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %"


def signed(seconds: float, of: float) -> str:
    return f"{seconds * 1000:+.1f} ms ({100 * seconds / of:+.1f} %)"


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


@dataclass
class Figures:
    s: Series
    direct_total: float
    http_total: float
    direct_first: float
    http_first: float
    direct_rtf: float
    http_rtf: float
    paired: float  # median of the same-round HTTP - direct differences (s)
    http_first_share: float  # median over calls of first byte / whole body (%)
    direct_first_share: float
    direct_audio: float
    http_audio: float
    server: float  # RequestLog.duration_ms (s)
    tts: float  # RequestLog.tts_ms: speak() start -> last chunk handed on (s)
    tts_first: float  # RequestLog.tts_first_audio_ms (s)

    @property
    def rtf_overhead_pct(self) -> float:
        return 100 * (self.http_rtf / self.direct_rtf - 1)

    @property
    def paired_pct(self) -> float:
        return 100 * self.paired / self.direct_total


def figures(s: Series) -> Figures:
    def row(call: HttpSpoken, name: str) -> float:
        return float(s.audit[call.request_id][name]) / 1000

    return Figures(
        s=s,
        direct_total=median([d.total_s for d in s.direct]),
        http_total=median([h.total_s for h in s.http]),
        direct_first=median([d.first_s for d in s.direct]),
        http_first=median([h.first_s for h in s.http]),
        direct_rtf=median([d.total_s / d.audio_s for d in s.direct]),
        http_rtf=median([h.total_s / s.http_audio_s(h) for h in s.http]),
        paired=median([h.total_s - d.total_s for h, d in zip(s.http, s.direct, strict=True)]),
        http_first_share=median([100 * h.first_s / h.total_s for h in s.http]),
        direct_first_share=median([100 * d.first_s / d.total_s for d in s.direct]),
        direct_audio=median([d.audio_s for d in s.direct]),
        http_audio=median([s.http_audio_s(h) for h in s.http]),
        server=median([row(h, "duration_ms") for h in s.http]),
        tts=median([row(h, "tts_ms") for h in s.http]),
        tts_first=median([row(h, "tts_first_audio_ms") for h in s.http]),
    )


def print_figures(f: Figures) -> None:
    s = f.s
    print(f"{s.case.name} ({s.case.model}, voice {s.case.voice}), {s.fmt}:")
    print(
        f"  direct  first byte {ms(f.direct_first):>8}  whole {ms(f.direct_total):>8}  "
        f"audio {f.direct_audio:.2f} s  RTF {f.direct_rtf:.3f}  first/whole {f.direct_first_share:.1f} %"
    )
    print(
        f"  http    first byte {ms(f.http_first):>8}  whole {ms(f.http_total):>8}  "
        f"audio {f.http_audio:.2f} s  RTF {f.http_rtf:.3f}  first/whole {f.http_first_share:.1f} %"
    )
    difference = signed(f.http_total - f.direct_total, f.direct_total)
    print(f"  overhead: HTTP median - direct median        {difference}")
    print(f"  overhead: median of same-round differences   {signed(f.paired, f.direct_total)}")
    print(f"  overhead: per audio second (RTF ratio)       {f.rtf_overhead_pct:+.1f} %")
    print(
        f"  gateway's own clock (RequestLog): first audio {ms(f.tts_first)}, synthesis loop {ms(f.tts)}, "
        f"in the audit middleware {ms(f.server)}; client total - middleware {ms(f.http_total - f.server)}"
    )
    print(
        f"  client first byte - the gateway's first-audio clock: {ms(f.http_first - f.tts_first)} (HTTP, "
        f"auth, parsing, tts.voicing() before speak() starts; delivery after); the synthesis loop vs direct: "
        f"{signed(f.tts - f.direct_total, f.direct_total)}"
    )
    done = [median([d.sentence_done_s[i] for d in s.direct]) for i in range(len(s.direct[0].sentence_done_s))]
    lengths = [median([d.sentence_audio_s[i] for d in s.direct]) for i in range(len(done))]
    steps = [b - a for a, b in zip([0.0, *done], done, strict=False)]
    print(
        "  direct, per sentence: "
        + "; ".join(
            f"#{i + 1} {ms(step)} for {length:.2f} s ({100 * length / sum(lengths):.0f} % of the audio)"
            for i, (step, length) in enumerate(zip(steps, lengths, strict=True))
        )
        + f"; encoder close {ms(f.direct_total - done[-1])}"
    )
    direct_runs = " ".join(f"{d.total_s * 1000:.0f}" for d in s.direct)
    http_runs = " ".join(f"{h.total_s * 1000:.0f}" for h in s.http)
    print(f"  runs, whole (ms): direct {direct_runs}; http {http_runs}")
    audio = sorted({round(d.audio_s, 3) for d in s.direct} | {round(s.http_audio_s(h), 3) for h in s.http})
    print(f"  audio lengths seen (s): {' '.join(f'{a:.3f}' for a in audio)}")


def probe(http: httpx.Client, runs: int, method: str, path: str, **kwargs: object) -> float:
    """Median seconds of `runs` identical requests (after two untimed ones)."""
    times = []
    for i in range(runs + 2):
        started = time.perf_counter()
        http.request(method, path, **kwargs)  # type: ignore[arg-type]
        if i >= 2:
            times.append(time.perf_counter() - started)
    return median(times)


def fixed_costs(gateway: Gateway, runs: int = 20) -> list[tuple[str, float]]:
    """Requests that do the gateway's per-request work around synthesis, but no synthesis."""
    headers = {"Authorization": f"Bearer {gateway.key}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as http:
        return [
            ("GET /health (daphne + Django, no auth, no audit row)", probe(http, runs, "GET", "/health")),
            (
                "GET /v1/models (+ auth, DRF, catalog reads, audit row)",
                probe(http, runs, "GET", "/v1/models"),
            ),
            (
                "POST /v1/audio/speech, unknown voice: 400 (+ JSON parse, model and voice lookups)",
                probe(
                    http,
                    runs,
                    "POST",
                    "/v1/audio/speech",
                    json={"model": "tts-1", "voice": "no-such-voice", "input": TEXT},
                ),
            ),
        ]


def summary_rows(results: list[Figures]) -> list[list[str]]:
    rows: list[list[str]] = []
    for f in results:
        label = f"{f.s.case.name}, {f.s.fmt}"
        rows += [
            [f"{label}: RTF direct / HTTP", f"{f.direct_rtf:.3f} / {f.http_rtf:.3f}", "", ""],
            [
                f"{label}: first byte / whole body, HTTP (direct)",
                f"{ms(f.http_first)} / {ms(f.http_total)} = {f.http_first_share:.1f} % "
                f"({f.direct_first_share:.1f} %)",
                f"< {FIRST_BYTE_TARGET_PCT:g} %",
                yes(f.http_first_share < FIRST_BYTE_TARGET_PCT),
            ],
            [
                f"{label}: gateway overhead, median of same-round HTTP - direct",
                signed(f.paired, f.direct_total),
                f"< {OVERHEAD_TARGET_PCT:g} %",
                yes(f.paired_pct < OVERHEAD_TARGET_PCT),
            ],
            [
                f"{label}: gateway overhead per audio second (RTF ratio)",
                f"{f.rtf_overhead_pct:+.1f} %",
                f"< {OVERHEAD_TARGET_PCT:g} %",
                yes(f.rtf_overhead_pct < OVERHEAD_TARGET_PCT),
            ],
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7, help="Kokoro: timed runs per format and side (min 5)")
    parser.add_argument(
        "--piper-runs",
        type=int,
        default=41,
        help="Piper (~0.2 s a call): timed runs per format and side (min 5)",
    )
    parser.add_argument("--formats", default="pcm,mp3", help="response formats, comma-separated (pcm,mp3)")
    args = parser.parse_args()
    if min(args.runs, args.piper_runs) < 5:
        parser.error("--runs and --piper-runs must be at least 5")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bench_started = time.perf_counter()

    facts = machine_facts()
    load_before = os.getloadavg()[0]
    print("machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    print(f"load:    1-minute load average {load_before:.2f} before the run")
    kokoro_dir = kokoro_full_dir()

    with Gateway() as gateway:
        loaded = load_registry(
            gateway,
            {
                "models": [
                    {
                        "id": "kokoro-full",
                        "task": "tts",
                        "engine": "kokoro",
                        "source": str(kokoro_dir),
                        "voices": [{"name": "af_heart"}],
                    }
                ]
            },
        )
        use_gateway_settings(gateway)
        from registry.speech.engines.kokoro import KokoroEngine
        from registry.speech.engines.piper import PiperEngine
        from registry.speech.tts import speakable

        # Kokoro's torch modules warn at construction (LSTM dropout, weight_norm): noise, not findings.
        warnings.filterwarnings("ignore", message="dropout option adds dropout", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*weight_norm", category=FutureWarning)
        sentences = speakable(TEXT)
        engines: dict[str, tuple[TextToSpeech, VoiceSpec]] = {}
        for case in CASES:
            spec, voice = tts_target(case.model, case.voice)
            engine_class = {"kokoro": KokoroEngine, "piper": PiperEngine}[spec.engine]
            engines[case.name] = (engine_class(spec), voice)
            print(
                f"engine:  {case.model} -> {spec.model_id} ({spec.engine}, {spec.source}), voice {voice.name}"
            )
        setup_s = time.perf_counter() - bench_started
        print(f"gateway: {gateway.url}, {loaded}; ready with both direct engines in {setup_s:.1f} s")
        print(f"text:    {len(sentences)} sentences, {len(TEXT)} characters: {TEXT!r}")
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=120)

        series = [Series(case, fmt) for case in CASES for fmt in formats]
        run_rounds(series, engines, client, sentences, {"kokoro": args.runs, "piper": args.piper_runs})
        for s in series:
            s.audit = gateway.audit_rows(
                [h.request_id for h in s.http],
                ["duration_ms", "tts_ms", "tts_first_audio_ms", "audio_seconds_out"],
            )
        results = [figures(s) for s in series]
        print(
            f"\n== Warm medians of interleaved runs (Kokoro {args.runs}, Piper {args.piper_runs} per side), "
            "stream_format audio =="
        )
        for f in results:
            print_figures(f)
        print("\n== Fixed per-request costs, no synthesis (medians of 20) ==")
        for name, value in fixed_costs(gateway):
            print(f"  {name:<82} {ms(value):>8}")
        print("  the gateway's own steps, run in this process on its database:")
        for name, value in service_costs(api_key_secret=gateway.key, tts_model="tts-1", voice="alloy"):
            print(f"    {name:<80} {ms(value):>8}")

    print("\n== Summary (Markdown) ==\n")
    print(
        f"{facts['cores']} cores, {facts['cpu']}; Python {facts['python']}, Django {facts['django']}, daphne "
        f"{facts['daphne']}; Kokoro-82M-sized random weights (kokoro-full, af_heart) and Piper "
        f"en_US-joe-medium (tts-1, alloy) on CPU, VOICEPROXY_INFERENCE_THREADS=2, SQLite. "
        f"{len(sentences)}-sentence input, streamed (stream_format audio); warm medians of {args.runs} "
        f"(Kokoro) and {args.piper_runs} (Piper) interleaved runs; `bench/bench_tts.py`.\n"
    )
    print(markdown_table(["measure", "value", "target", "met"], summary_rows(results)))
    warn_if_busy(load_before, BUSY_LOAD)
    print(f"\n(bench wall time {time.perf_counter() - bench_started:.0f} s)")


if __name__ == "__main__":
    main()
