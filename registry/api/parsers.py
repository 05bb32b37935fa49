"""Request bodies that no later code can choke on: checked once, at the edge.

JSON nested past MAX_DEPTH (Python's parser dies of RecursionError near 1,000), and strings that
hold a NUL (PostgreSQL text cannot store it; as a name it would route somewhere) or a lone
surrogate (no encoder can write it: not httpx, not the database, not the phonemizer) are a 400
naming the parameter, before any service sees them. Used for JSON bodies, multipart form fields
and query strings alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rest_framework.parsers import JSONParser

from registry.errors import InvalidRequest

MAX_DEPTH = 64  # far beyond any OpenAI request's nesting (chat content parts are 4 deep)
_UNSAFE = re.compile(r"[\x00\ud800-\udfff]")


def _name(path: str, key: object) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))


def check(value: Any, path: str = "") -> None:
    """Raise InvalidRequest for a too deep structure or an unsafe string anywhere in `value`."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidRequest(
                f"The request nests objects and arrays more than {MAX_DEPTH} deep.",
                param=where or None,
                code="invalid_body",
            )
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, Mapping):
            for key, child in item.items():
                _check_text(str(key), _name(where, key))
                stack.append((child, _name(where, key), depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, _name(where, i), depth + 1) for i, child in enumerate(item))


def _check_text(text: str, where: str) -> None:
    found = _UNSAFE.search(text)
    if found is None:
        return
    what = "a NUL character" if found.group() == "\x00" else "a lone surrogate (invalid Unicode)"
    raise InvalidRequest(
        f"Invalid value for '{where or 'body'}': it contains {what}.",
        param=where or None,
        code="invalid_value",
    )


class CheckedJSONParser(JSONParser):
    """DRF's JSON parser, then `check()`; a body too deep for Python's parser is the same 400."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise InvalidRequest(
                f"The request nests objects and arrays more than {MAX_DEPTH} deep.", code="invalid_body"
            ) from None
        check(data)
        return data
