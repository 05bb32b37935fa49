"""bench/harness/upstream.py: the loopback LLM the gateway tests proxy to, checked with the openai SDK."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest

from bench.harness import upstream as upstream_module
from bench.harness.upstream import DEFAULT_REPLY, TOOL_CALL_TEXT, FakeUpstream, tokens

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to me"}]


@pytest.fixture(scope="module")
def shared_server():
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def server(shared_server):
    shared_server.reset()
    yield shared_server
    shared_server.reset()


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=5) as sdk_client:
        yield sdk_client


def test_non_streaming_reply_is_a_full_chat_completion(server, client):
    completion = client.chat.completions.create(model="fake-llm", messages=MESSAGES)
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "fake-llm"
    assert completion.system_fingerprint
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == DEFAULT_REPLY
    assert choice.finish_reason == "stop"
    assert completion.usage.prompt_tokens == 6
    assert completion.usage.completion_tokens == len(DEFAULT_REPLY.split())
    assert completion.usage.total_tokens == 6 + len(DEFAULT_REPLY.split())


def test_requests_are_recorded_with_lower_case_headers_and_the_json_body(server, client):
    client.chat.completions.create(model="fake-llm", messages=MESSAGES, temperature=0.5)
    request = server.last_request
    assert request["method"] == "POST"
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == "Bearer x"
    assert request["headers"]["content-type"] == "application/json"
    assert request["json"] == {"model": "fake-llm", "messages": MESSAGES, "temperature": 0.5}
    assert request["disconnected"] is False


def test_reply_is_configurable(server, client):
    server.reply = "Hello there. How are you?"
    completion = client.chat.completions.create(model="anything", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello there. How are you?"


def test_stream_sends_role_then_token_sized_content_then_usage(server, client):
    server.reply = "Pi is 3.5 today. Bye!"
    chunks = list(
        client.chat.completions.create(
            model="fake-llm", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    content = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert content == ["Pi", " is", " 3", ".", "5", " today", ".", " Bye", "!"]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-2].choices[0].delta.content is None
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 5


def test_stream_without_include_usage_has_no_usage_chunk(server, client):
    chunks = list(client.chat.completions.create(model="fake-llm", messages=MESSAGES, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == DEFAULT_REPLY


def test_raw_stream_is_chunked_sse_ending_in_done(server):
    body = {"model": "fake-llm", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["transfer-encoding"] == "chunked"
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_keep_alive_connection_serves_several_streams(server):
    body = {"model": "fake-llm", "messages": MESSAGES, "stream": True}
    with httpx.Client() as http:
        for _ in range(3):
            assert http.post(f"{server.base_url}/chat/completions", json=body).text.endswith(
                "data: [DONE]\n\n"
            )


def test_n_2_gives_each_choice_its_own_reply(server, client):
    server.replies = ["First answer.", "Second answer here."]
    completion = client.chat.completions.create(model="fake-llm", messages=MESSAGES, n=2)
    assert [c.message.content for c in completion.choices] == server.replies
    assert [c.index for c in completion.choices] == [0, 1]


def test_n_2_streams_interleave_by_choice_index(server, client):
    server.replies = ["One two three.", "Four."]
    texts = {0: "", 1: ""}
    order = []
    for chunk in client.chat.completions.create(model="fake-llm", messages=MESSAGES, n=2, stream=True):
        [choice] = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        order.append(choice.index)
    assert texts == {0: "One two three.", 1: "Four."}
    assert order[:4] == [0, 1, 0, 1]


def test_tool_model_returns_a_tool_call(client):
    completion = client.chat.completions.create(model="tool-model", messages=MESSAGES)
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def _collect_stream(client, model):
    text, arguments, names, finish = "", "", [], None
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, stream=True):
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for call in delta.tool_calls or []:
            assert call.index == 0
            if call.function.name:
                names.append(call.function.name)
            arguments += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return text, names, arguments, finish


def test_tool_model_streams_tool_call_deltas(client):
    text, names, arguments, finish = _collect_stream(client, "tool-model")
    assert (text, names, finish) == ("", ["get_weather"], "tool_calls")
    assert json.loads(arguments) == {"city": "Paris"}


def test_tool_text_model_sends_text_and_a_tool_call(client):
    completion = client.chat.completions.create(model="tool-text-model", messages=MESSAGES)
    assert completion.choices[0].message.content == TOOL_CALL_TEXT
    assert completion.choices[0].message.tool_calls[0].function.name == "get_weather"
    text, names, arguments, finish = _collect_stream(client, "tool-text-model")
    assert (text, names, finish) == (TOOL_CALL_TEXT, ["get_weather"], "tool_calls")
    assert json.loads(arguments) == {"city": "Paris"}


@pytest.mark.parametrize(
    ("model", "error_class", "code"),
    [
        ("error-400", openai.BadRequestError, "upstream_bad"),
        ("error-401", openai.AuthenticationError, "invalid_api_key"),
        ("error-429", openai.RateLimitError, "rate_limit_exceeded"),
        ("error-500", openai.InternalServerError, None),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_error_models_answer_with_openai_errors(client, model, error_class, code, stream):
    with pytest.raises(error_class) as caught:
        client.chat.completions.create(model=model, messages=MESSAGES, stream=stream)
    assert caught.value.status_code == int(model.removeprefix("error-"))
    assert caught.value.code == code


def test_error_400_names_its_param_and_429_sends_retry_after(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="error-400", messages=MESSAGES)
    assert caught.value.param == "messages"
    assert caught.value.body["message"] == "bad thing from upstream"
    assert caught.value.type == "invalid_request_error"
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="error-429", messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "1"


def test_cut_stream_breaks_off_after_two_chunks_without_done(server, client):
    server.reply = "One two three four five."
    received = []
    with pytest.raises((httpx.TransportError, openai.APIError)):
        for chunk in client.chat.completions.create(model="cut-stream", messages=MESSAGES, stream=True):
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "One", " two"]

    body = {"model": "cut-stream", "messages": MESSAGES, "stream": True}
    raw = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", f"{server.base_url}/chat/completions", json=body) as response,
    ):
        for part in response.iter_bytes():
            raw += part
    assert b"[DONE]" not in raw


def test_cut_stream_without_streaming_cuts_the_body(client):
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="cut-stream", messages=MESSAGES)


def test_stream_error_model_sends_an_error_event(client):
    with pytest.raises(openai.APIError, match="stream broke upstream"):
        list(client.chat.completions.create(model="stream-error", messages=MESSAGES, stream=True))


def test_slow_model_outlasts_a_short_client_timeout(server, client):
    server.slow_seconds = 30  # it would answer, not time out, if it did not wait
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(model="slow-model", messages=MESSAGES)


def test_slow_model_answers_after_slow_seconds(server, client):
    server.slow_seconds = 2
    answered = threading.Event()
    replies = []

    def ask():
        replies.append(client.chat.completions.create(model="slow-model", messages=MESSAGES))
        answered.set()

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    assert server.wait_for(lambda requests: len(requests) == 1)
    assert not answered.is_set()  # received, and still being held back
    thread.join(timeout=10)
    assert replies[0].choices[0].message.content == DEFAULT_REPLY


def test_echo_model_repeats_the_last_user_message(client):
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ignored"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Transcript:"}, {"type": "text", "text": "hi"}],
        },
    ]
    completion = client.chat.completions.create(model="echo-model", messages=messages)
    assert completion.choices[0].message.content == "Transcript: hi"
    text, _, _, _ = _collect_stream(client, "echo-model")
    assert text == "Say hello to me"


def test_models_list(client):
    ids = [model.id for model in client.models.list()]
    assert {"fake-llm", "tool-model", "echo-model", "error-400"} <= set(ids)
    assert client.models.retrieve("whatever").id == "whatever"


def test_unknown_path_and_bad_json_get_openai_errors(server):
    response = httpx.post(f"{server.base_url}/completions", json={})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = httpx.post(
        f"{server.base_url}/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_concurrent_streams_are_served_in_parallel(server):
    # Overlap, not speed: every stream has its first chunk before any stream has its last. Served one
    # after another, the first stream would end before the second began.
    server.token_delay = 0.05
    results: list[str] = []
    events: list[tuple[str, int]] = []
    lock = threading.Lock()

    def one_stream(n: int):
        with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as sdk_client:
            stream = sdk_client.chat.completions.create(model="fake-llm", messages=MESSAGES, stream=True)
            pieces = []
            for chunk in stream:
                if not pieces:
                    with lock:
                        events.append(("first", n))
                pieces.append(chunk.choices[0].delta.content or "")
            with lock:
                events.append(("last", n))
            results.append("".join(pieces))

    threads = [threading.Thread(target=one_stream, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [DEFAULT_REPLY] * 8
    kinds = [kind for kind, _ in events]
    assert kinds == ["first"] * 8 + ["last"] * 8
    assert len(server.requests) == 8


def test_a_client_hanging_up_mid_stream_is_recorded_and_the_server_keeps_serving(server, client):
    server.reply = " ".join(["word"] * 200)
    server.token_delay = 0.005
    body = {"model": "fake-llm", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body) as response:
        next(response.iter_lines())
    assert server.wait_for(lambda requests: requests[-1]["disconnected"], timeout=5)
    server.reset()
    assert client.chat.completions.create(model="fake-llm", messages=MESSAGES).choices[0].message.content


def test_stop_does_not_wait_for_a_slow_reply():
    server = FakeUpstream(slow_seconds=30).start()
    outcome = []

    def slow_request():
        body = {"model": "slow-model", "messages": MESSAGES}
        try:
            httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=10)
        except httpx.RemoteProtocolError as error:  # stop() closes the connection without an answer
            outcome.append(error)

    thread = threading.Thread(target=slow_request, daemon=True)
    thread.start()
    assert server.wait_for(lambda requests: len(requests) == 1)
    server.stop()
    thread.join(timeout=10)  # the slow reply would hold it 30 s
    assert not thread.is_alive() and len(outcome) == 1


def test_tokens_rejoin_to_the_text():
    text = " Hello,  world. 3.5 ok!\n"
    assert "".join(tokens(text)) == text


def test_command_line_serves_the_given_reply():
    script = Path(upstream_module.__file__)
    process = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--reply", "From the CLI.", "--token-delay", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = process.stdout.readline().split()[-1]
        with openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=5) as sdk_client:
            completion = sdk_client.chat.completions.create(model="fake-llm", messages=MESSAGES)
        assert completion.choices[0].message.content == "From the CLI."
    finally:
        process.terminate()
        process.wait(timeout=5)
