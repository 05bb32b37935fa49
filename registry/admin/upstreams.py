"""Upstreams in the admin: the LLM APIs chat completions are forwarded to.

The stored key is write-only: a new upstream's form asks for it plainly; an existing one's says only
whether one is stored and offers to keep, replace or remove it. "Test connection" (a button on the
change page, an action on the list) calls the upstream's `/models` (registry/upstream_probe.py) and
shows what it serves, which can then become its chat models. Whatever changes an upstream or calls
it with its stored key (the actions, the test, "use these as chat models") needs the change
permission, is a POST, and is logged in the upstream's history when it changes it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from registry import upstream_probe
from registry.admin.common import looks_up, object_page
from registry.admin.fields import StringListField
from registry.models import Upstream

KEY_HELP = "Sent as Authorization: Bearer to the upstream; encrypted at rest and never shown again."
KEEP, REPLACE, REMOVE = "keep", "replace", "remove"
MAX_PARALLEL_TESTS = 8  # the list action tests the selected upstreams this many at a time


def _key_input(label: str, help_text: str) -> forms.CharField:
    # render_value=False: a key typed into a form that failed validation is not sent back in the page.
    return forms.CharField(
        label=label,
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=help_text,
    )


class UpstreamForm(forms.ModelForm):
    chat_models = StringListField(
        label="Chat models",
        help_text="Chat model ids routed here, one per line; once saved, “Test connection” lists what it "
        "serves. The default upstream also serves every model no upstream lists.",
    )

    class Meta:
        model = Upstream
        fields = ["name", "base_url", "timeout", "enabled", "is_default", "chat_models"]
        labels = {"base_url": "Base URL", "is_default": "Default"}
        help_texts = {
            "name": "Shown in the request log; unique.",
            "base_url": "Its OpenAI-compatible API root, e.g. http://127.0.0.1:11434/v1 "
            "(the gateway calls {base URL}/chat/completions).",
            "timeout": "Seconds to wait for the upstream; more than 0.",
        }


class UpstreamAddForm(UpstreamForm):
    api_key = _key_input("API key", f"Optional. {KEY_HELP}")

    def save(self, commit: bool = True) -> Upstream:
        upstream: Upstream = super().save(commit=False)
        upstream.set_api_key(self.cleaned_data.get("api_key", ""))
        if commit:
            upstream.save()
        return upstream


class UpstreamChangeForm(UpstreamForm):
    key_action = forms.ChoiceField(label="API key", widget=forms.RadioSelect, initial=KEEP)
    api_key = _key_input("New API key", f"Used only with “Replace it”. {KEY_HELP}")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = cast(forms.ChoiceField, self.fields["key_action"])
        if self.instance.has_api_key:
            field.choices = [(KEEP, "Keep the stored key"), (REPLACE, "Replace it"), (REMOVE, "Remove it")]
            field.help_text = "A key is stored."
        else:
            field.choices = [(KEEP, "Keep it without a key"), (REPLACE, "Set a key")]
            field.help_text = "No key is stored."

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        action, typed = cleaned.get("key_action"), cleaned.get("api_key")
        # The messages never quote what was typed: it is a secret.
        if action == REPLACE and not typed:
            self.add_error("api_key", "Type the new key, or keep the stored one.")
        elif typed and action != REPLACE:
            self.add_error(
                "api_key", "A key was typed, but “Replace it” is not chosen: choose it, or clear the field."
            )
        return cleaned

    def save(self, commit: bool = True) -> Upstream:
        upstream: Upstream = super().save(commit=False)
        action = self.cleaned_data.get("key_action")
        if action == REPLACE:
            upstream.set_api_key(self.cleaned_data["api_key"])
        elif action == REMOVE:
            upstream.set_api_key("")
        if commit:
            upstream.save()
        return upstream


@admin.register(Upstream)
class UpstreamAdmin(admin.ModelAdmin):
    form = UpstreamChangeForm
    list_display = ["name", "base_url", "enabled", "is_default", "routed_models", "key_set", "timeout"]
    list_filter = ["enabled", "is_default"]
    search_fields = ["name", "base_url"]
    actions = ["test_connection", "enable", "disable"]

    def get_form(
        self, request: HttpRequest, obj: Upstream | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        kwargs["form"] = UpstreamChangeForm if obj is not None else UpstreamAddForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Upstream | None = None) -> Any:
        key = ["key_action", "api_key"] if obj is not None else ["api_key"]
        return [
            (None, {"fields": ["name", "base_url", *key, "timeout", "enabled", "is_default"]}),
            ("Routing", {"fields": ["chat_models"]}),
        ]

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # The admin lets any local field be filtered from the URL (?api_key_encrypted__startswith=…):
        # an oracle that would spell out the stored token one character at a time.
        return not looks_up(lookup, "api_key_encrypted") and super().lookup_allowed(lookup, value, request)

    def get_urls(self) -> list[Any]:
        def view(function: Any) -> Any:
            return self.admin_site.admin_view(function)

        return [
            path(
                "<path:object_id>/test-connection/",
                view(self.test_connection_view),
                name="registry_upstream_test",
            ),
            path(
                "<path:object_id>/use-models/",
                view(self.use_models_view),
                name="registry_upstream_use_models",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="chat models")
    def routed_models(self, obj: Upstream) -> str:
        return ", ".join(obj.chat_models) or ("(any)" if obj.is_default else "—")

    @admin.display(description="key stored", boolean=True)
    def key_set(self, obj: Upstream) -> bool:
        return obj.has_api_key

    # --- test connection ------------------------------------------------------------------------

    def _editable(self, request: HttpRequest, object_id: str) -> Upstream:
        """The upstream of a test or use-models URL: 404 for an id that is no upstream's (`abc`
        included), 403 for a user who may not change upstreams (the test sends its stored key)."""
        upstream = self.get_object(request, unquote(object_id))
        if upstream is None:
            raise Http404("There is no upstream with that id.")
        if not self.has_change_permission(request, upstream):
            raise PermissionDenied
        return upstream

    def _results_page(
        self, request: HttpRequest, tested: list[tuple[Upstream, upstream_probe.Probe | None]]
    ) -> TemplateResponse:
        single = tested[0][0] if len(tested) == 1 else None
        title = f"Test connection: {single.name}" if single else "Test connection"
        context = object_page(
            self,
            request,
            single,
            title,
            results=[
                {
                    "upstream": row,
                    "probe": probe,
                    "url": upstream_probe.models_url(row),
                    "wait": upstream_probe.wait_for(row),
                }
                for row, probe in tested
            ],
        )
        return TemplateResponse(request, "admin/registry/upstream/test_connection.html", context)

    def test_connection_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET: the page with its button; POST (the change page's button): the test's result."""
        upstream = self._editable(request, object_id)
        probe = upstream_probe.probe(upstream) if request.method == "POST" else None
        return self._results_page(request, [(upstream, probe)])

    @admin.action(description="Test connection of selected upstreams", permissions=["change"])
    def test_connection(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> TemplateResponse:
        rows = list(queryset)
        with ThreadPoolExecutor(max_workers=MAX_PARALLEL_TESTS) as pool:  # no ORM in there: rows are loaded
            probes = list(pool.map(upstream_probe.probe, rows))
        return self._results_page(request, list(zip(rows, probes, strict=True)))

    def use_models_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST from the test's result: the ticked model ids become the upstream's chat models."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        upstream = self._editable(request, object_id)
        change_url = reverse("admin:registry_upstream_change", args=[upstream.pk])
        try:
            names = StringListField().clean(request.POST.getlist("model"))
        except forms.ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return HttpResponseRedirect(change_url)
        if not names:
            messages.error(request, "No model was ticked: the chat models are unchanged.")
            return HttpResponseRedirect(change_url)
        upstream.chat_models = names
        upstream.save(update_fields=["chat_models", "updated"])
        self.log_change(request, upstream, [{"changed": {"fields": ["Chat models"]}}])
        messages.success(
            request, f"{upstream.name} now routes {len(names)} chat model(s): {', '.join(names)}."
        )
        return HttpResponseRedirect(change_url)

    @admin.action(description="Enable selected upstreams", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable selected upstreams", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> None:
        self._set_enabled(request, queryset, False)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[Upstream], enabled: bool) -> None:
        rows = list(queryset.exclude(enabled=enabled))
        Upstream.objects.filter(pk__in=[r.pk for r in rows]).update(enabled=enabled)
        for row in rows:
            self.log_change(request, row, [{"changed": {"fields": ["Enabled"]}}])
        self.message_user(request, f"{'Enabled' if enabled else 'Disabled'} {len(rows)} upstream(s).")
