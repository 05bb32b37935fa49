"""The admin on a large audit log: the request log list, each of its filters, its search, and the
dashboard, on PostgreSQL with a million rows.

    cd /work/main && DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m bench.bench_admin [--rows 1000000] [--runs 5] [--keep]

(`python bench/bench_admin.py ...` works too.) About 3 minutes for a million rows on 2 cores.

It creates a throwaway database on $DATABASE_URL's server (bench_admin_<pid>; the URL's own database
is not touched), migrates it, and seeds --rows RequestLog rows with one INSERT ... SELECT over
generate_series (no row passes through Python): a month of timestamps up to now; transcriptions,
speech, voice chats and model lists (4 routes, 7 models, 20 keys used unevenly, 3 upstreams); about
3 % failures (bad audio, bad values, upstream timeouts and 5xx, bad keys), 10 % of transcriptions from
the transcript cache, 0.5 % client disconnects. Then ANALYZE, and each page is timed through Django's
test Client logged in as a superuser (the whole view: queries and template), the median of --runs
after WARMUP untimed calls, with the number of SQL queries it made; and `registry.dashboard.build()`
alone for each window. The database is dropped afterwards (--keep leaves it and prints its URL).

A filter the list does not know answers 302 (Django's admin redirects to ?e=1): the status column
says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the repo root

from bench.report import markdown_table, ms, print_machine, timed_median, warn_if_busy  # noqa: E402

POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/postgres"
KEYS = 20
UPSTREAMS = ["local-llm", "openrouter", "vllm-gpu"]
LIST = "/admin/registry/requestlog/"

# Every column the seed writes, as SQL over one row of `t` (below); nullable columns not named here
# stay NULL. `seed` checks that no NOT NULL column is missing (the model may grow).
COLUMNS = {
    "created": "at",
    "request_id": "'bench-' || g",
    "client_request_id": "''",
    "api_key_id": "CASE WHEN kind = 'models' AND failed THEN NULL ELSE (%(key_ids)s::bigint[])[k] END",
    "key_prefix": "CASE WHEN kind = 'models' AND failed THEN '' ELSE (%(prefixes)s::text[])[k] END",
    "method": "CASE kind WHEN 'models' THEN 'GET' ELSE 'POST' END",
    "endpoint": """CASE kind WHEN 'stt' THEN '/v1/audio/transcriptions' WHEN 'tts' THEN '/v1/audio/speech'
        WHEN 'chat' THEN '/v1/chat/completions'
        ELSE CASE WHEN b < 0.5 THEN '/v1/models'
                  ELSE '/v1/models/' || (ARRAY['whisper-1', 'tts-1', 'llama3.2:1b'])[1 + floor(c * 3)::int]
             END END""",
    "route": """CASE kind WHEN 'stt' THEN '/v1/audio/transcriptions' WHEN 'tts' THEN '/v1/audio/speech'
        WHEN 'chat' THEN '/v1/chat/completions'
        ELSE CASE WHEN b < 0.5 THEN '/v1/models' ELSE '/v1/models/{model_id}' END END""",
    "model_names": """CASE kind
        WHEN 'stt' THEN (ARRAY['Systran/faster-whisper-small', 'Systran/faster-whisper-tiny.en'])
                        [1 + floor(b * 2)::int]
        WHEN 'tts' THEN (ARRAY['hexgrad/Kokoro-82M', 'rhasspy/piper-en_US-joe-medium'])[1 + floor(b * 2)::int]
        WHEN 'chat' THEN (ARRAY['llama3.2:1b', 'qwen2.5:7b', 'gpt-4o-mini'])[1 + floor(b * 3)::int]
                         || ',Systran/faster-whisper-small,hexgrad/Kokoro-82M'
        ELSE '' END""",
    "status_code": """CASE WHEN NOT failed THEN 200
        WHEN kind = 'chat' THEN CASE WHEN c < 0.5 THEN 504 ELSE 502 END
        WHEN kind = 'models' THEN 401 ELSE 400 END""",
    "error_type": """CASE WHEN NOT failed THEN '' WHEN kind = 'chat' THEN 'server_error'
        ELSE 'invalid_request_error' END""",
    "error_code": """CASE WHEN NOT failed THEN ''
        WHEN kind = 'chat' THEN CASE WHEN c < 0.5 THEN 'upstream_timeout' ELSE 'upstream_error' END
        WHEN kind = 'models' THEN 'invalid_api_key' WHEN kind = 'stt' THEN 'invalid_audio'
        ELSE 'unsupported_value' END""",
    "error_message": "CASE WHEN failed THEN 'A seeded failure of a ' || kind || ' request.' ELSE '' END",
    "duration_ms": """CASE kind WHEN 'models' THEN 2 + 10 * a
        ELSE 100 + -ln(1 - a) * CASE kind WHEN 'chat' THEN 1500 WHEN 'stt' THEN 400 ELSE 250 END END""",
    "stt_ms": "CASE WHEN kind = 'chat' OR (kind = 'stt' AND c >= 0.1) THEN 50 + -ln(1 - b) * 300 END",
    "llm_first_token_ms": "CASE WHEN kind = 'chat' AND NOT failed THEN 80 + 200 * b END",
    "llm_ms": "CASE WHEN kind = 'chat' AND NOT failed THEN 300 + -ln(1 - c) * 1000 END",
    "tts_first_audio_ms": "CASE WHEN kind IN ('tts', 'chat') AND NOT failed THEN 30 + 100 * b END",
    "tts_ms": "CASE WHEN kind IN ('tts', 'chat') AND NOT failed THEN 40 + -ln(1 - c) * 200 END",
    "audio_seconds_in": "CASE kind WHEN 'stt' THEN 1 + 30 * b WHEN 'chat' THEN 1 + 10 * c END",
    "audio_seconds_out": "CASE WHEN kind IN ('tts', 'chat') AND NOT failed THEN 1 + 20 * c END",
    "characters_in": "CASE WHEN kind = 'tts' THEN (10 + 300 * b)::int END",
    "bytes_in": "(1000 + 500000 * b)::bigint",
    "bytes_out": "(100 + 100000 * c)::bigint",
    "upstream": "CASE WHEN kind = 'chat' THEN (%(upstreams)s::text[])[1 + floor(a * 3)::int] ELSE '' END",
    "upstream_status": """CASE WHEN kind <> 'chat' THEN NULL WHEN NOT failed THEN 200
        WHEN c >= 0.5 THEN 500 END""",
    "stt_cache_hits": "CASE WHEN kind = 'stt' AND c < 0.1 THEN 1 ELSE 0 END",
    "streamed": "kind = 'chat' AND b < 0.7",
    "client_disconnected": "rf > 0.995",
    "reply_capped": "false",
    "usage": """CASE WHEN kind = 'chat' AND NOT failed THEN jsonb_build_object(
        'prompt_tokens', (20 + 200 * a)::int, 'completion_tokens', (10 + 300 * b)::int,
        'total_tokens', (20 + 200 * a)::int + (10 + 300 * b)::int) END""",
    "session_id": "''",
}

SEED = """
WITH s AS (
    SELECT g, random() AS rk, random() AS rf, random() AS rkey, random() AS a, random() AS b, random() AS c,
           now() - random() * interval '30 days' AS at
    FROM generate_series(1, %(rows)s) AS g
), t AS (
    SELECT *,
           CASE WHEN rk < 0.35 THEN 'stt' WHEN rk < 0.60 THEN 'tts' WHEN rk < 0.90 THEN 'chat'
                ELSE 'models' END AS kind,
           rf < 0.03 AS failed,
           1 + floor({keys} * rkey * rkey)::int AS k  -- a few keys do most of the work
    FROM s
)
-- In time order, as the gateway writes them: a window's rows lie together, as in a real table.
INSERT INTO registry_requestlog ({columns}) SELECT {values} FROM t ORDER BY at
"""


@contextmanager
def throwaway_database(*, keep: bool) -> Iterator[str]:
    """A new database on $DATABASE_URL's server (default POSTGRES_URL's), dropped afterwards."""
    import psycopg

    base = os.environ.get("DATABASE_URL") or POSTGRES_URL
    if not base.startswith("postgres"):
        raise SystemExit("bench_admin needs PostgreSQL: DATABASE_URL=postgres://...")
    parts = urlsplit(base)
    name = f"bench_admin_{os.getpid()}"
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as server:
        server.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        if not keep:
            with psycopg.connect(maintenance, autocommit=True) as server:
                server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(rows: int) -> dict[str, Any]:
    """--rows RequestLog rows in one statement; returns the keys and a few values to filter by."""
    from django.db import connection

    from registry.models import ApiKey, RequestLog

    required = {f.column for f in RequestLog._meta.concrete_fields if not f.null and not f.primary_key}
    missing = required - COLUMNS.keys()
    if missing:
        raise SystemExit(f"the seed has no value for RequestLog's NOT NULL column(s) {sorted(missing)}")
    keys = [ApiKey.issue(name=f"bench-key-{i}")[0] for i in range(KEYS)]
    sql = SEED.format(keys=KEYS, columns=", ".join(COLUMNS), values=", ".join(COLUMNS.values()))
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            {
                "rows": rows,
                "key_ids": [k.pk for k in keys],
                "prefixes": [k.prefix for k in keys],
                "upstreams": UPSTREAMS,
            },
        )
        cursor.execute("ANALYZE registry_requestlog")
    return {"keys": keys}


def pages(keys: list[Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(what, path, query) of every timed page."""
    from django.utils import timezone

    today = timezone.localdate()
    yesterday, today = (today - dt.timedelta(days=1)).isoformat(), today.isoformat()
    busiest, quiet = keys[0], keys[-1]
    return [
        ("list", LIST, {}),
        ("list, status 2xx", LIST, {"status": "2xx"}),
        ("list, status 4xx", LIST, {"status": "4xx"}),
        ("list, status 5xx", LIST, {"status": "5xx"}),
        ("list, errors", LIST, {"status": "errors"}),
        ("list, one day", LIST, {"since": yesterday, "until": today}),
        ("list, busiest key", LIST, {"key": str(busiest.pk)}),
        ("list, quietest key", LIST, {"key": str(quiet.pk)}),
        ("list, route", LIST, {"route": "/v1/models/{model_id}"}),
        ("list, model", LIST, {"model": "hexgrad/Kokoro-82M"}),
        ("list, upstream", LIST, {"upstream": "vllm-gpu"}),
        ("list, cache hit", LIST, {"cache": "hit"}),
        ("list, cache miss", LIST, {"cache": "miss"}),
        ("list, disconnected", LIST, {"disconnected": "yes"}),
        ("list, not disconnected", LIST, {"disconnected": "no"}),
        (
            "list, errors of a key in a day",
            LIST,
            {"status": "errors", "key": str(busiest.pk), "since": yesterday},
        ),
        ("search, request id", LIST, {"q": "bench-123457"}),
        ("search, key prefix", LIST, {"q": quiet.prefix}),
        ("dashboard, hour", "/admin/dashboard/", {"window": "hour"}),
        ("dashboard, day", "/admin/dashboard/", {"window": "day"}),
        ("dashboard, week", "/admin/dashboard/", {"window": "week"}),
    ]


