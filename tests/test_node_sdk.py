"""Request bodies sent without Content-Length (`Transfer-Encoding: chunked`), on every endpoint.

The official Node SDK (openai 7.x) sends a multipart upload whose file is a stream, such as
`fs.createReadStream(path)`, as a chunked body; tests/node/sdk_calls.mjs calls the gateway through it
exactly as a Node program would, on every endpoint. Raw httpx requests with generator bodies cover
the JSON endpoints and the size limit. Every request passes
through `Relay`, which keeps the head of each request as it crossed the wire: a test that means to
send a chunked body checks that it did.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.harness.speech import speech
from tests.audit_log import audit_row
from tests.test_transcriptions import ENGLISH_FUNCTION_WORDS, SPANISH_WORDS
from tests.wer import wer, words

NODE_DIR = Path(__file__).resolve().parent / "node"
SENTENCE = "Please open the settings page and turn on the dark mode."
SPANISH = "El gato duerme en la casa. Mañana vamos a la playa con mis amigos."
# What Whisper base makes of espeak's Spanish is loose ("I want to go back home. I don't want to go to
# the beach, I want to have friends."; elsewhere "...back to the house..."), but English, and some of
# these words survive it.
SPANISH_IN_ENGLISH = {"house", "home", "beach", "friends", "tomorrow", "cat", "sleeps"}
REPLY = "The sky is clear over Paris. It will be warm and sunny this afternoon. Enjoy your walk by the river."
WER_BOUND = 0.2  # tiny.en on espeak or Piper speech: measured 0 to 10 percent
PCM_RATE = 24_000
SMALL_LIMIT = 4096  # VOICEPROXY_MAX_BODY_BYTES of the `small_body_gateway`


# --- on the wire -----------------------------------------------------------------------------------


class Relay:
    """A TCP relay to a server on 127.0.0.1 that keeps the head of the first request on each connection.

    Each test sends one request per connection (one Node process, or one httpx client), so `heads`
    holds one entry per request: the request line and the header names in lower case, as sent.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.heads: list[tuple[str, dict[str, str]]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, is_request: bool) -> None:
        seen = b""
        try:
            while data := source.recv(65536):
                if is_request and seen is not None:
                    seen += data
                    if b"\r\n\r\n" in seen:
                        self._keep(seen.partition(b"\r\n\r\n")[0])
                        seen = None
                target.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)
            if not is_request:  # the server's side is over: so is the exchange
                source.close()
                target.close()

    def _keep(self, head: bytes) -> None:
        request_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.heads.append((request_line, headers))

    def only_head(self) -> dict[str, str]:
        """The headers of the one request sent since the last call."""
        heads, self.heads = self.heads, []
        assert len(heads) == 1, heads
        return heads[0][1]


def assert_chunked(headers: dict[str, str]) -> None:
    assert headers.get("transfer-encoding", "").lower() == "chunked", headers
    assert "content-length" not in headers, headers


@pytest.fixture(scope="session")
def relay(gateway) -> Iterator[Relay]:
    relay = Relay(gateway.port)
    yield relay
    relay.close()


# --- the Node SDK ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def node_script() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the official Node SDK cannot be run")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {NODE_DIR} failed:\n{done.stderr}")
    return NODE_DIR / "sdk_calls.mjs"


@pytest.fixture
def node_sdk(node_script, relay, make_key):
    """Runs one call of sdk_calls.mjs through the relay with a new key: (its JSON line, the key)."""
    key = make_key("node-sdk")

    def run(*args: str) -> dict:
        relay.heads.clear()
        env = {**os.environ, "OPENAI_BASE_URL": f"{relay.url}/v1", "OPENAI_API_KEY": key.secret}
        done = subprocess.run(
            ["node", str(node_script), *args], env=env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    run.key = key
    return run


@pytest.fixture
def fresh_upstream(upstream):
    upstream.reset()
    upstream.reply = REPLY
    yield upstream
    upstream.reset()


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as audio:
        assert audio.getnchannels() == 1 and audio.getsampwidth() == 2
        return audio.getnframes() / audio.getframerate()


def pcm16_to_wav(pcm: bytes, rate: int = PCM_RATE) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(pcm)
    return out.getvalue()


def transcribe(client, wav: bytes) -> str:
    return client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav)).text


def check_row(result: dict, key, endpoint: str, *, bytes_in: int = 1):
    row = audit_row(result["request_id"])
    assert row.status_code == 200 and row.endpoint == endpoint and row.key_prefix == key.prefix
    assert row.bytes_in >= bytes_in
    return row


