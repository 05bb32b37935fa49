"""Voice-chat benchmark figures: the rounds bench_chat.py measures, their medians, and how they print.

Everything here is arithmetic and printing over measured seconds and the gateway's RequestLog rows
(`audit`: request id -> fields, durations in seconds: Gateway.audit_rows); no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.report import median, ms, runs_ms, signed, yes

STREAM_OVERHEAD_TARGET_S = 0.050
WHOLE_OVERHEAD_TARGET_PCT = 5.0


@dataclass
class StreamRound:
    first_audio: float  # gateway: request -> first audio delta (client side)
    first_transcript: float  # gateway: request -> first transcript delta
    total: float  # gateway: request -> end of stream
    request_id: str
    a_token: float
    a: float
    b: float
    a_total: float
    sentence: str

    @property
    def overhead(self) -> float:
        return self.first_audio - (self.a + self.b)


@dataclass
class WholeRound:
    question: str
    stt: float  # decode included
    decode: float
    llm: float
    tts: float
    http_miss: float
    http_hit: float
    miss_id: str
    hit_id: str
    transcript: str
    audio_s: float

    @property
    def direct(self) -> float:
        return self.stt + self.llm + self.tts


def audit_median(audit: dict[str, dict[str, Any]], ids: list[str], name: str) -> float:
    values = [float(audit[i][name]) for i in ids if audit.get(i, {}).get(name) is not None]
    return median(values) if values else float("nan")


@dataclass
class StreamFigures:
    first_audio: float
    first_transcript: float
    total: float
    a_token: float
    a: float
    b: float
    a_total: float
    paired: float
    gw_llm_first: float
    gw_tts_first: float
    gw_server: float

    @property
    def by_medians(self) -> float:
        return self.first_audio - (self.a + self.b)


def stream_figures(rounds: list[StreamRound], audit: dict[str, dict[str, Any]]) -> StreamFigures:
    ids = [r.request_id for r in rounds]
    return StreamFigures(
        first_audio=median([r.first_audio for r in rounds]),
        first_transcript=median([r.first_transcript for r in rounds]),
        total=median([r.total for r in rounds]),
        a_token=median([r.a_token for r in rounds]),
        a=median([r.a for r in rounds]),
        b=median([r.b for r in rounds]),
        a_total=median([r.a_total for r in rounds]),
        paired=median([r.overhead for r in rounds]),
        gw_llm_first=audit_median(audit, ids, "llm_first_token"),
        gw_tts_first=audit_median(audit, ids, "tts_first_audio"),
        gw_server=audit_median(audit, ids, "duration"),
    )


def print_stream(f: StreamFigures, rounds: list[StreamRound]) -> None:
    print(f"  first sentence: {rounds[0].sentence!r}")
    print(
        f"  (a) upstream direct: first content token {ms(f.a_token)}, first complete sentence {ms(f.a)}, "
        f"whole stream {ms(f.a_total)}"
    )
    print(f"  (b) Piper + pcm encoder, that sentence, to its first bytes: {ms(f.b)}")
    print(f"  (a) + (b) = {ms(f.a + f.b)}")
    print(
        f"  gateway: first transcript delta {ms(f.first_transcript)}, first audio delta {ms(f.first_audio)}, "
        f"whole stream {ms(f.total)}"
    )
    print(f"  overhead: first audio delta - ((a) + (b)), medians   {signed(f.by_medians)}")
    print(f"  overhead: median of same-round differences            {signed(f.paired)}")
    print(
        f"  gateway's own clock (RequestLog, from voice_chat_stream()'s start): upstream first chunk "
        f"{ms(f.gw_llm_first)}, first audio delta queued {ms(f.gw_tts_first)} (vs (a) + (b) "
        f"{ms(f.a + f.b)}); in the audit middleware {ms(f.gw_server)}"
    )
    print(
        f"  client first audio - the gateway's first-audio clock: {ms(f.first_audio - f.gw_tts_first)} "
        "(HTTP, auth, prepare() before the clock starts; SSE delivery after it)"
    )
    print(
        "  rounds (ms), first audio / a / b / overhead: "
        + "; ".join(f"{runs_ms((r.first_audio, r.a, r.b), sep='/')}/{r.overhead * 1000:+.0f}" for r in rounds)
    )


@dataclass
class WholeFigures:
    stt: float
    llm: float
    tts: float
    direct: float
    miss: float
    hit: float
    miss_paired: float
    hit_direct: float
    hit_paired: float
    miss_outside: float  # per request: client total - the gateway's own stt + llm + tts clocks - decode
    hit_outside: float  # per request: client total - the gateway's own llm + tts clocks

    @property
    def miss_outside_pct(self) -> float:
        return 100 * self.miss_outside / self.direct

    @property
    def hit_outside_pct(self) -> float:
        return 100 * self.hit_outside / self.hit_direct

    @property
    def miss_pct(self) -> float:
        return 100 * self.miss_paired / self.direct

    @property
    def hit_pct(self) -> float:
        return 100 * self.hit_paired / self.hit_direct


def whole_figures(rounds: list[WholeRound], audit: dict[str, dict[str, Any]]) -> WholeFigures:
    def engines(request_id: str, names: tuple[str, ...]) -> float:
        return sum(float(audit[request_id].get(name) or 0.0) for name in names)

    return WholeFigures(
        stt=median([r.stt for r in rounds]),
        llm=median([r.llm for r in rounds]),
        tts=median([r.tts for r in rounds]),
        direct=median([r.direct for r in rounds]),
        miss=median([r.http_miss for r in rounds]),
        hit=median([r.http_hit for r in rounds]),
        miss_paired=median([r.http_miss - r.direct for r in rounds]),
        hit_direct=median([r.llm + r.tts for r in rounds]),
        hit_paired=median([r.http_hit - (r.llm + r.tts) for r in rounds]),
        miss_outside=median(
            [r.http_miss - engines(r.miss_id, ("stt", "llm", "tts")) - r.decode for r in rounds]
        ),
        hit_outside=median([r.http_hit - engines(r.hit_id, ("llm", "tts")) for r in rounds]),
    )


def print_whole(f: WholeFigures, rounds: list[WholeRound], audit: dict[str, dict[str, Any]]) -> None:
    miss_ids = [r.miss_id for r in rounds]
    hit_ids = [r.hit_id for r in rounds]

    def clock(ids: list[str]) -> str:
        names = [("stt", "stt"), ("llm", "llm"), ("tts", "tts"), ("in the audit middleware", "duration")]
        return ", ".join(f"{label} {ms(audit_median(audit, ids, field))}" for label, field in names)

    def cache_hits(ids: list[str]) -> int:
        return sum(int(audit.get(i, {}).get("stt_cache_hits") or 0) for i in ids)

    print(
        f"  direct: stt {ms(f.stt)} (decode included) + llm {ms(f.llm)} + tts {ms(f.tts)}; sum {ms(f.direct)}"
    )
    print(f"  gateway, a new clip each round (transcript cache miss): {ms(f.miss)}")
    print(
        f"    overhead: medians {signed(f.miss - f.direct, f.direct)}, "
        f"same-round {signed(f.miss_paired, f.direct)}"
    )
    print(f"    gateway's own clock: {clock(miss_ids)} (stt_ms excludes the decode)")
    print(
        f"    per request, client total - the gateway's own stt + llm + tts - decode (direct, "
        f"{ms(median([r.decode for r in rounds]))}): {signed(f.miss_outside, f.direct)}"
    )
    print(
        f"  gateway, the same clip resent (transcript cache hit): {ms(f.hit)} "
        f"vs direct llm + tts {ms(f.hit_direct)}"
    )
    print(
        f"    overhead: medians {signed(f.hit - f.hit_direct, f.hit_direct)}, "
        f"same-round {signed(f.hit_paired, f.hit_direct)}"
    )
    print(f"    gateway's own clock: {clock(hit_ids)}")
    print(
        f"    per request, client total - the gateway's own llm + tts: {signed(f.hit_outside, f.hit_direct)}"
    )
    print(
        f"  transcript cache hits (RequestLog.stt_cache_hits): {cache_hits(miss_ids)} of {len(miss_ids)} "
        f"first sends, {cache_hits(hit_ids)} of {len(hit_ids)} resends"
    )
    print(
        f"  reply audio {median([r.audio_s for r in rounds]):.2f} s; direct transcripts: "
        + "; ".join(repr(r.transcript) for r in rounds[:3])
        + " ..."
    )
    gateway_stt = {i: audit.get(i, {}).get("stt") for i in miss_ids}
    print(
        "  rounds (ms), direct / miss / hit; stt direct / gateway: "
        + "; ".join(
            f"{runs_ms((r.direct, r.http_miss, r.http_hit), sep='/')}; "
            f"{runs_ms((r.stt, float(gateway_stt[r.miss_id] or 'nan')), sep='/')}"
            for r in rounds
        )
    )


def summary_rows(s: StreamFigures, w: WholeFigures) -> list[list[str]]:
    stream_aim = f"< {STREAM_OVERHEAD_TARGET_S * 1000:g} ms"
    whole_aim = f"< {WHOLE_OVERHEAD_TARGET_PCT:g} %"
    return [
        ["streaming: first audio delta through the gateway", ms(s.first_audio), "", ""],
        [
            "streaming: (a) upstream first sentence + (b) Piper first bytes, direct",
            f"{ms(s.a)} + {ms(s.b)} = {ms(s.a + s.b)}",
            "",
            "",
        ],
        [
            "streaming: gateway overhead, median of same-round first audio - (a + b)",
            signed(s.paired),
            stream_aim,
            yes(s.paired < STREAM_OVERHEAD_TARGET_S),
        ],
        [
            "streaming: gateway overhead, from the medians",
            signed(s.by_medians),
            stream_aim,
            yes(s.by_medians < STREAM_OVERHEAD_TARGET_S),
        ],
        [
            "non-streaming, new clip: gateway / direct stt + llm + tts",
            f"{ms(w.miss)} / {ms(w.direct)}",
            "",
            "",
        ],
        [
            "non-streaming, new clip: gateway overhead, same-round",
            signed(w.miss_paired, w.direct),
            whole_aim,
            yes(w.miss_pct < WHOLE_OVERHEAD_TARGET_PCT),
        ],
        [
            "non-streaming, new clip: per request, outside the gateway's own stt/llm/tts clocks and decode",
            signed(w.miss_outside, w.direct),
            whole_aim,
            yes(w.miss_outside_pct < WHOLE_OVERHEAD_TARGET_PCT),
        ],
        [
            "non-streaming, resent clip (transcript cache hit): gateway / direct llm + tts",
            f"{ms(w.hit)} / {ms(w.hit_direct)}",
            "",
            "",
        ],
        [
            "non-streaming, resent clip: gateway overhead, same-round",
            signed(w.hit_paired, w.hit_direct),
            whole_aim,
            yes(w.hit_pct < WHOLE_OVERHEAD_TARGET_PCT),
        ],
        [
            "non-streaming, resent clip: per request, outside the gateway's own llm/tts clocks",
            signed(w.hit_outside, w.hit_direct),
            whole_aim,
            yes(w.hit_outside_pct < WHOLE_OVERHEAD_TARGET_PCT),
        ],
    ]
