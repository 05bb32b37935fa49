"""Reading the gateway's audit log from the tests.

The gateway hands each RequestLog row to a background writer as the response ends, so a row lands
a few milliseconds after the client has its answer: wait for it rather than race it.
"""

from __future__ import annotations

import time

from registry.models import RequestLog


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
    """The audit row of the request with this x-request-id."""
    return audit_rows(request_id=request_id, timeout=timeout)[0]
