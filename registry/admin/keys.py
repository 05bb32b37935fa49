"""Client API keys in the admin.

A new key's secret is shown once, in the answer to the add form's POST (a panel with a Copy button),
and kept nowhere: not in the session, not in a message cookie, not in the database (only its hash).
That answer is a POST's, so a refresh would post the form again: the form carries a one-time token,
spent by the add, and a second post of it is a form error instead of a second key.
A key's page shows its usage (registry/key_usage.py), links to its requests, and revokes or
restores it with a button (for who may change keys; each logged in the key's history).
"""

from __future__ import annotations

import secrets
from typing import Any
from weakref import WeakKeyDictionary

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from registry import key_usage
from registry.admin.common import looks_up, object_page
from registry.admin.fields import StringListField
from registry.models import ApiKey, SpeechToTextModel, TextToSpeechModel, Upstream

REQUESTS_URL = "admin:registry_requestlog_changelist"
REVOKED_AT = [{"changed": {"fields": ["Revoked at"]}}]  # a revoke's or restore's history entry

# The add form's one-time tokens, in the session: {"unused": [...], "used": [...]}, the newest
# KEEP_TOKENS of each (one per add page opened, so several tabs each have theirs).
TOKENS = "voiceproxy_apikey_add_tokens"
KEEP_TOKENS = 20


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


def _tokens(session: SessionBase) -> dict[str, list[str]]:
    stored = session.get(TOKENS)
    if not isinstance(stored, dict):
        return {"unused": [], "used": []}
    return {k: [t for t in stored.get(k, []) if isinstance(t, str)] for k in ("unused", "used")}


def _issue_token(session: SessionBase) -> str:
    token = secrets.token_urlsafe(16)
    tokens = _tokens(session)
    tokens["unused"] = [*tokens["unused"], token][-KEEP_TOKENS:]
    session[TOKENS] = tokens
    return token


def _spend_token(session: SessionBase, token: str) -> None:
    tokens = _tokens(session)
    tokens["unused"] = [t for t in tokens["unused"] if t != token]
    tokens["used"] = [*tokens["used"], token][-KEEP_TOKENS:]
    session[TOKENS] = tokens


class ApiKeyAddForm(ApiKeyForm):
    """The add form with a one-time token (a hidden field): issued when the form is shown, spent when
    the key is added. A post with a spent token (the secret's page refreshed, or the form sent twice)
    adds nothing and says so; one with a token this session was never given (a form from before a
    new login), likewise. Either way the form shown again carries a new token."""

    submission = forms.CharField(widget=forms.HiddenInput, required=False)
    session: SessionBase  # the request's, set by ApiKeyAdmin.get_form
    data: Any  # what was posted; clean() replaces a refused token in it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial["submission"] = _issue_token(self.session)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        problem = self._token_problem(cleaned.get("submission") or "")
        if problem is not None:
            # The form shown again gets a token of its own: saving it then is a deliberate new key.
            self.data = self.data.copy()
            self.data[self.add_prefix("submission")] = _issue_token(self.session)
            raise problem
        return cleaned

    def _token_problem(self, token: str) -> ValidationError | None:
        tokens = _tokens(self.session)
        if token in tokens["used"]:
            return ValidationError(
                format_html(
                    'This form was already submitted; the key was created — see the <a href="{}">key '
                    "list</a>. Nothing was added now.",
                    reverse("admin:registry_apikey_changelist"),
                ),
                code="already_submitted",
            )
        if token not in tokens["unused"]:
            return ValidationError(
                "This form is out of date (or was sent from elsewhere); nothing was added. "
                "Check the fields and save again.",
                code="unknown_submission",
            )
        return None


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
        if obj is None:
            return [*editable, "submission"]
        return ["prefix", "status", *editable, "created", "last_used", "revoked_at"]

    def get_form(
        self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is not None:
            return super().get_form(request, obj, change, **kwargs)
        # The add form's class, bound to this request's session (where its tokens are kept).
        form = type("ApiKeyAddForm", (ApiKeyAddForm,), {"session": request.session})
        return super().get_form(request, obj, change, form=form, **kwargs)

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
        """The key of a revoke or restore URL: 404 for an id that is no key's (`abc` included), 403
        for a user who may not change keys."""
        key = self.get_object(request, unquote(object_id))
        if key is None:
            raise Http404("There is no API key with that id.")
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
                self.log_change(request, key, REVOKED_AT)
                messages.success(request, f"Revoked {key}: its clients now get 401.")
            return HttpResponseRedirect(change_url)
        context = object_page(self, request, key, f"Revoke {key}?", change_url=change_url)
        return TemplateResponse(request, "admin/registry/apikey/revoke.html", context)

    def restore_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: a revoked key works again (unless it has expired)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        key = self._editable(request, object_id)
        if key.is_revoked:
            key.revoked_at = None
            key.save(update_fields=["revoked_at"])
            self.log_change(request, key, REVOKED_AT)
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
        _spend_token(request.session, form.cleaned_data["submission"])
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
        context = object_page(self, request, obj, f"New API key: {obj.name}", secret=secret)
        return TemplateResponse(request, "admin/registry/apikey/secret.html", context)

    # --- list actions -------------------------------------------------------------------------

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        keys = list(queryset.filter(revoked_at__isnull=True))
        ApiKey.objects.filter(pk__in=[k.pk for k in keys]).update(revoked_at=timezone.now())
        for key in keys:
            self.log_change(request, key, REVOKED_AT)
        self.message_user(request, f"Revoked {len(keys)} key(s).")

    @admin.action(description="Restore selected revoked keys", permissions=["change"])
    def unrevoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        keys = list(queryset.filter(revoked_at__isnull=False))
        ApiKey.objects.filter(pk__in=[k.pk for k in keys]).update(revoked_at=None)
        for key in keys:
            self.log_change(request, key, REVOKED_AT)
        self.message_user(request, f"Restored {len(keys)} key(s).")
