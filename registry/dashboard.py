"""The dashboard's figures: what the gateway served in a window of time, computed by the database.

`build(window)` returns a `Dashboard` of plain dataclasses (the admin page renders it; tests check it
without HTTP). Every figure is an aggregate over the RequestLog rows created in [since, until), each
query bounded by the `created` index; no row is loaded into Python.

Percentiles and time buckets come from registry/aggregates.py: on PostgreSQL each panel is one
query (one scan of the window's rows), seven in all; SQLite adds one per percentile column.

"Per model" is per `model_names` value: a transcription or a speech request names its one model, so
its line is that model's; a voice chat names its chat, speech-to-text and text-to-speech models
together and gets its own line, whose stage columns then say which of the three was slow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db.models import Case, Count, FloatField, Max, Q, QuerySet, Sum, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from registry import audit_query
from registry.aggregates import EpochBucket, Percentiles, summarise
from registry.models import ApiKey, RequestLog

WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}
DEFAULT_WINDOW = "day"
# Chart buckets in seconds: 12 per hour, 24 per day, 28 per week.
BUCKET_SECONDS = {"hour": 300, "day": 3600, "week": 6 * 3600}
# A custom window gets the smallest of these that keeps its chart under MAX_BUCKETS bars.
NICE_BUCKETS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400, 30 * 86400)
MAX_BUCKETS = 72
# The longest custom window: a longer one reads too much of a large log for one page view.
MAX_SPAN = timedelta(days=400)

# The latency columns, by the stage's name on the page.
STAGES = {
    "total": "duration_ms",
    "stt": "stt_ms",
    "llm_first_token": "llm_first_token_ms",
    "llm": "llm_ms",
    "tts_first_audio": "tts_first_audio_ms",
    "tts": "tts_ms",
}
TOP_MODELS = 15
TOP_KEYS = 10
TOP_ERRORS = 10

ERRORS = audit_query.status_q("errors")  # 4xx and 5xx, as the request log's status=errors


class BadWindow(ValueError):
    """The window asked for cannot be read (the message says why, for the page)."""


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime  # exclusive
    name: str  # "hour", "day", "week" or "custom"
    bucket_seconds: int


@dataclass(frozen=True)
class Headline:
    requests: int
    errors: int
    p95_ms: float | None
    audio_seconds_in: float
    audio_seconds_out: float
    stt_lookups: int  # rows with speech-to-text work: transcribed, or answered from the cache
    stt_cache_hits: int  # of those, rows with at least one transcript from the cache

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def audio_hours(self) -> float:
        return (self.audio_seconds_in + self.audio_seconds_out) / 3600

    @property
    def cache_hit_rate(self) -> float | None:
        return self.stt_cache_hits / self.stt_lookups if self.stt_lookups else None


@dataclass(frozen=True)
class Bucket:
    start: datetime
    requests: int
    errors: int


@dataclass(frozen=True)
class ModelLatency:
    model: str  # a model_names value: one model, or a voice chat's models comma-joined
    requests: int
    errors: int
    stages: dict[str, Percentiles]  # by STAGES' names


@dataclass(frozen=True)
class KeyUsage:
    key_id: int | None  # None: no key (unauthenticated) or a deleted one
    name: str
    prefix: str
    requests: int
    errors: int
    audio_seconds_in: float
    audio_seconds_out: float
    characters_in: int
    tokens: int


@dataclass(frozen=True)
class ErrorCode:
    code: str
    type: str
    status: int  # the highest status answered with it
    count: int
    last_seen: datetime
    sample: str  # one of its messages


@dataclass(frozen=True)
class UpstreamHealth:
    name: str
    requests: int
    ok: int  # the upstream answered 2xx
    client_errors: int  # 4xx
    server_errors: int  # 5xx
    no_answer: int  # no status from it and the request failed: a timeout or a connection failure
    timeouts: int
    llm: Percentiles

    @property
    def timeout_share(self) -> float | None:
        return self.timeouts / self.requests if self.requests else None


@dataclass(frozen=True)
class Dashboard:
    window: Window
    headline: Headline
    series: list[Bucket]
    models: list[ModelLatency]
    keys: list[KeyUsage]
    errors: list[ErrorCode]
    upstreams: list[UpstreamHealth] = field(default_factory=list)


# --- the window ---------------------------------------------------------------------------------------


def parse_window(
    *,
    window: str | None = None,
    since: str | None = None,
    until: str | None = None,
    now: datetime | None = None,
) -> Window:
    """The window a page asks for: `window` (hour, day, week; default day) up to now, or `since` and
    `until` read as the request log's filters read them (audit_query.parse_moment: ISO dates or
    date-times; a bare `until` date includes that day); `until` defaults to now. Raises BadWindow,
    also for a custom window longer than MAX_SPAN."""
    now = (now or timezone.now()).replace(microsecond=0)  # whole seconds: links repeat it exactly
    if since or until:
        end = _parse_time(until, "until", end=True) if until else now
        start = _parse_time(since, "since") if since else end - WINDOWS[DEFAULT_WINDOW]
        if start >= end:
            raise BadWindow("'since' must be before 'until'.")
        if end - start > MAX_SPAN:
            raise BadWindow(f"A window of at most {MAX_SPAN.days} days, please: narrow 'since' and 'until'.")
        return Window(start, end, "custom", bucket_for(end - start))
    name = window or DEFAULT_WINDOW
    if name not in WINDOWS:
        raise BadWindow(f"Unknown window {name!r}: choose one of {', '.join(WINDOWS)}.")
    return Window(now - WINDOWS[name], now, name, BUCKET_SECONDS[name])


def bucket_for(span: timedelta) -> int:
    seconds = span.total_seconds()
    return next((size for size in NICE_BUCKETS if seconds / size <= MAX_BUCKETS), NICE_BUCKETS[-1])


def _parse_time(text: str, name: str, *, end: bool = False) -> datetime:
    moment = audit_query.parse_moment(text, end=end)
    if moment is None:
        raise BadWindow(f"{name!r} is not a date or date-time: {text[:40]!r}.")
    return moment


# --- the figures --------------------------------------------------------------------------------------


def build(window: Window) -> Dashboard:
    """Every panel's figures for `window` (seven queries on PostgreSQL)."""
    rows = RequestLog.objects.filter(created__gte=window.since, created__lt=window.until).order_by()
    return Dashboard(
        window=window,
        headline=headline(rows),
        series=series(rows, window),
        models=models(rows),
        keys=keys(rows),
        errors=error_codes(rows),
        upstreams=upstreams(rows),
    )


