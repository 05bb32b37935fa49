"""The request log in the admin, as an operator reviews it: the list's columns, each filter and the
search, an entry's detail page and its waterfall, the exports, and the fit at 1366 px in Chromium.

Rows are seeded straight into the database on a day of their own far in the past (the test database
is shared with the other modules and the live server), and every page is asked for that day only
(`since`/`until`); request ids carry a marker unique to this module.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import random
import re
import uuid

import httpx
import pytest

from registry.admin.request_log import CappedPaginator
from registry.models import ApiKey, RequestLog, Upstream
from tests.admin_client import has_horizontal_scroll
from tests.audit_log import audit_row

LIST = "/admin/registry/requestlog/"
MARK = uuid.uuid4().hex[:8]
# A day no other test writes to: some day in the 1980s, chosen per run.
DAY = dt.datetime(1980, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=random.randrange(3650))
WINDOW = {"since": DAY.date().isoformat(), "until": DAY.date().isoformat()}  # the whole day
LONG_MODEL = "an-extremely-long-chat-model-name-that-goes-on-and-on/" * 6


def rid(name: str) -> str:
    return f"req_{MARK}_{name}"


def at(minutes: float) -> dt.datetime:
    return DAY + dt.timedelta(minutes=minutes)


@pytest.fixture(scope="module")
def seeded():
    """Rows a..h on DAY (and two just outside it), with two keys; deleted afterwards."""
    key, _ = ApiKey.issue(name=f"log-{MARK}")
    other, _ = ApiKey.issue(name=f"log-other-{MARK}")
    base = {"method": "POST", "key_prefix": key.prefix, "api_key": key}
    rows = {
        "a": dict(
            created=at(10),
            endpoint="/v1/audio/transcriptions",
            route="/v1/audio/transcriptions",
            model_names=f"stt-{MARK}-big",
            status_code=200,
            duration_ms=1747.4280139999792,
            stt_ms=1203.6,
            audio_seconds_in=3.26,
            client_request_id=f"client-{MARK}",
        ),
        "b": dict(
            created=at(20),
            method="GET",
            endpoint=f"/v1/models/nope-{MARK}",
            route="/v1/models/{model_id}",
            status_code=404,
            error_type="invalid_request_error",
            error_code="model_not_found",
            error_message="The model does not exist.",
            duration_ms=3.2,
            api_key=other,
            key_prefix=other.prefix,
        ),
        "c": dict(
            created=at(30),
            endpoint="/v1/chat/completions",
            route="/v1/chat/completions",
            model_names=f"stt-{MARK},llm-{MARK},tts-{MARK}",
            status_code=502,
            error_type="api_error",
            error_code="upstream_error",
            error_message="The upstream answered 502.",
            duration_ms=4000.0,
            stt_ms=500.0,
            llm_ms=2500.0,
            llm_first_token_ms=900.0,
            tts_ms=2200.0,
            tts_first_audio_ms=1500.0,
            audio_seconds_in=2.0,
            audio_seconds_out=5.55,
            upstream="loopback",
            upstream_status=502,
            stt_cache_hits=1,
            streamed=True,
            usage={"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
        ),
        "d": dict(
            created=at(40),
            endpoint="/v1/audio/speech",
            route="/v1/audio/speech",
            model_names=f"tts-{MARK}",
            status_code=499,
            duration_ms=800.0,
            tts_ms=700.0,
            tts_first_audio_ms=150.0,
            client_disconnected=True,
        ),
        "e": dict(
            created=at(50),
            endpoint="/v1/realtime",
            route="/v1/realtime",
            model_names=f"llm-{MARK}",
            status_code=429,
            error_code="rate_limit_exceeded",
            error_message="Slow down.",
            session_id=f"sess_{MARK}",
            turns=3,
        ),
        "f": dict(
            created=at(60),
            endpoint="/v1/audio/transcriptions",
            route="/v1/audio/transcriptions",
            model_names=f"stt-{MARK}",
            status_code=200,
            stt_ms=80.0,
            duration_ms=95.0,
            upstream=f"gone-{MARK}",
        ),
        "long": dict(
            created=at(70),
            endpoint="/v1/chat/completions/" + "x" * 150,
            route="/v1/chat/completions/{a_very_long_route_parameter_name_to_test_truncation}" + "/y" * 40,
            model_names=LONG_MODEL[:480],
            status_code=500,
            error_message="boom " * 300,
            duration_ms=123456789.9,
            stt_ms=99999.9,
            llm_ms=88888.8,
            tts_ms=77777.7,
            audio_seconds_in=9999.99,
            audio_seconds_out=8888.88,
        ),
        "before": dict(
            created=DAY - dt.timedelta(seconds=1), endpoint="/v1/models", route="/v1/models", status_code=200
        ),
        "after": dict(
            created=DAY + dt.timedelta(days=1), endpoint="/v1/models", route="/v1/models", status_code=200
        ),
    }
    made = RequestLog.objects.bulk_create(
        [RequestLog(request_id=rid(name), **{**base, **fields}) for name, fields in rows.items()]
    )
    yield {"key": key, "other": other, "rows": {row.request_id.rsplit("_", 1)[1]: row for row in made}}
    RequestLog.objects.filter(request_id__startswith=f"req_{MARK}_").delete()
    key.delete()
    other.delete()


def shown(admin, **params) -> set[str]:
    """The seeded rows (by name) the list shows for these parameters, within DAY."""
    page = admin.page(LIST, **{**WINDOW, **params})
    if 'id="result_list"' not in page:  # no rows: no table
        return set()
    return set(re.findall(rf"req_{MARK}_(\w+)", page[page.index('id="result_list"') :]))


IN_DAY = {"a", "b", "c", "d", "e", "f", "long"}


# --- the list ---------------------------------------------------------------------------------------


def test_the_day_shows_its_rows_and_not_its_neighbours(admin, seeded):
    assert shown(admin) == IN_DAY
    assert shown(admin, since=DAY.isoformat(), until=(DAY + dt.timedelta(days=1)).isoformat()) == IN_DAY
    late = (DAY + dt.timedelta(minutes=45)).strftime("%Y-%m-%dT%H:%M")
    assert shown(admin, since=late) == {"e", "f", "long"}
    assert shown(admin, until=late) == {"a", "b", "c", "d"}


def row_html(page: str, request_id: str) -> str:
    """The list row of this request id."""
    start = page.rindex("<tr", 0, page.index(f'title="{request_id}"'))
    return page[start : page.index("</tr>", start)]


def cells(row: str) -> dict[str, str]:
    found = re.findall(r'<t[dh] class="field-(\w+)[^"]*">(.*?)</t[dh]>', row, re.S)
    return {name: re.sub(r"<[^>]+>", "", value).strip() for name, value in found}


def test_columns_are_what_an_operator_scans_formatted(admin, seeded):
    page = admin.page(LIST, **WINDOW)
    a = cells(row_html(page, rid("a")))
    assert a["total_ms"] == "1747" and a["stt"] == "1204" and a["llm"] == "—" and a["tts"] == "—"
    assert a["audio_in"] == "3.3" and a["audio_out"] == "—"
    assert a["route_cut"] == "/v1/audio/transcriptions"
    assert a["models"] == f"stt-{MARK}-big"
    assert a["key"] == seeded["key"].prefix
    assert a["when"] == at(10).strftime("%Y-%m-%d %H:%M:%S")
    assert "1747.428" not in page
    c = cells(row_html(page, rid("c")))
    assert (c["total_ms"], c["stt"], c["llm"], c["tts"], c["audio_out"]) == (
        "4000",
        "500",
        "2500",
        "2200",
        "5.5",
    )
    assert c["models"] == f"stt-{MARK}, llm-{MARK}, tts-{MARK}"

    # The key links to its page; the route is grouped, the endpoint in its tooltip.
    assert f'href="/admin/registry/apikey/{seeded["key"].pk}/change/"' in row_html(page, rid("a"))
    b = row_html(page, rid("b"))
    assert f'title="/v1/models/nope-{MARK}">/v1/models/{{model_id}}</span>' in b
    # The time links to the entry.
    assert f'href="/admin/registry/requestlog/{seeded["rows"]["a"].pk}/change/' in row_html(page, rid("a"))


def test_statuses_are_coloured_by_class(admin, seeded):
    page = admin.page(LIST, **WINDOW)
    expected = {"a": "2xx", "b": "4xx", "c": "5xx", "d": "closed", "e": "4xx", "long": "5xx"}
    for name, colour in expected.items():
        assert f'class="vp-status vp-status-{colour}"' in row_html(page, rid(name)), name
    assert 'title="model_not_found: The model does not exist."' in row_html(page, rid("b"))
    assert "the client closed the request" in row_html(page, rid("d"))


def test_the_list_counts_no_whole_table_and_offers_exports_and_quick_ranges(admin, seeded):
    page = admin.page(LIST, **WINDOW)
    assert "total)" not in page  # show_full_result_count = False: no "(N total)" link
    assert '<nav class="toplinks">' not in page  # no date hierarchy
    assert "Export CSV" in page and "Export JSON Lines" in page
    assert f"/admin/registry/requestlog/export/csv/?since={WINDOW['since']}&until={WINDOW['until']}" in page
    for label in ("Last hour", "Last 24 h", "Last 7 days"):
        assert label in page


# --- filters and search -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "2xx"}, {"a", "f"}),
        ({"status": "4xx"}, {"b", "d", "e"}),
        ({"status": "5xx"}, {"c", "long"}),
        ({"status": "errors"}, {"b", "c", "d", "e", "long"}),
        ({"route": "/v1/audio/transcriptions"}, {"a", "f"}),
        ({"route": "/v1/models/{model_id}"}, {"b"}),
        ({"model": f"stt-{MARK}"}, {"c", "f"}),  # not stt-MARK-big: a name, not a substring
        ({"model": f"llm-{MARK}"}, {"c", "e"}),
        ({"model": f"tts-{MARK}"}, {"c", "d"}),
        ({"model": f"stt-{MARK}-big"}, {"a"}),
        ({"upstream": "loopback"}, {"c"}),
        ({"upstream": f"gone-{MARK}"}, {"f"}),
        ({"cache": "hit"}, {"c"}),
        ({"cache": "miss"}, {"a", "f", "long"}),
        ({"disconnected": "yes"}, {"d"}),
        ({"disconnected": "no"}, IN_DAY - {"d"}),
        ({"status": "errors", "model": f"tts-{MARK}"}, {"c", "d"}),
        # A plain field lookup, as the dashboard links to an error code's requests.
        ({"status": "errors", "error_code": "model_not_found"}, {"b"}),
    ],
)
def test_each_filter_returns_exactly_its_rows(admin, seeded, params, expected):
    assert shown(admin, **params) == expected


def test_the_key_filter_takes_a_key_id(admin, seeded):
    assert shown(admin, key=str(seeded["other"].pk)) == {"b"}
    assert shown(admin, key=str(seeded["key"].pk)) == IN_DAY - {"b"}


def test_filters_offer_each_model_once_and_grouped_routes(admin, seeded):
    page = admin.page(LIST, key=str(seeded["key"].pk), **WINDOW)
    sidebar = page[page.index('id="changelist-filter"') :]
    for name in (f"stt-{MARK}", f"llm-{MARK}", f"tts-{MARK}"):
        assert sidebar.count(f"model={name}&") + sidebar.count(f'model={name}"') == 1, name
    assert f"stt-{MARK},llm-{MARK}" not in sidebar
    assert "route=/v1/models/{model_id}" in sidebar.replace("%7B", "{").replace("%7D", "}").replace(
        "%2F", "/"
    )
    assert f"nope-{MARK}" not in sidebar
    assert f"log-{MARK} ({seeded['key'].prefix})" in sidebar


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        (rid("c"), {"c"}),
        (f"client-{MARK}", {"a"}),
        (f"sess_{MARK}", {"e"}),
        ("prefix", IN_DAY - {"b"}),
        ("other-prefix-start", None),
        ("The model does not exist.", set()),  # not a full-text search
    ],
)
def test_search_finds_request_ids_session_ids_and_key_prefixes(admin, seeded, term, expected):
    terms = {"prefix": seeded["key"].prefix, "other-prefix-start": seeded["other"].prefix[:8]}
    if expected is None:  # the other key's prefix's start: rarely, the first key's too
        expected = {"b"} | (IN_DAY - {"b"} if seeded["key"].prefix.startswith(terms[term]) else set())
    assert shown(admin, q=terms.get(term, term)) == expected


def test_bad_filter_values_are_ignored_and_said_never_a_500(admin, seeded):
    params = {"since": "garbage", "until": "2020-02-30", "status": "7xx", "key": "abc", "cache": "maybe"}
    response = admin.get(LIST, **params)
    assert response.status_code == 200
    page = response.text
    assert "ignored status=&#x27;7xx&#x27;" in page or "ignored status='7xx'" in page
    assert "is not a date" in page
    assert shown(admin, status="7xx", disconnected="perhaps", key="-1x") == IN_DAY
    assert admin.get(LIST, since="9999-99-99T99:99").status_code == 200
    assert admin.get(LIST + "export/csv/", status="7xx", **WINDOW).status_code == 200


def test_query_strings_past_the_calendar_or_odd_digits_are_ignored_never_a_500(admin, seeded):
    for params in (
        {"until": "9999-12-31"},
        {"since": "0001-01-01T00:00+05:00"},
        {"since": "0001-01-01"},
        {"until": "9999-12-31T23:59:59-05:00"},
    ):
        page = admin.page(LIST, **params)  # asserts 200
        assert "is not a date" in page, params
        assert admin.get(LIST + "export/csv/", **params).status_code == 200
    for key in ("²", "١٢", "99999999999999999999999"):  # digits to isdigit(), not to int() or the database
        page = admin.page(LIST, key=key)
        assert "ignored key=" in page, key
        assert admin.get(LIST + "export/jsonl/", key=key, **WINDOW).status_code == 200
    assert shown(admin, key="²") == IN_DAY
    # PostgreSQL cannot compare text with a NUL in it: every admin page refuses one in its query string.
    for name in ("route", "model", "upstream", "q", "error_code", "since", "status"):
        assert admin.get(LIST, **{name: "a\x00b"}).status_code == 400, name
    assert admin.get(LIST + "export/csv/", q="\x00").status_code == 400
    assert admin.get("/admin/registry/apikey/", q="a\x00b").status_code == 400
    assert admin.get("/admin/dashboard/", since="\x00").status_code == 400


# --- an entry --------------------------------------------------------------------------------------


def detail(admin, seeded, name: str) -> str:
    return admin.page(f"{LIST}{seeded['rows'][name].pk}/change/")


def bars(page: str) -> dict[str, tuple[float, float]]:
    """stage -> (left %, width %) of the waterfall's bars."""
    found = re.findall(
        r'vp-wf-row vp-wf-(\w+)">.*?class="vp-wf-bar" style="left: ([\d.]+)%; width: ([\d.]+)%"', page, re.S
    )
    return {stage: (float(left), float(width)) for stage, left, width in found}


