"""The route an audited endpoint belongs to: `/v1/models/{model_id}` for every model's path.

The audit log keeps both: `endpoint` (the path as called) and `route` (what the admin groups,
filters and charts by, and what metrics are labelled with, so their number stays bounded).
"""

from __future__ import annotations

import re
from functools import lru_cache

from django.urls import Resolver404, resolve

UNKNOWN = "(unknown)"  # a /v1/ path no view serves (its 404 is still audited)
# Served by a WebSocket consumer, not the URLconf.
_SOCKET_ROUTES = {"/v1/realtime"}
_CONVERTER = re.compile(r"<(?:\w+:)?(\w+)>")


@lru_cache(maxsize=4096)
def route_of(endpoint: str) -> str:
    if not endpoint.startswith("/"):  # another protocol's name for its work, e.g. "wyoming:asr"
        return endpoint
    if endpoint in _SOCKET_ROUTES:
        return endpoint
    try:
        match = resolve(endpoint)
    except Resolver404:
        return UNKNOWN
    if not match.url_name:  # /v1/'s catch-all, which answers 404 in the OpenAI shape
        return UNKNOWN
    return "/" + _CONVERTER.sub(r"{\1}", match.route)