def headline(rows: QuerySet) -> Headline:
    totals = summarise(
        rows,
        aggregates={
            "requests": Count("pk"),
            "errors": Count("pk", filter=ERRORS),
            "audio_in": Sum("audio_seconds_in"),
            "audio_out": Sum("audio_seconds_out"),
            "stt_lookups": Count("pk", filter=Q(stt_ms__isnull=False) | Q(stt_cache_hits__gt=0)),
            "stt_cache_hits": Count("pk", filter=Q(stt_cache_hits__gt=0)),
        },
        columns=["duration_ms"],
    )[None]
    values = totals.values
    return Headline(
        requests=values["requests"],
        errors=values["errors"],
        p95_ms=totals.percentiles["duration_ms"].p95,
        audio_seconds_in=values["audio_in"] or 0.0,
        audio_seconds_out=values["audio_out"] or 0.0,
        stt_lookups=values["stt_lookups"],
        stt_cache_hits=values["stt_cache_hits"],
    )


def series(rows: QuerySet, window: Window) -> list[Bucket]:
    """Requests and errors per bucket of `window.bucket_seconds` (aligned on the Unix epoch), the
    empty buckets included."""
    size = window.bucket_seconds
    counted = {
        row["bucket"]: row
        for row in rows.annotate(bucket=EpochBucket("created", size))
        .values("bucket")
        .annotate(requests=Count("pk"), errors=Count("pk", filter=ERRORS))
    }
    first = math.floor(window.since.timestamp() / size)
    last = math.ceil(window.until.timestamp() / size)  # the bucket holding until is [last - 1]
    out = []
    for index in range(first, last):
        row = counted.get(index, {"requests": 0, "errors": 0})
        out.append(Bucket(datetime.fromtimestamp(index * size, tz=UTC), row["requests"], row["errors"]))
    return out