def test_an_entry_is_grouped_with_a_waterfall_of_its_stages(admin, seeded):
    page = detail(admin, seeded, "c")
    for heading in ("Request", "Timings", "Audio", "Tokens", "Upstream", "Error"):
        assert re.search(rf"<h2[^>]*>\s*{heading}\s*</h2>", page), heading
    assert not re.search(r"<h2[^>]*>\s*Realtime\s*</h2>", page)
    stages = bars(page)
    assert set(stages) == {"stt", "llm", "tts", "total"}
    assert stages["stt"] == (0.0, 12.5)  # 500 of 4000 ms
    assert stages["llm"] == (12.5, 62.5)  # after speech to text
    assert stages["total"] == (0.0, 100.0)
    tts_left = stages["tts"][0]
    assert 22.5 <= tts_left <= 37.5  # after the first token (900 ms), by the first audio (1500 ms)
    assert "2500 ms" in page and "first token 900 ms" in page and "first audio 1500 ms" in page
    assert page.count('class="vp-wf-mark"') == 2
    assert "prompt 12 · completion 30 · total 42" in page
    loopback = Upstream.objects.get(name="loopback")
    assert f'<a href="/admin/registry/upstream/{loopback.pk}/change/">loopback</a>' in page
    assert "upstream_error" in page and "The upstream answered 502." in page
    assert f'href="/admin/registry/apikey/{seeded["key"].pk}/change/"' in page
    assert "streamed" in page
    assert "1747.428" not in detail(admin, seeded, "a")


