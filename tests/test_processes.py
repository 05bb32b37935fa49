"""The model cache across server processes: a second daphne on the same database reports what it has
loaded, the admin (served by the session's first process) shows it, and its load and unload
commands reach the second process; a process that stops leaves, one that dies shows as gone."""

from __future__ import annotations

import html
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx
import pytest

from registry.models import CacheCommand, ServerProcess
from tests.conftest import Server, server_env

T = TypeVar("T")

PIPER = "rhasspy/piper-en_US-joe-medium"
TINY_EN = "Systran/faster-whisper-tiny.en"
PAGE = "/admin/model-cache/"
WAIT = 120.0  # generous: the CI box is busy; nothing here asserts how fast


def wait_for(check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.1)


def row_of(server: Server) -> ServerProcess:
    pid = server.process.pid
    return wait_for(lambda: ServerProcess.objects.filter(pid=pid).first(), f"a row for pid {pid}")


def model_state(row: ServerProcess, model_id: str) -> str:
    row.refresh_from_db()
    return next((m["state"] for m in row.cache if m["model_id"] == model_id), "not loaded")


def reported(server: Server, model_id: str, state: str) -> ServerProcess:
    """The server's row once it reports `model_id` in `state` (at a later heartbeat)."""
    row = row_of(server)
    return wait_for(lambda: model_state(row, model_id) == state and row, f"{model_id} {state} in {row.id}")


def process_block(page: str, process_id: str) -> str:
    """The part of the Model cache page about one process."""
    start = page.index(f'data-process="{process_id}"')
    end = page.find('class="module vp-process"', start)
    return page[start : end if end > 0 else page.index('id="registry-models"')]


def answered(command: CacheCommand) -> CacheCommand:
    def done() -> CacheCommand | None:
        command.refresh_from_db()
        return command if command.done_at is not None else None

    return wait_for(done, f"an answer to {command}")


def send(admin, *, action: str, model_id: str, target: str) -> str:
    response = admin.post(PAGE, {"action": action, "model_id": model_id, "target": target}, follow=True)
    assert response.status_code == 200, response.text[:2000]
    return html.unescape(response.text)


def last_command(target: str, action: str, model_id: str) -> CacheCommand:
    return CacheCommand.objects.filter(target=target, action=action, model_id=model_id).latest("pk")


@pytest.fixture(scope="module")
def second(gateway: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        server_env(VOICEPROXY_HEARTBEAT_SECONDS="0.5"), tmp_path_factory.mktemp("second") / "daphne.log"
    )
    yield server
    server.stop()


def speak(server: Server, api_key, text: str = "Hello from the second process.") -> None:
    response = httpx.post(
        f"{server.url}/v1/audio/speech",
        headers={"Authorization": f"Bearer {api_key.secret}"},
        json={"model": PIPER, "voice": "joe", "input": text, "response_format": "wav"},
        timeout=WAIT,
    )
    assert response.status_code == 200, response.text


def test_the_admin_shows_every_live_process_and_what_the_second_has_loaded(admin, gateway, second, api_key):
    first = row_of(gateway)
    # The first process unloads Piper (other tests may have loaded it); the second loads it.
    send(admin, action="unload", model_id=PIPER, target=first.id)
    speak(second, api_key)
    other = reported(second, PIPER, "loaded")

    page = admin.page(PAGE)
    here, there = process_block(page, first.id), process_block(page, other.id)
    assert f"{first.hostname}:{gateway.process.pid}" in here and "(this process)" in here
    assert f"{other.hostname}:{second.process.pid}" in there and "(live)" in there
    piper = there[there.index(f'data-model="{PIPER}"') :]
    piper = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", piper[: piper.index("</tr>")]))
    assert re.search(rf" {re.escape(PIPER)} loaded (cpu|cuda) .* MiB ", piper), piper
    assert f'data-model="{PIPER}"' not in here

    # The model lists count processes: Piper is loaded in the second only.
    listing = "/admin/registry/texttospeechmodel/"
    wait_for(lambda: "loaded in 1 of 2 processes" in admin.page(listing), "the list counting processes")