def models(rows: QuerySet) -> list[ModelLatency]:
    """The TOP_MODELS busiest model_names values (rows naming no model left out), with the
    percentiles of each stage."""
    by_model = summarise(
        rows.exclude(model_names=""),
        group="model_names",
        aggregates={"requests": Count("pk"), "errors": Count("pk", filter=ERRORS)},
        columns=list(STAGES.values()),
    )
    busiest = sorted(by_model.items(), key=lambda item: (-item[1].values["requests"], item[0]))[:TOP_MODELS]
    return [
        ModelLatency(
            model=name,
            requests=summary.values["requests"],
            errors=summary.values["errors"],
            stages={stage: summary.percentiles[column] for stage, column in STAGES.items()},
        )
        for name, summary in busiest
    ]


def keys(rows: QuerySet) -> list[KeyUsage]:
    """The TOP_KEYS keys by audio seconds (in and out), then by requests."""
    # Tokens as the upstream reported them (`usage` is its JSON); a value that is not a number is
    # skipped, so a strange upstream cannot make the cast fail the whole page.
    total_tokens = KeyTextTransform("total_tokens", "usage")
    tokens = Case(
        When(Q(usage__total_tokens__regex=r"^[0-9]+(\.[0-9]+)?$"), then=Cast(total_tokens, FloatField())),
        default=None,
        output_field=FloatField(),
    )
    top = list(
        rows.values("api_key")
        .annotate(
            requests=Count("pk"),
            errors=Count("pk", filter=ERRORS),
            audio_in=Sum("audio_seconds_in"),
            audio_out=Sum("audio_seconds_out"),
            audio=Coalesce(Sum("audio_seconds_in"), 0.0) + Coalesce(Sum("audio_seconds_out"), 0.0),
            characters=Sum("characters_in"),
            tokens=Sum(tokens),
        )
        .order_by("-audio", "-requests", "api_key")[:TOP_KEYS]
    )
    ids = [row["api_key"] for row in top if row["api_key"] is not None]
    named = {
        pk: (name, prefix)
        for pk, name, prefix in ApiKey.objects.filter(pk__in=ids).values_list("pk", "name", "prefix")
    }
    return [
        KeyUsage(
            key_id=row["api_key"],
            name=named.get(row["api_key"], ("(no key)", ""))[0],
            prefix=named.get(row["api_key"], ("", ""))[1],
            requests=row["requests"],
            errors=row["errors"],
            audio_seconds_in=row["audio_in"] or 0.0,
            audio_seconds_out=row["audio_out"] or 0.0,
            characters_in=row["characters"] or 0,
            tokens=round(row["tokens"] or 0),
        )
        for row in top
    ]


def error_codes(rows: QuerySet) -> list[ErrorCode]:
    """The TOP_ERRORS commonest (error_code, error_type) pairs among failed requests."""
    top = (
        rows.filter(ERRORS)
        .values("error_code", "error_type")
        .annotate(
            count=Count("pk"),
            status=Max("status_code"),
            last_seen=Max("created"),
            sample=Max("error_message"),
        )
        .order_by("-count", "error_code")[:TOP_ERRORS]
    )
    return [
        ErrorCode(
            code=row["error_code"],
            type=row["error_type"],
            status=row["status"],
            count=row["count"],
            last_seen=row["last_seen"],
            sample=row["sample"] or "",
        )
        for row in top
    ]


def upstreams(rows: QuerySet) -> list[UpstreamHealth]:
    """Each upstream called in the window: its answers by status class, its failures to answer, and
    the chat's latency through it."""
    by_upstream = summarise(
        rows.exclude(upstream=""),
        group="upstream",
        aggregates={
            "requests": Count("pk"),
            "ok": Count("pk", filter=Q(upstream_status__gte=200, upstream_status__lt=300)),
            "client_errors": Count("pk", filter=Q(upstream_status__gte=400, upstream_status__lt=500)),
            "server_errors": Count("pk", filter=Q(upstream_status__gte=500)),
            "no_answer": Count("pk", filter=Q(upstream_status__isnull=True) & ERRORS),
            # UpstreamTimeout's code; an upstream's own 408/504 passes through with its own code.
            "timeouts": Count("pk", filter=Q(error_code__icontains="timeout")),
        },
        columns=["llm_ms"],
    )
    return [
        UpstreamHealth(name=name, **summary.values, llm=summary.percentiles["llm_ms"])
        for name, summary in sorted(
            by_upstream.items(), key=lambda item: (-item[1].values["requests"], item[0])
        )
    ]
