"""What one API key has used: its requests, errors, audio, characters and tokens over three windows.

The key's page in the admin shows `usage(key_id)`. One aggregate query over the key's audit rows
(the `(api_key, -created)` index), each window a filtered aggregate; no row is loaded into Python.
Errors are 4xx and 5xx answers, as in the request log's "errors" filter. Tokens are the upstream's
own counts from each row's `usage` JSON; a value that is not a number is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Aggregate, Case, Count, FloatField, Max, Q, Sum, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast
from django.utils import timezone

from registry.models import RequestLog

WINDOWS: tuple[tuple[str, timedelta | None], ...] = (
    ("Last 24 hours", timedelta(days=1)),
    ("Last 30 days", timedelta(days=30)),
    ("All time", None),
)
TOKEN_KINDS = ("prompt_tokens", "completion_tokens", "total_tokens")
NUMBER = r"^[0-9]+(\.[0-9]+)?$"


@dataclass(frozen=True)
class Usage:
    window: str  # "Last 24 hours", ...
    requests: int
    errors: int
    audio_seconds_in: float
    audio_seconds_out: float
    characters_in: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    last_request: datetime | None


def _tokens(kind: str) -> Case:
    return Case(
        When(
            Q(**{f"usage__{kind}__regex": NUMBER}), then=Cast(KeyTextTransform(kind, "usage"), FloatField())
        ),
        default=None,
        output_field=FloatField(),
    )


def usage(key_id: int, *, now: datetime | None = None) -> list[Usage]:
    """The key's usage in each of WINDOWS (ending `now`), in that order."""
    now = now or timezone.now()
    aggregates: dict[str, Aggregate] = {}
    for index, (_, span) in enumerate(WINDOWS):
        within = Q(created__gte=now - span) if span is not None else None  # None: every row
        errors = Q(status_code__gte=400, status_code__lt=600)
        aggregates |= {
            f"requests_{index}": Count("pk", filter=within),
            f"errors_{index}": Count("pk", filter=errors if within is None else within & errors),
            f"audio_in_{index}": Sum("audio_seconds_in", filter=within),
            f"audio_out_{index}": Sum("audio_seconds_out", filter=within),
            f"characters_{index}": Sum("characters_in", filter=within),
            f"last_{index}": Max("created", filter=within),
            **{f"{kind}_{index}": Sum(_tokens(kind), filter=within) for kind in TOKEN_KINDS},
        }
    row = RequestLog.objects.filter(api_key_id=key_id).aggregate(**aggregates)
    return [
        Usage(
            window=label,
            requests=row[f"requests_{i}"],
            errors=row[f"errors_{i}"],
            audio_seconds_in=row[f"audio_in_{i}"] or 0.0,
            audio_seconds_out=row[f"audio_out_{i}"] or 0.0,
            characters_in=row[f"characters_{i}"] or 0,
            prompt_tokens=round(row[f"prompt_tokens_{i}"] or 0),
            completion_tokens=round(row[f"completion_tokens_{i}"] or 0),
            total_tokens=round(row[f"total_tokens_{i}"] or 0),
            last_request=row[f"last_{i}"],
        )
        for i, (label, _) in enumerate(WINDOWS)
    ]
