"""The upstream LLM: routing a chat model to its Upstream, and calling it with httpx.

One `httpx.AsyncClient` per upstream configuration, made on first use and kept (connection reuse;
nothing heavy at import, and daphne has no lifespan hooks). Every failure becomes an OpenAIError:
unreachable 502, timeout 504, an upstream 4xx passed through with its status and message, a 5xx
502. The upstream key is injected here and scrubbed from anything the upstream says back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import httpx

from registry import audit, keys, snapshot
from registry.errors import ModelNotFound, OpenAIError, UpstreamError, UpstreamTimeout
from registry.keys import UndecryptableKey
from registry.models import Upstream

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """An upstream, resolved for one request: no ORM object leaves the request's code."""

    name: str
    base_url: str
    api_key: str
    timeout: float

    def __repr__(self) -> str:  # never the key
        return f"Target({self.name!r}, {self.base_url!r})"


_clients: dict[tuple[str, float], httpx.AsyncClient] = {}


def _client(target: Target) -> httpx.AsyncClient:
    key = (target.base_url, target.timeout)
    client = _clients.get(key)
    if client is None or client.is_closed:
        client = _clients[key] = httpx.AsyncClient(
            timeout=httpx.Timeout(target.timeout, connect=min(10.0, target.timeout)),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
    return client


async def route(model: str, *, param: str = "model") -> Target:
    """The enabled upstream that lists `model`, else the default upstream. Raises ModelNotFound
    (naming `param`: `session.model` in a Realtime session.update)."""
    chosen: Upstream | None = None
    default: Upstream | None = None
    for upstream in (await snapshot.current()).upstreams:
        if model in upstream.chat_models:
            chosen = upstream
            break
        if upstream.is_default:
            default = upstream
    chosen = chosen or default
    if chosen is None:
        raise ModelNotFound(f"The model '{model}' does not exist: no upstream serves it.", param=param)
    try:
        api_key = chosen.get_api_key()
    except UndecryptableKey as exc:
        logger.error("upstream %s: %s", chosen.name, exc)
        raise UpstreamError(
            f"The upstream '{chosen.name}' is misconfigured: its API key cannot be read."
        ) from exc
    audit.usage().upstream = chosen.name
    return Target(
        name=chosen.name, base_url=chosen.base_url.rstrip("/"), api_key=api_key, timeout=chosen.timeout
    )


async def reachable(target: Target) -> None:
    """Raise UpstreamError unless a TCP connection to the upstream opens (within its connect timeout).

    No request is sent: it tells a server that is down from one that is up, cheaply.
    """
    url = httpx.URL(target.base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(url.host, port), min(10.0, target.timeout))
    except (OSError, TimeoutError) as exc:
        raise UpstreamError(
            f"The upstream '{target.name}' could not be reached ({type(exc).__name__})."
        ) from exc
    writer.close()


def scrub(text: str, target: Target) -> str:
    """The upstream's words without its key, should it echo it back whole, masked or in part."""
    return keys.redact(text, target.api_key, "[upstream key]")


def _headers(target: Target) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    record = audit.current()
    if record is not None:
        headers["X-Request-Id"] = record.request_id
    return headers


def _scrubbed(value: Any, target: Target) -> Any:
    if isinstance(value, str):
        return scrub(value, target)
    if isinstance(value, dict):
        return {k: _scrubbed(v, target) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v, target) for v in value]
    return value


def _error_from(response: httpx.Response, response_body: bytes, target: Target) -> OpenAIError:
    status = response.status_code
    try:
        error = json.loads(response_body).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        error = _scrubbed(error, target)
        message = str(error.get("message") or "").strip() or f"HTTP {status}"
    else:
        error = {}
        message = scrub(response_body.decode(errors="replace"), target)[:300].strip() or f"HTTP {status}"
    if status in (401, 403):
        # The gateway's credentials for the upstream were refused, not the client's key: passing
        # a 401 through would make the SDK blame the caller's (working) key.
        return UpstreamError(
            f"The upstream '{target.name}' refused the gateway's credentials (HTTP {status}): {message}"
        )
    if 400 <= status < 500:
        # The client's own mistake, as the upstream put it: its status and its error object, whole
        # (an integer code stays an integer; llama.cpp's n_prompt_tokens and n_ctx stay).
        headers = {}
        if status == 429 and response.headers.get("retry-after"):
            headers["Retry-After"] = response.headers["retry-after"]
        code, param, kind = error.get("code"), error.get("param"), error.get("type")
        return OpenAIError(
            message[:2000],
            status=status,
            type=str(kind or "invalid_request_error"),
            param=str(param) if param is not None else None,
            code=code if isinstance(code, str | int) and not isinstance(code, bool) else None,
            headers=headers,
            extra={k: v for k, v in error.items() if k not in ("message", "type", "param", "code")},
        )
    return UpstreamError(f"The upstream '{target.name}' failed with HTTP {status}: {message}")


