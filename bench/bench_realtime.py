"""Realtime (/v1/realtime): voice-to-voice latency against the sum of its parts, the same turn as a
streamed /v1/chat/completions call, cancel -> silence, and concurrent sessions.

    cd /work/main && .venv/bin/python bench/bench_realtime.py [--runs N] [--token-delay S] [--sessions 1,2,4]

The gateway is bench.gateway.Gateway (daphne, SQLite, the starter registry; tiny.en transcribes, Piper
joe speaks as "alloy"); the upstream is FakeUpstream streaming a fixed reply `--token-delay` s per
token. Each round speaks a different question (espeak-ng) into a session in 20 ms frames, in real
time, with server VAD (silence_duration_ms 500):

- voice-to-voice: `input_audio_buffer.speech_stopped` -> the first `response.output_audio.delta`,
  both as the client receives them;
- the sum of its parts, measured in the same run: the question transcribed whole by the same engine
  directly (a gateway that transcribed only after the turn ended would wait this long), the
  upstream's time to its first sentence, and Piper's time to that sentence's first audio;
- the same question as a streamed voice chat (input_audio wav, pcm16 out): request -> first audio
  delta;
- cancel: on a long reply's first audio delta the client sends response.cancel; the time until the
  last audio delta and until response.done;
- N sessions at once, each speaking one question: median voice-to-voice.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the repo root

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import openai  # noqa: E402

from bench.bench_chat import MODEL, QUESTIONS, REPLY, VOICE, Parts  # noqa: E402
from bench.gateway import STT_MODEL, Gateway  # noqa: E402
from bench.harness.speech import speech  # noqa: E402
from bench.harness.upstream import FakeUpstream  # noqa: E402
from bench.report import markdown_table, ms, print_machine  # noqa: E402
from registry.speech import audio  # noqa: E402

FRAME_MS = 20


def pcm24(text: str) -> tuple[bytes, bytes]:
    """(`text` as 24 kHz s16le with 1.2 s of silence after it, the same speech as a wav file)."""
    wav = speech(text)
    samples, _ = audio.decode(wav, sample_rate=24_000)
    padded = np.concatenate([np.zeros(7200, np.float32), samples, np.zeros(28_800, np.float32)])
    return audio.s16le(padded), wav


def frames(data: bytes) -> list[str]:
    size = 24_000 * FRAME_MS // 1000 * 2
    return [base64.b64encode(data[i : i + size]).decode() for i in range(0, len(data), size)]


class Session:
    def __init__(self, client: openai.OpenAI) -> None:
        self.manager = client.realtime.connect(model=MODEL)
        self.connection = self.manager.__enter__()
        self.connection.session.update(
            session={
                "type": "realtime",
                "audio": {"input": {"transcription": {"model": STT_MODEL}}, "output": {"voice": VOICE}},
            }
        )
        self.until("session.updated")

    def event(self) -> tuple[float, dict[str, Any]]:
        raw = self.connection.recv_bytes()
        return time.perf_counter(), json.loads(raw)

    def until(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        got = []
        while True:
            at, event = self.event()
            got.append((at, event))
            if event["type"] == "error":
                raise RuntimeError(event["error"])
            if event["type"] == kind:
                return got

    def turn(self, pcm: bytes) -> float:
        """Speak in real time while another thread reads (and timestamps) the events; voice-to-voice s."""
        got: list[tuple[float, dict[str, Any]]] = []
        reader = threading.Thread(target=lambda: got.extend(self.until("response.done")))
        reader.start()
        for frame in frames(pcm):
            self.connection.input_audio_buffer.append(audio=frame)
            time.sleep(FRAME_MS / 1000)
        reader.join()
        stopped = next(at for at, e in got if e["type"] == "input_audio_buffer.speech_stopped")
        first = next(at for at, e in got if e["type"] == "response.output_audio.delta")
        return first - stopped

    def cancel(self) -> tuple[float, float]:
        """A long reply cancelled at its first audio: (to the last audio delta, to response.done) seconds."""
        self.connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Go on."}]}
        )
        self.connection.response.create()
        self.until("response.output_audio.delta")
        sent = time.perf_counter()
        self.connection.response.cancel()
        got = self.until("response.done")
        deltas = [at for at, e in got if e["type"] == "response.output_audio.delta"]
        return (max(deltas) - sent if deltas else 0.0), got[-1][0] - sent

    def close(self) -> None:
        self.manager.__exit__(None, None, None)


def chat_first_audio(client: openai.OpenAI, wav: bytes) -> float:
    data = base64.b64encode(wav).decode()
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=MODEL,
        modalities=["text", "audio"],
        audio={"voice": VOICE, "format": "pcm16"},
        messages=[
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}],
            }
        ],
        extra_body={"transcription_model": STT_MODEL},
        stream=True,
    )
    first = 0.0
    for chunk in stream:
        for choice in chunk.choices:
            if getattr(getattr(choice.delta, "audio", None), "data", None) and not first:
                first = time.perf_counter() - started
    return first


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--sessions", default="1,2,4")
    args = parser.parse_args()
    print_machine()
    clips = [pcm24(q) for q in QUESTIONS[: args.runs + 1]]
    with (
        FakeUpstream(reply=REPLY, token_delay=args.token_delay) as upstream,
        Gateway() as gateway,
        gateway.engines() as engines,
    ):
        gateway.load_registry(
            {
                "upstreams": [
                    {
                        "name": "bench-upstream",
                        "base_url": upstream.base_url,
                        "models": [MODEL],
                        "default": True,
                    }
                ]
            }
        )
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0)
        with httpx.Client(timeout=60) as http:
            parts = Parts(
                upstream_url=upstream.base_url,
                http=http,
                piper=engines.tts(None, VOICE),
                whisper=engines.stt(STT_MODEL),
            )
            session = Session(client)
            session.turn(clips[0][0])  # warm-up: model loads, connections
            chat_first_audio(client, clips[0][1])
            v2v, chat, summed = [], [], []
            for pcm, wav in clips[1:]:
                v2v.append(session.turn(pcm))
                started = time.perf_counter()
                parts.whisper.transcribe(wav)  # decoding included, as an upload would be
                stt_s = time.perf_counter() - started
                _, first_sentence, sentence, _ = parts.first_sentence()
                summed.append(stt_s + first_sentence + parts.speak_first(sentence))
                chat.append(chat_first_audio(client, wav))
            cancels = [session.cancel() for _ in range(args.runs)]
            session.close()
            stages = gateway.django(
                "import json\n"
                "from registry.models import RequestLog\n"
                "rows = RequestLog.objects.filter(endpoint='/v1/realtime/response', stt_ms__isnull=False)"
                ".order_by('created').values('stt_ms', 'llm_first_token_ms', 'tts_first_audio_ms')\n"
                "print(json.dumps(list(rows)[1:]))\n"
            )

            upstream.token_delay = args.token_delay
            concurrent = []
            for n in (int(x) for x in args.sessions.split(",")):
                sessions = [Session(client) for _ in range(n)]
                results: list[float] = []

                def run(s: Session, pcm: bytes, into: list[float] = results) -> None:
                    into.append(s.turn(pcm))

                threads = [
                    threading.Thread(target=run, args=(s, clips[1 + i % args.runs][0]))
                    for i, s in enumerate(sessions)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                for s in sessions:
                    s.close()
                concurrent.append((n, statistics.median(results), max(results)))

    med = statistics.median
    print()
    print(f"voice-to-voice over {args.runs} spoken turns (token delay {args.token_delay:g} s), medians:")
    print(
        markdown_table(
            ["measure", "seconds"],
            [
                ["Realtime: speech_stopped -> first audio delta", ms(med(v2v))],
                ["sum of parts: whole-clip STT + upstream first sentence + TTS first audio", ms(med(summed))],
                ["overhead (voice-to-voice - sum of parts)", ms(med(v2v) - med(summed))],
                ["same turn as streamed /v1/chat/completions: request -> first audio", ms(med(chat))],
                ["cancel -> last audio delta", ms(med(c[0] for c in cancels))],
                ["cancel -> response.done", ms(med(c[1] for c in cancels))],
            ],
        )
    )
    print()
    print("the gateway's own stage times for those turns (response rows of the audit log), medians:")
    print(
        markdown_table(
            ["stage", "seconds"],
            [
                [name, ms(med(row[column] / 1000 for row in stages))]
                for name, column in (
                    ("speech_stopped -> final transcript (stt_ms)", "stt_ms"),
                    ("response start -> upstream first token", "llm_first_token_ms"),
                    ("response start -> first audio", "tts_first_audio_ms"),
                )
            ],
        )
    )
    print()
    print("concurrent sessions, one spoken turn each:")
    print(
        markdown_table(
            ["sessions", "median voice-to-voice", "worst"], [[n, ms(m), ms(w)] for n, m, w in concurrent]
        )
    )


if __name__ == "__main__":
    main()