def test_an_entry_shows_only_the_stages_that_ran(admin, seeded):
    stages = bars(detail(admin, seeded, "a"))
    assert set(stages) == {"stt", "total"}
    speech = bars(detail(admin, seeded, "d"))
    assert set(speech) == {"tts", "total"}
    assert speech["tts"][0] <= 150 / 800 * 100  # started by its first audio
    assert "client disconnected" in detail(admin, seeded, "d")
    assert 'class="vp-waterfall"' not in detail(admin, seeded, "e")  # nothing was timed


def test_a_realtime_entry_links_to_its_session(admin, seeded):
    page = detail(admin, seeded, "e")
    assert f'<a href="/admin/registry/requestlog/?q=sess_{MARK}"' in page
    assert re.search(r"<h2[^>]*>\s*Realtime\s*</h2>", page)
    # An upstream that no longer exists is named, not linked.
    assert f"gone-{MARK}" in detail(admin, seeded, "f")
    assert f">gone-{MARK}</a>" not in detail(admin, seeded, "f")


def test_a_real_request_is_listed_under_its_key_and_route(admin, client, api_key, gateway):
    listed = client.models.with_raw_response.list()
    one = client.models.with_raw_response.retrieve("whisper-1")
    ids = [listed.headers["x-request-id"], one.headers["x-request-id"]]
    rows = [audit_row(request_id) for request_id in ids]
    page = admin.page(LIST, key=str(api_key.row.pk))
    for row in rows:
        assert row.request_id in page
    assert cells(row_html(page, rows[1].request_id))["route_cut"] == "/v1/models/{model_id}"
    assert 'title="/v1/models/whisper-1"' in page
    assert shown_ids(admin, route="/v1/models/{model_id}", key=str(api_key.row.pk)) == {rows[1].request_id}
    entry = admin.page(f"{LIST}{rows[0].pk}/change/")
    assert 'class="vp-wf-bar"' in entry and "vp-status-2xx" in entry


