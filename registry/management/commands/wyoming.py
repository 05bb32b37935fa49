"""`python manage.py wyoming [--host 127.0.0.1] [--port 10300] [--allow NETS] [--zeroconf [NAME]]`

Serves the registry's speech models to Home Assistant over the Wyoming protocol (registry/wyoming/),
with the same services, model cache, worker pool and audit log as the HTTP gateway, until SIGTERM.
"""

from __future__ import annotations

import asyncio
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from registry import db_threads, journal, preload, processes
from registry.addresses import networks
from registry.wyoming.server import WyomingServer


class Command(BaseCommand):
    help = "Serve speech to text and text to speech over the Wyoming protocol (Home Assistant)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every one).")
        parser.add_argument("--port", type=int, default=10300)
        parser.add_argument(
            "--allow",
            default=None,
            help="Client addresses allowed, comma-separated IPs or networks "
            "(default: VOICEPROXY_WYOMING_ALLOW, loopback unless set).",
        )
        parser.add_argument(
            "--zeroconf",
            nargs="?",
            const="voiceproxy",
            default=None,
            metavar="NAME",
            help="Announce the service over mDNS (Home Assistant discovers it) under NAME.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        allow_list = (
            [a for a in options["allow"].split(",") if a.strip()]
            if options["allow"] is not None
            else settings.VOICEPROXY_WYOMING_ALLOW
        )
        try:
            allow = networks(allow_list)
        except ValueError as exc:
            raise CommandError(f"--allow: {exc}") from exc
        if not 0 <= options["port"] <= 65535:
            raise CommandError("--port must be between 0 and 65535.")
        # Rows a process that died before writing them left in its journal, as a server start does.
        db_threads.background.later(journal.recover, what="recover audit rows from ended processes' journals")
        server = WyomingServer(
            host=options["host"],
            port=options["port"],
            allow=allow,
            drain_seconds=settings.VOICEPROXY_DRAIN_SECONDS,
        )
        # Like a server process: its model cache on the admin's Model cache page (taking load and
        # unload commands), and VOICEPROXY_PRELOAD_MODELS loaded before the first request.
        processes.heartbeat.start()
        preload.start()
        try:
            asyncio.run(server.serve(zeroconf_name=options["zeroconf"]))
        finally:
            processes.heartbeat.stop()
