"""A small, real OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

The gateway proxies to it with httpx exactly as it would to a hosted LLM, so tests exercise real sockets,
real chunked SSE and real disconnects. Standard library only, so ``python bench/harness/upstream.py`` runs
anywhere.

Behaviour is chosen by the request's ``model``, so a test needs no side channel to the server:

    any other model   ``upstream.reply`` (``upstream.replies[i % len]`` for choice i when set)
    echo-model        the text of the last user message (a string, or its text parts joined by spaces)
    tool-model        a get_weather tool call, content null, finish_reason "tool_calls"
    tool-text-model   "Let me check the weather." and the same tool call
    error-400/401/429/500   that status with an OpenAI error body (429 adds Retry-After)
    slow-model        the normal reply after ``upstream.slow_seconds``
    cut-stream        two content chunks, then the connection is closed mid-body, with no [DONE]
    malformed-stream  two content chunks, then ``data: {broken json``, then the rest of the reply
    stream-error      two content chunks, then an SSE ``{"error": ...}`` event, as OpenAI sends mid-stream

Every text reply honours ``max_completion_tokens`` (or ``max_tokens``): past that many of its pieces
it stops, with finish_reason "length", as a real server does.

What real servers do that the cases above do not (llama.cpp, reasoning models):

    ping-model        streams open with two ``: ping`` comment lines (keep-alives some servers send)
    slow-first-event  streamed: 200 headers at once, the first event after ``upstream.slow_seconds``
    reasoning-model   the answer is all ``reasoning_content``; ``content`` is ""
    tool-empty-model  the tool call of tool-model, with ``content: ""`` (llama.cpp) instead of null
    path-model        names itself by a file path in every reply (llama.cpp's ``model``)
    usage-per-choice  streamed with n > 1: one usage chunk per choice (llama.cpp), not one in all
    logprobs-model    every choice and content chunk carries ``logprobs``
    error-400-llama   400 with llama.cpp's error object: an integer ``code``, ``n_prompt_tokens``, ``n_ctx``

Upstreams that echo the API key they were sent (the ``Authorization`` header's), for scrubbing tests:

    echo-key-400      400 whose ``param``, ``code`` and ``type`` are the key, its message the masked key
    echo-key-500      a 500 text body of 290 characters, then the key (a cut at 300 keeps 10 of it)
    echo-key-stream   a stream whose error event is spaced ``{ "error" : ...}`` and quotes the key
    echo-key-reply    a reply (streamed or not) that quotes the key whole and masked

Streams are ``data: {chat.completion.chunk}`` events, one per token-like piece (a word with its leading
space, or one punctuation mark: "3.5" arrives as "3", ".", "5"), ``upstream.token_delay`` seconds apart.
Every request is recorded in ``upstream.requests`` as ``{"method", "path", "headers", "json",
"disconnected"}`` with lower-case header names; "disconnected" turns true if the client hung up while the
server was still writing.

    python bench/harness/upstream.py --port 8100 --reply "Hello there." --token-delay 0.02
"""

import argparse
import contextlib
import json
import re
import secrets
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

DEFAULT_REPLY = "Hello there. This is a test reply."
TOOL_CALL_TEXT = "Let me check the weather."
TOOL_CALL_ARGUMENTS = '{"city": "Paris"}'
MODELS = [
    "fake-llm", "echo-model", "tool-model", "tool-text-model", "slow-model", "cut-stream", "stream-error",
    "error-400", "error-401", "error-429", "error-500", "ping-model", "slow-first-event", "reasoning-model",
    "tool-empty-model", "path-model", "usage-per-choice", "logprobs-model", "error-400-llama",
    "echo-key-400", "echo-key-500", "echo-key-stream",
]  # fmt: skip
MODEL_PATH = "/srv/models/SmolLM2-135M-Instruct.Q4_1.gguf"
REASONING = "The user wants a greeting, so I will greet them."


def _error(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"message": message, "type": error_type, "param": param, "code": code}


_ERRORS: dict[str, tuple[int, dict[str, Any]]] = {
    "error-400": (
        400,
        _error("bad thing from upstream", "invalid_request_error", "messages", "upstream_bad"),
    ),
    "error-401": (
        401,
        _error("Incorrect API key provided.", "invalid_request_error", code="invalid_api_key"),
    ),
    "error-429": (429, _error("Rate limit reached for requests.", "requests", code="rate_limit_exceeded")),
    "error-500": (500, _error("The server had an error while processing your request.", "server_error")),
    "error-400-llama": (
        400,
        {
            "code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 4103,
            "n_ctx": 2048,
        },
    ),
}
_STREAM_ERROR = _error("stream broke upstream", "server_error", code="upstream_stream_error")
# Token-like pieces: a word or a single punctuation mark, each with the whitespace before it.
_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+$")