def test_an_unload_from_the_admin_reaches_the_second_process(admin, second, api_key):
    speak(second, api_key)
    other = reported(second, PIPER, "loaded")
    page = send(admin, action="unload", model_id=PIPER, target=other.id)
    assert f"Sent unload {PIPER} to {other.hostname}:{other.pid}" in page
    command = answered(last_command(other.id, "unload", PIPER))
    assert command.ok and command.result == "Unloaded." and command.taken_at is not None
    reported(second, PIPER, "not loaded")

    page = admin.page(PAGE)
    commands = page[page.index('id="cache-commands"') :]
    assert f'data-command="{command.pk}"' in commands and "Unloaded." in commands


def test_load_on_one_process_then_unload_from_all(admin, gateway, second):
    first, other = row_of(gateway), row_of(second)
    send(admin, action="unload", model_id=TINY_EN, target="*")
    reported(second, TINY_EN, "not loaded")

    send(admin, action="load", model_id=TINY_EN, target=other.id)
    command = answered(last_command(other.id, "load", TINY_EN))
    assert command.ok and re.fullmatch(r"Loaded on (cpu|cuda) in [0-9.]+ s\.", command.result), command.result
    reported(second, TINY_EN, "loaded")
    # Only where it was sent: the first process (whose own cache the page reads now) has not loaded it.
    page = admin.page(PAGE)
    assert f'data-model="{TINY_EN}"' not in process_block(page, first.id)
    assert f'data-model="{TINY_EN}"' in process_block(page, other.id)

    page = send(admin, action="unload", model_id=TINY_EN, target="*")
    assert f"Unload {TINY_EN} on {first.hostname}:{gateway.process.pid} (this process)" in page
    assert answered(last_command(other.id, "unload", TINY_EN)).result == "Unloaded."
    reported(second, TINY_EN, "not loaded")


def test_the_model_list_actions_reach_every_process(admin, gateway, second):
    from registry.models import SpeechToTextModel

    model = SpeechToTextModel.objects.get(model_id=TINY_EN)
    other = row_of(second)
    page = admin.action("/admin/registry/speechtotextmodel/", "load_now", [model.pk])
    assert re.search(rf"Loaded {re.escape(TINY_EN)} on (cpu|cuda)", page), page[:3000]  # here, at once
    assert "Sent to 1 other server process(es) too" in page
    assert answered(last_command(other.id, "load", TINY_EN)).ok
    reported(second, TINY_EN, "loaded")
    listing = "/admin/registry/speechtotextmodel/"
    wait_for(lambda: "loaded in 2 of 2 processes" in admin.page(listing), "the list counting processes")

    admin.action("/admin/registry/speechtotextmodel/", "unload", [model.pk])
    assert answered(last_command(other.id, "unload", TINY_EN)).ok
    reported(second, TINY_EN, "not loaded")


def test_a_load_that_fails_is_answered_with_the_reason(admin, second):
    other = row_of(second)
    send(admin, action="load", model_id="no-such-model", target=other.id)  # refused before sending
    assert not CacheCommand.objects.filter(target=other.id, model_id="no-such-model").exists()

    from registry.models import TextToSpeechModel
    from tests.admin_client import unique

    broken = TextToSpeechModel.objects.create(
        model_id=unique("broken-piper"), engine="piper", source="/nowhere/voice.onnx", device="cpu"
    )
    try:
        send(admin, action="load", model_id=broken.model_id, target=other.id)
        command = answered(last_command(other.id, "load", broken.model_id))
        assert not command.ok and "/nowhere/voice.onnx" in command.result
        reported(second, broken.model_id, "failed")
    finally:
        broken.delete()


def test_a_process_that_stops_leaves_and_one_that_dies_shows_as_gone(admin, second, tmp_path):
    leaving = row_of(second)
    second.stop()
    wait_for(
        lambda: not ServerProcess.objects.filter(id=leaving.id).exists(), "the stopped process's row gone"
    )
    assert f'data-process="{leaving.id}"' not in admin.page(PAGE)

    dying = Server(server_env(VOICEPROXY_HEARTBEAT_SECONDS="0.5"), tmp_path / "dying.log")
    try:
        row = row_of(dying)
        assert "(live)" in process_block(admin.page(PAGE), row.id)
        os.kill(dying.process.pid, signal.SIGKILL)
        dying.process.wait()
        wait_for(
            lambda: "(gone)" in process_block(admin.page(PAGE), row.id), "the killed process shown as gone"
        )
        assert ServerProcess.objects.filter(id=row.id).exists()  # kept a while, for the operator to see
    finally:
        dying.stop()
        ServerProcess.objects.filter(pid=dying.process.pid).delete()
