"""Long audio and silence: sequential vs batched decoding, and what silence transcribes as.

    cd /work/main && .venv/bin/python bench/bench_long_audio.py [--runs N] [--models tiny.en,base]
        [--clips 60s,5min] [--batch-sizes 4,8,16] [--no-silence] [--before ../before]

Per model and clip (espeak-ng speech of a known text: a 60 s meeting notice; "5 min" is six such
paragraphs 1.5 s apart; 35s is the notice's first half), warm, interleaved, the order rotating each round:

- sequential: the gateway's engine, WhisperEngine.transcribe(): one 30 s window after another, as
  the gateway decoded every clip before issue 14
- batched N:  faster-whisper's BatchedInferencePipeline on the same loaded model, over the pieces
  Silero VAD finds, N at a time in one batch (what the gateway did before decoding pieces side by side)
- gateway:    the openai SDK against a fresh gateway (daphne, SQLite, the starter registry), whose
  stt picks the path by duration (stt.LONG_FROM_S): pieces, stt.pieces_at_once() at a time
- gateway before (with --before PATH): the same request to a gateway started from another checkout
  of this repository, e.g. the commit before issue 14 (`git worktree add ../before e3cc86e`), run
  with this virtual environment, interleaved with the others: "today" measured on this machine

Each prints wall time, this process's CPU seconds (all its threads; steadier than wall time when
other processes share the CPUs), the time to the first segment (a stream's first delta), the word
error rate against the text, the segment count and the last segment's end. Then silence and noise,
before (faster-whisper's own transcribe, as the engine called it before issue 14) and now (the
gateway's pipeline and the gateway itself), and what the VAD check costs on speech.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import faster_whisper
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the repo root

import openai  # noqa: E402
from faster_whisper.vad import VadOptions  # noqa: E402

from bench.gateway import Gateway  # noqa: E402
from bench.harness.speech import speech  # noqa: E402
from bench.report import Neighbours, markdown_table, median, print_machine, timed_median  # noqa: E402
from registry.speech.engines.base import Samples, Segment  # noqa: E402
from registry.speech.engines.whisper import WhisperEngine, has_speech  # noqa: E402
from tests.wer import wer  # noqa: E402

MODELS = {"tiny.en": "whisper-tiny.en", "base": "whisper-1"}  # the starter registry's names
RATE = 16_000
PARAGRAPH_GAP_S = 1.5

NOTICE = (
    "Good morning everyone, and thank you for joining the quarterly planning meeting. "
    "First, we will review the budget report that finance sent on Monday. "
    "The numbers show that travel costs went down, while the cloud bill went up by almost a third. "
    "Second, the hiring plan: we have two open roles for engineers and one for a designer. "
    "Please send your referrals to the recruiting team before the end of the month. "
    "Third, the office move is scheduled for the second week of March. "
    "Every desk must be cleared by Friday afternoon, and the movers arrive early on Saturday. "
    "The new building has a larger kitchen, more meeting rooms, and a quiet floor for focused work. "
    "Finally, a reminder about security training, which is mandatory for every employee. "
    "If you have questions about any of these topics, write to the operations channel. "
    "Lunch is served in the main hall after the session, and there are vegetarian options. "
    "Thank you all for listening, and have a productive week."
)
PARAGRAPHS = (
    NOTICE,
    "Welcome to the museum audio guide. The first room shows paintings from the early nineteenth century. "
    "On your left is a large landscape of a river valley at sunset, painted by a local artist who never "
    "left the region. Notice how the light falls on the water and the small boats near the shore. "
    "The next painting is a portrait of a merchant and his family, seated around a wooden table. "
    "Their clothes tell us about the trade routes of the time, with silk from the east and wool from the "
    "north. In the glass case you will find letters, coins and a compass that belonged to the same family. "
    "Please do not touch the objects, and keep your voice low in the galleries. "
    "When you are ready, walk through the arch to the second room, where the sculptures are displayed. "
    "There is a bench in the middle of the room if you would like to rest.",
    "Here is the weather forecast for the coming week. "
    "Monday starts cloudy with light rain in the morning, clearing by the afternoon. "
    "Temperatures will stay around twelve degrees, with a gentle wind from the south west. "
    "On Tuesday and Wednesday a high pressure system brings sunshine across most of the country. "
    "Expect cold nights, with frost in the valleys and on the higher roads. "
    "Thursday will be windy along the coast, and ferries may be delayed in the evening. "
    "A band of heavy rain arrives on Friday, so plan outdoor activities for earlier in the week. "
    "The weekend looks mixed, with sunny spells and scattered showers. "
    "Farmers should note that the soil will be wet until at least the middle of next week. "
    "We will update this forecast tomorrow morning at seven.",
    "To bake a simple loaf of bread, you need flour, water, salt and a little yeast. "
    "Mix the yeast with warm water and let it rest for ten minutes until it starts to foam. "
    "Add the flour and the salt, and stir until a rough dough forms. "
    "Knead the dough on a floured table for about ten minutes, until it feels smooth and elastic. "
    "Place it in a bowl, cover it with a clean towel, and let it rise for one hour in a warm place. "
    "When the dough has doubled in size, press it down gently and shape it into a round loaf. "
    "Let it rise again for half an hour while the oven heats up. "
    "Bake the bread for forty minutes, until the crust is golden and the bottom sounds hollow when tapped. "
    "Let it cool on a rack before you slice it.",
    "The library will change its opening hours from the first of next month. "
    "On weekdays we will open at nine in the morning and close at eight in the evening. "
    "On Saturdays the doors open at ten and close at four, and on Sundays the library stays closed. "
    "Members can still return books at any time through the slot next to the main entrance. "
    "The reading room on the second floor will be renovated during the summer, "
    "so study spaces will move temporarily to the ground floor. "
    "New members can register online or at the front desk with a proof of address. "
    "Children under twelve need a parent or guardian to sign the form. "
    "We thank you for your patience, and we look forward to seeing you soon.",
    "Thank you for calling the customer service line of the city water company. "
    "If you want to report a leak in the street, please stay on the line and describe the exact location. "
    "For questions about your bill, have your customer number ready; you will find it at the top of every "
    "invoice. Payments can be made by bank transfer, by card on our website, or in cash at any post office. "
    "If your water looks brown or smells unusual, let the tap run for two minutes before you call us. "
    "Planned works are listed on our website one week in advance, together with the streets affected. "
    "During an outage, drinking water is available from the tanks at the town hall and at the central "
    "station. Our team is available every day from seven in the morning until ten at night. "
    "For emergencies outside these hours, the night line forwards your call to the engineer on duty.",
)
SHORT_SENTENCE = "Please open the settings page and turn on the dark mode."


def pcm(wav: bytes) -> Samples:
    with wave.open(io.BytesIO(wav)) as src:
        if src.getframerate() != RATE or src.getnchannels() != 1:
            raise RuntimeError("speak.sh writes 16 kHz mono")
        frames = np.frombuffer(src.readframes(src.getnframes()), dtype=np.int16)
    return (frames / 32768).astype(np.float32)


def to_wav(samples: Samples) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setnchannels(1)
        dst.setsampwidth(2)
        dst.setframerate(RATE)
        dst.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return out.getvalue()


def silence(seconds: float) -> Samples:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def noise(seconds: float, dbfs: float) -> Samples:
    rng = np.random.default_rng(14)
    return (rng.standard_normal(int(seconds * RATE)) * 10 ** (dbfs / 20)).astype(np.float32)


@dataclass
class Clip:
    name: str
    text: str
    samples: Samples
    speech_end: float  # seconds: where the last paragraph's speech ends
    wav: bytes = b""

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE


def make_clip(name: str) -> Clip:
    if name == "35s":
        text = NOTICE[: NOTICE.index("Third,")].strip() + " " + NOTICE[NOTICE.index("Lunch") :]
        paragraphs: tuple[str, ...] = (text,)
    elif name == "60s":
        paragraphs = (NOTICE,)
    elif name == "5min":
        paragraphs = PARAGRAPHS
    else:
        raise SystemExit(f"unknown clip {name!r}: 35s, 60s or 5min")
    parts: list[Samples] = []
    for i, paragraph in enumerate(paragraphs):
        parts += [silence(PARAGRAPH_GAP_S)] if i else []
        parts.append(pcm(speech(paragraph)))
    samples = np.concatenate(parts)
    clip = Clip(name=name, text=" ".join(paragraphs), samples=samples, speech_end=len(samples) / RATE)
    clip.wav = to_wav(samples)
    return clip


@dataclass
class Run:
    wall: float
    cpu: float
    first: float  # seconds to the first segment
    text: str
    segments: list[Segment]


@dataclass
class Results:
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def add(self, how: str, run: Run) -> None:
        self.runs.setdefault(how, []).append(run)


def timed(segments_of: Callable[[], Iterable[Segment]]) -> Run:
    """Drain the segments `segments_of()` starts; wall, CPU, first-segment seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    first = 0.0
    segments: list[Segment] = []
    for segment in segments_of():
        if not segments:
            first = time.perf_counter() - wall
        segments.append(segment)
    elapsed = time.perf_counter() - wall
    return Run(
        elapsed, time.process_time() - cpu, first or elapsed, "".join(s.text for s in segments), segments
    )