@contextmanager
def counted() -> Iterator[list[int]]:
    """The number of SQL statements run inside, in [0] afterwards. (Not CaptureQueriesContext: the
    test Client's request_started signal resets the connection's query log.)"""
    from django.db import connection

    count = [0]

    def count_one(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        count[0] += 1
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count_one):
        yield count


def time_pages(args: argparse.Namespace, keys: list[Any]) -> list[list[object]]:
    from django.contrib.auth.models import User
    from django.test import Client

    from registry import dashboard

    client = Client()
    client.force_login(User.objects.create_superuser("bench-admin", "", "bench-admin"))
    table: list[list[object]] = []
    for what, path, query in pages(keys):
        with counted() as queries:
            status = client.get(path, query).status_code
        seconds = timed_median(lambda path=path, query=query: client.get(path, query), runs=args.runs)
        shown = "&".join(f"{k}={v}" for k, v in query.items())
        table.append([what, f"`{path}{'?' + shown if shown else ''}`", ms(seconds), status, queries[0]])
        print(f"  {what}: {ms(seconds)} ({status})", flush=True)
    for name in dashboard.WINDOWS:
        with counted() as queries:
            dashboard.build(dashboard.parse_window(window=name))
        seconds = timed_median(
            lambda name=name: dashboard.build(dashboard.parse_window(window=name)), runs=args.runs
        )
        table.append([f"dashboard.build(), {name}", "(no HTTP)", ms(seconds), "", queries[0]])
        print(f"  dashboard.build() {name}: {ms(seconds)}", flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="RequestLog rows to seed (default 1000000)"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed calls per page (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    args = parser.parse_args()
    if args.rows < 1 or args.runs < 1:
        parser.error("--rows and --runs must be positive")
    started = time.perf_counter()
    facts, load_before = print_machine()
    with (
        throwaway_database(keep=args.keep) as url,
        tempfile.TemporaryDirectory(prefix="bench-admin-") as data_dir,
    ):
        os.environ.update(
            DATABASE_URL=url, VOICEPROXY_DATA_DIR=data_dir, DJANGO_SETTINGS_MODULE="voiceproxy.settings"
        )
        os.environ.pop("REDIS_URL", None)  # the cache: this process's memory
        import django
        from django.core.management import call_command
        from django.db import connection, connections

        django.setup()
        call_command("migrate", verbosity=0)
        with connection.cursor() as cursor:
            cursor.execute("SELECT version()")
            server = cursor.fetchone()[0].split(" on ")[0]
        seeding = time.perf_counter()
        seeded = seed(args.rows)
        took = time.perf_counter() - seeding
        print(f"seeded:  {args.rows:,} rows in {took:.1f} s (one INSERT ... SELECT, then ANALYZE)")
        print(f"server:  {server}")
        print(f"timing:  median of {args.runs} after warm-up, through django.test.Client as a superuser")
        table = time_pages(args, seeded["keys"])
        connections.close_all()
        if args.keep:
            print(f"kept:    {url}")
    print(f"\n== The admin on {args.rows:,} audit rows ({server}) ==\n")
    print(markdown_table(["page", "query", "median", "status", "SQL queries"], table))
    warn_if_busy(load_before, 1.0)
    print(
        f"\n({facts['cores']} cores, {facts['cpu']}; bench wall time {time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
