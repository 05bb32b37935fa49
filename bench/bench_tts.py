"""Text to speech: the engine called directly vs the same text through POST /v1/audio/speech.

    cd /work/main && .venv/bin/python bench/bench_tts.py [--runs N] [--piper-runs N] [--formats pcm,mp3]

One run, one 3-sentence text, the same model files, one machine, two engines:

- Kokoro: full-size Kokoro-82M with random weights (shared/recipes/make_tiny_kokoro.py --full, made once
  into .cache/kokoro-full), registered as "kokoro-full" with voice af_heart by `manage.py loadregistry`.
- Piper: the starter's default, "tts-1" with voice "alloy" (en_US-joe-medium).

- direct: bench.direct: the model and voice resolved by `registry.speech.tts.voicing()` (in this process,
          on the gateway's database), the engine taken from this process's model cache, then the
          gateway's pipeline on it: `tts.speakable(text)`, `tts.synthesize_on()` sentence by sentence,
          each chunk through `registry.speech.audio.StreamEncoder(FORMAT)`; no HTTP, no pool.
- http:   the openai SDK's audio.speech.with_streaming_response.create(stream_format="audio"), the body
          read chunk by chunk, against a fresh gateway (bench.gateway.Gateway: daphne, SQLite, the starter
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
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the repo root

import openai  # noqa: E402

from bench.gateway import HEALTH, MODELS, Gateway  # noqa: E402
from bench.harness.speech import kokoro_dir  # noqa: E402
from bench.report import (  # noqa: E402
    markdown_table,
    median,
    ms,
    print_machine,
    runs_ms,
    signed,
    warn_if_busy,
    yes,
)
from bench.service_costs import service_costs  # noqa: E402

if TYPE_CHECKING:
    from bench.direct import Speaker, Spoken

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
    audit: dict[str, dict[str, float]] = field(default_factory=dict)  # request id -> RequestLog, seconds

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
    series: list[Series], speakers: dict[str, Speaker], client: openai.OpenAI, runs: dict[str, int]
) -> None:
    """`runs[case name]` timed calls per side; rounds visit every series still short of its count."""
    for s in series:  # warm-up, untimed: two of each (Kokoro's second call is still slower than the rest)
        for _ in range(2):
            speakers[s.case.name].stream(TEXT, s.fmt)
            http_speak(client, s.case, s.fmt)
    for i in range(max(runs.values())):
        for s in series:
            if i >= runs[s.case.name]:
                continue
            sides = ["direct", "http"] if i % 2 == 0 else ["http", "direct"]
            for side in sides:
                time.sleep(SETTLE_S)
                if side == "direct":
                    s.direct.append(speakers[s.case.name].stream(TEXT, s.fmt))
                else:
                    s.http.append(http_speak(client, s.case, s.fmt))


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
        return float(s.audit[call.request_id][name])

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
        server=median([row(h, "duration") for h in s.http]),
        tts=median([row(h, "tts") for h in s.http]),
        tts_first=median([row(h, "tts_first_audio") for h in s.http]),
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
    direct_runs, http_runs = runs_ms(d.total_s for d in s.direct), runs_ms(h.total_s for h in s.http)
    print(f"  runs, whole (ms): direct {direct_runs}; http {http_runs}")
    audio = sorted({round(d.audio_s, 3) for d in s.direct} | {round(s.http_audio_s(h), 3) for h in s.http})
    print(f"  audio lengths seen (s): {' '.join(f'{a:.3f}' for a in audio)}")


def fixed_costs(gateway: Gateway) -> list[tuple[str, float]]:
    """Requests that do the gateway's per-request work around synthesis, but no synthesis."""
    unknown_voice = {"json": {"model": "tts-1", "voice": "no-such-voice", "input": TEXT}}
    return gateway.request_costs(
        [
            HEALTH,
            MODELS,
            (
                "POST /v1/audio/speech, unknown voice: 400 (+ JSON parse, model and voice lookups)",
                "POST",
                "/v1/audio/speech",
                unknown_voice,
            ),
        ]
    )


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

    facts, load_before = print_machine()
    # Kokoro-82M's sizes with random weights (the real architecture's compute), written once (~330 MB).
    kokoro_full = kokoro_dir("kokoro-full", full=True)

    with Gateway() as gateway, gateway.engines() as engines:
        loaded = gateway.load_registry(
            {
                "models": [
                    {
                        "id": "kokoro-full",
                        "task": "tts",
                        "engine": "kokoro",
                        "source": str(kokoro_full),
                        "voices": [{"name": "af_heart"}],
                    }
                ]
            },
        )
        from registry.speech.tts import speakable  # after gateway.engines(): Django is set up

        # Kokoro's torch modules warn at construction (LSTM dropout, weight_norm): noise, not findings.
        warnings.filterwarnings("ignore", message="dropout option adds dropout", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*weight_norm", category=FutureWarning)
        sentences = speakable(TEXT)
        speakers: dict[str, Speaker] = {}
        for case in CASES:
            speaker = speakers[case.name] = engines.tts(case.model, case.voice)
            spec = speaker.voicing.model.spec
            print(
                f"engine:  {case.model} -> {spec.model_id} ({spec.engine}, {spec.source}), "
                f"voice {speaker.voicing.voice.name}"
            )
        setup_s = time.perf_counter() - bench_started
        print(f"gateway: {gateway.url}, {loaded}; ready with both direct engines in {setup_s:.1f} s")
        print(f"text:    {len(sentences)} sentences, {len(TEXT)} characters: {TEXT!r}")
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=120)

        series = [Series(case, fmt) for case in CASES for fmt in formats]
        run_rounds(series, speakers, client, {"kokoro": args.runs, "piper": args.piper_runs})
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