def shown_ids(admin, **params) -> set[str]:
    page = admin.page(LIST, **params)
    return set(re.findall(r"req_[0-9a-f]{32}", page[page.index('id="result_list"') :]))


# --- exports ---------------------------------------------------------------------------------------


def test_csv_export_streams_the_filtered_rows(admin, seeded):
    response = admin.get(LIST + "export/csv/", status="errors", **WINDOW)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert re.search(
        r'attachment; filename="request-log-\d{4}-\d\d-\d\dT\d{4}\.csv"',
        response.headers["content-disposition"],
    )
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {row["request_id"] for row in rows} == {rid(n) for n in ("b", "c", "d", "e", "long")}
    c = next(row for row in rows if row["request_id"] == rid("c"))
    assert (
        c["status_code"] == "502" and c["upstream"] == "loopback" and c["key_prefix"] == seeded["key"].prefix
    )
    assert json.loads(c["usage"]) == {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
    assert c["created"] == at(30).isoformat()
    assert "api_key" not in rows[0] and "api_key_id" not in rows[0]
    e = next(row for row in rows if row["request_id"] == rid("e"))
    assert e["duration_ms"] == "" and e["session_id"] == f"sess_{MARK}"


def test_jsonl_export_streams_the_searched_rows(admin, seeded):
    response = admin.get(LIST + "export/jsonl/", q=f"sess_{MARK}", **WINDOW)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.headers["content-disposition"].endswith('.jsonl"')
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["request_id"] for line in lines] == [rid("e")]
    assert lines[0]["turns"] == 3 and lines[0]["duration_ms"] is None
    everything = admin.get(LIST + "export/jsonl/", **WINDOW).text.splitlines()
    ids = [json.loads(line)["request_id"] for line in everything]
    assert ids == [rid(n) for n in ("long", "f", "e", "d", "c", "b", "a")]  # newest first