def engine_run(engine: WhisperEngine, samples: Samples, batch_size: int) -> Run:
    """The engine sequential (0), or the pieces VAD finds decoded N at a time in one batch: what the
    gateway did for long audio before it decoded pieces side by side (faster-whisper's
    BatchedInferencePipeline, one segment per piece, temperature 0)."""
    if batch_size == 0:
        return timed(lambda: engine.transcribe(samples)[0])

    def batched() -> Iterable[Segment]:
        decoded, _ = faster_whisper.BatchedInferencePipeline(engine.model).transcribe(
            samples, temperature=0.0, vad_filter=True, batch_size=batch_size, without_timestamps=True
        )
        for s in decoded:
            yield Segment(id=s.id, seek=s.seek, start=s.start, end=s.end, text=s.text)

    return timed(batched)


def pipeline_run(engine: WhisperEngine, model: str, samples: Samples) -> Run:
    """The gateway's pipeline on the engine (stt.transcribe_on, default options), in this process."""
    from registry.speech import stt  # after Django is set up: the services read settings

    return timed(
        lambda: stt.transcribe_on(
            engine, samples, model_id=model, task="transcribe", options=stt.SttOptions()
        )[0]
    )


def before(engine: WhisperEngine, samples: Samples) -> Run:
    """What the engine did before issue 14: faster-whisper's transcribe, its default temperatures."""

    def segments() -> Iterable[Segment]:
        decoded, _ = engine.model.transcribe(samples, temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0))
        for s in decoded:
            yield Segment(id=s.id, seek=s.seek, start=s.start, end=s.end, text=s.text)

    return timed(segments)


