"""Several callers at once: streamed speech and voice chat at 1, 2, 4 and 8 concurrent clients, and
concurrent transcriptions (issue 14's figures).

    cd /work/main && .venv/bin/python bench/bench_concurrency.py [--rounds N] [--engines piper,kokoro]

Against a fresh gateway (bench.gateway.Gateway: daphne, SQLite, the starter registry, 2 inference
threads, engine threads from the core count), warm. Each level runs `--rounds` batches: a batch
starts N clients at once, each making one request, and ends when all have finished.

- speech:     POST /v1/audio/speech, the same 3-sentence text, `pcm`, streamed (Piper tts-1/alloy;
              Kokoro-82M's sizes with random weights, .cache/kokoro-full): per request the time to the
              first audio byte and to the whole body; throughput = audio seconds out / batch wall time.
- voice chat: POST /v1/chat/completions, stream=true, text in, pcm16 out, Piper, against a loopback
              FakeUpstream (20 ms a token, the same 3 sentences): time to the first audio delta.
- stt:        POST /v1/audio/transcriptions of ~10 s of espeak speech, tiny.en, at 1 and 4 at once.

Targets (2 cores): first byte at 4 concurrent streams no more than 2x the single-stream first byte;
throughput at 4 concurrent at least that of one stream at a time.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the repo root

import httpx  # noqa: E402

from bench.gateway import STT_MODEL, Gateway  # noqa: E402
from bench.harness.speech import kokoro_dir, speech  # noqa: E402
from bench.harness.upstream import FakeUpstream  # noqa: E402
from bench.report import markdown_table, median, percentile, print_machine, warn_if_busy  # noqa: E402

TEXT = (
    "The train leaves the station at nine every morning. "
    "Passengers should arrive a few minutes early. "
    "Tickets can be bought on board or online."
)
STT_TEXT = (
    "Please open the settings page and turn on the dark mode. Then read me the weather for tomorrow "
    "and remind me to call the office at nine in the morning about the quarterly report."
)
LEVELS = (1, 2, 4, 8)
PCM_BYTES_PER_S = 24_000 * 2
FIRST_BYTE_RATIO_TARGET = 2.0


@dataclass
class Result:
    first: float  # seconds to the first audio byte (or delta)
    total: float
    audio_s: float
    status: int


Call = Callable[[httpx.Client], Result]


def speech_call(url: str, key: str, model: str, voice: str) -> Call:
    def call(http: httpx.Client) -> Result:
        started = time.perf_counter()
        first, size = 0.0, 0
        body = {"model": model, "voice": voice, "input": TEXT, "response_format": "pcm"}
        with http.stream(
            "POST", f"{url}/v1/audio/speech", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as r:
            for chunk in r.iter_bytes():
                if chunk and not first:
                    first = time.perf_counter() - started
                size += len(chunk)
        return Result(first, time.perf_counter() - started, size / PCM_BYTES_PER_S, r.status_code)

    return call


def chat_call(url: str, key: str) -> Call:
    def call(http: httpx.Client) -> Result:
        started = time.perf_counter()
        first, size = 0.0, 0
        body = {
            "model": "bench-llm",
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "pcm16"},
            "messages": [{"role": "user", "content": "Tell me about the train."}],
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {key}"}
        with http.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                for choice in json.loads(line[6:]).get("choices", []):
                    data = (choice.get("delta", {}).get("audio") or {}).get("data")
                    if data:
                        first = first or time.perf_counter() - started
                        size += len(base64.b64decode(data))
        return Result(first, time.perf_counter() - started, size / PCM_BYTES_PER_S, r.status_code)

    return call


def stt_call(url: str, key: str, wav: bytes) -> Call:
    def call(http: httpx.Client) -> Result:
        started = time.perf_counter()
        r = http.post(
            f"{url}/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {key}"},
            data={"model": STT_MODEL},
            files={"file": ("speech.wav", wav)},
        )
        elapsed = time.perf_counter() - started
        return Result(elapsed, elapsed, 0.0, r.status_code)

    return call


@dataclass
class Level:
    clients: int
    results: list[Result]
    wall: float  # summed batch wall time

    def firsts(self) -> list[float]:
        return [r.first for r in self.results if r.status == 200]

    def throughput(self) -> float:
        return sum(r.audio_s for r in self.results) / self.wall


def run_level(call: Call, clients: int, rounds: int) -> Level:
    results: list[Result] = []
    wall = 0.0
    lock = threading.Lock()
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=16)) as http:
        for _ in range(rounds):
            barrier = threading.Barrier(clients)

            def one(barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                result = call(http)
                with lock:
                    results.append(result)

            threads = [threading.Thread(target=one) for _ in range(clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall += time.perf_counter() - started
            time.sleep(0.2)
    return Level(clients, results, wall)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def report(name: str, levels: list[Level], *, audio: bool = True) -> list[list[str]]:
    single = median(levels[0].firsts())
    rows = []
    for level in levels:
        firsts = level.firsts()
        statuses = sorted({r.status for r in level.results})
        row = [
            name,
            str(level.clients),
            ms(median(firsts)),
            ms(percentile(firsts, 90)),
            f"{median(firsts) / single:.2f}x",
            ms(median([r.total for r in level.results])),
        ]
        if audio:
            row.append(f"{level.throughput():.2f}")
        row.append(",".join(map(str, statuses)))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="batches per level (default 5)")
    parser.add_argument("--engines", default="piper,kokoro", help="speech engines: piper,kokoro")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument(
        "--engine-threads",
        type=int,
        default=0,
        help="VOICEPROXY_ENGINE_THREADS for the gateway (0: its default)",
    )
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    facts, load_before = print_machine()
    wav = speech(STT_TEXT)
    env = {"VOICEPROXY_ENGINE_THREADS": str(args.engine_threads)} if args.engine_threads else {}
    with FakeUpstream(reply=TEXT, token_delay=0.02) as upstream, Gateway(env=env) as gateway:
        registry: dict[str, object] = {
            "upstreams": [
                {"name": "bench", "base_url": upstream.base_url, "models": ["bench-llm"], "default": True}
            ]
        }
        if "kokoro" in engines:
            registry["models"] = [
                {
                    "id": "kokoro-full",
                    "task": "tts",
                    "engine": "kokoro",
                    "source": str(kokoro_dir("kokoro-full", full=True)),
                    "voices": [{"name": "af_heart"}],
                }
            ]
        print(gateway.load_registry(registry))
        cases: list[tuple[str, Call, bool]] = []
        if "piper" in engines:
            cases.append(("speech, Piper", speech_call(gateway.url, gateway.key, "tts-1", "alloy"), True))
        if "kokoro" in engines:
            cases.append(
                ("speech, Kokoro", speech_call(gateway.url, gateway.key, "kokoro-full", "af_heart"), True)
            )
        cases.append(("voice chat, Piper", chat_call(gateway.url, gateway.key), True))
        rows: list[list[str]] = []
        verdicts: list[str] = []
        for name, call, audio in cases:
            run_level(call, 1, 2)  # warm: model loads, first-call allocations
            measured = [run_level(call, n, args.rounds) for n in levels]
            rows += report(name, measured, audio=audio)
            by = {level.clients: level for level in measured}
            if 1 in by and 4 in by:
                ratio = median(by[4].firsts()) / median(by[1].firsts())
                gain = by[4].throughput() / by[1].throughput()
                verdicts.append(
                    f"{name}: first byte at 4 = {ratio:.2f}x single (target <= {FIRST_BYTE_RATIO_TARGET:g}x: "
                    f"{'met' if ratio <= FIRST_BYTE_RATIO_TARGET else 'MISSED'}); throughput at 4 = "
                    f"{gain:.2f}x single (target >= 1: {'met' if gain >= 1 else 'MISSED'})"
                )
        stt = stt_call(gateway.url, gateway.key, wav)
        run_level(stt, 1, 2)
        stt_levels = [run_level(stt, n, args.rounds) for n in (1, 4)]
        stt_rows = [
            [
                "stt tiny.en, ~10 s",
                str(level.clients),
                ms(median([r.total for r in level.results])),
                ms(percentile([r.total for r in level.results], 90)),
                ",".join(sorted({str(r.status) for r in level.results})),
            ]
            for level in stt_levels
        ]
    warn_if_busy(load_before, 1.0)
    print()
    print(
        markdown_table(
            [
                "case",
                "clients",
                "first byte p50 ms",
                "p90 ms",
                "vs 1 client",
                "total p50 ms",
                "audio s / s",
                "statuses",
            ],
            rows,
        )
    )
    print()
    print(markdown_table(["case", "clients", "latency p50 ms", "p90 ms", "statuses"], stt_rows))
    print()
    for verdict in verdicts:
        print(verdict)


if __name__ == "__main__":
    main()