def test_csv_cells_a_spreadsheet_would_run_are_quoted_and_jsonl_keeps_them(admin):
    """A client's request id or an upstream's error message is anyone's text: in CSV, one that begins
    like a formula gets a leading ' (shown as text); JSON Lines has it as it is."""
    marker = uuid.uuid4().hex[:8]
    day = DAY + dt.timedelta(days=5)
    hostile = {
        "eq": '=HYPERLINK("http://evil.example","x")',
        "plus": "+1+cmd|' /C calc'!A0",
        "minus": "-2+3",
        "at": "@SUM(A1:A2)",
        "tab": "\t=1+1",
        "cr": "\r=1+1",
        "plain": "a=b, +c",
    }
    RequestLog.objects.bulk_create(
        [
            RequestLog(
                created=day + dt.timedelta(minutes=i),
                request_id=f"csv_{marker}_{name}",
                client_request_id=text,
                method="POST",
                endpoint="/v1/chat/completions",
                route="/v1/chat/completions",
                status_code=502,
                error_message=text,
                upstream=text,
            )
            for i, (name, text) in enumerate(hostile.items())
        ]
    )
    try:
        window = {"since": day.isoformat(), "until": (day + dt.timedelta(hours=1)).isoformat()}
        rows = list(csv.DictReader(io.StringIO(admin.get(LIST + "export/csv/", **window).text)))
        by_name = {row["request_id"].rsplit("_", 1)[1]: row for row in rows}
        assert set(by_name) == set(hostile)
        for name, text in hostile.items():
            expected = text if name == "plain" else "'" + text
            row = by_name[name]
            assert [row["client_request_id"], row["error_message"], row["upstream"]] == [expected] * 3, name
        assert by_name["minus"]["status_code"] == "502"  # numbers are numbers
        lines = [json.loads(line) for line in admin.get(LIST + "export/jsonl/", **window).text.splitlines()]
        assert {line["client_request_id"] for line in lines} == set(hostile.values())
    finally:
        RequestLog.objects.filter(request_id__startswith=f"csv_{marker}_").delete()