def _transport_error(exc: httpx.HTTPError, target: Target) -> OpenAIError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"The upstream '{target.name}' did not answer within {target.timeout:g} s.")
    return UpstreamError(f"The upstream '{target.name}' could not be reached ({type(exc).__name__}).")


async def complete(target: Target, body: dict[str, Any]) -> dict[str, Any]:
    """POST /chat/completions without streaming; returns the upstream's JSON."""
    try:
        response = await _client(target).post(
            f"{target.base_url}/chat/completions", json=body, headers=_headers(target)
        )
    except httpx.HTTPError as exc:
        raise _transport_error(exc, target) from exc
    audit.usage().upstream_status = response.status_code
    if response.status_code >= 400:
        raise _error_from(response, response.content, target)
    try:
        # Scrubbed of the key, as stream events and errors are: an upstream may echo it in its answer.
        data = _scrubbed(response.json(), target)
    except ValueError as exc:
        raise UpstreamError(
            f"The upstream '{target.name}' answered with something that is not JSON."
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise UpstreamError(f"The upstream '{target.name}' answered without choices.")
    return data


class DeltaRedactor:
    """Scrubs a stream's chunks in place: each choice's content, reasoning, refusal and tool-call
    arguments as one text each (keys.StreamRedactor), what a text held back given with its choice's
    finish_reason."""

    FIELDS = ("content", "reasoning_content", "refusal")

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.texts: dict[tuple[Any, ...], keys.StreamRedactor] = {}
        self.envelope: dict[str, Any] = {}  # the last chunk: its id, model... for `rest()`

    def _text(self, *where: Any) -> keys.StreamRedactor:
        if where not in self.texts:
            self.texts[where] = keys.StreamRedactor(self.secret, "[upstream key]")
        return self.texts[where]

    def __call__(self, chunk: dict[str, Any]) -> None:
        self.envelope = chunk
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            if not isinstance(choice.get("delta"), dict):
                if not choice.get("finish_reason"):
                    continue
                choice["delta"] = {}  # somewhere to put what was held
            index, delta = choice.get("index"), choice["delta"]
            for name in self.FIELDS:
                if isinstance(delta.get(name), str):
                    delta[name] = self._text(index, name).feed(delta[name])
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    function["arguments"] = self._text(index, "tool", call.get("index")).feed(
                        function["arguments"]
                    )
            if choice.get("finish_reason"):
                self._flush(index, delta)

    def rest(self) -> dict[str, Any] | None:
        """A last chunk with the text still held (None if none), like the last chunk seen."""
        choices: dict[Any, dict[str, Any]] = {}
        for where, text in self.texts.items():
            if text.held:
                self._flush(where[0], choices.setdefault(where[0], {}))
        if not choices:
            return None
        return {
            **{k: v for k, v in self.envelope.items() if k in ("id", "object", "created", "model")},
            "choices": [{"index": i, "delta": d, "finish_reason": None} for i, d in choices.items()],
        }

    def _flush(self, index: Any, delta: dict[str, Any]) -> None:
        for where, text in list(self.texts.items()):
            if where[0] != index or not text.held:
                continue
            rest = text.flush()
            if where[1] == "tool":
                if not isinstance(delta.get("tool_calls"), list):  # absent, or null as some send it
                    delta["tool_calls"] = []
                delta["tool_calls"].append({"index": where[2], "function": {"arguments": rest}})
            else:
                delta[where[1]] = (delta.get(where[1]) or "") + rest


@dataclass(frozen=True)
class Comment:
    """An SSE comment line (`: ping`), which llama.cpp sends while it processes a long prompt."""

    text: str


class Events:
    """An upstream SSE stream: `data:` payloads (text, or dicts from `chunks()`) and comments."""

    def __init__(self, response: httpx.Response, target: Target) -> None:
        self.response = response
        self.target = target
        self._items = self._read()
        self._first: list[str | Comment] = []

    async def start(self) -> None:
        """Wait for the upstream's first event, within its timeout.

        Some servers (llama.cpp) send 200 headers at once and their first event only after the
        prompt is processed: their timeouts and errors surface here, still as plain errors,
        before the gateway commits to a 200 of its own.
        """
        with suppress(StopAsyncIteration):
            self._first.append(await anext(self._items))

    async def lines(self) -> AsyncIterator[str | Comment]:
        """Each `data:` payload as text, and each comment, up to `[DONE]`.

        Raises UpstreamError on a cut or an error event, UpstreamTimeout when it stalls.
        """
        while self._first:
            yield self._first.pop(0)
        async for item in self._items:
            yield item

    async def chunks(self) -> AsyncIterator[dict[str, Any] | Comment]:
        """`lines()` with each payload parsed, and the key scrubbed from the text the deltas add up
        to (`lines()` scrubs each event; a key split across deltas is only seen here)."""
        redact = DeltaRedactor(self.target.api_key) if self.target.api_key else None
        async for item in self.lines():
            if isinstance(item, Comment):
                yield item
                continue
            try:
                chunk = json.loads(item)
            except ValueError as exc:
                raise UpstreamError(
                    f"The upstream '{self.target.name}' sent a malformed stream event."
                ) from exc
            if isinstance(chunk, dict):
                if redact is not None:
                    redact(chunk)
                yield chunk
        rest = redact.rest() if redact is not None else None
        if rest is not None:  # the upstream ended without a finish_reason: what was held still goes
            yield rest

    async def _read(self) -> AsyncIterator[str | Comment]:
        done = False
        try:
            async for line in self.response.aiter_lines():
                if line.startswith(":"):
                    yield Comment(line[1:].strip())
                    continue
                if not line.startswith("data:"):
                    continue
                # Every payload is scrubbed of the key: an upstream may echo it in any event.
                payload = scrub(line[5:].strip(), self.target)
                if payload == "[DONE]":
                    done = True
                    return
                error = _error_event(payload)
                if error is not None:
                    detail = error.get("message", error) if isinstance(error, dict) else error
                    raise UpstreamError(
                        f"The upstream '{self.target.name}' failed mid-stream: {str(detail)[:300]}"
                    )
                yield payload
        except httpx.TimeoutException as exc:
            raise _transport_error(exc, self.target) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"The upstream '{self.target.name}' broke off the stream ({type(exc).__name__})."
            ) from exc
        finally:
            if not done and not self.response.is_closed:
                await self.response.aclose()
        if not done:
            raise UpstreamError(f"The upstream '{self.target.name}' ended the stream before it was complete.")