# openai 7.x streams a multipart body whose file is a stream (chunked) and hands a `File`, which
# `toFile(buffer)` makes, to fetch's FormData (whose length is known): both are served.
@pytest.mark.parametrize(("call", "chunked"), [("transcribe-stream", True), ("transcribe-buffer", False)])
def test_node_sdk_transcribes_an_upload(node_sdk, relay, tmp_path, call, chunked):
    wav = speech(SENTENCE)
    path = tmp_path / "speech.wav"
    path.write_bytes(wav)
    result = node_sdk(call, str(path))
    head = relay.only_head()
    if chunked:
        assert_chunked(head)
    else:
        assert int(head["content-length"]) > len(wav), head
    assert wer(SENTENCE, result["text"]) <= WER_BOUND, result["text"]
    row = check_row(result, node_sdk.key, "/v1/audio/transcriptions", bytes_in=len(wav))
    assert row.model_names == "Systran/faster-whisper-tiny.en" and row.audio_seconds_in > 2


def test_node_sdk_translates_spanish_speech_into_english(node_sdk, relay, tmp_path):
    path = tmp_path / "spanish.wav"
    path.write_bytes(speech(SPANISH, voice="es"))
    result = node_sdk("translate", str(path))
    assert_chunked(relay.only_head())
    said = set(words(result["text"]))
    # English out, not the Spanish heard: what Whisper base makes of espeak's Spanish varies from
    # run to run (its temperature fallback samples), as in test_transcriptions.py.
    assert len(said & (SPANISH_IN_ENGLISH | ENGLISH_FUNCTION_WORDS)) >= 2, result["text"]
    assert len(said & SPANISH_WORDS) < len(said & (SPANISH_IN_ENGLISH | ENGLISH_FUNCTION_WORDS)), result[
        "text"
    ]
    row = check_row(result, node_sdk.key, "/v1/audio/translations", bytes_in=path.stat().st_size)
    assert row.model_names == "Systran/faster-whisper-base"


def test_node_sdk_speech_is_a_wav_that_says_the_input(node_sdk, client, tmp_path):
    out = tmp_path / "speech.wav"
    result = node_sdk("speech", SENTENCE, str(out))
    assert result["content_type"].startswith("audio/wav")
    wav = out.read_bytes()
    assert result["bytes"] == len(wav) and wav_seconds(wav) > 1
    assert wer(SENTENCE, transcribe(client, wav)) <= WER_BOUND
    row = check_row(result, node_sdk.key, "/v1/audio/speech")
    assert row.characters_in == len(SENTENCE)


def test_node_sdk_voice_chat_speaks_the_upstream_reply(node_sdk, client, fresh_upstream, tmp_path):
    question, out = tmp_path / "question.wav", tmp_path / "reply.wav"
    question.write_bytes(speech("What is the weather like in Paris today?"))
    result = node_sdk("chat", str(question), str(out))
    assert result["transcript"] == REPLY
    wav = out.read_bytes()
    assert wav_seconds(wav) > 1
    assert wer(REPLY, transcribe(client, wav)) <= WER_BOUND
    row = check_row(result, node_sdk.key, "/v1/chat/completions")
    assert row.upstream == "loopback" and row.stt_ms > 0 and row.tts_ms > 0


def test_node_sdk_streamed_voice_chat_sends_the_reply_as_pcm16(node_sdk, client, fresh_upstream, tmp_path):
    question, out = tmp_path / "question.wav", tmp_path / "reply.pcm"
    question.write_bytes(speech("What is the weather like in Paris today?"))
    result = node_sdk("chat-stream", str(question), str(out))
    assert result["transcript"] == REPLY
    pcm = out.read_bytes()
    assert result["audio_bytes"] == len(pcm) and len(pcm) % 2 == 0
    assert len(pcm) / 2 / PCM_RATE > 1
    assert wer(REPLY, transcribe(client, pcm16_to_wav(pcm))) <= WER_BOUND
    row = check_row(result, node_sdk.key, "/v1/chat/completions")
    assert row.streamed and row.upstream == "loopback"


# --- raw chunked requests --------------------------------------------------------------------------


