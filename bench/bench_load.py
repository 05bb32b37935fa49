"""Mixed load: many clients against one gateway; what they get, what the log records, what /health does.

    cd /work/main && .venv/bin/python -m bench.bench_load [--clients 50] [--seconds 60 | --requests N]
        [--database sqlite|postgres] [--py-spy PATH] [--keep] [--application MODULE:APP]

(`python bench/bench_load.py ...` works too.) About 2 minutes with the defaults on 2 cores.

One gateway (bench.gateway.Gateway: daphne, the starter registry, VOICEPROXY_INFERENCE_THREADS=2 and
the default queue limit of 32) with a FakeUpstream registered as its default upstream ("bench-llm",
a 2-sentence reply, 20 ms per token). `--clients` asyncio clients (httpx, one connection each) each
loop over MIX, starting at a different place in it, each request with its own client x-request-id:

- transcription: POST /v1/audio/transcriptions, a ~3 s espeak-ng clip, whisper-tiny.en, json
- speech:        POST /v1/audio/speech, one short sentence, Piper (tts-1, alloy), pcm and mp3 in
                 turn, the body streamed (first byte and whole body timed)
- chat-stream:   POST /v1/chat/completions, an input_audio part (a clip made unique by a few silent
                 samples, so each one is transcribed: no transcript-cache hits), modalities text +
                 audio (pcm16), stream=True: first byte, first audio delta, whole stream
- chat:          the same, stream=False, audio wav in message.audio
- models:        GET /v1/models

A 503 (admission control: the pool and its queue are full) is recorded, and that client waits its
Retry-After (at most 2 s) before its next request, as the openai SDK would before a retry. New
requests stop at `--seconds` (or after `--requests` in all); those in flight finish.

/health is polled every 100 ms by a separate process (this one's event loop, busy with the clients,
would otherwise be in the figures) through four phases: idle; two processes spinning on the CPUs
(nothing for the server to do: the cost of 2 cores being busy alone); `--clients` clients sending only
GET /v1/models (the loop's own per-request work: no inference); and the mixed load. During the mixed
load py-spy, when installed (`pip install py-spy`; or --py-spy PATH), samples daphne without pausing
it: first which of its threads holds the GIL, then what its event-loop thread is doing, and how much
of that on a CPU (bench/harness/loop_profile.py). `--application` serves another ASGI app (a wrapper
module on PYTHONPATH around voiceproxy.asgi:application), to measure a change against the same load;
`--keep` keeps the gateway's data dir (daphne.log, the py-spy stacks).

Afterwards it waits for the audit writer and counts RequestLog rows by client_request_id: every
request sent must have exactly one, answered or not. It also reports daphne's RSS (VmRSS, VmHWM
from /proc) before and after, and its CPU use per phase.

`--database postgres` creates a throwaway database on the PostgreSQL server of $DATABASE_URL
(default postgres://postgres@127.0.0.1:5432/test, the test suite's) and uses $REDIS_URL (default
redis://127.0.0.1:6379/14) for the cache; the database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import json
import multiprocessing
import os
import sys
import threading
import time
import wave
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the repo root

import httpx  # noqa: E402

from bench.gateway import STT_MODEL, Gateway  # noqa: E402
from bench.harness import loop_profile  # noqa: E402
from bench.harness.speech import speech  # noqa: E402
from bench.harness.upstream import FakeUpstream  # noqa: E402
from bench.report import markdown_table, ms, percentile, print_machine, warn_if_busy  # noqa: E402

MODEL = "bench-llm"
VOICE = "alloy"
TTS_MODEL = "tts-1"
REPLY = "Sure, the meeting starts at ten in the main room. Please bring the budget report."
SPEECH_TEXT = "Your order has shipped and will arrive on Tuesday."
CLIPS = [
    "Please bring the budget report to the meeting.",
    "Open the settings page and turn on dark mode.",
    "When does the next train to the airport leave?",
    "Remind me to call the dentist tomorrow morning.",
    "What is the weather going to be like this weekend?",
    "Turn off the lights in the living room please.",
]
MIX = ("transcription", "speech", "chat-stream", "models", "transcription", "speech", "chat", "models")
KINDS = ("transcription", "speech", "chat-stream", "chat", "models")
TOKEN_DELAY_S = 0.02
HEALTH_INTERVAL_S = 0.1
IDLE_S = 5.0
BURN_S = 8.0
MODELS_ONLY_S = 8.0
RETRY_AFTER_CAP_S = 2.0
TIMEOUT_S = 120.0
AUDIT_WAIT_S = 60.0
BUSY_LOAD = 1.0


# --- what the clients send --------------------------------------------------------------------------------


def padded_wav(wav: bytes, extra_samples: int) -> bytes:
    """The clip with `extra_samples` of silence appended: the same speech, a different content hash."""
    with wave.open(io.BytesIO(wav)) as reader:
        params, frames = reader.getparams(), reader.readframes(reader.getnframes())
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setparams(params)
        writer.writeframes(frames + b"\x00" * params.sampwidth * params.nchannels * extra_samples)
    return out.getvalue()


@dataclass
class Sent:
    """One request and what came back; `status` None when no response came (`error` says why)."""

    kind: str
    request_id: str  # the client's x-request-id, kept in the log as client_request_id
    status: int | None = None
    error: str = ""
    stream_error: str = ""  # a 200 stream that ended in an error event: its code
    total: float = 0.0
    first_byte: float | None = None
    first_audio: float | None = None
    server_id: str = ""
    retry_after: float = 0.0


def request_args(kind: str, n: int, clips: list[bytes]) -> tuple[str, str, dict[str, Any]]:
    """(method, path, httpx keyword arguments) of the `n`th request of `kind`."""
    clip = clips[n % len(clips)]
    if kind == "transcription":
        upload = {"files": {"file": ("clip.wav", clip, "audio/wav")}, "data": {"model": STT_MODEL}}
        return "POST", "/v1/audio/transcriptions", upload
    if kind == "speech":
        speech_body = {"model": TTS_MODEL, "input": SPEECH_TEXT, "voice": VOICE}
        return "POST", "/v1/audio/speech", {"json": {**speech_body, "response_format": ("pcm", "mp3")[n % 2]}}
    if kind in ("chat", "chat-stream"):
        audio = base64.b64encode(padded_wav(clip, n + 1)).decode()
        stream = kind == "chat-stream"
        body: dict[str, Any] = {
            "model": MODEL,
            "modalities": ["text", "audio"],
            "audio": {"voice": VOICE, "format": "pcm16" if stream else "wav"},
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}],
                }
            ],
            "transcription_model": STT_MODEL,
            "stream": stream,
        }
        return "POST", "/v1/chat/completions", {"json": body}
    return "GET", "/v1/models", {}


def _scan_events(buffer: bytes, sent: Sent, started: float) -> bytes:
    """Read the complete SSE events in `buffer` for the first audio delta and an error event; the rest."""
    *events, rest = buffer.split(b"\n\n")
    for event in events:
        if not event.startswith(b"data: {"):
            continue
        payload = json.loads(event[6:])
        if "error" in payload:
            sent.stream_error = str(payload["error"].get("code") or payload["error"].get("type"))
        elif sent.first_audio is None and any(
            ((choice.get("delta") or {}).get("audio") or {}).get("data")
            for choice in payload.get("choices", [])
        ):
            sent.first_audio = time.perf_counter() - started
    return rest


async def send(http: httpx.AsyncClient, kind: str, n: int, request_id: str, clips: list[bytes]) -> Sent:
    method, path, kwargs = request_args(kind, n, clips)
    sent = Sent(kind, request_id)
    started = time.perf_counter()
    try:
        async with http.stream(method, path, headers={"x-request-id": request_id}, **kwargs) as response:
            sent.status = response.status_code
            sent.server_id = response.headers.get("x-request-id", "")
            sent.retry_after = float(response.headers.get("retry-after") or 0)
            buffer = b""
            async for chunk in response.aiter_bytes():
                if sent.first_byte is None and chunk:
                    sent.first_byte = time.perf_counter() - started
                if kind == "chat-stream" and response.status_code == 200:
                    buffer = _scan_events(buffer + chunk, sent, started)
    except httpx.HTTPError as exc:
        sent.error = type(exc).__name__
    sent.total = time.perf_counter() - started
    return sent


@dataclass
class Budget:
    """The bound on the load: new requests stop at `deadline` or after `requests` in all."""

    deadline: float
    requests: int | None
    started: int = 0

    def take(self) -> bool:
        if time.monotonic() >= self.deadline or (self.requests is not None and self.started >= self.requests):
            return False
        self.started += 1
        return True


async def client(
    http: httpx.AsyncClient, number: int, kinds: tuple[str, ...], budget: Budget, clips: list[bytes], tag: str
) -> list[Sent]:
    done: list[Sent] = []
    for n in itertools.count():
        if not budget.take():
            return done
        kind = kinds[(number + n) % len(kinds)]
        sent = await send(http, kind, number * 10_000 + n, f"{tag}-{number}-{n}", clips)
        done.append(sent)
        if sent.status == 503:
            await asyncio.sleep(min(sent.retry_after or 1.0, RETRY_AFTER_CAP_S))
    return done


async def run_clients(
    url: str, key: str, clients: int, kinds: tuple[str, ...], budget: Budget, clips: list[bytes], tag: str
) -> list[Sent]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=TIMEOUT_S) as http:
        results = await asyncio.gather(*(client(http, i, kinds, budget, clips, tag) for i in range(clients)))
    return [sent for done in results for sent in done]


# --- /health, CPU spinners, the server process ------------------------------------------------------------


def probe_health(url: str, stop: EventType, out: Any) -> None:
    """In its own process: GET /health every HEALTH_INTERVAL_S until `stop`; puts its
    (monotonic start, seconds, status) samples on `out`."""
    samples: list[tuple[float, float, int]] = []
    with httpx.Client(timeout=30) as http:
        http.get(url)  # the connection is opened outside the figures
        next_at = time.monotonic()
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = http.get(url).status_code
            except httpx.HTTPError:
                status = 0
            samples.append((started, time.monotonic() - started, status))
            next_at += HEALTH_INTERVAL_S
            time.sleep(max(0.0, next_at - time.monotonic()))
    out.put(samples)


def spin(stop: EventType) -> None:
    """In its own process: keep one CPU busy until `stop`."""
    while not stop.is_set():
        sum(range(10_000))


@contextmanager
def spinning(count: int) -> Iterator[None]:
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    spinners = [context.Process(target=spin, args=(stop,), daemon=True) for _ in range(count)]
    for process in spinners:
        process.start()
    try:
        yield
    finally:
        stop.set()
        for process in spinners:
            process.join(timeout=10)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of `pid`, in kB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    name: str
    start: float = 0.0
    end: float = 0.0
    cpu: float = 0.0  # the server's CPU seconds in the phase
    sent: list[Sent] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.end - self.start


@contextmanager
def phase(phases: list[Phase], name: str, pid: int) -> Iterator[Phase]:
    current = Phase(name, start=time.monotonic())
    cpu = cpu_seconds(pid)
    phases.append(current)
    try:
        yield current
    finally:
        current.end, current.cpu = time.monotonic(), cpu_seconds(pid) - cpu


# --- the database, the audit rows -------------------------------------------------------------------------

POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/14"


@contextmanager
def database(kind: str) -> Iterator[dict[str, str]]:
    """The gateway's database settings: {} for its own SQLite file; for "postgres", a throwaway
    database on $DATABASE_URL's server (dropped afterwards) and $REDIS_URL's Redis."""
    if kind == "sqlite":
        yield {}
        return
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    base = os.environ.get("DATABASE_URL", "")
    parts = urlsplit(base if base.startswith("postgres") else POSTGRES_URL)
    name = f"voiceproxy_bench_load_{os.getpid()}"
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {
            "DATABASE_URL": urlunsplit(parts._replace(path=f"/{name}")),
            "REDIS_URL": os.environ.get("REDIS_URL") or REDIS_URL,
        }
    finally:
        with psycopg.connect(maintenance, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Rows:
    """A run's RequestLog rows by client_request_id: (status_code, request_id, client_disconnected)."""

    by_id: dict[str, list[tuple[int, str, bool]]]
    waited: float


