"""Test an upstream's connection: `GET {base_url}/models` with its stored key, and what came back.

The admin's "Test connection" button and action call `probe(upstream)`; it returns a `Probe` (never
raises for anything the network or the upstream does) whose every text has been through `redact`:
an upstream may quote the key it was sent in its error body, and the page must not show it.

Same URL and header conventions as chat/upstream.py (the base URL without its trailing slash, then
the path; `Authorization: Bearer` only when a key is stored), but a plain blocking httpx call: the
admin runs it in its own request thread, and `registry` does not import `chat`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from registry import keys
from registry.keys import UndecryptableKey
from registry.models import Upstream

logger = logging.getLogger(__name__)

TIMEOUT_CAP = 10.0  # seconds: an operator waits on this page; the upstream's own timeout may be minutes
MAX_MESSAGE = 300  # characters of an upstream's error shown (cut after redaction: a cut key is still a key)
MAX_READ = 20_000  # characters of an upstream's body read for its error, well past what is shown
REDACTED = "[redacted]"


@dataclass(frozen=True)
class Probe:
    """What `GET /models` answered. `ok` when it was a 2xx with a model list (possibly empty)."""

    upstream: str  # the upstream's name
    url: str
    ok: bool
    status: int | None = None  # the HTTP status, None when no answer came
    latency_ms: float | None = None  # from sending the request to the end of the body
    model_ids: tuple[str, ...] = ()
    error: str = ""  # what went wrong, in words, redacted
    sent_key: bool = field(default=False)  # whether a key went with the request


def probe(upstream: Upstream, *, timeout_cap: float = TIMEOUT_CAP) -> Probe:
    """Call the upstream's `/models` now, blocking for at most about `timeout_cap` seconds."""
    url = models_url(upstream)
    try:
        key = upstream.get_api_key()
    except UndecryptableKey:
        return Probe(
            upstream.name, url, ok=False, error="Its stored API key cannot be read: was SECRET_KEY changed?"
        )
    secrets = [s for s in (key, upstream.api_key_encrypted) if s]
    seconds = wait_for(upstream, timeout_cap=timeout_cap)
    headers = {"Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=httpx.Timeout(seconds), follow_redirects=False) as client:
            response = client.get(url, headers=headers)
    except httpx.TimeoutException:
        return _failed(upstream, url, secrets, key, f"No answer within {seconds:g} s (timeout).")
    except httpx.ConnectError as exc:
        reason = str(exc) or type(exc).__name__
        if "refused" in reason.lower():
            reason = "connection refused"
        return _failed(upstream, url, secrets, key, f"Could not connect: {reason}.")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _failed(upstream, url, secrets, key, f"{type(exc).__name__}: {exc or 'no detail'}.")
    latency_ms = (time.perf_counter() - started) * 1000
    status = response.status_code
    logger.info("connection test of upstream %s: HTTP %d in %.0f ms", upstream.name, status, latency_ms)

    def answer(ok: bool, error: str = "", model_ids: tuple[str, ...] = ()) -> Probe:
        return Probe(
            upstream.name,
            url,
            ok=ok,
            status=status,
            latency_ms=latency_ms,
            model_ids=tuple(redact(m, secrets) for m in model_ids),
            error=_snippet(redact(error, secrets)),
            sent_key=bool(key),
        )

    if status >= 300:
        return answer(False, f"HTTP {status}: {_error_message(response)}")
    try:
        body = response.json()
    except ValueError:
        kind = response.headers.get("content-type", "no content type")
        return answer(False, f"HTTP {status}, but the answer is not JSON ({kind}): {_text(response.text)}")
    model_ids = _model_ids(body)
    if model_ids is None:
        return answer(False, f"HTTP {status}, but the JSON holds no model list: {_text(json.dumps(body))}")
    return answer(True, model_ids=model_ids)


def models_url(upstream: Upstream) -> str:
    return upstream.base_url.rstrip("/") + "/models"


def wait_for(upstream: Upstream, *, timeout_cap: float = TIMEOUT_CAP) -> float:
    """Seconds the test waits: the upstream's timeout, capped."""
    return max(0.1, min(upstream.timeout, timeout_cap))


def redact(text: str, secrets: list[str]) -> str:
    """`text` without any of `secrets` (registry/keys.py's rule: whole, masked or in part)."""
    for secret in secrets:
        text = keys.redact(text, secret, REDACTED)
    return text


def _failed(upstream: Upstream, url: str, secrets: list[str], key: str, error: str) -> Probe:
    error = _snippet(redact(error, secrets))
    logger.info("connection test of upstream %s failed: %s", upstream.name, error)
    return Probe(upstream.name, url, ok=False, error=error, sent_key=bool(key))


def _model_ids(body: Any) -> tuple[str, ...] | None:
    """The ids of an OpenAI model list (`{"data": [{"id": ...}]}`), or of a bare list; None if neither."""
    items = body.get("data") if isinstance(body, dict) else body
    if not isinstance(items, list):
        return None
    ids = []
    for item in items:
        name = item.get("id") if isinstance(item, dict) else item
        if isinstance(name, str) and name.strip():
            ids.append(name.strip())
    return tuple(dict.fromkeys(ids))


def _error_message(response: httpx.Response) -> str:
    """The upstream's own words: OpenAI's `{"error": {"message"}}`, `{"error": "..."}`, FastAPI's
    `{"detail": ...}`, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return _text(response.text) or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message") or json.dumps(error)
        if error:
            return _text(str(error))
    return _text(json.dumps(body))


def _text(text: str) -> str:
    return " ".join(text[:MAX_READ].split())


def _snippet(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"
