"""Content negotiation for /v1/ (its own module: DRF imports it while its views module is loading)."""

from __future__ import annotations

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request


class IgnoreAccept(DefaultContentNegotiation):
    """As OpenAI does, ignore Accept: the request's response_format decides the body's type.

    The openai SDK sends `Accept: application/octet-stream` for speech, which DRF's negotiation
    would answer with a 406 before the view runs; our views return Django responses anyway.
    """

    def select_renderer(
        self, request: Request, renderers: list[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        return renderers[0], renderers[0].media_type
