"""ASGI entry point: `daphne voiceproxy.asgi:application`."""

import os

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceproxy.settings")

# Built before anything imports models: get_asgi_application() sets Django up.
django_application = get_asgi_application()

from registry import db_threads, journal  # noqa: E402 - needs Django set up
from registry.api.chunked import ChunkedBodyMiddleware  # noqa: E402
from registry.api.health import LoopHealth  # noqa: E402
from voiceproxy.drain import Draining  # noqa: E402

application = Draining(
    ProtocolTypeRouter({"http": LoopHealth(ChunkedBodyMiddleware(django_application))}),
)

# Rows a process that died before writing them left in its journal: written as this one starts.
db_threads.background.later(journal.recover, what="recover audit rows from the journals of ended processes")


def _stop_twisted_parsing_uploads() -> None:
    """Twisted parses every multipart body into `request.args` on the event loop, and daphne never
    reads them (Django parses the body itself, off the loop). Measured in bench/bench_stt.py: 5 ms
    for a 300 KiB upload, 85 ms for 4 MiB, a 250 ms stall of every other request during a 10 MiB
    upload. Twisted's own switch for it is `parsePOSTFormSubmission` (twisted#4519); daphne does not
    pass it, so its request class passes it here."""
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:  # served by another ASGI server
        return
    if getattr(WebRequest, "_voiceproxy_patched", False):
        return
    original = WebRequest.__init__

    def __init__(self: WebRequest, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        original(self, *args, **kwargs)

    WebRequest.__init__ = __init__
    WebRequest._voiceproxy_patched = True


_stop_twisted_parsing_uploads()
