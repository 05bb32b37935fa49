"""Concurrent short transcriptions: decoded together in one batch, against in parallel as the gateway does.

    cd /work/main && .venv/bin/python bench/bench_batching.py [--runs N] [--clients 4] [--model tiny.en]

Issue 14 asks for batching "where the engine gains from it (faster-whisper's batched pipeline for
concurrent transcriptions, on GPU especially): measured, and used only where it wins". This measures
it on this machine with the gateway's own engine (WhisperEngine, the engine spec the registry gives
it: cpu_threads = the cores, num_workers = the inference threads) and N different ~10 s clips:

- parallel: what the gateway does. N requests on the worker pool's threads, each the engine's
  transcribe() on its own clip; CTranslate2's workers run them side by side.
- batched:  the N clips as one call of faster-whisper's BatchedInferencePipeline on the same loaded
  model, each clip its own piece (clip_timestamps, so no VAD merges two requests), batch size N.
  Every request waits for the whole batch: that is what cross-request batching costs.

Rounds alternate the two; each prints the wall time for all N, the median time a request waited for
its text, the process's CPU seconds and the word error rate against each clip's text.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the repo root

import faster_whisper  # noqa: E402

from bench.harness.speech import speech, whisper_model_dir  # noqa: E402
from bench.report import markdown_table, print_machine  # noqa: E402
from registry.speech.engines.base import EngineSpec  # noqa: E402
from registry.speech.engines.whisper import WhisperEngine  # noqa: E402
from tests.wer import wer  # noqa: E402

RATE = 16_000
TEXTS = [
    "Good morning everyone. The planning meeting starts at ten, and the budget report is first on the list.",
    "Please remember to clear your desk before Friday, because the movers arrive early on Saturday morning.",
    "The weather this weekend will be mild, with a light wind from the west and some rain in the evening.",
    "Our new office has a larger kitchen, two quiet rooms for calls, and a view of the river from the hall.",
    "Lunch is served in the main hall after the session, and coffee is available all afternoon upstairs.",
    "The train to the city leaves every twenty minutes, so there is no need to hurry after the meeting.",
    "If the projector does not work, ask the front desk for the spare cable kept in the second drawer.",
    "Thank you all for coming today, and see you again at the same time next week for the review.",
]


def samples_of(text: str) -> np.ndarray:
    with wave.open(io.BytesIO(speech(text))) as reader:
        assert reader.getframerate() == RATE and reader.getnchannels() == 1
        return np.frombuffer(reader.readframes(reader.getnframes()), "<i2").astype(np.float32) / 32768


def parallel(engine: WhisperEngine, clips: list[np.ndarray], threads: int) -> tuple[list[str], list[float]]:
    started = time.perf_counter()

    def one(clip: np.ndarray) -> tuple[str, float]:
        segments, _ = engine.transcribe(clip, language="en")
        text = "".join(s.text for s in segments)
        return text, time.perf_counter() - started

    with ThreadPoolExecutor(threads) as pool:
        done = list(pool.map(one, clips))
    return [text for text, _ in done], [at for _, at in done]


def batched(engine: WhisperEngine, clips: list[np.ndarray]) -> tuple[list[str], list[float]]:
    started = time.perf_counter()
    gap = np.zeros(RATE // 2, np.float32)
    audio, spans, at = [], [], 0
    for clip in clips:
        spans.append({"start": at / RATE, "end": (at + len(clip)) / RATE})
        audio += [clip, gap]
        at += len(clip) + len(gap)
    segments, _ = faster_whisper.BatchedInferencePipeline(engine.model).transcribe(
        np.concatenate(audio), language="en", clip_timestamps=spans, batch_size=len(clips)
    )
    texts = [""] * len(clips)
    for segment in segments:
        middle = (segment.start + segment.end) / 2
        index = min(range(len(spans)), key=lambda i: abs((spans[i]["start"] + spans[i]["end"]) / 2 - middle))
        texts[index] += segment.text
    elapsed = time.perf_counter() - started
    return texts, [elapsed] * len(clips)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="the worker pool's inference threads")
    args = parser.parse_args()
    print_machine()
    cores = os.cpu_count() or 1
    engine = WhisperEngine(
        EngineSpec(
            model_id="tiny.en",
            engine="faster-whisper",
            source=str(whisper_model_dir()),
            device="cpu",
            compute_type="int8",
            cpu_threads=cores,
            shared_threads=max(1, cores // args.threads),
            workers=args.threads,
        )
    )
    pairs = [f"{a} {b}" for a, b in zip(TEXTS, TEXTS[4:] + TEXTS[:4], strict=True)]  # ~10-12 s each
    texts = (pairs * (args.clients // len(pairs) + 1))[: args.clients]
    clips = [samples_of(t) for t in texts]
    shortest, longest = min(map(len, clips)) / RATE, max(map(len, clips)) / RATE
    print(f"{len(clips)} clips of {shortest:.1f}-{longest:.1f} s, tiny.en int8")
    parallel(engine, clips, args.threads)  # warm both paths
    batched(engine, clips)
    rows: dict[str, list[tuple[float, float, float, float]]] = {"parallel": [], "batched": []}
    for round_ in range(args.runs):
        for how in ("parallel", "batched") if round_ % 2 == 0 else ("batched", "parallel"):
            cpu = time.process_time()
            heard, ends = (
                parallel(engine, clips, args.threads) if how == "parallel" else batched(engine, clips)
            )
            score = statistics.mean(wer(t, h) for t, h in zip(texts, heard, strict=True))
            rows[how].append((max(ends), statistics.median(ends), time.process_time() - cpu, score))
    table = []
    for how, runs in rows.items():
        wall, waited, cpu, score = (statistics.median(r[i] for r in runs) for i in range(4))
        table.append(
            [how, f"{wall * 1000:.0f} ms", f"{waited * 1000:.0f} ms", f"{cpu:.2f} s", f"{score:.3f}"]
        )
    base = statistics.median(r[0] for r in rows["parallel"])
    print(
        markdown_table(
            ["mode", f"all {len(clips)} done (median)", "a request's wait (median)", "CPU", "WER"], table
        )
    )
    print(f"batched / parallel, all done: {statistics.median(r[0] for r in rows['batched']) / base:.2f}x")


if __name__ == "__main__":
    main()