def pieces(body: bytes, size: int = 1000) -> Iterator[bytes]:
    """The body as a generator: httpx sends it with `Transfer-Encoding: chunked`, one chunk a piece."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def multipart(fields: dict[str, str], file: tuple[str, bytes, str]) -> tuple[bytes, str]:
    """A multipart/form-data body with `fields` and one `file` part: (body, its Content-Type)."""
    boundary = f"voiceproxy-{uuid.uuid4().hex}"
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    filename, data, content_type = file
    out.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n".encode()
    )
    out.write(data + f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def post_chunked(
    relay: Relay, key, path: str, body: bytes, content_type: str
) -> tuple[httpx.Response, dict[str, str]]:
    """POSTs `body` in pieces through `relay`: the response, and the request's headers as sent."""
    headers = {
        "Authorization": f"Bearer {key.secret}",
        "Content-Type": content_type,
        "x-request-id": f"test-chunked-{uuid.uuid4().hex}",
    }
    relay.heads.clear()
    with httpx.Client(base_url=relay.url, timeout=120) as session:
        response = session.post(path, content=pieces(body), headers=headers)
    return response, relay.only_head()


def test_chunked_json_to_speech_is_spoken(relay, api_key, client):
    body = json.dumps(
        {"model": "tts-1", "voice": "alloy", "input": SENTENCE, "response_format": "wav"}
    ).encode()
    response, head = post_chunked(relay, api_key, "/v1/audio/speech", body, "application/json")
    assert_chunked(head)
    assert response.status_code == 200, response.text
    assert wav_seconds(response.content) > 1
    assert wer(SENTENCE, transcribe(client, response.content)) <= WER_BOUND
    row = audit_row(response.headers["x-request-id"])
    assert row.status_code == 200 and row.bytes_in == len(body)


def test_chunked_multipart_to_transcriptions_is_transcribed(relay, api_key):
    wav = speech(SENTENCE)
    body, content_type = multipart(
        {"model": "whisper-1", "response_format": "json"}, ("speech.wav", wav, "audio/wav")
    )
    response, head = post_chunked(relay, api_key, "/v1/audio/transcriptions", body, content_type)
    assert_chunked(head)
    assert response.status_code == 200, response.text
    assert wer(SENTENCE, response.json()["text"]) <= WER_BOUND, response.text
    row = audit_row(response.headers["x-request-id"])
    assert row.status_code == 200 and row.bytes_in == len(body) and row.audio_seconds_in > 2


def test_chunked_json_to_chat_completions_reaches_the_upstream(relay, api_key, fresh_upstream):
    body = json.dumps({"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}]}).encode()
    response, head = post_chunked(relay, api_key, "/v1/chat/completions", body, "application/json")
    assert_chunked(head)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == REPLY
    assert fresh_upstream.last_request["json"]["messages"] == [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def small_body_gateway(registry, tmp_path_factory):
    """A second daphne with VOICEPROXY_MAX_BODY_BYTES=SMALL_LIMIT, behind its own relay."""
    from tests.conftest import Server, server_env

    server = Server(
        server_env(VOICEPROXY_MAX_BODY_BYTES=str(SMALL_LIMIT)),
        tmp_path_factory.mktemp("small-body") / "daphne.log",
    )
    relay = Relay(server.port)
    yield relay
    relay.close()
    server.stop()


def speech_body(size: int) -> bytes:
    """A /v1/audio/speech JSON body of exactly `size` bytes (trailing whitespace is valid JSON)."""
    body = json.dumps({"model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "pcm"})
    return body.encode().ljust(size)


def test_chunked_body_of_exactly_the_limit_is_served(small_body_gateway, api_key):
    body = speech_body(SMALL_LIMIT)
    response, head = post_chunked(small_body_gateway, api_key, "/v1/audio/speech", body, "application/json")
    assert_chunked(head)
    assert response.status_code == 200, response.text
    assert len(response.content) / 2 / PCM_RATE > 0.2
    assert audit_row(response.headers["x-request-id"]).bytes_in == SMALL_LIMIT


@pytest.mark.parametrize("endpoint", ["speech", "transcriptions"])
def test_chunked_body_over_the_limit_is_a_413_with_an_audit_row(small_body_gateway, api_key, endpoint):
    if endpoint == "speech":
        body, content_type = speech_body(SMALL_LIMIT + 1), "application/json"
    else:
        body, content_type = multipart({"model": "whisper-1"}, ("speech.wav", speech(SENTENCE), "audio/wav"))
    response, head = post_chunked(small_body_gateway, api_key, f"/v1/audio/{endpoint}", body, content_type)
    assert_chunked(head)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "payload_too_large" and str(SMALL_LIMIT) in error["message"]
    row = audit_row(response.headers["x-request-id"])
    assert row.status_code == 413 and row.error_code == "payload_too_large"
    assert row.endpoint == f"/v1/audio/{endpoint}" and row.bytes_in == len(body)
