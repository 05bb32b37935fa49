"""Questions asked of the audit log: which rows a status class, a model, a time or a search means.

The admin's request log list and its exports filter with these (the dashboard and the bench may
too), so a filter means the same everywhere. Each is written to use an index on a large table:
status classes are ranges on `status_code`, times ranges on `created`, searches exact or prefix
matches, and the sidebar's choices of routes and upstreams walk their indexes one distinct value
at a time instead of reading every row.
"""

from __future__ import annotations

import datetime as dt

from django.db import connection
from django.db.models import Q
from django.utils import dateparse, timezone

from registry.models import RequestLog, SpeechToTextModel, TextToSpeechModel, Upstream

# status class -> [low, high) on status_code; "errors" is every 4xx and 5xx.
STATUS_CLASSES: dict[str, tuple[int, int]] = {
    "2xx": (200, 300),
    "4xx": (400, 500),
    "5xx": (500, 600),
    "errors": (400, 600),
}
# Rows a model filter's choices read for names the registry no longer has (from the newest).
RECENT_ROWS_FOR_MODELS = 5000
MAX_DISTINCT = 200  # distinct routes or upstreams offered as choices


def status_q(status_class: str) -> Q | None:
    """Rows of a status class (`2xx`, `4xx`, `5xx`, `errors`); None for any other value."""
    bounds = STATUS_CLASSES.get(status_class)
    if bounds is None:
        return None
    return Q(status_code__gte=bounds[0], status_code__lt=bounds[1])


def status_class(status_code: int) -> str:
    """The colour class of a status: `2xx`, `3xx`, `4xx`, `5xx`, or `closed` for 499 (the client left)."""
    if status_code == 499:
        return "closed"
    return f"{status_code // 100}xx"


def model_q(name: str) -> Q:
    """Rows that used the model `name`: one of the comma-separated names in `model_names`, exactly."""
    return (
        Q(model_names=name)
        | Q(model_names__startswith=name + ",")
        | Q(model_names__endswith="," + name)
        | Q(model_names__contains="," + name + ",")
    )


def search_q(term: str) -> Q:
    """What the log's search box finds: a request id, a client's request id or a Realtime session id
    (exactly), or a key prefix (its start). Nothing else: each of these is an indexed column."""
    return (
        Q(request_id=term) | Q(client_request_id=term) | Q(session_id=term) | Q(key_prefix__startswith=term)
    )


# The moments a filter may name: a day short of datetime's own limits, so that the moment in UTC,
# in any time zone, or a day either side of it (the dashboard's default window) still exists.
EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC) + dt.timedelta(days=1)
LATEST = dt.datetime.max.replace(tzinfo=dt.UTC) - dt.timedelta(days=1)


def parse_moment(value: str, *, end: bool = False) -> dt.datetime | None:
    """An ISO date or date-time as an aware datetime; None if `value` is neither, or is outside
    [EARLIEST, LATEST] (`9999-12-31`, `0001-01-01T00:00+05:00`: they exist only as text).

    A bare date means the start of that day, or with `end` the start of the next, so that
    `since=D&until=D` is the whole of day D (since is inclusive, until exclusive). A date-time
    without an offset is in the server's time zone.
    """
    value = value.strip()
    try:
        # The date first: parse_datetime() takes a bare date too, as its midnight.
        day = dateparse.parse_date(value)
        moment = None if day else dateparse.parse_datetime(value)
        if day is not None:
            moment = dt.datetime.combine(day + dt.timedelta(days=1 if end else 0), dt.time())
        if moment is None:
            return None
        if timezone.is_naive(moment):
            moment = timezone.make_aware(moment)
        in_utc = moment.astimezone(dt.UTC)
    except (ValueError, OverflowError):  # impossible (2025-02-30), or past year 1 or 9999
        return None
    return moment if EARLIEST <= in_utc <= LATEST else None


def distinct_values(field: str) -> list[str]:
    """The distinct non-empty values of an indexed text column (`route`, `upstream`), in order.

    SELECT DISTINCT would read the whole index; this walks it instead, one index probe per distinct
    value (a recursive "loose index scan", on both SQLite and PostgreSQL), at most MAX_DISTINCT of them.
    """
    quote = connection.ops.quote_name
    table = quote(RequestLog._meta.db_table)
    column = quote(RequestLog._meta.get_field(field).column)
    sql = f"""
        WITH RECURSIVE seen(value, n) AS (
            SELECT MIN({column}), 1 FROM {table}
            UNION ALL
            SELECT (SELECT {column} FROM {table} WHERE {column} > seen.value ORDER BY {column} LIMIT 1), n + 1
            FROM seen WHERE seen.value IS NOT NULL AND n < %s
        )
        SELECT value FROM seen WHERE value IS NOT NULL AND value <> ''
    """  # noqa: S608 - the names are the model's own, quoted; the only value is a parameter
    with connection.cursor() as cursor:
        cursor.execute(sql, [MAX_DISTINCT])
        return [row[0] for row in cursor.fetchall()]


def model_names() -> list[str]:
    """Each model name a filter may offer, once: the registry's speech models, the upstreams' chat
    models, and the names in the newest RECENT_ROWS_FOR_MODELS rows (models since removed, chat
    models the default upstream served). Not every row's: `model_names` has no index."""
    names: set[str] = set()
    for model in (SpeechToTextModel, TextToSpeechModel):
        names.update(model.objects.values_list("model_id", flat=True))
    for chat_models in Upstream.objects.values_list("chat_models", flat=True):
        names.update(str(name) for name in chat_models or [])
    recent = RequestLog.objects.order_by("-created").values_list("model_names", flat=True)
    for joined in recent[:RECENT_ROWS_FOR_MODELS]:
        names.update(name for name in joined.split(",") if name)
    return sorted(names)
