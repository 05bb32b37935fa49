"""Reading what the gateway records after a response: its audit log, a key's last use.

The gateway hands each RequestLog row (and a key's `last_used`) to a background writer as the
response ends, so they land a few milliseconds after the client has its answer: wait for them
rather than race them.
"""

from __future__ import annotations

import time
from datetime import datetime

from django.db.models import Q

from registry.models import ApiKey, RequestLog


def audit_rows(*, count: int = 1, timeout: float = 5.0, **filters: object) -> list[RequestLog]:
    """The rows matching `filters`, once at least `count` of them exist (AssertionError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = list(RequestLog.objects.filter(**filters).order_by("pk"))
        if len(rows) >= count:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(rows)} audit row(s) matching {filters}, expected {count} within {timeout:g} s"
            )
        time.sleep(0.02)


def audit_row(request_id: str, timeout: float = 5.0) -> RequestLog:
    """The audit row of the request with this x-request-id: the server's (from the response), or the
    one the client sent (kept as client_request_id), for requests that got no response."""
    deadline = time.monotonic() + timeout
    while True:
        row = RequestLog.objects.filter(Q(request_id=request_id) | Q(client_request_id=request_id)).first()
        if row is not None:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"no audit row for request id {request_id} within {timeout:g} s")
        time.sleep(0.02)


def last_used(key: ApiKey, timeout: float = 5.0) -> datetime:
    """The key's `last_used`, once the gateway has written one (AssertionError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        key.refresh_from_db(fields=["last_used"])
        if key.last_used is not None:
            return key.last_used
        if time.monotonic() > deadline:
            raise AssertionError(f"no last_used written for {key} within {timeout:g} s")
        time.sleep(0.02)
