"""Voice chat: POST /v1/chat/completions with audio against the sum of its parts, measured in the same run.

    cd /work/main && .venv/bin/python bench/bench_chat.py [--runs N] [--token-delay S]

The upstream LLM is bench/harness/upstream.py's FakeUpstream, started in this process on 127.0.0.1 and
registered with `manage.py loadregistry` as the default upstream (model "bench-llm"); it streams a
fixed 5-sentence reply, one word or punctuation mark per chunk, `--token-delay` seconds apart. The
gateway is bench.gateway.Gateway (daphne, SQLite, the starter registry: tiny.en, Piper joe as "alloy").
The direct engines are bench.direct's: resolved by the registry as the gateway resolves them, taken
from this process's model cache, and run through the gateway's pipelines without HTTP or the pool.

Streaming (audio.format pcm16, stream=True), per round:
- gateway: the openai SDK's chat.completions.create(stream=True); the time to the first chunk whose
           delta carries audio data;
- (a):     a direct streaming httpx call to the FakeUpstream, its content fed to the gateway's
           SentenceSplitter: the time to the first complete sentence;
- (b):     that sentence through Speaker.stream(fmt "pcm"): tts.speakable, tts.synthesize_on on the
           Piper engine, audio.StreamEncoder("pcm"): the time to its first encoded bytes.
Gateway overhead = first audio delta - ((a) + (b)).

Non-streaming (audio.format wav, an input_audio part of real espeak-ng speech), per round:
- gateway: the SDK's chat.completions.create, a different spoken sentence each round (a resent clip
           would be served from the gateway's transcript cache), then the same clip again (a cache hit);
- direct:  Transcriber.transcribe (audio.decode + stt.transcribe_on, drained), a direct non-streaming
           httpx call to the FakeUpstream with the transcript, Speaker.whole(fmt "wav")
           (tts.synthesize_on over tts.speakable(reply), audio.encode_whole): stt + llm + tts.
The cache-hit request is compared with llm + tts alone.

Everything warm (untimed warm-up rounds first: model loads, connections), interleaved, the order
alternating each round; medians.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the repo root

import httpx  # noqa: E402
import openai  # noqa: E402
from openai.types.chat import ChatCompletion  # noqa: E402

from bench.chat_figures import (  # noqa: E402
    StreamRound,
    WholeRound,
    print_stream,
    print_whole,
    stream_figures,
    summary_rows,
    whole_figures,
)
from bench.gateway import STT_MODEL, Gateway  # noqa: E402
from bench.harness.speech import speech  # noqa: E402
from bench.harness.upstream import FakeUpstream  # noqa: E402
from bench.report import markdown_table, ms, print_machine, signed, timed_median, warn_if_busy  # noqa: E402
from bench.service_costs import VOICE_CHAT_OUTSIDE, payload_costs, service_costs  # noqa: E402
from registry.speech.text import SentenceSplitter  # noqa: E402

if TYPE_CHECKING:
    from bench.direct import Speaker, Transcriber

MODEL = "bench-llm"
VOICE = "alloy"
REPLY = (
    "Sure, I can help with that. The meeting starts at ten in the main room. "
    "Please bring the budget report and your notes. We will review the hiring plan after lunch. "
    "Let me know if anything changes."
)
# Spoken inputs for the non-streaming rounds: one per round (warm-up first), so none is a cache hit.
QUESTIONS = [
    "When does the meeting start tomorrow?",
    "Can you tell me where the meeting is held?",
    "What should I bring to the budget review?",
    "Who is presenting the hiring plan this week?",
    "Is lunch served before or after the session?",
    "How long will the whole meeting take?",
    "Should I book a room for the follow up?",
    "Which report do we discuss first?",
    "Please remind me what the agenda looks like.",
    "Do I need to prepare any slides for it?",
    "What happens if the meeting is moved?",
    "Could you send the notes to the whole team?",
    "Where can I find last week's summary?",
    "Is the office move still planned for June?",
]
WARMUP_ROUNDS = 2
SETTLE_S = 0.15  # between calls: lets the other side's threads go idle
BUSY_LOAD = 1.0


@dataclass
class Parts:
    """The sum-of-parts side: the direct engines (the gateway's voice and STT model), the upstream."""

    upstream_url: str
    http: httpx.Client
    piper: Speaker
    whisper: Transcriber

    def first_sentence(self) -> tuple[float, float, str, float]:
        """(a): a streaming call to the upstream, as the gateway makes it, its content split as the gateway
        splits it. (first token s, first sentence s, the sentence, whole stream s)."""
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        splitter = SentenceSplitter()
        started = time.perf_counter()
        first_token = first_sentence_at = 0.0
        sentence = ""
        with self.http.stream("POST", f"{self.upstream_url}/chat/completions", json=body) as response:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if not content:
                        continue
                    if not first_token:
                        first_token = time.perf_counter() - started
                    if not sentence and (done := splitter.feed(content)):
                        first_sentence_at = time.perf_counter() - started
                        sentence = done[0]
        return first_token, first_sentence_at, sentence, time.perf_counter() - started

    def speak_first(self, sentence: str) -> float:
        """(b): one sentence through Piper and the pcm encoder; seconds to its first encoded bytes."""
        return self.piper.stream(sentence, "pcm").first_s

    def complete(self, text: str) -> str:
        body = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
        response = self.http.post(f"{self.upstream_url}/chat/completions", json=body)
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"]


def gateway_stream(client: openai.OpenAI) -> tuple[float, float, float, str]:
    """(first audio delta s, first transcript delta s, whole stream s, request id)."""
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        modalities=["text", "audio"],
        audio={"voice": VOICE, "format": "pcm16"},
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    first_audio = first_transcript = 0.0
    with raw.parse() as stream:
        for chunk in stream:
            for choice in chunk.choices:
                spoken = getattr(choice.delta, "audio", None)  # ChoiceDeltaAudio in the SDK
                if getattr(spoken, "data", None) and not first_audio:
                    first_audio = time.perf_counter() - started
                if getattr(spoken, "transcript", None) and not first_transcript:
                    first_transcript = time.perf_counter() - started
    if not first_audio:
        raise RuntimeError("the gateway's stream carried no audio")
    return first_audio, first_transcript, time.perf_counter() - started, raw.headers.get("x-request-id", "")


def gateway_whole(client: openai.OpenAI, wav: bytes) -> tuple[float, str, ChatCompletion]:
    """The non-streaming voice chat: (seconds, request id, the parsed completion)."""
    data = base64.b64encode(wav).decode()  # the client's own work, before the clock starts
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        modalities=["text", "audio"],
        audio={"voice": VOICE, "format": "wav"},
        messages=[
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}],
            }
        ],
        extra_body={"transcription_model": STT_MODEL},
    )
    completion = raw.parse()
    return time.perf_counter() - started, raw.headers.get("x-request-id", ""), completion


