"""The audit log in the admin: a list an operator scans, an entry grouped by what it tells, exports.

Read-only: staff may view, nobody may add, change or delete (retention is `manage.py pruneaudit`).
Built for a large table: the filters (registry/admin/request_log_filters.py) and the search use
indexes, there is no date hierarchy (its year/month links need a DISTINCT over every row), and
the matches are counted up to 10,000 only (CappedPaginator).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.template.loader import render_to_string
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString

from registry import audit_export, audit_query
from registry.admin import request_log_filters as filters
from registry.audit_timeline import timeline
from registry.models import RequestLog, Upstream

EXPORT_URL_NAME = "registry_requestlog_export"
COUNT_LIMIT = 10_000  # the list counts its matches up to here; past it, "more than 10,000"


class CappedPaginator(Paginator):
    """Counts at most COUNT_LIMIT + 1 matches: on a large log an exact count of a broad filter
    reads most of the table on every page view, while "more than 10,000" is as useful to read.
    The pages stop just past the limit: narrow the filters, or export."""

    limit = COUNT_LIMIT

    @cached_property
    def count(self) -> int:
        # Any limit + 1 matches will do: unordered, the database reads them from the best index.
        return int(self.object_list.order_by().values("pk")[: self.limit + 1].count())

    @property
    def capped(self) -> bool:
        return self.count > self.limit


def _ms(value: float | None) -> str | None:
    return None if value is None else str(round(value))


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}"


class _ExportChangeList(ChangeList):
    """The list's filters, search and queryset without its page: no count, no rows read."""

    def get_results(self, request: HttpRequest) -> None:
        self.result_count = self.full_result_count = 0
        self.result_list: list[RequestLog] = []
        self.can_show_all = self.multi_page = False


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    """An audit log: readable, never added to or edited."""

    list_display = [
        "when",
        "key",
        "route_cut",
        "models",
        "status",
        "total_ms",
        "stt",
        "llm",
        "tts",
        "audio_in",
        "audio_out",
    ]
    list_display_links = ["when"]
    list_filter = [
        filters.StatusFilter,
        filters.DateRangeFilter,
        filters.RouteFilter,
        filters.ModelFilter,
        filters.KeyFilter,
        filters.UpstreamFilter,
        filters.CacheFilter,
        filters.DisconnectedFilter,
    ]
    search_fields = ["request_id"]  # shows the box; get_search_results says what it matches
    search_help_text = (
        "A request id, a client's request id, a Realtime session id, or the start of a key prefix."
    )
    list_select_related = ["api_key"]
    show_full_result_count = False
    paginator = CappedPaginator
    show_facets = admin.ShowFacets.NEVER
    empty_value_display = "—"
    actions = None
    readonly_fields = [
        "when",
        "key_link",
        "status_line",
        "flags",
        "waterfall",
        "audio_in",
        "audio_out",
        "tokens",
        "upstream_link",
        "session_link",
    ]

    # --- permissions: view only ---------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: RequestLog | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: RequestLog | None = None) -> bool:
        return False

    # --- the list -------------------------------------------------------------------------------

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[RequestLog], search_term: str
    ) -> tuple[QuerySet[RequestLog], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(audit_query.search_q(term)), False

    @admin.display(description="time", ordering="created")
    def when(self, row: RequestLog) -> str:
        moment = timezone.localtime(row.created).strftime("%Y-%m-%d %H:%M:%S")
        return format_html('<span title="{}">{}</span>', row.request_id, moment)

    @admin.display(description="key")
    def key(self, row: RequestLog) -> str | None:
        if row.api_key is None:
            return row.key_prefix or None
        url = reverse("admin:registry_apikey_change", args=[row.api_key_id])
        return format_html('<a href="{}" title="{}">{}</a>', url, row.api_key.name, row.key_prefix)

    @admin.display(description="route")
    def route_cut(self, row: RequestLog) -> str:
        return format_html(
            '<span class="vp-cut vp-route" title="{}">{}</span>', row.endpoint, row.route or row.endpoint
        )

    @admin.display(description="models")
    def models(self, row: RequestLog) -> str | None:
        if not row.model_names:
            return None
        names = row.model_names.replace(",", ", ")
        return format_html('<span class="vp-cut vp-models" title="{}">{}</span>', names, names)

    @admin.display(description="status", ordering="status_code")
    def status(self, row: RequestLog) -> str:
        why = f"{row.error_code or row.error_type}: {row.error_message[:300]}" if row.error_message else ""
        if row.status_code == 499:
            why = why or "the client closed the request"
        return format_html(
            '<span class="vp-status vp-status-{}" title="{}">{}</span>',
            audit_query.status_class(row.status_code),
            why,
            row.status_code,
        )

    @admin.display(description="total ms", ordering="duration_ms")
    def total_ms(self, row: RequestLog) -> str | None:
        return _ms(row.duration_ms)

    @admin.display(description="stt ms")
    def stt(self, row: RequestLog) -> str | None:
        return _ms(row.stt_ms)

    @admin.display(description="llm ms")
    def llm(self, row: RequestLog) -> str | None:
        return _ms(row.llm_ms)

    @admin.display(description="tts ms")
    def tts(self, row: RequestLog) -> str | None:
        return _ms(row.tts_ms)

    @admin.display(description="audio in s")
    def audio_in(self, row: RequestLog) -> str | None:
        return _seconds(row.audio_seconds_in)

    @admin.display(description="audio out s")
    def audio_out(self, row: RequestLog) -> str | None:
        return _seconds(row.audio_seconds_out)

    # --- an entry ------------------------------------------------------------------------------

    def get_fieldsets(
        self, request: HttpRequest, obj: RequestLog | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        fieldsets: list[tuple[str, dict[str, Any]]] = [
            (
                "Request",
                {
                    "fields": [
                        "when",
                        "request_id",
                        "client_request_id",
                        ("method", "endpoint"),
                        "route",
                        "key_link",
                        "model_names",
                        "status_line",
                        "flags",
                    ]
                },
            ),
            ("Timings", {"fields": ["waterfall"]}),
            (
                "Audio",
                {
                    "fields": [
                        ("audio_in", "audio_out"),
                        "characters_in",
                        ("bytes_in", "bytes_out"),
                        "stt_cache_hits",
                    ]
                },
            ),
        ]
        if obj is None or obj.usage:
            fieldsets.append(("Tokens", {"fields": ["tokens"]}))
        if obj is None or obj.upstream or obj.upstream_status:
            fieldsets.append(("Upstream", {"fields": ["upstream_link", "upstream_status"]}))
        if obj is None or obj.session_id:
            fieldsets.append(("Realtime", {"fields": ["session_link", "turns"]}))
        if obj is None or obj.error_type or obj.error_code or obj.error_message:
            fieldsets.append(("Error", {"fields": ["error_type", "error_code", "error_message"]}))
        return fieldsets

    @admin.display(description="key")
    def key_link(self, row: RequestLog) -> str | None:
        return self.key(row)

    @admin.display(description="status")
    def status_line(self, row: RequestLog) -> str:
        error = f" {row.error_code or row.error_type}" if row.error_code or row.error_type else ""
        return format_html("{}{}", self.status(row), error)

    @admin.display(description="flags")
    def flags(self, row: RequestLog) -> str | None:
        names = [
            ("streamed", row.streamed),
            ("client disconnected", row.client_disconnected),
            ("spoken reply capped", row.reply_capped),
        ]
        return ", ".join(name for name, on in names if on) or None

    @admin.display(description="stages")
    def waterfall(self, row: RequestLog) -> SafeString | None:
        stages = timeline(
            duration_ms=row.duration_ms,
            stt_ms=row.stt_ms,
            llm_ms=row.llm_ms,
            llm_first_token_ms=row.llm_first_token_ms,
            tts_ms=row.tts_ms,
            tts_first_audio_ms=row.tts_first_audio_ms,
        )
        if stages is None:
            return None
        return render_to_string("admin/registry/requestlog/waterfall.html", {"timeline": stages})

    @admin.display(description="tokens")
    def tokens(self, row: RequestLog) -> str | None:
        usage = row.usage if isinstance(row.usage, dict) else {}
        counts = [
            ("prompt", usage.get("prompt_tokens", usage.get("input_tokens"))),
            ("completion", usage.get("completion_tokens", usage.get("output_tokens"))),
            ("total", usage.get("total_tokens")),
        ]
        shown = [(name, count) for name, count in counts if isinstance(count, int)]
        return format_html_join(" · ", "{} {}", shown) or None

    @admin.display(description="upstream")
    def upstream_link(self, row: RequestLog) -> str | None:
        if not row.upstream:
            return None
        pk = Upstream.objects.filter(name=row.upstream).values_list("pk", flat=True).first()
        if pk is None:
            return row.upstream
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:registry_upstream_change", args=[pk]), row.upstream
        )

    @admin.display(description="session")
    def session_link(self, row: RequestLog) -> str | None:
        if not row.session_id:
            return None
        url = reverse("admin:registry_requestlog_changelist") + "?" + urlencode({"q": row.session_id})
        return format_html('<a href="{}" title="the session and its responses">{}</a>', url, row.session_id)

    # --- exports -------------------------------------------------------------------------------

    def get_urls(self) -> list[Any]:
        export = path(
            "export/<slug:kind>/",
            self.admin_site.admin_view(self.export_view),
            name=EXPORT_URL_NAME,
        )
        return [export, *super().get_urls()]

    def export_view(self, request: HttpRequest, kind: str) -> HttpResponse:
        """The rows the list shows for the same query string (all pages), as CSV or JSON Lines."""
        if kind not in audit_export.CONTENT_TYPES:
            raise Http404("Exports are csv or jsonl.")
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters as exc:
            return HttpResponseBadRequest(f"Cannot filter by that: {exc}")
        rows = changelist.get_queryset(request)
        chunks = audit_export.csv_chunks(rows) if kind == "csv" else audit_export.jsonl_chunks(rows)
        response = StreamingHttpResponse(
            audit_export.stream(chunks), content_type=audit_export.CONTENT_TYPES[kind]
        )
        name = audit_export.filename(kind, now=timezone.localtime())
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        # The list's ChangeList reads a page and counts the matches as it is made: an export
        # needs only its queryset.
        match = request.resolver_match
        if match is not None and match.url_name == EXPORT_URL_NAME:
            return _ExportChangeList
        return super().get_changelist(request, **kwargs)
