"""The pages in a real browser: Debian's headless Chromium driven by Playwright, against the live
daphne with the real engines and the loopback upstream. Chromium's fake media devices feed real
speech (espeak-ng) into the microphone. A failing test leaves a screenshot in test-artifacts/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from django.db import connections

from bench.harness import speech
from registry.speech import audio
from tests.conftest import Key, Server
from tests.wer import wer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
QUESTION = "What is the weather like in Paris today?"
ARTIFACTS = Path(
    os.environ.get("VOICEPROXY_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts")
)
LONG_REPLY = (
    "Here is a long answer, so that you have time to interrupt me. The weather in Paris is mild today, "
    "with a light wind from the west and a few clouds over the river. In the evening it will be cool, "
    "so take a coat if you go out. Tomorrow will be warmer and brighter."
)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The question, then silence: Chromium plays it into the fake microphone in a loop. The 4 s
    after it leave a busy machine time to start answering before the question comes round again."""
    samples, _ = audio.decode(speech.speech(QUESTION), sample_rate=24_000)
    lead, tail = (np.zeros(int(24_000 * s), dtype=np.float32) for s in (1.5, 4.0))
    path = tmp_path_factory.mktemp("mic") / "question.wav"
    path.write_bytes(audio.encode_whole(np.concatenate([lead, samples, tail]), "wav", input_rate=24_000))
    return path


@pytest.fixture(scope="module")
def browser(microphone: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop on this thread, and Django then refuses the ORM calls
    # of the key fixtures; nothing else runs on that loop (Django documents this switch for it).
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        yield browser
        browser.close()
        # Connections the key fixtures opened while Playwright's loop ran belong to that context:
        # closed here, or PostgreSQL will not drop the test database at the end.
        connections.close_all()
    del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def page(browser: Any, gateway: Server, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    hosts: set[str] = set()
    page.on(
        "request", lambda r: hosts.add(urlsplit(r.url).netloc) if r.url.startswith(("http", "ws")) else None
    )
    page.on("websocket", lambda ws: hosts.add(urlsplit(ws.url).netloc))
    page.requested_hosts = hosts
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    # Every request the page made went to the gateway: no CDN, no third party.
    assert hosts <= {urlsplit(gateway.url).netloc}, hosts


def sign_in(page: Any, gateway: Server, key: str) -> None:
    page.goto(gateway.url + "/playground/")
    page.fill("#api-key", key)
    page.click("#key-form button[type=submit]")


def test_landing_page_lists_the_registry_models(page: Any, gateway: Server) -> None:
    page.goto(gateway.url + "/")
    assert "Systran/faster-whisper-tiny.en" in page.inner_text("#stt-models")
    assert "rhasspy/piper-en_US-joe-medium" in page.inner_text("#tts-models")
    assert "fake-llm" in page.inner_text("#chat-models")
    assert "ok" in page.inner_text("#health")
    if os.environ.get("VOICEPROXY_SCREENSHOTS"):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)
    page.click("text=Open the playground")
    page.wait_for_selector("#panel-talk")


def test_a_wrong_key_says_so(page: Any, gateway: Server) -> None:
    sign_in(page, gateway, "vp-not-a-key")
    page.wait_for_function("document.querySelector('#auth-status').textContent.length > 0")
    status = page.inner_text("#auth-status")
    assert "refused" in status and page.get_attribute("#auth-status", "class") == "error"


def test_talk_answers_a_spoken_question_aloud_and_speaking_over_it_interrupts(
    page: Any, gateway: Server, api_key: Key, upstream: Any
) -> None:
    upstream.reset()
    upstream.reply, upstream.token_delay = LONG_REPLY, 0.01
    try:
        sign_in(page, gateway, api_key.secret)
        page.wait_for_function("document.querySelector('#talk-voice').options.length > 0")
        page.select_option("#talk-model", "fake-llm")
        page.click("#talk-start")
        page.wait_for_selector(".log .user", timeout=90_000)
        assert wer(QUESTION, page.inner_text(".log .user")) <= 0.4  # 3 slips in 8 words, through Chromium
        page.wait_for_selector(".log .assistant")
        page.wait_for_function("window.voiceproxyPlayground.scheduledSamples > 24000", timeout=90_000)
        assert page.inner_text(".log .assistant").startswith("Here is a long answer")
        assert "ms" in page.inner_text("#talk-latency")
        # The fake microphone asks again while the long answer plays: playback stops, the answer is cut.
        page.wait_for_function("window.voiceproxyPlayground.interruptions > 0", timeout=90_000)
        page.wait_for_function(
            "window.voiceproxyPlayground.events.includes('conversation.item.truncated')", timeout=30_000
        )
        truncation = page.evaluate("window.voiceproxyPlayground.truncations[0]")
        assert truncation["audio_end_ms"] >= 0
        if os.environ.get("VOICEPROXY_SCREENSHOTS"):
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "talk.png"), full_page=True)
        page.click("#talk-stop")
        assert page.inner_text("#talk-state") == "Stopped."
    finally:
        upstream.reset()


def test_transcribe_shows_the_text_and_word_timeline(
    page: Any, gateway: Server, api_key: Key, microphone: Path
) -> None:
    sign_in(page, gateway, api_key.secret)
    page.click("#tab-transcribe")
    page.wait_for_function("document.querySelector('#stt-model').options.length > 0")
    page.set_input_files("#stt-file", str(microphone))
    page.check("#stt-words")
    page.click("#stt-form button[type=submit]")
    page.wait_for_function("document.querySelector('#stt-status').textContent === 'Done.'")
    assert wer(QUESTION, page.inner_text("#stt-output")) < 0.3
    assert page.locator("#stt-timeline .word").count() >= 6


def test_speak_plays_while_streaming_and_downloads(page: Any, gateway: Server, api_key: Key) -> None:
    sign_in(page, gateway, api_key.secret)
    page.click("#tab-speak")
    page.wait_for_function("document.querySelector('#tts-voice').options.length > 0")
    page.select_option("#tts-format", "wav")
    page.click("#tts-form button[type=submit]")
    page.wait_for_selector("#tts-download:not([hidden])")
    assert page.evaluate("window.voiceproxyPlayground.speakSamples") > 24_000
    with page.expect_download() as download:
        page.click("#tts-download")
    path = download.value.path()
    assert path is not None and Path(path).read_bytes()[:4] == b"RIFF"


def test_api_docs_render_the_operations(page: Any, gateway: Server) -> None:
    page.goto(gateway.url + "/docs/")
    page.wait_for_selector(".opblock")
    text = page.inner_text("body")
    assert "/v1/audio/speech" in text and "/v1/chat/completions" in text
