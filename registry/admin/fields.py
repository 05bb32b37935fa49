"""Form fields the admin uses instead of raw JSON."""

from __future__ import annotations

from typing import Any

from django import forms


class StringListField(forms.Field):
    """A list of names (chat models, aliases, allowed models), edited one per line.

    Blank lines and surrounding spaces are dropped; a name repeated, one with a comma or too long
    gives a field error. The model keeps a JSON list of strings.
    """

    widget = forms.Textarea(attrs={"rows": 3, "cols": 40, "spellcheck": "false", "class": "vp-list"})

    def __init__(self, *, max_length: int = 200, **kwargs: Any) -> None:
        self.max_length = max_length
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return "\n".join(str(v) for v in value)
        return value

    def to_python(self, value: Any) -> list[str]:
        if value in (None, ""):
            return []
        items = [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value).splitlines()
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
