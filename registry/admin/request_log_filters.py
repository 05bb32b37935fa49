"""The request log's sidebar filters, each under a fixed query parameter name.

Other pages link to these names (the dashboard to `?status=errors&since=...`, a key's page to
`?key=<id>`), so they are part of the admin's interface: status, since, until, key, route, model,
upstream, cache, disconnected. A value a filter cannot use (`?status=7xx`, `?since=garbage`) is
ignored, and the filter says so in the sidebar with a link that drops it: never a 500, and never
the admin's "?e=1" page that forgets the other filters.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import F, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from registry import audit_query
from registry.models import ApiKey, RequestLog, Upstream

KEYS_LISTED = 30  # the most recently used keys offered; ?key=<id> filters by any key


class ChoiceFilter(admin.SimpleListFilter):
    """A SimpleListFilter whose `q()` returns the rows' condition, or None for a value it cannot use."""

    def q(self, value: str) -> Q | None:
        raise NotImplementedError

    def has_output(self) -> bool:
        # A filter with no choices to offer (no rows yet) must still apply the value it was given.
        return bool(self.lookup_choices) or self.value() is not None

    def queryset(self, request: HttpRequest, queryset: QuerySet[RequestLog]) -> QuerySet[RequestLog]:
        value = self.value()
        if value is None:
            return queryset
        condition = self.q(value)
        return queryset if condition is None else queryset.filter(condition)

    def choices(self, changelist: ChangeList) -> Iterator[dict[str, Any]]:
        yield from super().choices(changelist)
        value = self.value()
        if value is not None and self.q(value) is None:
            yield {
                "selected": True,
                "query_string": changelist.get_query_string(remove=[self.parameter_name]),
                "display": f"⚠ ignored {self.parameter_name}={value!r} (remove)",
            }


class StatusFilter(ChoiceFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("2xx", "2xx success"),
            ("4xx", "4xx client error"),
            ("5xx", "5xx server error"),
            ("errors", "errors (4xx and 5xx)"),
        ]

    def q(self, value: str) -> Q | None:
        return audit_query.status_q(value)


class KeyFilter(ChoiceFilter):
    title = "API key"
    parameter_name = "key"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        keys = ApiKey.objects.order_by(F("last_used").desc(nulls_last=True), "-pk")
        listed = list(keys.values_list("pk", "name", "prefix")[:KEYS_LISTED])
        chosen = self.value()
        if chosen and self.q(chosen) is not None and all(str(pk) != chosen for pk, *_ in listed):
            listed += keys.filter(pk=int(chosen)).values_list("pk", "name", "prefix")
        return [(str(pk), f"{name} ({prefix})") for pk, name, prefix in listed]

    def q(self, value: str) -> Q | None:
        # isdigit() alone takes "²" and other digits int() refuses; a key's id fits in 63 bits.
        if not (value.isascii() and value.isdigit()) or int(value) >= 2**63:
            return None
        return Q(api_key_id=int(value))


class RouteFilter(ChoiceFilter):
    title = "route"
    parameter_name = "route"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(route, route) for route in audit_query.distinct_values("route")]

    def q(self, value: str) -> Q | None:
        return Q(route=value)


class ModelFilter(ChoiceFilter):
    title = "model"
    parameter_name = "model"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in audit_query.model_names()]

    def q(self, value: str) -> Q | None:
        return audit_query.model_q(value) if value else None


class UpstreamFilter(ChoiceFilter):
    title = "upstream"
    parameter_name = "upstream"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = set(Upstream.objects.values_list("name", flat=True))
        names.update(audit_query.distinct_values("upstream"))
        return [(name, name) for name in sorted(names)]

    def q(self, value: str) -> Q | None:
        return Q(upstream=value) if value else None


class CacheFilter(ChoiceFilter):
    title = "transcript cache"
    parameter_name = "cache"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("hit", "hit"), ("miss", "miss (transcribed)")]

    def q(self, value: str) -> Q | None:
        # A miss is a request that transcribed audio with no cached transcript; a request that
        # transcribed nothing is neither.
        return {
            "hit": Q(stt_cache_hits__gt=0),
            "miss": Q(stt_cache_hits=0, stt_ms__isnull=False),
        }.get(value)


class DisconnectedFilter(ChoiceFilter):
    title = "client disconnected"
    parameter_name = "disconnected"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "yes"), ("no", "no")]

    def q(self, value: str) -> Q | None:
        return {"yes": Q(client_disconnected=True), "no": Q(client_disconnected=False)}.get(value)


QUICK_RANGES = [
    ("Last hour", dt.timedelta(hours=1)),
    ("Last 24 h", dt.timedelta(days=1)),
    ("Last 7 days", dt.timedelta(days=7)),
]


class DateRangeFilter(admin.ListFilter):
    """`since` (inclusive) and `until` (exclusive): ISO dates or date-times, typed or from quick links."""

    title = "time"
    template = "admin/registry/requestlog/date_range_filter.html"
    parameters = ("since", "until")

    def __init__(
        self, request: HttpRequest, params: dict[str, list[str]], model: Any, model_admin: Any
    ) -> None:
        super().__init__(request, params, model, model_admin)
        self.bounds: dict[str, dt.datetime | None] = {}
        for name in self.parameters:
            if name in params:
                value = params.pop(name)[-1].strip()
                if not value:  # the form's empty input
                    continue
                self.used_parameters[name] = value
                self.bounds[name] = audit_query.parse_moment(value, end=name == "until")

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str]:
        return list(self.parameters)

    def queryset(self, request: HttpRequest, queryset: QuerySet[RequestLog]) -> QuerySet[RequestLog]:
        if since := self.bounds.get("since"):
            queryset = queryset.filter(created__gte=since)
        if until := self.bounds.get("until"):
            queryset = queryset.filter(created__lt=until)
        return queryset

    def choices(self, changelist: ChangeList) -> Iterator[dict[str, Any]]:
        now = timezone.now().replace(microsecond=0)
        yield {
            "selected": not self.used_parameters,
            "query_string": changelist.get_query_string(remove=list(self.parameters)),
            "display": "Any time",
        }
        for label, delta in QUICK_RANGES:
            since = (now - delta).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            yield {
                "selected": False,
                "query_string": changelist.get_query_string({"since": since}, remove=["until"]),
                "display": label,
            }
        hidden = [
            (name, value)
            for name, values in changelist.filter_params.items()
            if name not in self.parameters
            for value in values
        ]
        ignored = [
            f"{name}={value!r} is not a date"
            for name, value in self.used_parameters.items()
            if self.bounds.get(name) is None
        ]
        yield {
            "form": True,
            "since": self.used_parameters.get("since", ""),
            "until": self.used_parameters.get("until", ""),
            "hidden": hidden,
            "ignored": ignored,
        }
