"""Aggregates the database computes for the dashboard, the same on PostgreSQL and SQLite:
percentiles per group beside ordinary aggregates (`summarise`), and time buckets (`EpochBucket`).

Percentiles are linearly interpolated between the closest ranks (numpy's default, and SQL's
`percentile_cont`). PostgreSQL computes them with `percentile_cont` in the same query as the other
aggregates, one scan of the rows; SQLite, which has no percentile function, ranks each group's
values with a window function and returns only the two values around each percentile, one query
per column. Either way no row is loaded into Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connection
from django.db.models import Aggregate, Count, F, FloatField, Func, IntegerField, QuerySet, Value
from django.db.models import Window as Over
from django.db.models.functions import RowNumber

QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class Percentiles:
    count: int  # rows with a value
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


@dataclass(frozen=True)
class Summary:
    values: dict[str, Any]  # the aggregates asked for, by name
    percentiles: dict[str, Percentiles]  # by column; Percentiles(0) where no row has a value


def summarise(
    rows: QuerySet, *, aggregates: dict[str, Any], columns: Sequence[str], group: str | None = None
) -> dict[Any, Summary]:
    """The `aggregates` (name -> Count, Sum...) and the QUANTILES of each column (nulls left out)
    over `rows`, per value of `group`, or for all rows under the key None (always present).

    On PostgreSQL one query, one scan of the rows; elsewhere one for the aggregates and one per
    column for the percentiles."""
    if connection.vendor == "postgresql":
        annotations = dict(aggregates)
        for i, column in enumerate(columns):
            annotations[f"pct_{i}"] = PercentileCont(column, QUANTILES)
            annotations[f"pctn_{i}"] = Count(column)
        out = {}
        for row in _aggregated(rows, group, annotations):
            quantiles = {
                column: Percentiles(row.pop(f"pctn_{i}"), *(row.pop(f"pct_{i}") or ()))
                for i, column in enumerate(columns)
            }
            out[row.pop(group) if group else None] = Summary(row, quantiles)
        return out
    ranked = _percentiles_ranked(rows, columns, group)
    return {
        key: Summary(row, {column: ranked.get(key, {}).get(column, Percentiles(0)) for column in columns})
        for row in _aggregated(rows, group, aggregates)
        for key in [row.pop(group) if group else None]
    }


def _aggregated(rows: QuerySet, group: str | None, annotations: dict[str, Any]) -> list[dict[str, Any]]:
    if group is None:
        return [rows.aggregate(**annotations)]
    return list(rows.values(group).annotate(**annotations))


class PercentileCont(Aggregate):
    """PostgreSQL's `percentile_cont(ARRAY[...]) WITHIN GROUP (ORDER BY col)`: one sort of the column
    per group, every quantile from it; an array of floats (None for no values)."""

    function = "percentile_cont"
    template = "%(function)s(%(fractions)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression: str, fractions: Sequence[float], **extra: Any) -> None:
        from django.contrib.postgres.fields import ArrayField  # needs psycopg: PostgreSQL only

        # Our own constants, formatted as float literals: nothing from a request reaches the SQL.
        literal = "ARRAY[" + ", ".join(repr(float(f)) for f in fractions) + "]::double precision[]"
        super().__init__(expression, fractions=literal, output_field=ArrayField(FloatField()), **extra)


def _percentiles_ranked(
    rows: QuerySet, columns: Sequence[str], group: str | None
) -> dict[Any, dict[str, Percentiles]]:
    """One query per column: each group's values ranked by a window function, and only the ranks
    around each quantile returned (at most 2 per quantile per group)."""
    partition = [F(group)] if group else None
    near = " OR ".join(
        f"idx - 1 IN (CAST((cnt - 1) * {q!r} AS INTEGER), CAST((cnt - 1) * {q!r} AS INTEGER) + 1)"
        for q in QUANTILES
    )
    out: dict[Any, dict[str, Percentiles]] = {}
    for column in columns:
        ranked = (
            rows.filter(**{f"{column}__isnull": False})
            .annotate(
                grp=F(group) if group else Value(""),
                val=F(column),
                idx=Over(RowNumber(), partition_by=partition, order_by=F(column).asc()),
                cnt=Over(Count("pk"), partition_by=partition),
            )
            .values_list("grp", "val", "idx", "cnt")
        )
        try:
            sql, params = ranked.query.get_compiler(using=ranked.db).as_sql()
        except EmptyResultSet:  # a filter that can match nothing (`pk__in=[]`): no rows, no query
            continue
        values: dict[Any, dict[int, float]] = {}
        counts: dict[Any, int] = {}
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT grp, val, idx, cnt FROM ({sql}) ranked WHERE {near}", params)  # noqa: S608
            for grp, val, idx, cnt in cursor.fetchall():
                key = grp if group else None
                values.setdefault(key, {})[idx - 1] = val
                counts[key] = cnt
        for key, ranks in values.items():
            n = counts[key]
            out.setdefault(key, {})[column] = Percentiles(n, *(_interpolate(ranks, n, q) for q in QUANTILES))
    return out


def _interpolate(ranks: dict[int, float], n: int, q: float) -> float:
    position = (n - 1) * q
    low = int(position)
    high = min(low + 1, n - 1)
    return ranks[low] + (ranks[high] - ranks[low]) * (position - low)


class EpochBucket(Func):
    """The index of the `seconds`-long bucket, counted from the Unix epoch, that a time falls in."""

    output_field = IntegerField()

    def __init__(self, expression: str, seconds: int) -> None:
        super().__init__(expression, seconds=int(seconds))

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # SQLite keeps times as UTC text; its strftime('%s') reads them as epoch seconds (the
        # doubled %% survives both this template and the backend's own placeholder rewriting).
        template = "CAST(strftime('%%%%s', %(expressions)s) AS INTEGER) / %(seconds)s"
        return super().as_sql(compiler, connection, template=template, **extra)

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # date_part is a double; EXTRACT is a numeric since PostgreSQL 14, a third slower here.
        template = "FLOOR(date_part('epoch', %(expressions)s) / %(seconds)s)::bigint"
        return super().as_sql(compiler, connection, template=template, **extra)