def stream_rounds(parts: Parts, client: openai.OpenAI, runs: int) -> list[StreamRound]:
    rounds: list[StreamRound] = []
    for i in range(WARMUP_ROUNDS + runs):
        gateway: tuple[float, float, float, str] | None = None
        direct: tuple[float, float, str, float] | None = None
        b = 0.0
        for side in ["direct", "gateway"] if i % 2 == 0 else ["gateway", "direct"]:
            time.sleep(SETTLE_S)
            if side == "gateway":
                gateway = gateway_stream(client)
            else:
                direct = parts.first_sentence()
                time.sleep(SETTLE_S)
                b = parts.speak_first(direct[2])
        if gateway is None or direct is None:
            raise RuntimeError("a round did not run both sides")
        if i >= WARMUP_ROUNDS:
            rounds.append(
                StreamRound(
                    first_audio=gateway[0],
                    first_transcript=gateway[1],
                    total=gateway[2],
                    request_id=gateway[3],
                    a_token=direct[0],
                    a=direct[1],
                    b=b,
                    a_total=direct[3],
                    sentence=direct[2],
                )
            )
    return rounds


@dataclass
class Clips:
    questions: list[str]
    wavs: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for question in self.questions:
            self.wavs[question] = speech(question)


def whole_rounds(parts: Parts, client: openai.OpenAI, clips: Clips, runs: int) -> list[WholeRound]:
    rounds: list[WholeRound] = []
    for i in range(WARMUP_ROUNDS + runs):
        question = clips.questions[i]
        wav = clips.wavs[question]
        timings: dict[str, float] = {}
        ids: dict[str, str] = {}
        transcript = ""
        audio_s = 0.0
        for side in ["direct", "gateway"] if i % 2 == 0 else ["gateway", "direct"]:
            time.sleep(SETTLE_S)
            if side == "direct":
                started = time.perf_counter()
                transcript, decode = parts.whisper.transcribe(wav)
                after_stt = time.perf_counter()
                reply = parts.complete(transcript)
                after_llm = time.perf_counter()
                _, audio_s = parts.piper.whole(reply, "wav")
                done = time.perf_counter()
                timings |= {
                    "stt": after_stt - started,
                    "decode": decode,
                    "llm": after_llm - after_stt,
                    "tts": done - after_llm,
                }
            else:
                timings["miss"], ids["miss"], _ = gateway_whole(client, wav)
                time.sleep(SETTLE_S)
                timings["hit"], ids["hit"], _ = gateway_whole(client, wav)  # resent: the transcript cache
        if i >= WARMUP_ROUNDS:
            rounds.append(
                WholeRound(
                    question=question,
                    stt=timings["stt"],
                    decode=timings["decode"],
                    llm=timings["llm"],
                    tts=timings["tts"],
                    http_miss=timings["miss"],
                    http_hit=timings["hit"],
                    miss_id=ids["miss"],
                    hit_id=ids["hit"],
                    transcript=transcript,
                    audio_s=audio_s,
                )
            )
    return rounds


