"""The HTTP edge: the only code that knows DRF, `HttpRequest` or `HttpResponse`.

A request enters at `urls.py`, passes `middleware.py` (audit scope, host and size guards), is
authenticated by `auth.py` (a DRF adapter over `registry.access`), parsed by a serializer
(`serializers.py`), handed to one service (`registry.speech`, `chat`), and rendered by
`responses.py` (bodies, SSE) or, on failure, by `errors.py`.
"""

API_PREFIX = "/v1/"
"""Where the OpenAI-compatible API lives; everything else is the site (admin, health, static)."""


def is_api(path: str) -> bool:
    return path.startswith(API_PREFIX)
