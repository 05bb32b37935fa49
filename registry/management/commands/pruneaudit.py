"""`python manage.py pruneaudit [--days N] [--batch-size N] [--dry-run]`: delete old audit rows.

Keeps VOICEPROXY_AUDIT_RETENTION_DAYS days unless --days says otherwise (0: keep for ever). Safe
from cron while servers write (registry/retention.py deletes in short batches).
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from registry import retention


class Command(BaseCommand):
    help = "Delete request log rows older than the retention period, in batches."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="Keep this many days (default: VOICEPROXY_AUDIT_RETENTION_DAYS; 0 keeps every row).",
        )
        parser.add_argument("--batch-size", type=int, default=retention.BATCH_SIZE, help="Rows per DELETE.")
        parser.add_argument("--dry-run", action="store_true", help="Count what would go; delete nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"] if options["days"] is not None else settings.VOICEPROXY_AUDIT_RETENTION_DAYS
        if days < 0:
            raise CommandError("--days must be 0 (keep for ever) or more.")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        if days == 0:
            self.stdout.write("Retention is 0 days: audit rows are kept for ever; nothing deleted.")
            return
        now = timezone.now()
        before = retention.cutoff(days, now=now).strftime("%Y-%m-%d %H:%M:%S %Z")
        if options["dry_run"]:
            count = retention.prunable(older_than_days=days, now=now).count()
            self.stdout.write(f"Dry run: would delete {count} audit rows created before {before}.")
            return
        count = retention.prune(older_than_days=days, batch_size=options["batch_size"], now=now)
        self.stdout.write(f"Deleted {count} audit rows created before {before}.")