def audit_rows(gateway: Gateway, tag: str, expected: int) -> Rows:
    """Wait (up to AUDIT_WAIT_S) until the gateway's background writer has written `expected` rows
    whose client_request_id starts with `tag`; then those rows. Read by `manage.py shell` on the
    gateway's database, as tests/audit_log.py waits for rows."""
    found = gateway.django(
        "import json, time\n"
        "from registry.models import RequestLog\n"
        "started = time.monotonic()\n"
        "while True:\n"
        f"    rows = list(RequestLog.objects.filter(client_request_id__startswith={tag + '-'!r})"
        ".values_list('client_request_id', 'status_code', 'request_id', 'client_disconnected'))\n"
        f"    if len(rows) >= {expected} or time.monotonic() - started > {AUDIT_WAIT_S}:\n"
        "        break\n"
        "    time.sleep(0.5)\n"
        "print(json.dumps({'rows': rows, 'waited': time.monotonic() - started}))\n"
    )
    by_id: dict[str, list[tuple[int, str, bool]]] = defaultdict(list)
    for client_id, status, server_id, disconnected in found["rows"]:
        by_id[client_id].append((status, server_id, disconnected))
    return Rows(dict(by_id), found["waited"])


# --- the report -------------------------------------------------------------------------------------------


def status_counts(sent: list[Sent]) -> str:
    counts = Counter(
        str(s.status) + (f" + error event ({s.stream_error})" if s.stream_error else "")
        if s.status is not None
        else f"no response ({s.error})"
        for s in sent
    )
    return ", ".join(f"{name}: {count}" for name, count in sorted(counts.items()))