def _error_event(payload: str) -> Any:
    """The `error` of an error event, however it is spaced (`{"error": ...}`, `{ "error" : ...}`)."""
    if '"error"' not in payload[:40]:
        return None
    try:
        event = json.loads(payload)
    except ValueError:
        return None
    if isinstance(event, dict) and "error" in event and "choices" not in event:
        return event["error"]
    return None


def merged_usage(usages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One usage for a reply whose choices were counted apart (llama.cpp sends one per choice):
    the prompt counted once, the completions added up, as OpenAI reports `n` > 1."""
    if not usages:
        return None
    if len(usages) == 1:
        return usages[0]
    merged = dict(usages[-1])
    prompt = max(int(u.get("prompt_tokens") or 0) for u in usages)
    completion = sum(int(u.get("completion_tokens") or 0) for u in usages)
    merged.update(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    return merged


@asynccontextmanager
async def stream(target: Target, body: dict[str, Any]) -> AsyncIterator[Events]:
    """Open a streaming completion; errors before the first event are raised here, as plain errors.

    Leaving the block (normally, by error, or because the client went away and the task was
    cancelled) closes the upstream response, which stops the upstream's generation.
    """
    client = _client(target)
    request = client.build_request(
        "POST", f"{target.base_url}/chat/completions", json=body, headers=_headers(target)
    )
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise _transport_error(exc, target) from exc
    try:
        audit.usage().upstream_status = response.status_code
        if response.status_code >= 400:
            try:
                content = await response.aread()
            except httpx.HTTPError as exc:
                raise _transport_error(exc, target) from exc
            raise _error_from(response, content, target)
        events = Events(response, target)
        await events.start()
        yield events
    finally:
        # Shielded: a second cancellation arriving while it closes must not leave the upstream
        # generating into a connection nobody reads.
        await asyncio.shield(response.aclose())