def tokens(text: str) -> list[str]:
    """Split ``text`` into the pieces a stream sends; ``"".join(tokens(text)) == text``."""
    return _TOKEN.findall(text)


class FakeUpstream:
    """The server; a context manager. Settings are plain attributes, read once per request, so a test may
    change them between requests (``reset()`` restores them). Thread-safe."""

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        reply: str = DEFAULT_REPLY,
        token_delay: float = 0.0,
        slow_seconds: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.reply = reply
        self.replies: list[str] | None = None
        # Set `hold` to pause every stream after its first sentence (and the next word, which tells a
        # sentence splitter it ended) until `release` is set (or 30 s):
        # a test can then see what the gateway sent while the upstream had not finished.
        self.hold = False
        self.release = threading.Event()
        self.token_delay = token_delay
        self.slow_seconds = slow_seconds
        self.requests: list[dict[str, Any]] = []
        self._defaults = (reply, token_delay, slow_seconds)
        self._changed = threading.Condition()  # guards self.requests and each record's "disconnected"
        self._stopping = threading.Event()  # wakes sleeping handlers, so stop() never waits out a slow-model
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def last_request(self) -> dict[str, Any]:
        with self._changed:
            return self.requests[-1]

    def start(self) -> "FakeUpstream":
        """Bind and serve in a background thread; with port 0 the OS picks a free port (see ``port``)."""
        self._stopping.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-upstream",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection, including idle keep-alive ones and slow replies."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def reset(self) -> None:
        """Restore the constructor's settings and forget recorded requests (for a session-wide server)."""
        self.reply, self.token_delay, self.slow_seconds = self._defaults
        self.replies = None
        self.hold = False
        self.release.set()  # wakes a stream still held by the last test
        self.release = threading.Event()
        with self._changed:
            self.requests.clear()

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(requests)`` is true (re-checked on every new request or disconnect);
        return False on timeout. A disconnect is only seen at the server's next write."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.requests), timeout=timeout)

    def __enter__(self) -> "FakeUpstream":
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _record(self, record: dict[str, Any]) -> None:
        with self._changed:
            self.requests.append(record)
            self._changed.notify_all()

    def _mark_disconnected(self, record: dict[str, Any]) -> None:
        with self._changed:
            record["disconnected"] = True
            self._changed.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default 5 refuses connections under benchmark concurrency

    def __init__(self, address: tuple[str, int], upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for seconds without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        # Handler threads blocked reading an idle keep-alive connection would otherwise live until exit.
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-reply is routine here (timeout and disconnect tests); anything else is a bug
        # in this file and should print its traceback.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _ClientGone(Exception):
    """The client closed the connection (or the server is stopping) while a reply was being written."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streaming, like a real upstream
    server_version = "FakeUpstream/1.0"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus delayed ACK
    # stalls back-to-back requests by ~40 ms (seen in bench/bench_chat.py).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read upstream.requests; per-request stderr lines would only bury failures

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        self._record(None)
        if path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [_model(name) for name in MODELS]})
        elif path.startswith("/v1/models/"):
            self._send_json(200, _model(path.removeprefix("/v1/models/")))
        else:
            self._send_error(404, f"Unknown path {path}.", "invalid_request_error", code="not_found")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        raw = self._read_body()
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = None
        record = self._record(payload)
        if path != "/v1/chat/completions":
            self._send_error(404, f"Unknown path {path}.", "invalid_request_error", code="not_found")
        elif not isinstance(payload, dict):
            self._send_error(400, "The body is not a JSON object.", "invalid_request_error")
        elif not isinstance(payload.get("messages"), list) or not payload.get("model"):
            self._send_error(400, "model and messages are required.", "invalid_request_error", "messages")
        else:
            try:
                self._chat(payload)
            except (_ClientGone, ConnectionError):
                self.close_connection = True
                if not self.server.upstream._stopping.is_set():
                    self.server.upstream._mark_disconnected(record)

    # --- the chat completion ------------------------------------------------------------------------------

    def _chat(self, payload: dict[str, Any]) -> None:
        upstream = self.server.upstream
        model = str(payload["model"])
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if model == "echo-key-400":
            masked = f"{key[:8]}****{key[-4:]}"
            error = {
                "message": f"Incorrect API key provided: {masked}.",
                "param": key,
                "code": key,
                "type": key,
            }
            self._send_json(400, {"error": error})
            return
        if model == "echo-key-500":
            data = ("x" * 290 + key).encode()
            self._send_head(500, "text/plain", {"Content-Length": str(len(data))})
            self.wfile.write(data)
            return
        if model == "echo-key-stream" and payload.get("stream"):
            self._send_head(200, "text/event-stream", {"Transfer-Encoding": "chunked"})
            self._write_chunk(f'data: {{ "error" : {{"message": "the key {key} was refused"}}}}\n\n'.encode())
            self._write_chunk(b"")
            return
        if model in _ERRORS:
            status, error = _ERRORS[model]
            headers = {"Retry-After": "1"} if status == 429 else {}
            self._send_json(status, {"error": error}, headers)
            return
        if model == "slow-model" and upstream._stopping.wait(upstream.slow_seconds):
            raise _ClientGone
        n = payload.get("n") or 1
        if not isinstance(n, int) or not 1 <= n <= 16:
            self._send_error(400, "n must be an integer from 1 to 16.", "invalid_request_error", "n")
            return
        replies = upstream.replies
        texts: list[str | None] = []
        for i in range(n):
            if model == "tool-model":
                texts.append(None)
            elif model in ("tool-empty-model", "reasoning-model"):
                texts.append("")
            elif model == "tool-text-model":
                texts.append(TOOL_CALL_TEXT)
            elif model == "echo-model":
                texts.append(_last_user_text(payload["messages"]))
            elif model == "echo-key-reply":
                texts.append(f"Your key is {key}, or {key[:8]}****{key[-4:]} for short.")
            else:
                texts.append(replies[i % len(replies)] if replies else upstream.reply)
        calls_tool = model in ("tool-model", "tool-text-model", "tool-empty-model")
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1 or calls_tool:
            limit = None
        finish = ["tool_calls" if calls_tool else "stop"] * n  # each choice's finish_reason
        for i, text in enumerate(texts):
            if limit is not None and text is not None and len(tokens(text)) > limit:
                texts[i], finish[i] = "".join(tokens(text)[:limit]), "length"
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        usage = {
            "prompt_tokens": sum(
                len(_text(m.get("content")).split()) for m in payload["messages"] if isinstance(m, dict)
            ),
            "completion_tokens": sum(len((t or "").split()) for t in texts)
            + (n * len(tokens(TOOL_CALL_ARGUMENTS)) if calls_tool else 0),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if payload.get("stream"):
            options = payload.get("stream_options") or {}
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            self._stream(completion_id, model, texts, calls_tool, usage if include_usage else None, finish)
        else:
            self._complete(completion_id, model, texts, calls_tool, usage, finish)

    def _complete(
        self,
        completion_id: str,
        model: str,
        texts: list[str | None],
        calls_tool: bool,
        usage: dict[str, int],
        finish: list[str],
    ) -> None:
        choices = []
        for i, text in enumerate(texts):
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            if calls_tool:
                message["tool_calls"] = [_tool_call(i)]
            if model == "reasoning-model":
                message["reasoning_content"] = REASONING
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": _logprobs(text or "") if model == "logprobs-model" else None,
                    "finish_reason": finish[i],
                }
            )
        body = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL_PATH if model == "path-model" else model,
            "choices": choices,
            "usage": usage,
            "system_fingerprint": "fp_fake_upstream",
        }
        if model == "cut-stream":
            # Promise the whole body, send half, hang up: the client sees a body cut short.
            data = json.dumps(body).encode()
            self._send_head(200, "application/json", {"Content-Length": str(len(data))})
            self.wfile.write(data[: len(data) // 2])
            self._hang_up()
            return
        self._send_json(200, body)

    def _stream(
        self,
        completion_id: str,
        model: str,
        texts: list[str | None],
        calls_tool: bool,
        usage: dict[str, int] | None,
        finish: list[str],
    ) -> None:
        upstream = self.server.upstream
        delay = upstream.token_delay
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            body = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL_PATH if model == "path-model" else model,
                "system_fingerprint": "fp_fake_upstream",
                "choices": choices,
            }
            if usage is not None:
                body["usage"] = None  # as OpenAI does: null on every chunk but the last
            body.update(extra)
            return body

        per_choice = [list(_deltas(i, text, calls_tool, finish[i])) for i, text in enumerate(texts)]
        if model == "reasoning-model":
            per_choice = [
                [deltas[0], *(({"reasoning_content": p}, None) for p in tokens(REASONING)), deltas[-1]]
                for deltas in per_choice
            ]
        self._send_head(
            200,
            "text/event-stream; charset=utf-8",
            {"Cache-Control": "no-cache", "Transfer-Encoding": "chunked"},
        )
        self.wfile.flush()  # the headers leave now, before any event (llama.cpp does the same)
        if model == "ping-model":
            self._write_chunk(b": ping\n\n")
            self._write_chunk(b": ping\n\n")
        if model == "slow-first-event" and upstream._stopping.wait(upstream.slow_seconds):
            raise _ClientGone
        content_chunks = 0
        held = sentence_ended = False
        for step in range(max(len(deltas) for deltas in per_choice)):
            if step and delay and upstream._stopping.wait(delay):
                raise _ClientGone
            # n > 1: the choices' chunks interleave, one step of each in index order.
            for i, deltas in enumerate(per_choice):
                if step >= len(deltas):
                    continue
                delta, finish_reason = deltas[step]
                logprobs = (
                    _logprobs(delta["content"])
                    if model == "logprobs-model" and delta.get("content")
                    else None
                )
                choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
                self._send_event(chunk([choice]))
                content_chunks += bool(delta.get("content"))
                # Held once the first sentence's end is known: after the word that follows its period.
                if upstream.hold and not held and sentence_ended and delta.get("content"):
                    held = True
                    upstream.release.wait(30)
                sentence_ended = sentence_ended or str(delta.get("content", "")).endswith(".")
                if model == "malformed-stream" and content_chunks == 2 and bool(delta.get("content")):
                    self._write_chunk(b"data: {broken json\n\n")
                if model in ("cut-stream", "stream-error") and content_chunks == 2:
                    if model == "cut-stream":
                        self._hang_up()
                        return
                    self._send_event({"error": _STREAM_ERROR})
                    self._write_chunk(b"")
                    return
        if usage is not None and model == "usage-per-choice":
            for text in texts:  # llama.cpp counts each choice apart, the prompt in every one
                completion = len((text or "").split())
                each = {
                    **usage,
                    "completion_tokens": completion,
                    "total_tokens": usage["prompt_tokens"] + completion,
                }
                self._send_event(chunk([], usage=each))
        elif usage is not None:
            self._send_event(chunk([], usage=usage))
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")  # the zero-length chunk that ends the body; the connection stays usable

    # --- plumbing -------------------------------------------------------------------------------------------

    def _record(self, payload: Any) -> dict[str, Any]:
        record = {
            "method": self.command,
            "path": urlsplit(self.path).path,
            "headers": {name.lower(): value for name, value in self.headers.items()},
            "json": payload,
            "disconnected": False,
        }
        self.server.upstream._record(record)
        return record

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, then the blank line
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send_head(self, status: int, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("x-request-id", f"req_{secrets.token_hex(8)}")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self._send_head(status, "application/json", {"Content-Length": str(len(data)), **(headers or {})})
        self.wfile.write(data)

    def _send_error(
        self, status: int, message: str, error_type: str, param: str | None = None, code: str | None = None
    ) -> None:
        self._send_json(status, {"error": _error(message, error_type, param, code)})

    def _send_event(self, body: dict[str, Any]) -> None:
        self._write_chunk(f"data: {json.dumps(body)}\n\n".encode())

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")

    def _hang_up(self) -> None:
        # Shut the socket down here, mid-body, instead of letting the handler finish the response.
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client left first
            self.connection.shutdown(socket.SHUT_RDWR)


def _deltas(
    index: int, text: str | None, calls_tool: bool, finish: str
) -> Iterator[tuple[dict[str, Any], str | None]]:
    """One choice's stream: (delta, finish_reason) per chunk, in OpenAI's shapes."""
    yield {"role": "assistant", "content": "" if text is not None else None}, None
    for piece in tokens(text or ""):
        yield {"content": piece}, None
    if calls_tool:
        call = _tool_call(index)
        yield (
            {"tool_calls": [{"index": 0, **call, "function": {"name": "get_weather", "arguments": ""}}]},
            None,
        )
        for piece in tokens(TOOL_CALL_ARGUMENTS):
            yield {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None
    yield {}, finish


def _logprobs(text: str) -> dict[str, Any]:
    return {
        "content": [
            {"token": piece, "logprob": -0.25, "bytes": list(piece.encode()), "top_logprobs": []}
            for piece in tokens(text)
        ]
    }


def _tool_call(index: int) -> dict[str, Any]:
    return {
        "id": f"call_fake{index}",
        "type": "function",
        "function": {"name": "get_weather", "arguments": TOOL_CALL_ARGUMENTS},
    }


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "fake-upstream"}


def _text(content: Any) -> str:
    """A message's text: the string, or its text parts joined by spaces (audio and image parts skipped)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake OpenAI-compatible chat-completions API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100, help="0 picks a free port (printed on start)")
    parser.add_argument("--reply", default=DEFAULT_REPLY)
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--slow-seconds", type=float, default=5.0, help="how long slow-model waits")
    args = parser.parse_args(argv)
    upstream = FakeUpstream(
        args.port,
        host=args.host,
        reply=args.reply,
        token_delay=args.token_delay,
        slow_seconds=args.slow_seconds,
    )
    with upstream:
        print(f"FakeUpstream serving {upstream.base_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the way to stop it
            threading.Event().wait()


if __name__ == "__main__":
    main()
