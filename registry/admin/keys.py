"""Client API keys in the admin.

A new key's secret is shown once, in the answer to the add form's POST (a panel with a Copy button),
and kept nowhere: not in the session, not in a message cookie, not in the database (only its hash).
A key's page shows its usage (registry/key_usage.py), links to its requests, and revokes or
restores it with a button.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from registry import key_usage
from registry.admin.common import looks_up
from registry.admin.fields import StringListField
from registry.models import ApiKey, SpeechToTextModel, TextToSpeechModel, Upstream

REQUESTS_URL = "admin:registry_requestlog_changelist"


def known_model_names() -> list[str]:
    """What a key may be allowed: the speech models' ids and aliases and the upstreams' chat models."""
    names: set[str] = set()
    for speech_model in (SpeechToTextModel, TextToSpeechModel):
        for model_id, aliases in speech_model.objects.values_list("model_id", "aliases"):
            names.add(model_id)
            names.update(a for a in aliases or [] if isinstance(a, str))
    for chat_models in Upstream.objects.values_list("chat_models", flat=True):
        names.update(m for m in chat_models or [] if isinstance(m, str))
    return sorted(names)


class ApiKeyForm(forms.ModelForm):
    allowed_models = StringListField(
        label="Allowed models",
        help_text="Model ids or aliases this key may use, one per line; empty: every model.",
        suggestions=known_model_names,
    )

    class Meta:
        model = ApiKey
        fields = ["name", "expires_at", "allowed_models", "rate_limit_per_minute"]
        labels = {"expires_at": "Expires", "rate_limit_per_minute": "Rate limit"}
        help_texts = {
            "name": "Who or what uses the key; shown with its prefix in lists and the request log.",
            "expires_at": "From then on the key gets 401; empty: it does not expire.",
            "rate_limit_per_minute": "Requests per minute; empty: unlimited.",
        }


class KeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "active"), ("revoked", "revoked"), ("expired", "expired")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        now = timezone.now()
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = [
        "name",
        "prefix",
        "status",
        "created",
        "last_used",
        "expires_at",
        "rate_limit_per_minute",
        "scope",
    ]
    list_filter = [KeyStatusFilter, "created", "last_used"]
    search_fields = ["name", "prefix"]
    actions = ["revoke", "unrevoke"]

    # The secret of a key being added, from save_model to response_add of the same request; gone
    # with the request (a weak reference), so it is never stored.
    _issued: WeakKeyDictionary[HttpRequest, str] = WeakKeyDictionary()

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        return ["prefix", "status", "created", "last_used", "revoked_at"] if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        editable = list(ApiKeyForm.Meta.fields)
        return ["prefix", "status", *editable, "created", "last_used", "revoked_at"] if obj else editable

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # As for upstream keys: no URL filter on the stored hash.
        return not looks_up(lookup, "secret_hash") and super().lookup_allowed(lookup, value, request)

    def get_urls(self) -> list[Any]:
        def view(function: Any) -> Any:
            return self.admin_site.admin_view(function)

        return [
            path("<path:object_id>/revoke/", view(self.revoke_view), name="registry_apikey_revoke"),
            path("<path:object_id>/restore/", view(self.restore_view), name="registry_apikey_restore"),
            *super().get_urls(),
        ]

    @admin.display(description="status")
    def status(self, obj: ApiKey) -> str:
        return "revoked" if obj.is_revoked else "expired" if obj.is_expired else "active"

    @admin.display(description="models")
    def scope(self, obj: ApiKey) -> str:
        return ", ".join(obj.allowed_models) or "(all)"

    # --- the key's page -----------------------------------------------------------------------

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        key = self.get_object(request, object_id)
        if key is not None:
            extra_context = {
                **(extra_context or {}),
                "usage": key_usage.usage(key.pk),
                "requests_url": f"{reverse(REQUESTS_URL)}?key={key.pk}",
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def _editable(self, request: HttpRequest, object_id: str) -> ApiKey:
        key = get_object_or_404(ApiKey, pk=object_id)
        if not self.has_change_permission(request, key):
            raise PermissionDenied
        return key

    def revoke_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET: a page that asks to confirm; POST: the key is revoked at once (its clients get 401)."""
        key = self._editable(request, object_id)
        change_url = reverse("admin:registry_apikey_change", args=[key.pk])
        if request.method == "POST":
            if key.is_revoked:
                messages.info(request, f"{key} was already revoked.")
            else:
                key.revoked_at = timezone.now()
                key.save(update_fields=["revoked_at"])
                self.log_change(request, key, [{"changed": {"fields": ["Revoked at"]}}])
                messages.success(request, f"Revoked {key}: its clients now get 401.")
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": key,
            "title": f"Revoke {key}?",
            "change_url": change_url,
        }
        return TemplateResponse(request, "admin/registry/apikey/revoke.html", context)

    def restore_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: a revoked key works again (unless it has expired)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        key = self._editable(request, object_id)
        if key.is_revoked:
            key.revoked_at = None
            key.save(update_fields=["revoked_at"])
            self.log_change(request, key, [{"changed": {"fields": ["Revoked at"]}}])
            messages.success(
                request, f"Restored {key}." + (" It has expired, though." if key.is_expired else "")
            )
        return HttpResponseRedirect(reverse("admin:registry_apikey_change", args=[key.pk]))

    # --- a new key and its secret -------------------------------------------------------------

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        fields = {f: form.cleaned_data[f] for f in ApiKeyForm.Meta.fields}
        key, secret = ApiKey.issue(**fields)
        obj.pk = key.pk  # so the admin's log entry and links point at the new key
        obj.prefix = key.prefix
        obj.secret_hash = key.secret_hash
        obj.created = key.created
        self._issued[request] = secret

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        # The panel is this POST's answer, not a page redirected to: the secret then never travels
        # through the session or a message cookie. The admin's pages are sent no-store.
        secret = self._issued.pop(request, None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": obj,
            "title": f"New API key: {obj.name}",
            "secret": secret,
        }
        return TemplateResponse(request, "admin/registry/apikey/secret.html", context)

    # --- list actions -------------------------------------------------------------------------

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).")

    @admin.action(description="Restore selected revoked keys")
    def unrevoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.update(revoked_at=None)
        self.message_user(request, f"Restored {count} key(s).")
