"""The dashboard: its figures (registry/dashboard.py) against an independent computation over the
rows seeded here, its page on the live server (numbers, links, SVG charts), and in Chromium.

The rows are seeded on one day of 1993 that no other test writes to, with keys of their own, and
removed afterwards: the test database is shared with the live server and every other module.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy
import pytest
from django.contrib.auth.models import User
from django.test import Client

from registry import charts, dashboard
from registry.models import ApiKey, RequestLog
from tests.admin_client import has_horizontal_scroll, unique

DAY = dt.datetime(1993, 6, 14, tzinfo=dt.UTC)
SINCE, UNTIL = DAY.isoformat(), (DAY + dt.timedelta(days=1)).isoformat()
STT, TTS, CHAT = "whisper-dash", "piper-dash", "llm-dash,whisper-dash,piper-dash"
UPSTREAMS = ("up-dash-a", "up-dash-b")
HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def seeded():
    """About 300 rows of three kinds (transcription, speech, voice chat), with failures of each
    kind, over DAY: returned as the saved model instances (the independent side's data)."""
    rng = random.Random(1993)
    keys = [ApiKey.issue(name=unique("dash-key"))[0] for _ in range(3)]
    rows = []
    for i in range(300):
        kind = rng.choice(["stt", "tts", "chat"])
        key = rng.choice([*keys, None])
        row = RequestLog(
            created=DAY + dt.timedelta(seconds=rng.randrange(86400 - 7200)),  # the last 2 h stay empty
            request_id=unique(f"dash-{i}"),
            api_key=key,
            key_prefix=key.prefix if key else "",
            method="POST",
            endpoint="/v1/" + kind,
            route="/v1/" + kind,
            status_code=200,
            duration_ms=rng.uniform(50, 4000),
        )
        if kind == "stt":
            row.model_names = STT
            row.audio_seconds_in = round(rng.uniform(1, 30), 2)
            row.stt_cache_hits = rng.choice([0, 0, 1])
            row.stt_ms = None if row.stt_cache_hits else rng.uniform(20, 900)
        elif kind == "tts":
            row.model_names = TTS
            row.characters_in = rng.randrange(10, 300)
            row.audio_seconds_out = round(rng.uniform(1, 20), 2)
            row.tts_ms = rng.uniform(20, 700)
            row.tts_first_audio_ms = row.tts_ms * 0.3
        else:
            row.model_names = CHAT
            row.upstream = rng.choice(UPSTREAMS)
            row.upstream_status = 200
            row.audio_seconds_in = round(rng.uniform(1, 10), 2)
            row.audio_seconds_out = round(rng.uniform(1, 10), 2)
            row.stt_ms = rng.uniform(20, 500)
            row.llm_first_token_ms = rng.uniform(30, 300)
            row.llm_ms = row.llm_first_token_ms + rng.uniform(100, 2000)
            row.tts_ms = rng.uniform(20, 700)
            row.usage = rng.choice([{"total_tokens": rng.randrange(5, 500)}, {"total_tokens": "many"}, None])
        fail = rng.random()
        if fail < 0.06:
            row.status_code, row.error_type, row.error_code = 400, "invalid_request_error", "invalid_audio"
            row.error_message = f"Could not decode the audio ({i})."
        elif fail < 0.10 and kind == "chat":
            row.status_code, row.error_type, row.error_code = 504, "server_error", "upstream_timeout"
            row.upstream_status = None
            row.error_message = "The upstream did not answer within 60 s."
        elif fail < 0.13 and kind == "chat":
            row.status_code, row.error_type, row.error_code = 502, "server_error", "upstream_error"
            row.upstream_status = 503
            row.error_message = "The upstream failed with HTTP 503."
        rows.append(row)
    RequestLog.objects.bulk_create(rows)
    yield {"rows": rows, "keys": keys}
    RequestLog.objects.filter(created__gte=DAY, created__lt=DAY + dt.timedelta(days=1)).delete()
    ApiKey.objects.filter(pk__in=[k.pk for k in keys]).delete()


@pytest.fixture(scope="module")
def figures(seeded):
    return dashboard.build(dashboard.parse_window(since=SINCE, until=UNTIL))


def failed(row):
    return row.status_code >= 400


def quantiles(values):
    return numpy.percentile(values, [50, 95, 99]).tolist()


def assert_percentiles(measured, values):
    assert measured.count == len(values)
    assert [measured.p50, measured.p95, measured.p99] == pytest.approx(quantiles(values), rel=1e-9)


# --- the figures --------------------------------------------------------------------------------------


def test_the_headline_counts_requests_errors_audio_and_cache_hits(seeded, figures):
    rows = seeded["rows"]
    head = figures.headline
    assert head.requests == len(rows)
    assert head.errors == sum(failed(r) for r in rows) > 0
    assert head.error_rate == pytest.approx(head.errors / len(rows))
    assert head.p95_ms == pytest.approx(numpy.percentile([r.duration_ms for r in rows], 95), rel=1e-9)
    audio = sum((r.audio_seconds_in or 0) + (r.audio_seconds_out or 0) for r in rows)
    assert head.audio_hours == pytest.approx(audio / 3600)
    with_stt = [r for r in rows if r.stt_ms is not None or r.stt_cache_hits]
    assert head.stt_lookups == len(with_stt)
    assert head.stt_cache_hits == sum(1 for r in with_stt if r.stt_cache_hits) > 0


def test_requests_and_errors_per_hour_with_the_empty_hours_filled(seeded, figures):
    window = figures.window
    assert window.bucket_seconds == 1800  # a custom day: 48 half-hours
    assert [b.start for b in figures.series] == [DAY + dt.timedelta(minutes=30 * i) for i in range(48)]
    requests, errors = Counter(), Counter()
    for r in seeded["rows"]:
        index = int((r.created - DAY).total_seconds() // 1800)
        requests[index] += 1
        errors[index] += failed(r)
    assert [b.requests for b in figures.series] == [requests[i] for i in range(48)]
    assert [b.errors for b in figures.series] == [errors[i] for i in range(48)]
    assert all(b.requests == 0 for b in figures.series[-4:])


def test_percentiles_per_model_and_stage_match_numpy(seeded, figures):
    by_model = defaultdict(list)
    for r in seeded["rows"]:
        by_model[r.model_names].append(r)
    assert [m.model for m in figures.models] == sorted(
        by_model, key=lambda name: (-len(by_model[name]), name)
    )
    for model in figures.models:
        rows = by_model[model.model]
        assert model.requests == len(rows)
        assert model.errors == sum(failed(r) for r in rows)
        for stage, column in dashboard.STAGES.items():
            values = [getattr(r, column) for r in rows if getattr(r, column) is not None]
            if values:
                assert_percentiles(model.stages[stage], values)
            else:
                assert model.stages[stage].count == 0 and model.stages[stage].p95 is None
    chat = next(m for m in figures.models if m.model == CHAT)
    assert chat.stages["llm"].count > 0 and chat.stages["stt"].count > 0


def test_usage_per_key_sums_audio_characters_and_numeric_tokens(seeded, figures):
    expected = {}
    for key in [*seeded["keys"], None]:
        rows = [r for r in seeded["rows"] if r.api_key == key]
        expected[key.pk if key else None] = {
            "requests": len(rows),
            "errors": sum(failed(r) for r in rows),
            "in": sum(r.audio_seconds_in or 0 for r in rows),
            "out": sum(r.audio_seconds_out or 0 for r in rows),
            "characters": sum(r.characters_in or 0 for r in rows),
            "tokens": sum(
                r.usage["total_tokens"] for r in rows if r.usage and r.usage["total_tokens"] != "many"
            ),
        }
    assert len(figures.keys) == 4
    audio = [k.audio_seconds_in + k.audio_seconds_out for k in figures.keys]
    assert audio == sorted(audio, reverse=True)
    names = {k.pk: (k.name, k.prefix) for k in seeded["keys"]}
    for usage in figures.keys:
        want = expected[usage.key_id]
        assert (usage.requests, usage.errors, usage.characters_in, usage.tokens) == (
            want["requests"],
            want["errors"],
            want["characters"],
            want["tokens"],
        )
        assert usage.audio_seconds_in == pytest.approx(want["in"])
        assert usage.audio_seconds_out == pytest.approx(want["out"])
        assert (usage.name, usage.prefix) == names.get(usage.key_id, ("(no key)", ""))
    assert any(usage.tokens > 0 for usage in figures.keys)


def test_top_error_codes_with_counts_status_and_last_seen(seeded, figures):
    groups = defaultdict(list)
    for r in seeded["rows"]:
        if failed(r):
            groups[r.error_code].append(r)
    assert {e.code: e.count for e in figures.errors} == {code: len(rows) for code, rows in groups.items()}
    assert [e.count for e in figures.errors] == sorted((e.count for e in figures.errors), reverse=True)
    for error in figures.errors:
        rows = groups[error.code]
        assert error.status == max(r.status_code for r in rows)
        assert error.last_seen == max(r.created for r in rows)
        assert error.sample in {r.error_message for r in rows}
    assert {"invalid_audio", "upstream_timeout", "upstream_error"} <= set(groups)


def test_upstream_health_by_status_class_with_timeouts_and_llm_latency(seeded, figures):
    assert [u.name for u in figures.upstreams] == sorted(
        UPSTREAMS, key=lambda name: (-sum(r.upstream == name for r in seeded["rows"]), name)
    )
    for health in figures.upstreams:
        rows = [r for r in seeded["rows"] if r.upstream == health.name]
        status = [r.upstream_status for r in rows]
        assert health.requests == len(rows)
        assert health.ok == sum(1 for s in status if s and 200 <= s < 300)
        assert health.client_errors == sum(1 for s in status if s and 400 <= s < 500)
        assert health.server_errors == sum(1 for s in status if s and s >= 500)
        assert health.no_answer == sum(1 for r in rows if r.upstream_status is None and failed(r))
        assert health.timeouts == sum(1 for r in rows if r.error_code == "upstream_timeout")
        assert health.timeout_share == pytest.approx(health.timeouts / len(rows))
        assert_percentiles(health.llm, [r.llm_ms for r in rows])
    assert sum(u.timeouts for u in figures.upstreams) > 0
    assert sum(u.server_errors for u in figures.upstreams) > 0


def test_the_window_is_an_hour_a_day_a_week_or_custom():
    now = dt.datetime(2030, 1, 1, 12, tzinfo=dt.UTC)
    for name, span, bucket in [("hour", 3600, 300), ("day", 86400, 3600), ("week", 7 * 86400, 6 * 3600)]:
        window = dashboard.parse_window(window=name, now=now)
        assert (window.until, (window.until - window.since).total_seconds()) == (now, span)
        assert window.bucket_seconds == bucket
    assert dashboard.parse_window(now=now).name == "day"
    custom = dashboard.parse_window(since="2030-01-01T00:00:00", until="2030-01-01T06:00", now=now)
    assert (custom.name, custom.since, custom.until) == (
        "custom",
        now - dt.timedelta(hours=12),
        now - dt.timedelta(hours=6),
    )
    assert custom.bucket_seconds == 300  # 72 buckets at most
    assert dashboard.parse_window(since="2029-01-01", until="2030-01-01", now=now).bucket_seconds == 7 * 86400
    for bad in [{"window": "year"}, {"since": "yesterday"}, {"since": "2030-01-02", "until": "2030-01-01"}]:
        with pytest.raises(dashboard.BadWindow):
            dashboard.parse_window(now=now, **bad)


def test_windows_past_the_calendar_or_too_long_are_bad_windows_not_errors():
    now = dt.datetime(2030, 1, 1, 12, tzinfo=dt.UTC)
    for bad in [
        {"until": "9999-12-31"},  # its end, the next day, is past year 9999
        {"since": "0001-01-01T00:00+05:00"},  # before year 1 in UTC
        {"until": "0001-01-01T00:30"},  # its default since, a day before, is before year 1
        {"since": "9999-12-31T23:59-05:00"},
    ]:
        with pytest.raises(dashboard.BadWindow, match="is not a date or date-time"):
            dashboard.parse_window(now=now, **bad)
    limit = dashboard.MAX_SPAN.days
    longest = dashboard.parse_window(since="2025-01-01T00:00", until=f"{2025 + limit // 365}-01-01", now=now)
    assert longest.until - longest.since <= dashboard.MAX_SPAN
    with pytest.raises(dashboard.BadWindow, match=f"at most {limit} days"):
        dashboard.parse_window(since="0001-01-02", until="9999-12-29", now=now)


def test_an_empty_window_has_no_figures_but_every_bucket():
    empty = dashboard.build(dashboard.parse_window(since="1993-06-10T00:00:00", until="1993-06-10T01:00:00"))
    assert (empty.headline.requests, empty.headline.p95_ms, empty.headline.error_rate) == (0, None, None)
    assert len(empty.series) == 60 and not any(b.requests for b in empty.series)  # 1-min buckets
    assert (empty.models, empty.keys, empty.errors, empty.upstreams) == ([], [], [], [])


# --- the charts ----------------------------------------------------------------------------------------


def test_charts_are_well_formed_svg_with_every_label_escaped():
    hostile = '<script>alert("x")</script> & "quotes"'
    bars = charts.bars_over_time(
        title="Requests " + hostile,
        labels=["00:00", hostile],
        series=[charts.Series("ok", [3, 0], "#417690"), charts.Series(hostile, [1, 0], "#ba2121")],
        unit="requests",
    )
    grouped = charts.grouped_bars(
        title="Latency",
        categories=[hostile, "b" * 80],
        series=[charts.Series("p95", [120.5, None], "#417690")],
        unit="ms",
    )
    for svg in (bars, grouped):
        assert "<script>" not in svg
        root = ET.fromstring(svg)  # noqa: S314  our own output: well formed, escapes and all
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("role") == "img"
        texts = "".join(root.itertext())
        assert hostile in texts  # shown as text, not markup
    assert "b" * 33 + "…" in grouped  # a long label is cut; its tooltip has it whole
    assert "b" * 80 in grouped
    assert "<title>00:00: ok 3, " in bars


# --- the page --------------------------------------------------------------------------------------------


def test_the_page_shows_the_figures_charts_and_links_to_the_log(admin, seeded, figures):
    page = admin.page("/admin/dashboard/", since=SINCE, until=UNTIL)
    head = figures.headline
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg" viewBox=') == 4
    assert f'id="vp-requests">{head.requests}<' in page
    assert f'id="vp-error-rate">{100 * head.error_rate:.1f} %<' in page
    assert f'id="vp-p95">{head.p95_ms:.0f} ms<' in page
    assert f'id="vp-cache-hit-rate">{100 * head.cache_hit_rate:.1f} %<' in page
    assert "whisper-dash" in page and "llm-dash + whisper-dash + piper-dash" in page
    stt = next(m for m in figures.models if m.model == STT).stages["stt"]
    assert f"{stt.p50:.0f} / {stt.p95:.0f} / {stt.p99:.0f}" in page
    for key in seeded["keys"]:
        assert key.name in page and key.prefix in page
    links = [urlsplit(href) for href in re.findall(r'href="(/admin/registry/requestlog/\?[^"]+)"', page)]
    queries = [parse_qs(link.query) for link in links]
    assert all(q["since"] and q["until"] for q in queries)
    assert {str(k.pk) for k in seeded["keys"]} <= {q["key"][0] for q in queries if "key" in q}
    assert {"upstream_timeout", "invalid_audio"} <= {q["error_code"][0] for q in queries if "error_code" in q}
    assert set(UPSTREAMS) <= {q["upstream"][0] for q in queries if "upstream" in q}
    assert any(q.get("status") == ["errors"] for q in queries)


def follow(admin, href):
    """The page a link leads to (httpx replaces a path's query string with `params`: pass it as those)."""
    link = urlsplit(href)
    return admin.page(link.path, **{name: values[-1] for name, values in parse_qs(link.query).items()})


def test_the_links_open_the_request_log_on_the_same_rows(admin, seeded):
    page = admin.page("/admin/dashboard/", since=SINCE, until=UNTIL)
    rows = seeded["rows"]
    timeouts = re.search(r'href="(/admin/registry/requestlog/\?[^"]*error_code=upstream_timeout[^"]*)"', page)
    listed = follow(admin, timeouts.group(1))
    assert all(r.request_id in listed for r in rows if r.error_code == "upstream_timeout")
    assert not any(r.request_id in listed for r in rows if r.error_code != "upstream_timeout")
    key = seeded["keys"][0]
    listed = follow(
        admin, re.search(rf'href="(/admin/registry/requestlog/\?key={key.pk}&[^"]*)"', page).group(1)
    )
    assert any(r.request_id in listed for r in rows if r.api_key == key)
    assert not any(r.request_id in listed for r in rows if r.api_key != key)


def test_windows_out_of_range_say_so_never_a_500(admin):
    for params in (
        {"until": "9999-12-31"},
        {"since": "0001-01-01T00:00+05:00"},
        {"since": "0001-01-01"},
        {"since": "2000-01-01", "until": "2030-01-01"},
    ):
        page = admin.page("/admin/dashboard/", **params)  # asserts 200
        assert "is not a date or date-time" in page or "at most 400 days" in page, params
        assert 'aria-current="true">Last day<' in page, params


def test_a_bad_window_says_so_and_shows_the_default_day(admin):
    page = admin.page("/admin/dashboard/", since="not-a-date")
    assert (
        "is not a date or date-time" in page
        and page.count('<svg xmlns="http://www.w3.org/2000/svg" viewBox=') == 4
    )
    assert 'aria-current="true">Last day<' in page


def test_every_admin_page_links_to_the_dashboard(admin):
    for path in ["/admin/", "/admin/registry/requestlog/"]:
        assert 'href="/admin/dashboard/">Dashboard</a>' in admin.page(path)


def test_the_dashboard_is_for_staff_only(gateway):
    with httpx.Client(base_url=gateway.url, timeout=60) as anonymous:
        response = anonymous.get("/admin/dashboard/")
    assert response.status_code == 302
    assert response.headers["location"].startswith("/admin/login/?next=/admin/dashboard/")
    # Logged in, but not staff (the admin's login form turns such users away: a session made here).
    user = User.objects.create_user(unique("not-staff"), password=unique("pw"))
    try:
        client = Client()
        client.force_login(user)
        response = client.get("/admin/dashboard/")
        assert response.status_code == 302 and response.url.startswith("/admin/login/")
    finally:
        user.delete()


def test_the_dashboard_renders_its_charts_without_horizontal_scroll(admin_page, gateway, seeded):
    admin_page.goto(f"{gateway.url}/admin/dashboard/?since={SINCE[:19]}&until={UNTIL[:19]}")
    assert admin_page.locator("svg.chart").count() == 4
    box = admin_page.locator("svg.chart").first.bounding_box()
    assert box["width"] > 600 and box["height"] > 100  # drawn, at the content's width
    assert admin_page.locator("svg.chart rect").count() > 50
    assert admin_page.locator("#vp-models tbody tr").count() == 3
    assert not has_horizontal_scroll(admin_page)