def text_chat_costs(parts: Parts, client: openai.OpenAI) -> tuple[float, float]:
    """A text-only, non-streaming chat through the gateway vs the same direct upstream call: the chat
    path's fixed cost (auth, prepare, routing, the upstream call through httpx, JSON, the audit row).

    Paused between calls as the rounds are: back to back, FakeUpstream's non-streaming answer (headers
    and body in two writes) meets Nagle + delayed ACK and stalls ~40 ms on both sides."""

    def gateway() -> None:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])

    return (
        timed_median(gateway, pause=SETTLE_S),
        timed_median(lambda: parts.complete("hi"), pause=SETTLE_S),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=11, help="timed rounds per mode (min 5)")
    parser.add_argument("--token-delay", type=float, default=0.02, help="upstream seconds per token")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    if WARMUP_ROUNDS + args.runs > len(QUESTIONS):
        parser.error(
            f"--runs must be at most {len(QUESTIONS) - WARMUP_ROUNDS} (one spoken question per round)"
        )
    bench_started = time.perf_counter()

    facts, load_before = print_machine()
    clips = Clips(QUESTIONS[: WARMUP_ROUNDS + args.runs])

    with (
        FakeUpstream(reply=REPLY, token_delay=args.token_delay) as upstream,
        Gateway() as gateway,
        gateway.engines() as engines,
    ):
        registry = {
            "upstreams": [
                {"name": "bench-upstream", "base_url": upstream.base_url, "models": [MODEL], "default": True}
            ]
        }
        loaded = gateway.load_registry(registry)
        with httpx.Client(timeout=60) as http:
            parts = Parts(
                upstream_url=upstream.base_url,
                http=http,
                piper=engines.tts(None, VOICE),
                whisper=engines.stt(STT_MODEL),
            )
            print(
                f"gateway: {gateway.url}, {loaded}; upstream {upstream.base_url} (FakeUpstream, "
                f"token_delay {args.token_delay:g} s); ready in {time.perf_counter() - bench_started:.1f} s"
            )
            print(
                f"engines: tts {parts.piper.voicing.model.model_id} voice {parts.piper.voicing.voice.name}; "
                f"stt {parts.whisper.model.model_id}"
            )
            print(f"reply:   {REPLY!r}")
            client = openai.OpenAI(
                base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=120
            )
            streamed = stream_rounds(parts, client, args.runs)
            whole = whole_rounds(parts, client, clips, args.runs)
            gateway_text, direct_text = text_chat_costs(parts, client)
            reply_wav, _ = parts.piper.whole(REPLY, "wav")
            payload = payload_costs(
                model=MODEL, voice=VOICE, reply=REPLY, reply_wav=reply_wav, wav=clips.wavs[whole[0].question]
            )
        steps = service_costs(
            api_key_secret=gateway.key,
            tts_model=None,
            voice=VOICE,
            chat_model=MODEL,
            voice_chat_wav=clips.wavs[whole[0].question],
        )
        audit = gateway.audit_rows(
            [r.request_id for r in streamed] + [r.miss_id for r in whole] + [r.hit_id for r in whole],
            [
                "duration_ms",
                "stt_ms",
                "llm_ms",
                "llm_first_token_ms",
                "tts_ms",
                "tts_first_audio_ms",
                "stt_cache_hits",
            ],
        )

    s = stream_figures(streamed, audit)
    print(f"\n== Streaming (pcm16), warm medians of {args.runs} interleaved rounds ==")
    print_stream(s, streamed)
    w = whole_figures(whole, audit)
    print(
        f"\n== Non-streaming (input_audio wav in, audio wav out), warm medians of {args.runs} "
        "interleaved rounds =="
    )
    print_whole(w, whole, audit)
    print("\n== Per-request costs around the engines (medians of 20) ==")
    print(
        f"  text-only chat, no audio: gateway {ms(gateway_text)} vs direct upstream call {ms(direct_text)}: "
        f"{signed(gateway_text - direct_text)}"
    )
    for name, value in payload:
        print(f"  {name:<62} {ms(value):>8}")
    print("  the gateway's own steps, run in this process on its database:")
    for name, value in steps:
        print(f"    {name:<70} {ms(value):>8}")
        if name == VOICE_CHAT_OUTSIDE:
            print(f"    {'... the same over HTTP (above), for comparison':<70} {ms(w.hit_outside):>8}")

    print("\n== Summary (Markdown) ==\n")
    print(
        f"{facts['cores']} cores, {facts['cpu']}; Python {facts['python']}, Django {facts['django']}, daphne "
        f"{facts['daphne']}; FakeUpstream on loopback ({args.token_delay:g} s per token, 5-sentence reply), "
        f"Piper en_US-joe-medium (alloy), tiny.en int8; VOICEPROXY_INFERENCE_THREADS=2, SQLite. Warm medians "
        f"of {args.runs} interleaved rounds; `bench/bench_chat.py`.\n"
    )
    print(markdown_table(["measure", "value", "target", "met"], summary_rows(s, w)))
    warn_if_busy(load_before, BUSY_LOAD)
    print(f"\n(bench wall time {time.perf_counter() - bench_started:.0f} s)")


if __name__ == "__main__":
    main()
