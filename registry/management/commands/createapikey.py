"""`python manage.py createapikey NAME [--models a,b] [--expires-days N] [--rate-limit N]`.

Prints only the new secret on stdout, so scripts can capture it: `KEY=$(python manage.py createapikey ci)`.
"""

from __future__ import annotations

from argparse import ArgumentParser
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from registry.models import ApiKey


class Command(BaseCommand):
    help = "Create a client API key and print its secret (shown only this once)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--models", default="", help="Comma-separated model ids or aliases it may use.")
        parser.add_argument("--expires-days", type=float, default=None)
        parser.add_argument("--rate-limit", type=int, default=None, help="Requests per minute.")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["expires_days"]
        if days is not None and days <= 0:
            raise CommandError("--expires-days must be positive.")
        rate = options["rate_limit"]
        if rate is not None and rate <= 0:
            raise CommandError("--rate-limit must be positive.")
        try:
            _, secret = ApiKey.issue(
                name=options["name"],
                allowed_models=[m.strip() for m in options["models"].split(",") if m.strip()],
                expires_at=timezone.now() + timedelta(days=days) if days is not None else None,
                rate_limit_per_minute=rate,
            )
        except ValidationError as exc:
            raise CommandError(f"Invalid key: {exc.message_dict}") from exc
        self.stdout.write(secret)