BULK = 10_050  # past the list's count limit (10,000) and five export batches


def test_a_large_log_is_counted_to_a_limit_and_exported_whole(admin, gateway):
    """10,050 rows, 700 to a timestamp, through daphne: the list says "more than 10000", the
    exports stream every row once, newest first, across batches that split a timestamp."""
    marker = uuid.uuid4().hex[:8]
    day = DAY + dt.timedelta(days=3)
    RequestLog.objects.bulk_create(
        [
            RequestLog(
                created=day + dt.timedelta(seconds=i // 700),
                request_id=f"bulk_{marker}_{i:05d}",
                method="GET",
                endpoint="/v1/models",
                route="/v1/models",
                status_code=200,
                duration_ms=1.5,
            )
            for i in range(BULK)
        ],
        batch_size=500,
    )
    try:
        window = {"since": day.isoformat(), "until": (day + dt.timedelta(hours=1)).isoformat()}
        page = admin.page(LIST, **window)
        assert "more than 10000 results" in page and "more than 10000 request log" in page
        assert admin.get(LIST, p="2", **window).status_code == 200
        with admin.client.stream("GET", LIST + "export/csv/", params=window) as response:
            assert response.status_code == 200
            assert "content-length" not in response.headers  # streamed, not buffered
            text = "".join(response.iter_text())
        rows = list(csv.DictReader(io.StringIO(text)))
        ids = [row["request_id"] for row in rows]
        assert len(ids) == BULK and len(set(ids)) == BULK
        times = [row["created"] for row in rows]
        assert times == sorted(times, reverse=True)
        jsonl = admin.get(LIST + "export/jsonl/", **window).text.splitlines()
        assert len(jsonl) == BULK and json.loads(jsonl[0])["created"] == times[0]
    finally:
        RequestLog.objects.filter(request_id__startswith=f"bulk_{marker}_").delete()


def test_the_paginator_counts_to_its_limit_only(seeded):
    class Small(CappedPaginator):
        limit = 3

    rows = RequestLog.objects.filter(request_id__startswith=f"req_{MARK}_").order_by("-created")
    capped = Small(rows, 2)
    assert capped.count == 4 and capped.capped
    assert [row.request_id for row in capped.page(1).object_list] == [rid("after"), rid("long")]
    exact = Small(rows.filter(status_code=404), 2)
    assert exact.count == 1 and not exact.capped


def test_exports_are_for_staff_only(gateway, seeded):
    response = httpx.get(f"{gateway.url}{LIST}export/csv/", params=WINDOW)
    assert response.status_code == 302 and "/admin/login/" in response.headers["location"]


def test_an_unknown_export_format_is_a_404(admin):
    assert admin.get(LIST + "export/xlsx/").status_code == 404


def test_the_log_stays_read_only(admin, seeded):
    row = seeded["rows"]["a"]
    assert admin.get(LIST + "add/").status_code == 403
    assert admin.post(f"{LIST}{row.pk}/change/", {"status_code": "500"}).status_code == 403
    assert admin.post(f"{LIST}{row.pk}/delete/", {"post": "yes"}).status_code == 403
    row.refresh_from_db()
    assert row.status_code == 200


# --- in Chromium ------------------------------------------------------------------------------------


def test_the_list_fits_1366_px_and_the_waterfall_is_visible(admin_page, gateway, seeded):
    query = "&".join(f"{name}={value}" for name, value in WINDOW.items())
    admin_page.goto(f"{gateway.url}{LIST}?{query}")
    assert admin_page.locator("#result_list tbody tr").count() == len(IN_DAY)
    assert not has_horizontal_scroll(admin_page)
    # Nor inside the table's own scroll box, which the admin gives it.
    assert admin_page.evaluate(
        "(() => { const box = document.querySelector('.results');"
        " return box.scrollWidth <= box.clientWidth; })()"
    )
    # Every column is on screen: the last one's right edge is inside the window.
    right = admin_page.evaluate(
        "document.querySelector('#result_list thead th.column-audio_out').getBoundingClientRect().right"
    )
    assert right <= 1366

    admin_page.goto(f"{gateway.url}{LIST}{seeded['rows']['c'].pk}/change/")
    waterfall = admin_page.locator(".vp-waterfall")
    waterfall.scroll_into_view_if_needed()
    assert waterfall.is_visible()
    for stage in ("stt", "llm", "tts", "total"):
        box = admin_page.locator(f".vp-wf-{stage} .vp-wf-bar").bounding_box()
        assert box is not None and box["width"] > 5 and box["height"] > 5, stage
    llm = admin_page.locator(".vp-wf-llm .vp-wf-bar").bounding_box()
    stt = admin_page.locator(".vp-wf-stt .vp-wf-bar").bounding_box()
    assert llm["x"] >= stt["x"] + stt["width"] - 1  # the LLM after speech to text
    assert not has_horizontal_scroll(admin_page)
