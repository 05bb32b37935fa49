"""Form fields the admin uses instead of raw JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from django import forms
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

Suggestions = Callable[[], Iterable[str]]


class StringListWidget(forms.Textarea):
    """A textarea, one name per line. With `suggestions` (a callable, read at each render: the
    registry may have changed since the form class was made), a folded row of buttons under it
    that each add one known name (registry/static/registry/string_list.js); without JavaScript
    the list still shows what may be typed."""

    def __init__(self, attrs: dict[str, Any] | None = None, suggestions: Suggestions | None = None) -> None:
        defaults = {"rows": 3, "cols": 40, "spellcheck": "false", "class": "vp-list"}
        super().__init__({**defaults, **(attrs or {})})
        self.suggestions = suggestions

    @property
    def media(self) -> forms.Media:
        if not self.suggestions:
            return forms.Media()
        return forms.Media(css={"all": ["registry/string_list.css"]}, js=["registry/string_list.js"])

    def render(
        self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: Any = None
    ) -> SafeString:
        textarea = super().render(name, value, attrs, renderer)
        names = sorted(set(self.suggestions())) if self.suggestions else []
        if not names:
            return textarea
        buttons = format_html_join(
            " ",
            '<button type="button" class="vp-list-add" data-name="{}">{}</button>',
            ((n, n) for n in names),
        )
        target = (attrs or {}).get("id") or self.attrs.get("id") or f"id_{name}"
        return format_html(
            '<div class="vp-list-field">{}<details class="vp-list-suggestions" data-for="{}">'
            "<summary>Known names ({})</summary><p>{}</p></details></div>",
            textarea,
            target,
            len(names),
            buttons,
        )


class StringListField(forms.Field):
    """A list of names (chat models, aliases, allowed models), edited one per line.

    Blank lines and surrounding spaces are dropped; a name repeated, one with a comma or too long
    gives a field error. A JSON list pasted whole (what these fields used to show) is read as its
    names. The model keeps a JSON list of strings.
    """

    widget = StringListWidget

    def __init__(
        self, *, max_length: int = 200, suggestions: Suggestions | None = None, **kwargs: Any
    ) -> None:
        self.max_length = max_length
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)
        if suggestions is not None and isinstance(self.widget, StringListWidget):
            self.widget.suggestions = suggestions

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return "\n".join(str(v) for v in value)
        return value

    def to_python(self, value: Any) -> list[str]:
        if value in (None, ""):
            return []
        if isinstance(value, (list, tuple)):
            items = [str(v) for v in value]
        else:
            items = _json_list(str(value)) or str(value).splitlines()
        return [item.strip() for item in items if item.strip()]

    def validate(self, value: list[str]) -> None:
        super().validate(value)
        seen: set[str] = set()
        for item in value:
            if "," in item:
                raise forms.ValidationError(f"{item!r}: one name per line, without commas.", code="comma")
            if len(item) > self.max_length:
                raise forms.ValidationError(
                    f"{item[:40]!r}…: at most {self.max_length} characters.", code="too_long"
                )
            if item in seen:
                raise forms.ValidationError(f"{item!r} is listed twice.", code="duplicate")
            seen.add(item)

    def has_changed(self, initial: Any, data: Any) -> bool:
        return self.to_python(initial) != self.to_python(data)


def _json_list(text: str) -> list[str] | None:
    """The names of a JSON list of strings (`["a", "b"]`), else None: the text is read line by line."""
    if not text.lstrip().startswith("["):
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
        return parsed
    return None
