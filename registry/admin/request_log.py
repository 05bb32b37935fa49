"""The audit log in the admin: read-only."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from registry.models import (
    RequestLog,
)


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    """An audit log: readable, never added to or edited."""

    date_hierarchy = "created"
    list_display = [
        "created",
        "request_id",
        "key_prefix",
        "method",
        "endpoint",
        "model_names",
        "status_code",
        "error_code",
        "duration_ms",
        "stt_ms",
        "llm_ms",
        "tts_ms",
    ]
    list_filter = ["status_code", "endpoint", "api_key", "model_names", "streamed", "upstream"]
    search_fields = [
        "request_id",
        "client_request_id",
        "key_prefix",
        "endpoint",
        "model_names",
        "error_message",
        "upstream",
    ]
    list_select_related = ["api_key"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: RequestLog | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: RequestLog | None = None) -> bool:
        return False
