"""The dashboard page (/admin/dashboard/, for staff who may view the request log):
registry/dashboard.py's figures for a window, as headline numbers, SVG charts (registry/charts.py)
and tables that link to the request log filtered to the same rows.

The page only formats: the figures come from one `dashboard.build()` call, the window from the
query string (`window=hour|day|week`, or `since` and `until`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from registry import charts
from registry import dashboard as figures
from registry.admin_site import extra_page

OK_COLOR, ERROR_COLOR = "#417690", "#ba2121"  # the admin's own blue and red
QUANTILE_COLORS = {"p50": "#79aec8", "p95": "#417690", "p99": "#264b5d"}
STAGE_COLORS = {"stt": "#5b9bd5", "llm": "#ed7d31", "tts": "#70ad47"}
AUDIO_COLORS = {"in": "#5b9bd5", "out": "#70ad47"}
STAGE_TITLES = {
    "total": "total",
    "stt": "speech to text",
    "llm_first_token": "LLM first token",
    "llm": "LLM",
    "tts_first_audio": "TTS first audio",
    "tts": "text to speech",
}


def dashboard_view(request: HttpRequest) -> HttpResponse:
    problem = ""
    try:
        window = figures.parse_window(
            window=request.GET.get("window"), since=request.GET.get("since"), until=request.GET.get("until")
        )
    except figures.BadWindow as exc:
        problem = str(exc)
        window = figures.parse_window()
    data = figures.build(window)
    log = LogLinks(window)
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "problem": problem,
        "window": window,
        "windows": [(name, f"Last {name}") for name in figures.WINDOWS],
        "since_value": _local_input(window.since),
        "until_value": _local_input(window.until),
        "headline": data.headline,
        "error_rate": _percent(data.headline.error_rate),
        "cache_hit_rate": _percent(data.headline.cache_hit_rate),
        "log_url": log.url(),
        "errors_url": log.url(status="errors"),
        "charts": _charts(data),
        "models": [_model_row(m, log) for m in data.models],
        "stage_titles": STAGE_TITLES,
        "keys": [{"usage": k, "url": log.url(key=k.key_id) if k.key_id else ""} for k in data.keys],
        "errors": [{"error": e, "url": log.error_url(e.code)} for e in data.errors],
        "upstreams": [
            {"health": u, "url": log.url(upstream=u.name), "timeout_share": _percent(u.timeout_share)}
            for u in data.upstreams
        ],
    }
    return TemplateResponse(request, "admin/dashboard.html", context)


class LogLinks:
    """URLs of the request log list filtered to the window (and more)."""

    def __init__(self, window: figures.Window) -> None:
        self.base = reverse("admin:registry_requestlog_changelist")
        self.window = {"since": window.since.isoformat(), "until": window.until.isoformat()}

    def url(self, **filters: object) -> str:
        return f"{self.base}?{urlencode({**filters, **self.window})}"

    def error_url(self, code: str) -> str:
        # The list takes a plain field lookup on error_code (the admin allows its model's own fields).
        return self.url(status="errors", error_code=code) if code else self.url(status="errors")


def _charts(data: figures.Dashboard) -> list[str]:
    """The page's SVGs, in order: requests over time, latency per model, stages per model, audio per key."""
    series = data.series
    size = data.window.bucket_seconds
    labels = [_bucket_label(b.start, size, data.window) for b in series]
    tips = [
        f"{_bucket_label(b.start, size, data.window, full=True)}: {b.requests} requests, {b.errors} errors"
        for b in series
    ]
    over_time = charts.bars_over_time(
        title="Requests and errors",
        labels=labels,
        tooltips=tips,
        unit="requests",
        series=[
            charts.Series("answered", [b.requests - b.errors for b in series], OK_COLOR),
            charts.Series("errors", [b.errors for b in series], ERROR_COLOR),
        ],
    )
    names = [_model_name(m.model) for m in data.models]
    total = [m.stages["total"] for m in data.models]
    latency = charts.grouped_bars(
        title="Total latency per model",
        categories=names,
        unit="ms",
        series=[
            charts.Series(q, [getattr(p, q) for p in total], color) for q, color in QUANTILE_COLORS.items()
        ],
    )
    stages = charts.grouped_bars(
        title="p95 per stage and model",
        categories=names,
        unit="ms",
        series=[
            charts.Series(STAGE_TITLES[stage], [m.stages[stage].p95 for m in data.models], color)
            for stage, color in STAGE_COLORS.items()
        ],
    )
    audio = charts.grouped_bars(
        title="Audio per key",
        categories=[_key_name(k) for k in data.keys],
        unit="seconds",
        series=[
            charts.Series("audio in", [k.audio_seconds_in for k in data.keys], AUDIO_COLORS["in"]),
            charts.Series("audio out", [k.audio_seconds_out for k in data.keys], AUDIO_COLORS["out"]),
        ],
    )
    return [over_time, latency, stages, audio]


def _model_row(model: figures.ModelLatency, log: LogLinks) -> dict[str, Any]:
    single = "," not in model.model
    return {
        "name": _model_name(model.model),
        # The list's model filter takes one model: a combination links to its first (the chat model).
        "url": log.url(model=model.model if single else model.model.split(",")[0]),
        "latency": model,
        "stages": [model.stages[stage] for stage in STAGE_TITLES],
    }


def _model_name(model_names: str) -> str:
    return " + ".join(model_names.split(","))


def _key_name(usage: figures.KeyUsage) -> str:
    return f"{usage.name} ({usage.prefix})" if usage.prefix else usage.name


def _bucket_label(start: datetime, size: int, window: figures.Window, *, full: bool = False) -> str:
    local = timezone.localtime(start)
    if full:
        return local.strftime("%Y-%m-%d %H:%M") + f" ({_duration(size)})"
    if size >= 86400:
        return local.strftime("%b %d")
    if window.until - window.since > figures.WINDOWS["day"]:
        return local.strftime("%a %H:%M")
    return local.strftime("%H:%M")


def _duration(seconds: int) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % length == 0:
            return f"{seconds // length} {unit}"
    return f"{seconds} s"


def _percent(fraction: float | None) -> str:
    return "–" if fraction is None else f"{100 * fraction:.1f} %"


def _local_input(moment: datetime) -> str:
    """A datetime-local input's value, in the server's time zone (what a naive one means)."""
    return timezone.localtime(moment).strftime("%Y-%m-%dT%H:%M")


extra_page(
    "dashboard/",
    dashboard_view,
    name="dashboard",
    title="Dashboard",
    # Its figures are the request log's, summed: for who may read that log.
    permissions=("registry.view_requestlog", "registry.change_requestlog"),
)