def gateway_run(client: openai.OpenAI, model: str, clip: Clip) -> Run:
    """verbose_json through the SDK; the first-segment time is the whole request (not streamed)."""
    started = time.perf_counter()
    result = client.audio.transcriptions.create(
        model=model, file=("clip.wav", clip.wav, "audio/wav"), response_format="verbose_json"
    )
    elapsed = time.perf_counter() - started
    segments = [
        Segment(id=s.id, seek=s.seek, start=s.start, end=s.end, text=s.text) for s in result.segments or []
    ]
    return Run(elapsed, 0.0, elapsed, result.text, segments)


_BEFORE = """
import json, os, sys
root = sys.argv[1]
sys.path.insert(0, root)
os.chdir(root)
from bench.gateway import Gateway
with Gateway() as gateway:
    print(json.dumps({"url": gateway.url, "key": gateway.key}), flush=True)
    sys.stdin.read()  # until the bench closes our stdin
"""


class Before:
    """A gateway from another checkout (its own bench/gateway.py), for as long as the `with` lasts."""

    def __init__(self, root: Path) -> None:
        if not (root / "bench" / "gateway.py").is_file():
            raise SystemExit(f"--before {root}: not a checkout of this repository with bench/gateway.py")
        self.root = root
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> openai.OpenAI:
        self.process = subprocess.Popen(  # noqa: S603 - this interpreter, our own script
            [sys.executable, "-c", _BEFORE, str(self.root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None  # noqa: S101 - asked for above
        line = "-"
        while line and not line.startswith("{"):  # anything its setup printed first
            line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the gateway from {self.root} did not start (its output is above)")
        where = json.loads(line)
        return openai.OpenAI(base_url=f"{where['url']}/v1", api_key=where["key"], max_retries=0, timeout=600)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            assert self.process.stdin is not None  # noqa: S101 - asked for above
            self.process.stdin.close()
            self.process.wait(timeout=60)


def commit_of(root: Path) -> str:
    found = subprocess.run(  # noqa: S603 - git, a fixed command
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or "?"


def ordered(segments: list[Segment]) -> bool:
    return all(a.start <= a.end <= b.start + 1e-3 for a, b in zip(segments, segments[1:], strict=False))


def compare(
    engine: WhisperEngine,
    client: openai.OpenAI,
    model: str,
    clip: Clip,
    batch_sizes: list[int],
    runs: int,
    before: openai.OpenAI | None = None,
) -> Results:
    results = Results()
    methods: dict[str, Callable[[], Run]] = {
        "sequential": functools.partial(engine_run, engine, clip.samples, 0)
    }
    for size in batch_sizes:
        methods[f"batched {size}"] = functools.partial(engine_run, engine, clip.samples, size)
    methods["gateway"] = functools.partial(gateway_run, client, model, clip)
    if before is not None:
        methods["gateway before"] = functools.partial(gateway_run, before, model, clip)
    names = list(methods)
    for name in names:  # warm-up: first-call allocations, the gateway's model load
        methods[name]()
    for i in range(runs):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            results.add(name, methods[name]())
    return results


def print_results(model: str, clip: Clip, results: Results) -> list[list[str]]:
    print(
        f"\n{model}, {clip.name} clip ({clip.seconds:.1f} s audio, speech ends at {clip.speech_end:.1f} s):"
    )
    rows = []
    sequential = median([r.wall for r in results.runs["sequential"]])
    for how, runs in results.runs.items():
        last = runs[-1]
        wall = median([r.wall for r in runs])
        cpu = median([r.cpu for r in runs])
        first = median([r.first for r in runs])
        error = wer(clip.text, last.text)
        end = last.segments[-1].end if last.segments else 0.0
        print(
            f"  {how:<12} wall {wall:6.2f} s (RTF {wall / clip.seconds:.3f}, x{sequential / wall:.2f})  "
            f"cpu {cpu:6.2f} s  first segment {first:6.2f} s  WER {error:.3f}  "
            f"segments {len(last.segments):3d} (ordered: {ordered(last.segments)}), last ends {end:6.2f} s  "
            f"runs {' '.join(f'{r.wall:.2f}' for r in runs)}"
        )
        rows.append(
            [
                f"{model}, {clip.name} ({clip.seconds:.0f} s): {how}",
                f"{wall:.2f} s (x{sequential / wall:.2f})",
                f"{cpu:.2f} s" if cpu else "",
                f"{first:.2f} s",
                f"{error:.3f}",
                str(len(last.segments)),
            ]
        )
    if "gateway before" in results.runs:
        then = median([r.wall for r in results.runs["gateway before"]])
        now = median([r.wall for r in results.runs["gateway"]])
        print(f"  the gateway now against before: {then:.2f} -> {now:.2f} s, x{then / now:.2f}")
    return rows


def silence_cases() -> dict[str, tuple[Samples, str]]:
    sentence = pcm(speech(SHORT_SENTENCE))
    return {
        "silence 1 s": (silence(1), ""),
        "silence 5 s": (silence(5), ""),
        "silence 35 s": (silence(35), ""),
        "noise -60 dBFS, 5 s": (noise(5, -60), ""),
        "noise -35 dBFS, 35 s": (noise(35, -35), ""),
        "3 s silence + speech + 3 s": (np.concatenate([silence(3), sentence, silence(3)]), SHORT_SENTENCE),
        "10 s silence + speech + 25 s": (
            np.concatenate([silence(10), sentence, silence(25)]),
            SHORT_SENTENCE,
        ),
        "speech at -30 dB": (sentence * 10 ** (-30 / 20), SHORT_SENTENCE),
        "speech at -40 dB": (sentence * 10 ** (-40 / 20), SHORT_SENTENCE),
    }


def print_silence(engine: WhisperEngine, client: openai.OpenAI, model: str, label: str) -> list[list[str]]:
    print(f"\n{label}: silence, noise and quiet speech, before / now (one run each; text and wall time)")
    rows = []
    for name, (samples, text) in silence_cases().items():
        old = before(engine, samples)
        now = pipeline_run(engine, model, samples)
        http = client.audio.transcriptions.create(model=model, file=("s.wav", to_wav(samples), "audio/wav"))

        def shown(value: str, text: str = text) -> str:
            value = value.strip()
            return f"WER {wer(text, value):.2f}" if text else repr(value)

        print(
            f"  {name:<30} before {old.wall:6.2f} s {shown(old.text):<14} now {now.wall:6.2f} s "
            f"{shown(now.text):<14} gateway {shown(http.text)}"
        )
        rows.append(
            [
                f"{label}: {name}",
                f"{shown(old.text)}, {old.wall:.2f} s",
                f"{shown(now.text)}, {now.wall:.2f} s",
            ]
        )
    return rows


def print_vad_cost(clips: dict[str, Samples]) -> None:
    print("\nThe no-speech check (Silero VAD, stops at the first speech), median of 5:")
    for name, samples in clips.items():
        seconds = timed_median(functools.partial(has_speech, samples, VadOptions()), runs=5)
        print(f"  {name:<34} {seconds * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs per clip and method (default 3)")
    parser.add_argument("--models", default="tiny.en,base", help="tiny.en, base or both (default)")
    parser.add_argument("--clips", default="60s,5min", help="35s, 60s, 5min (default 60s,5min)")
    parser.add_argument(
        "--batch-sizes",
        default="",
        help="batch sizes to time directly (default: 4)",
    )
    parser.add_argument("--no-silence", action="store_true", help="skip the silence cases")
    parser.add_argument(
        "--before",
        type=Path,
        help="another checkout of this repository (e.g. a worktree of the commit before issue 14): "
        "its gateway is timed on the same clips, interleaved",
    )
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    if unknown := set(models) - set(MODELS):
        parser.error(f"unknown models {sorted(unknown)}: tiny.en, base")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    started = time.perf_counter()
    neighbours = Neighbours()
    neighbours.start()
    facts, _ = print_machine()
    clips = [make_clip(name) for name in args.clips.split(",") if name]
    print("clips:   " + ", ".join(f"{c.name}: {c.seconds:.1f} s, {len(c.text.split())} words" for c in clips))

    timing_rows: list[list[str]] = []
    silence_rows: list[list[str]] = []
    with contextlib.ExitStack() as stack:
        gateway = stack.enter_context(Gateway())
        engines = stack.enter_context(gateway.engines())
        before = stack.enter_context(Before(args.before.resolve())) if args.before else None
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=600)
        if args.before:
            print(f"before:  the gateway of {args.before} at {commit_of(args.before)}")
        from registry.speech import stt

        print(f"gateway: {gateway.url}; pieces from {stt.LONG_FROM_S:g} s, {stt.pieces_at_once()} at a time")
        batch_sizes = batch_sizes or [4]
        for label in models:
            model = MODELS[label]
            engine = engines.stt(model).engine
            if not isinstance(engine, WhisperEngine):
                raise RuntimeError(f"{model} is not a faster-whisper model")
            for clip in clips:
                timing_rows += print_results(
                    label, clip, compare(engine, client, model, clip, batch_sizes, args.runs, before)
                )
            if not args.no_silence:
                silence_rows += print_silence(engine, client, model, label)
        print_vad_cost(
            {
                "3 s sentence": pcm(speech(SHORT_SENTENCE)),
                **{f"{c.name} clip": c.samples for c in clips},
                "60 s of silence": silence(60),
            }
        )

    print("\n== Summary (Markdown) ==\n")
    print(
        f"{facts['cores']} cores, {facts['cpu']}; faster-whisper {facts['faster-whisper']}, CTranslate2 "
        f"{facts['ctranslate2']}; int8 on CPU; medians of {args.runs} interleaved warm runs; "
        "`bench/bench_long_audio.py`.\n"
    )
    print(
        markdown_table(["model, clip: path", "wall", "CPU", "first segment", "WER", "segments"], timing_rows)
    )
    if silence_rows:
        print()
        print(markdown_table(["model: input", "before (text, time)", "now"], silence_rows))
    others = neighbours.cores()
    print(f"\nOther processes used {others:.2f} cores on average during the run (of {os.cpu_count()}).")
    if others > 0.2:
        print(
            "WARNING: other work shared the CPUs: wall times are noisier than a quiet machine's, CPU less so."
        )
    print(f"(bench wall time {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
