"""Audit log retention: delete rows older than a number of days, a batch at a time.

Safe to run (from cron, `manage.py pruneaudit`) while servers write: each batch is one short
DELETE of at most `batch_size` of the oldest rows, in its own transaction, so no lock is held for
long and new rows (all newer than the cutoff) are never touched. A run interrupted half-way has
deleted whole batches only; the next run carries on.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from registry.models import RequestLog

logger = logging.getLogger(__name__)

BATCH_SIZE = 5000


def cutoff(older_than_days: int, *, now: dt.datetime | None = None) -> dt.datetime:
    return (now or timezone.now()) - dt.timedelta(days=older_than_days)


def prunable(*, older_than_days: int, now: dt.datetime | None = None) -> QuerySet[RequestLog]:
    """The rows `prune` would delete now; none when `older_than_days` is 0 (keep for ever)."""
    _check(older_than_days)
    if older_than_days == 0:
        return RequestLog.objects.none()
    return RequestLog.objects.filter(created__lt=cutoff(older_than_days, now=now))


def prune(*, older_than_days: int, batch_size: int = BATCH_SIZE, now: dt.datetime | None = None) -> int:
    """Delete rows created more than `older_than_days` days ago; returns how many were deleted.

    0 days means keep for ever (deletes nothing). `now` is the clock's time unless given.
    Raises ValueError for negative days or a batch size below 1.
    """
    _check(older_than_days)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if older_than_days == 0:
        return 0
    before = cutoff(older_than_days, now=now)  # fixed for the run: rows that age meanwhile wait for the next
    deleted = 0
    while True:
        oldest = RequestLog.objects.filter(created__lt=before).order_by("created").values("pk")[:batch_size]
        with transaction.atomic():
            # One statement: DELETE ... WHERE id IN (SELECT id ... ORDER BY created LIMIT n).
            count, _ = RequestLog.objects.filter(pk__in=oldest).delete()
        deleted += count
        if count < batch_size:
            break
    logger.info("pruned %d audit rows created before %s", deleted, before.isoformat())
    return deleted


def _check(older_than_days: int) -> None:
    if older_than_days < 0:
        raise ValueError("older_than_days must be 0 (keep for ever) or more")
