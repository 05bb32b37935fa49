"""What the admin modules share."""

from __future__ import annotations

from django.db.models.constants import LOOKUP_SEP


def looks_up(lookup: str, field: str) -> bool:
    return lookup.split(LOOKUP_SEP, 1)[0] == field
