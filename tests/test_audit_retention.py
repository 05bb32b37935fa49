"""Audit log retention: `retention.prune()` and `manage.py pruneaudit` delete old rows in batches and
keep recent ones.

The test database is shared with other modules, so the rows here live long ago (the 1930s and
1960s) and pruning is asked for with a clock or a number of days that reaches only them.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid

import pytest
from django.core.management import CommandError, call_command

from registry import retention
from registry.models import RequestLog


def seed(marker: str, when: dt.datetime, count: int, *, step: dt.timedelta = dt.timedelta(minutes=1)) -> None:
    RequestLog.objects.bulk_create(
        [
            RequestLog(
                created=when + i * step,
                request_id=f"ret_{marker}_{when:%Y%m%d}_{i}",
                method="GET",
                endpoint="/v1/models",
                route="/v1/models",
                status_code=200,
            )
            for i in range(count)
        ]
    )


def left(marker: str, year: int) -> int:
    return RequestLog.objects.filter(request_id__startswith=f"ret_{marker}_{year}").count()


@pytest.fixture
def marker():
    marker = uuid.uuid4().hex[:8]
    yield marker
    RequestLog.objects.filter(request_id__startswith=f"ret_{marker}_").delete()


OLD = dt.datetime(1930, 3, 1, tzinfo=dt.UTC)
RECENT = dt.datetime(1960, 3, 1, tzinfo=dt.UTC)


def test_prune_deletes_old_rows_in_batches_and_keeps_recent_ones(marker):
    seed(marker, OLD, 23)
    seed(marker, RECENT, 5)
    # A clock in 1960: rows older than 10 days are the 1930 ones (and nothing of other tests').
    now = RECENT + dt.timedelta(days=1)
    assert (
        retention.prunable(older_than_days=10, now=now)
        .filter(request_id__startswith=f"ret_{marker}_")
        .count()
        == 23
    )
    deleted = retention.prune(older_than_days=10, batch_size=5, now=now)
    assert deleted >= 23  # 5 batches of 5, the last short
    assert left(marker, 1930) == 0
    assert left(marker, 1960) == 5


def test_the_cutoff_is_exact(marker):
    seed(marker, RECENT, 10, step=dt.timedelta(days=1))  # one row a day, 1 to 10 March 1960
    now = RECENT + dt.timedelta(days=9, hours=12)
    retention.prune(older_than_days=4, now=now)  # now 10 March 12:00: cutoff 6 March 12:00
    days_left = sorted(
        RequestLog.objects.filter(request_id__startswith=f"ret_{marker}_").values_list("created", flat=True)
    )
    assert [d.day for d in days_left] == [7, 8, 9, 10]


def test_zero_days_keeps_every_row_and_bad_arguments_are_refused(marker):
    seed(marker, OLD, 3)
    assert retention.prune(older_than_days=0) == 0
    assert not retention.prunable(older_than_days=0).exists()
    assert left(marker, 1930) == 3
    with pytest.raises(ValueError):
        retention.prune(older_than_days=-1)
    with pytest.raises(ValueError):
        retention.prune(older_than_days=30, batch_size=0)


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("pruneaudit", *args, stdout=out)
    return out.getvalue()


DAYS_TO_1944 = str((dt.datetime.now(dt.UTC).date() - dt.date(1944, 1, 1)).days)  # reaches 1930, not 1960


def test_the_command_dry_run_counts_and_deletes_nothing(marker):
    seed(marker, OLD, 7)
    seed(marker, RECENT, 2)
    output = run("--days", DAYS_TO_1944, "--dry-run")
    assert output.startswith("Dry run: would delete ")
    assert int(output.split()[4]) >= 7
    assert left(marker, 1930) == 7 and left(marker, 1960) == 2


def test_the_command_prunes_and_says_how_many(marker):
    seed(marker, OLD, 7)
    seed(marker, RECENT, 2)
    output = run("--days", DAYS_TO_1944, "--batch-size", "3")
    assert output.startswith("Deleted ") and "audit rows created before 1944-" in output
    assert int(output.split()[1]) >= 7
    assert left(marker, 1930) == 0 and left(marker, 1960) == 2


def test_the_command_defaults_to_the_setting_and_zero_keeps_for_ever(marker, settings):
    seed(marker, OLD, 2)
    settings.VOICEPROXY_AUDIT_RETENTION_DAYS = 0
    assert "kept for ever" in run()
    assert "kept for ever" in run("--days", "0")
    assert left(marker, 1930) == 2
    settings.VOICEPROXY_AUDIT_RETENTION_DAYS = int(DAYS_TO_1944)
    assert run("--dry-run").startswith("Dry run: would delete ")
    assert left(marker, 1930) == 2


def test_the_command_refuses_bad_arguments():
    with pytest.raises(CommandError):
        run("--days", "-3")
    with pytest.raises(CommandError):
        run("--days", "30", "--batch-size", "0")
