"""nginx in front of the gateway: the real voiceproxy/nginx/voiceproxy.conf.template, rendered as the
official nginx image renders it and run by the nginx binary on loopback, in front of the session's
daphne. What it refuses (too large, too slow, malformed) must be answered in the OpenAI error shape and
never reach the app; what it passes must arrive as the app sent it, streams unbuffered.

Timeouts are 2 s here (the production defaults are in docker-compose.yml); no test asserts a duration:
slow clients are asserted to be cut, with generous limits on how long the test waits for that.
"""

from __future__ import annotations

import contextlib
import json
import random
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.harness import daphne
from bench.harness.nginx import BODY_LIMIT, NGINX, Nginx
from registry.models import RequestLog
from tests.audit_log import audit_row
from tests.conftest import ROOT, Server, server_env

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="no nginx binary on PATH or at /usr/sbin/nginx (Debian: apt-get install nginx)"
)

WAIT = 15.0  # the most a test waits for any one answer; far more than any timeout of the harness


@pytest.fixture(scope="module")
def nginx(gateway: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    server = Nginx(tmp_path_factory.mktemp("nginx"), f"127.0.0.1:{gateway.port}")
    yield server
    server.stop()


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[Any]:
    """Another nginx, in front of whatever the test names."""
    started: list[Nginx] = []

    def start(upstream: str, **overrides: str) -> Nginx:
        server = Nginx(tmp_path / f"nginx{len(started)}", upstream, **overrides)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- raw HTTP: what well-behaved clients (httpx) would never send -------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def connect(server: Nginx) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)


def read_reply(sock: socket.socket) -> Reply | None:
    """The response on `sock`; None if the server closed (or reset) the connection without one."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                assert not data, f"connection closed mid-response: {data!r}"
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = parse_headers(lines)
        while len(body) < int(headers.get("content-length", 0)):
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-body"
            body += chunk
    except ConnectionResetError:
        assert not data, f"connection reset mid-response: {data!r}"
        return None
    return Reply(int(status_line.split()[1]), headers, body)


def parse_headers(lines: list[str]) -> dict[str, str]:
    return {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}


def exchange(server: Nginx, request: bytes) -> Reply | None:
    with connect(server) as sock:
        sock.sendall(request)
        return read_reply(sock)


def trickle(sock: socket.socket, pieces: Iterable[bytes], interval: float = 0.5) -> Reply | None:
    """Send `pieces` one by one, `interval` s apart (an empty piece: silence), until the server ends the
    connection; returns what it answered (None: it closed without a word). AssertionError if it is still
    open when the pieces run out."""
    for piece in pieces:
        readable, _, _ = select.select([sock], [], [], interval)
        if readable:
            return read_reply(sock)
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return read_reply(sock)
    raise AssertionError("the server kept a slow client's connection open")


def request_id() -> str:
    return f"nginx-test-{uuid.uuid4().hex[:16]}"


def assert_not_seen_by_the_app(server: Nginx, *request_ids: str) -> None:
    """No audit row for these client request ids. The app writes one for every /v1/ request it sees;
    a request it does see, sent afterwards, shows its rows are being written."""
    later = request_id()
    httpx.get(f"{server.url}/v1/models", headers={"x-request-id": later}, timeout=WAIT)
    audit_row(later)
    assert not RequestLog.objects.filter(client_request_id__in=request_ids).exists()


def assert_openai_error(reply: Reply | httpx.Response | None, status: int, code: str) -> dict[str, Any]:
    assert reply is not None, "no response"
    assert (reply.status_code if isinstance(reply, httpx.Response) else reply.status) == status
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] is None and error["code"] == code and error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    return error


# --- a stand-in for the app, to see what nginx sends it --------------------------------------------


class CaptureUpstream:
    """A stand-in for the app that shows what nginx sends it: each request's head is recorded the moment
    it arrives (`requests`, then its body in `bodies`), answered 200 `{}`; a WebSocket upgrade is
    answered 101, then every byte is echoed back."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[str] = []
        self.bodies: list[bytes] = []
        self.closed = threading.Event()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while not self.closed.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self.serve, args=(connection,), daemon=True).start()
        self.listener.close()

    def serve(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.settimeout(WAIT)
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                self.requests.append(head.decode("latin-1"))
                headers = parse_headers(self.requests[-1].split("\r\n")[1:])
                if headers.get("upgrade") == "websocket":
                    connection.sendall(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\n\r\n" + data
                    )
                    while chunk := connection.recv(65536):
                        connection.sendall(chunk)
                    return
                length = int(headers.get("content-length", 0))
                while len(data) < length:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.bodies.append(data[:length])
                data = data[length:]
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                )

    def headers(self, index: int = -1) -> dict[str, str]:
        return parse_headers(self.requests[index].split("\r\n")[1:])


@pytest.fixture
def capture() -> Iterator[CaptureUpstream]:
    upstream = CaptureUpstream()
    yield upstream
    upstream.closed.set()


# --- what nginx refuses ------------------------------------------------------------------------------