def p50_p99(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{ms(percentile(values, 50))} / {ms(percentile(values, 99))}"


def kind_rows(sent: list[Sent], seconds: float) -> list[list[str]]:
    rows = []
    for kind in KINDS:
        mine = [s for s in sent if s.kind == kind]
        if not mine:
            continue
        ok = [s for s in mine if s.status == 200 and not s.stream_error]
        busy = [s.total for s in mine if s.status == 503]
        rows.append(
            [
                kind,
                str(len(mine)),
                status_counts(mine),
                f"{len(ok) / seconds:.2f}",
                p50_p99([s.total for s in ok]),
                p50_p99([s.first_byte for s in ok if s.first_byte is not None])
                if kind in ("speech", "chat-stream")
                else "",
                p50_p99([s.first_audio for s in ok if s.first_audio is not None])
                if kind == "chat-stream"
                else "",
                p50_p99(busy),
            ]
        )
    return rows


def health_rows(phases: list[Phase], samples: list[tuple[float, float, int]]) -> list[list[str]]:
    rows = []
    for p in phases:
        mine = [(latency, status) for started, latency, status in samples if p.start <= started < p.end]
        latencies = [latency for latency, _ in mine]
        failed = sum(status != 200 for _, status in mine)
        if not latencies:
            continue
        rows.append(
            [
                p.name,
                str(len(latencies)) + (f" ({failed} failed)" if failed else ""),
                ms(percentile(latencies, 50)),
                ms(percentile(latencies, 99)),
                ms(max(latencies)),
                f"{p.cpu / p.seconds:.2f}",
            ]
        )
    return rows


def audit_summary(sent: list[Sent], rows: Rows) -> list[tuple[str, str]]:
    answered = [s for s in sent if s.status is not None]
    missing = [s for s in sent if s.request_id not in rows.by_id]
    duplicated = [i for i, found in rows.by_id.items() if len(found) > 1]
    sent_ids = {s.request_id for s in sent}
    strays = [i for i in rows.by_id if i not in sent_ids]
    mismatched = [
        s
        for s in answered
        if s.request_id in rows.by_id
        and (
            rows.by_id[s.request_id][0][1] != s.server_id
            or (rows.by_id[s.request_id][0][0] != s.status and not s.stream_error)
        )
    ]
    return [
        ("requests sent", str(len(sent))),
        ("... answered / no response", f"{len(answered)} / {len(sent) - len(answered)}"),
        (
            "audit rows found (by client_request_id)",
            f"{sum(len(v) for v in rows.by_id.values())}, after waiting {rows.waited:.1f} s",
        ),
        (
            "requests without a row (must be 0)",
            str(len(missing)) + (f": {', '.join(s.request_id for s in missing[:5])}" if missing else ""),
        ),
        ("requests with more than one row", str(len(duplicated))),
        ("rows for no request sent", str(len(strays))),
        ("rows whose status or request id differ from the response", str(len(mismatched))),
        (
            "rows marked client_disconnected",
            str(sum(row[2] for found in rows.by_id.values() for row in found)),
        ),
    ]


def print_profiles(profiles: dict[str, loop_profile.Profile], window: int, rate: int) -> None:
    """py-spy's windows (see profile_in_background); shares of wall time."""
    if not profiles:
        print("  (no py-spy: `pip install py-spy`, or --py-spy PATH, to see where the loop's time goes)")
        return
    gil, idle, active = (profiles[mode] for mode in loop_profile.MODES)
    print(f"  {window} s of GIL samples, then {window} s of all threads, at {rate} Hz; shares of wall time.")
    print("  Who holds the GIL (the rest of the time nobody does: native code or waiting):")
    for name, count in gil.threads.most_common(6):
        print(f"    {name:<40} {100 * count / (window * rate):5.1f} %")
    # "idle" and "active" sampled the same seconds: the loop's samples in "idle" are its wall time.
    whole = max(1, idle.loop_samples)
    print(f"  The event-loop thread (daphne's MainThread), {idle.loop_samples} samples:")
    print(f"    free, waiting for sockets in the poll     {100 * idle.loop_polling / whole:5.1f} %")
    print(f"    inside a callback                         {100 * idle.loop_occupied / whole:5.1f} %")
    print(f"    ... of which on a CPU (or runnable)       {100 * active.loop_occupied / whole:5.1f} %")
    print("    ... the rest stopped in the callback: waiting for the GIL, a lock, a thread it started")
    for title, counts, active_counts in (
        ("innermost package", idle.buckets, active.buckets),
        ("innermost frame", idle.leaves, active.leaves),
    ):
        names = [name for name, _ in (counts + active_counts).most_common(10)]
        rows = [
            [name, f"{100 * counts[name] / whole:.1f} %", f"{100 * active_counts[name] / whole:.1f} %"]
            for name in names
        ]
        print(markdown_table([f"inside a callback: {title}", "in it", "on a CPU"], rows))


def kib(kb: int) -> str:
    return f"{kb / 1024:.0f} MiB"


# --- the run ----------------------------------------------------------------------------------------------

PY_SPY_RATE = 100  # samples per second


def profile_in_background(
    py_spy: str | None, pid: int, window: int, outdir: Path
) -> Callable[[], dict[str, loop_profile.Profile]]:
    """Start sampling `pid` with py-spy in a thread: `window` s of "gil", then `window` s of "idle" and
    "active" at once (the same seconds, so one can be taken from the other); returns a function that
    waits for them and reads them back ({} without py-spy)."""
    if py_spy is None:
        return dict
    outputs = {mode: outdir / f"py-spy-{mode}.txt" for mode in loop_profile.MODES}

    def record_all() -> None:
        loop_profile.record(py_spy, pid, window, outputs["gil"], mode="gil", rate=PY_SPY_RATE).wait()
        both = [
            loop_profile.record(py_spy, pid, window, outputs[mode], mode=mode, rate=PY_SPY_RATE)
            for mode in ("idle", "active")
        ]
        for process in both:
            process.wait()

    thread = threading.Thread(target=record_all, name="py-spy", daemon=True)
    thread.start()

    def result() -> dict[str, loop_profile.Profile]:
        thread.join()
        if not all(path.is_file() for path in outputs.values()):
            return {}
        return {mode: loop_profile.summarise(path) for mode, path in outputs.items()}

    return result


def profile_window(seconds: float) -> int:
    """Seconds per py-spy window: both fit in the mixed load's first minute."""
    return max(2, int((min(seconds, 60) - 3) / 2))


@dataclass
class Run:
    phases: list[Phase] = field(default_factory=list)
    health: list[tuple[float, float, int]] = field(default_factory=list)
    rss: dict[str, dict[str, int]] = field(default_factory=dict)
    rows: Rows | None = None
    profiles: dict[str, loop_profile.Profile] = field(default_factory=dict)


def load_phases(gateway: Gateway, args: argparse.Namespace, clips: list[bytes], tag: str, run: Run) -> None:
    """Warm up, then the four phases with /health polled throughout; fills `run`."""
    if gateway.process is None:
        raise RuntimeError("the gateway did not start")
    pid = gateway.process.pid
    run.rss["started"] = proc_status(pid)
    warm_budget = Budget(time.monotonic() + 300, len(KINDS))
    warm = asyncio.run(
        run_clients(gateway.url, gateway.key, 1, KINDS, warm_budget, clips, f"warm{os.getpid()}")
    )
    if any(s.status != 200 or s.stream_error for s in warm):
        raise RuntimeError(f"warm-up failed: {status_counts(warm)}\n{gateway.log()[-3000:]}")
    run.rss["warm (models loaded)"] = proc_status(pid)

    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    prober = context.Process(target=probe_health, args=(f"{gateway.url}/health", stop, out), daemon=True)
    prober.start()
    time.sleep(1.5)  # the prober's interpreter starts and connects
    with phase(run.phases, "idle", pid):
        time.sleep(IDLE_S)
    with phase(run.phases, "2 processes spinning on the CPUs, no requests", pid), spinning(2):
        time.sleep(BURN_S)
    with phase(run.phases, f"{args.clients} clients, GET /v1/models only", pid) as only_models:
        budget = Budget(time.monotonic() + MODELS_ONLY_S, None)
        only_models.sent = asyncio.run(
            run_clients(gateway.url, gateway.key, args.clients, ("models",), budget, clips, f"{tag}-models")
        )
    window = profile_window(args.seconds)
    profiles = profile_in_background(loop_profile.find(args.py_spy), pid, window, gateway.data_dir)
    with phase(run.phases, f"{args.clients} clients, mixed load", pid) as mixed:
        budget = Budget(time.monotonic() + args.seconds, args.requests)
        mixed.sent = asyncio.run(
            run_clients(gateway.url, gateway.key, args.clients, MIX, budget, clips, f"{tag}-mixed")
        )
    run.rss["after the load"] = proc_status(pid)
    stop.set()
    run.health = out.get(timeout=60)
    prober.join(timeout=10)
    run.profiles = profiles()
    run.rows = audit_rows(gateway, tag, len(only_models.sent) + len(mixed.sent))
    run.rss["after the audit wait"] = proc_status(pid)


def print_report(args: argparse.Namespace, run: Run) -> None:
    _idle, _spin, only_models, mixed = run.phases
    headers = ["kind", "sent", "statuses", "200/s", "p50 / p99 (200s)", "first byte p50 / p99",
               "first audio p50 / p99", "503 answered in p50 / p99"]  # fmt: skip
    print(
        f"\n== {mixed.name}: {len(mixed.sent)} requests; the last answered {mixed.seconds:.1f} s after the "
        "first was sent =="
    )
    print(markdown_table(headers, kind_rows(mixed.sent, mixed.seconds)))
    print(f"\n   all kinds: {status_counts(mixed.sent)}")
    print(f"\n== {only_models.name}: {len(only_models.sent)} requests in {only_models.seconds:.1f} s ==")
    print(markdown_table(headers[:5], [row[:5] for row in kind_rows(only_models.sent, only_models.seconds)]))
    print(f"\n== GET /health every {HEALTH_INTERVAL_S * 1000:.0f} ms, from another process ==")
    print(
        markdown_table(
            ["phase", "polls", "p50", "p99", "max", "server CPU (cores)"], health_rows(run.phases, run.health)
        )
    )
    if run.rows is not None:
        print("\n== Audit rows (RequestLog) vs requests sent, both phases with clients ==")
        for name, value in audit_summary(only_models.sent + mixed.sent, run.rows):
            print(f"  {name:<58} {value}")
    print("\n== daphne's memory (/proc/PID/status) ==")
    print("  VmRSS: " + ", ".join(f"{when} {kib(status['VmRSS'])}" for when, status in run.rss.items()))
    print(f"  peak (VmHWM): {kib(run.rss['after the audit wait']['VmHWM'])}")
    print("\n== Where daphne's time goes during the mixed load (py-spy, nonblocking) ==")
    print_profiles(run.profiles, profile_window(args.seconds), PY_SPY_RATE)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument(
        "--seconds", type=float, default=60, help="how long new requests are sent (default 60)"
    )
    parser.add_argument("--requests", type=int, default=None, help="stop after this many requests in all")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--py-spy", default=None, help="py-spy executable (default: py-spy on PATH, if any)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the gateway's data dir (log, py-spy output)"
    )
    parser.add_argument(
        "--application",
        default="voiceproxy.asgi:application",
        help="the ASGI app daphne serves (a wrapper module on PYTHONPATH, to compare a change)",
    )
    args = parser.parse_args()
    if args.clients < 1 or args.seconds <= 0 or (args.requests is not None and args.requests < 1):
        parser.error("--clients, --seconds and --requests must be positive")
    bench_started = time.perf_counter()
    facts, load_before = print_machine()
    clips = [speech(text) for text in CLIPS]
    run = Run()
    with (
        FakeUpstream(reply=REPLY, token_delay=TOKEN_DELAY_S) as upstream,
        database(args.database) as db_env,
        Gateway(env=db_env, keep=args.keep, application=args.application) as gateway,
    ):
        route = {"name": "bench-upstream", "base_url": upstream.base_url, "models": [MODEL], "default": True}
        loaded = gateway.load_registry({"upstreams": [route]})
        print(f"gateway: {gateway.url}, {args.application}, {args.database}; {loaded.splitlines()[0]}")
        load_phases(gateway, args, clips, f"load{os.getpid()}", run)
        if args.keep:
            print(f"kept:    {gateway.data_dir} (daphne.log, py-spy-*.txt)")
    print_report(args, run)
    warn_if_busy(load_before, BUSY_LOAD)
    wall = time.perf_counter() - bench_started
    print(f"\n({facts['cores']} cores, {facts['cpu']}; bench wall time {wall:.0f} s)")


if __name__ == "__main__":
    main()