def test_an_oversize_upload_is_refused_before_the_app(nginx):
    # Under the limit (and over nginx's default), the body goes on to the app, which refuses the key.
    under = httpx.post(f"{nginx.url}/v1/audio/transcriptions", content=b"x" * (BODY_LIMIT - 1), timeout=WAIT)
    assert under.status_code == 401 and under.headers["x-request-id"].startswith("req_")
    # 600 MiB announced, no API key: nginx answers from the headers, and the body never goes further.
    rid = request_id()
    head = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: voiceproxy\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {600 * 1024 * 1024}\r\nx-request-id: {rid}\r\n\r\n"
    )
    reply = exchange(nginx, head.encode() + b"x" * 65536)
    error = assert_openai_error(reply, 413, "payload_too_large")
    assert str(BODY_LIMIT) in error["message"]
    # A chunked body has no length to refuse up front: it is cut once it passes the limit.
    chunked = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: voiceproxy\r\nTransfer-Encoding: chunked\r\n"
        f"x-request-id: {rid}\r\n\r\n"
    ).encode()
    chunk = b"x" * 65536
    with connect(nginx) as sock:
        sock.sendall(chunked)
        for _ in range(BODY_LIMIT // len(chunk) + 1):
            sock.sendall(b"%X\r\n%s\r\n" % (len(chunk), chunk))
        assert_openai_error(read_reply(sock), 413, "payload_too_large")
    assert_not_seen_by_the_app(nginx, rid)


def test_a_client_trickling_its_headers_is_cut(nginx):
    rid = request_id()
    with connect(nginx) as sock:
        sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: voiceproxy\r\nx-request-id: {rid}\r\n".encode())
        # A header every 0.5 s: each well within the timeout, the whole never arriving.
        reply = trickle(sock, (f"x-slow-{i}: a\r\n".encode() for i in range(int(WAIT / 0.5))))
    assert reply is None or reply.status == 408  # nginx closes without a word
    assert_not_seen_by_the_app(nginx, rid)


def test_a_client_stalling_its_body_is_cut_before_the_app_is_called(start_nginx, capture):
    # client_body_timeout is the longest silence between two reads of the body.
    edge = start_nginx(capture.address)
    with connect(edge) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: voiceproxy\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        reply = trickle(sock, chain(repeat(b"{", 3), repeat(b"", int(WAIT / 0.5))))
    assert reply is None or reply.status == 408
    assert capture.requests == []  # the app was never sent a byte of it


def test_a_trickled_body_is_nginxs_to_wait_for_and_reaches_the_app_whole(start_nginx, capture):
    # A byte every 0.2 s, each within the timeout: nginx reads them all, and only then calls the app.
    edge = start_nginx(capture.address)
    body = b'{"n": 1}'
    with connect(edge) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: voiceproxy\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for byte in body:
            assert capture.requests == [], "the app was called before the body was in"
            sock.sendall(b"1\r\n%c\r\n" % byte)
            time.sleep(0.2)
        sock.sendall(b"0\r\n\r\n")
        reply = read_reply(sock)
    assert reply is not None and reply.status == 200
    assert capture.bodies == [body]
    assert capture.headers()["content-length"] == str(len(body))  # whole, not chunked


@pytest.mark.parametrize(
    ("request_line", "header", "status", "code"),
    [
        ("POST /v1/chat/completions", "Content-Length: abc", 400, "bad_request"),
        (f"GET /v1/models?q={'a' * 60_000}", "Accept: */*", 414, "uri_too_long"),
        ("GET /v1/models", f"X-Big: {'a' * 100_000}", 400, "header_too_large"),
    ],
    ids=["content-length-abc", "60KB-url", "100KB-header"],
)
def test_a_malformed_request_is_answered_by_nginx(nginx, request_line, header, status, code):
    rid = request_id()
    head = f"{request_line} HTTP/1.1\r\nHost: voiceproxy\r\nx-request-id: {rid}\r\n{header}\r\n\r\n"
    assert_openai_error(exchange(nginx, head.encode()), status, code)
    assert_not_seen_by_the_app(nginx, rid)


def test_the_app_down_is_a_503_in_the_openai_shape(start_nginx):
    nowhere = start_nginx(f"127.0.0.1:{daphne.free_port()}")  # nothing listens there
    reply = httpx.post(f"{nowhere.url}/v1/chat/completions", json={}, timeout=WAIT)
    assert_openai_error(reply, 503, "server_unavailable")
    assert reply.headers["retry-after"] == "5"  # the SDKs wait this long before they retry


# --- what nginx passes on ----------------------------------------------------------------------------


@pytest.fixture
def held_upstream(upstream: Any) -> Iterator[Any]:
    upstream.reset()
    yield upstream
    upstream.reset()


def test_a_stream_is_passed_on_while_the_upstream_still_holds_it(nginx, api_key, held_upstream):
    # The upstream holds its stream after the first sentence until the test releases it: events that
    # arrive meanwhile were not waiting in a buffer for the rest. Order, not timing.
    held_upstream.hold = True
    text, seen_while_held, done = "", False, False
    auth = {"Authorization": f"Bearer {api_key.secret}"}
    payload = {"model": "fake-llm", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    try:
        with httpx.stream(
            "POST", f"{nginx.url}/v1/chat/completions", json=payload, headers=auth, timeout=WAIT
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-request-id"].startswith("req_")
            assert "x-accel-buffering" not in response.headers  # the app's word to nginx, not to clients
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                event = json.loads(line.removeprefix("data: "))
                assert "choices" in event, f"{event}: were the first events held till the upstream gave up?"
                for choice in event["choices"]:
                    text += choice["delta"].get("content") or ""
                if "." in text and not held_upstream.release.is_set():
                    seen_while_held = True
                    held_upstream.release.set()
    finally:
        held_upstream.release.set()
    assert seen_while_held
    assert done and text == held_upstream.reply


def test_a_request_passes_through_with_the_apps_answer(nginx, gateway, api_key):
    auth = {"Authorization": f"Bearer {api_key.secret}"}
    direct = httpx.get(f"{gateway.url}/v1/models", headers=auth, timeout=WAIT)
    proxied = httpx.get(f"{nginx.url}/v1/models", headers=auth, timeout=WAIT)
    assert proxied.status_code == 200 and proxied.json() == direct.json()
    assert proxied.headers["content-type"] == "application/json"
    assert proxied.headers["x-request-id"].startswith("req_")
    assert proxied.headers["server"] == "nginx"  # no version
    # The app's own errors are its own, not replaced by nginx's pages: its 401, and its 502 for an
    # LLM upstream's failure (nginx's own 502, the app being down, would be a 503 server_unavailable).
    refused = httpx.get(f"{nginx.url}/v1/models", timeout=WAIT)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    failed = httpx.post(
        f"{nginx.url}/v1/chat/completions",
        headers=auth,
        json={"model": "error-500", "messages": [{"role": "user", "content": "hi"}]},
        timeout=WAIT,
    )
    assert failed.status_code == 502 and failed.json()["error"]["type"] == "upstream_error"
    assert failed.headers["x-request-id"] == audit_row(failed.headers["x-request-id"]).request_id


@pytest.fixture(scope="module")
def proxied_gateway(gateway: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A daphne started as docker-compose.yml starts it (--proxy-headers) that refuses a client
    address after one failed key check a minute; its address."""
    port = daphne.free_port()
    log_path = tmp_path_factory.mktemp("daphne-proxied") / "daphne.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "--proxy-headers", "-b", "127.0.0.1", "-p", str(port)]
            + ["voiceproxy.asgi:application"],
            cwd=ROOT,
            env=server_env(VOICEPROXY_AUTH_FAILURES_PER_MINUTE="1"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not start:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        daphne.stop(process)


def test_the_app_sees_the_address_nginx_saw(start_nginx, proxied_gateway):
    # The failed-key throttle counts per client address, and names it: from an address of its own
    # (any 127/8 address is loopback), this test's counter is its alone, on Redis too.
    client = f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.{random.randrange(2, 255)}"
    edge = start_nginx(proxied_gateway)
    headers = {"Authorization": "Bearer sk-not-a-key", "X-Forwarded-For": "198.51.100.7"}  # a forged one
    transport = httpx.HTTPTransport(local_address=client)
    if time.time() % 60 > 55:  # both checks within one minute's counter
        time.sleep(61 - time.time() % 60)
    with httpx.Client(transport=transport, base_url=edge.url, headers=headers, timeout=WAIT) as session:
        first, second = session.get("/v1/models"), session.get("/v1/models")
    assert first.status_code == 401
    assert second.status_code == 429
    assert f"from {client};" in second.json()["error"]["message"]


def test_a_websocket_upgrade_is_tunnelled_with_the_forwarded_headers(start_nginx, capture):
    edge = start_nginx(capture.address)
    with connect(edge) as sock:
        sock.sendall(
            b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: voice.example:8000\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Forwarded-For: 198.51.100.7\r\n"
            b"X-Forwarded-Port: 1\r\n\r\n"
        )
        reply = read_reply(sock)
        assert reply is not None and reply.status == 101
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
    assert capture.requests[0].startswith("GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\n")
    sent = capture.headers(0)
    assert sent["upgrade"] == "websocket" and sent["connection"] == "upgrade"
    assert sent["host"] == "voice.example"
    assert sent["x-forwarded-for"] == "127.0.0.1"  # the address nginx saw, the forged one dropped
    assert sent["x-forwarded-proto"] == "http"
    assert "x-forwarded-port" not in sent
    # A plain request after it goes over a kept-alive HTTP/1.1 connection: no Connection: close.
    assert httpx.get(f"{edge.url}/v1/models", timeout=WAIT).status_code == 200
    assert capture.requests[1].startswith("GET /v1/models HTTP/1.1\r\n")
    assert "connection" not in capture.headers(1)
