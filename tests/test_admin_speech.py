"""The speech model and voice pages as an operator uses them: each task's own help, alias lists one per
line, a voices inline that fits the page, and a voice's preview through the speech service."""

from __future__ import annotations

import io
import re

import httpx
import pytest
import soundfile

from registry.models import SpeechToTextModel, TextToSpeechModel, Voice
from tests.admin_client import has_horizontal_scroll, unique
from tests.audit_log import audit_row

PIPER = "rhasspy/piper-en_US-joe-medium"
TINY_EN = "Systran/faster-whisper-tiny.en"
PREVIEW_ENDPOINT = "admin:voice-preview"


def change_page(admin, model) -> str:
    return admin.page(f"/admin/registry/{model._meta.model_name}/{model.pk}/change/")


def fieldset(page: str, field: str) -> str:
    """The form row of one field: its label, widget and help."""
    start = re.search(rf'class="form-row[^"]* field-{field}\b', page).start()
    ends = [page.find(end, start + 1) for end in ('<div class="form-row', "</fieldset>")]
    return page[start : min(e for e in ends if e > 0)]


# --- help text per task ------------------------------------------------------------------------------


def test_the_text_to_speech_page_carries_no_whisper_help(admin):
    page = change_page(admin, TextToSpeechModel.objects.get(model_id=PIPER))
    assert 'name="compute_type"' not in page  # Whisper's: Kokoro and Piper ignore it
    assert "CTranslate2" not in page and "int8" not in page and "whisper-1" not in page
    source = fieldset(page, "source")
    assert "Kokoro:" in source and "Piper:" in source and ".onnx.json" in source
    assert "tts-1" in fieldset(page, "aliases")


def test_the_speech_to_text_page_explains_whisper_settings(admin):
    page = change_page(admin, SpeechToTextModel.objects.get(model_id=TINY_EN))
    assert "float16 on CUDA, int8 on CPU" in fieldset(page, "compute_type")
    source = fieldset(page, "source")
    assert "CTranslate2" in source and "Kokoro" not in source and "Piper" not in source
    assert "whisper-1" in fieldset(page, "aliases")


# --- aliases: one per line, with field errors --------------------------------------------------------


def add_stt(admin, model_id: str, aliases: str):
    return admin.post(
        "/admin/registry/speechtotextmodel/add/",
        {
            "model_id": model_id,
            "engine": "faster-whisper",
            "source": "/nowhere/whisper",
            "device": "cpu",
            "compute_type": "auto",
            "enabled": "on",
            "idle_ttl": "",
            "aliases": aliases,
            "_save": "Save",
        },
    )


@pytest.mark.parametrize(
    ("aliases", "error"),
    [
        ("stt-a, stt-b", "one name per line, without commas"),
        ("stt-same\nstt-same", "is listed twice"),
        ("x" * 201, "at most 200 characters"),
        ("whisper-1", "already names another model"),  # the starter's Whisper has it
    ],
)
def test_bad_aliases_are_field_errors_and_nothing_is_saved(admin, aliases, error):
    model_id = unique("alias-check")
    response = add_stt(admin, model_id, aliases)
    assert response.status_code == 200
    page = response.text.replace("&#x27;", "'")
    assert error in fieldset(page, "aliases"), page[:3000]
    assert not SpeechToTextModel.objects.filter(model_id=model_id).exists()


def test_aliases_are_saved_one_per_line(admin):
    model_id = unique("alias-lines")
    a, b = unique("stt-one"), unique("stt-two")
    response = add_stt(admin, model_id, f"  {a}\n\n{b}  \n")
    assert response.status_code == 302, response.text[:2000]
    row = SpeechToTextModel.objects.get(model_id=model_id)
    try:
        assert row.aliases == [a, b]
        assert f"{a}\n{b}</textarea>" in change_page(admin, row)
    finally:
        row.delete()


def test_voice_aliases_are_checked_against_the_models_other_voices(admin):
    model = TextToSpeechModel.objects.get(model_id=PIPER)
    response = admin.post(
        "/admin/registry/voice/add/",
        {"model": str(model.pk), "name": unique("v"), "source": "", "language": "", "aliases": "alloy"},
    )
    assert response.status_code == 200
    assert "already names another voice of this model" in response.text.replace("&#x27;", "'")
    response = admin.post(
        "/admin/registry/voice/add/",
        {"model": str(model.pk), "name": unique("v"), "source": "", "language": "", "aliases": "x, y"},
    )
    assert response.status_code == 200 and "one name per line" in response.text


# --- the voices inline fits the page -----------------------------------------------------------------


def test_the_voices_inline_fits_1366_pixels(admin_page, gateway):
    model = TextToSpeechModel.objects.get(model_id=PIPER)
    extra = [
        Voice.objects.create(
            model=model,
            name=unique("a-rather-long-voice-name"),
            source="/models/voices/some/long/path/to/a/voice/file.onnx",
            language="en-us",
            aliases=[unique("an-alias"), unique("another-alias")],
        )
    ]
    try:
        admin_page.goto(f"{gateway.url}/admin/registry/texttospeechmodel/{model.pk}/change/")
        inline = admin_page.locator("#voices-group table")
        inline.wait_for()
        assert not has_horizontal_scroll(admin_page)
        right = admin_page.evaluate(
            "document.querySelector('#voices-group table').getBoundingClientRect().right"
        )
        assert right <= admin_page.viewport_size["width"]
        # Each saved voice has its preview player; its source is the preview URL.
        players = admin_page.locator("#voices-group audio")
        assert players.count() == model.voices.count()
        src = players.first.get_attribute("src")
        assert re.fullmatch(r"/admin/registry/voice/\d+/preview/", src), src
    finally:
        for voice in extra:
            voice.delete()


def test_the_model_lists_fit_1366_pixels_beside_their_filters(admin_page, gateway):
    for changelist in ("speechtotextmodel", "texttospeechmodel"):
        admin_page.goto(f"{gateway.url}/admin/registry/{changelist}/")
        admin_page.locator("#result_list").wait_for()
        assert not has_horizontal_scroll(admin_page)
        clipped = admin_page.evaluate(
            "(() => { const r = document.querySelector('.results'); return r.scrollWidth > r.clientWidth })()"
        )
        assert not clipped, changelist


# --- preview ------------------------------------------------------------------------------------------


def test_a_voice_preview_is_real_audio_made_by_the_speech_service_and_audited(admin):
    joe = Voice.objects.get(model__model_id=PIPER, name="joe")
    page = change_page(admin, joe)
    assert f'<audio controls preload="none" src="/admin/registry/voice/{joe.pk}/preview/">' in page

    response = admin.get(f"/admin/registry/voice/{joe.pk}/preview/", text="Hello from the admin.")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 24000 and len(samples) > rate // 2  # a real sentence, not a header
    assert abs(samples).max() > 0.01

    row = audit_row(response.headers["x-request-id"])
    assert (row.endpoint, row.route, row.method, row.status_code) == (
        PREVIEW_ENDPOINT,
        PREVIEW_ENDPOINT,
        "GET",
        200,
    )
    assert row.model_names == PIPER and row.characters_in == len("Hello from the admin.")
    assert row.audio_seconds_out and row.tts_ms

    # The text is capped: a long one is cut, not refused.
    long = admin.get(f"/admin/registry/voice/{joe.pk}/preview/", text="Word. " * 200)
    assert long.status_code == 200
    assert audit_row(long.headers["x-request-id"]).characters_in == 200


@pytest.fixture
def broken_piper():
    model = TextToSpeechModel.objects.create(
        model_id=unique("broken-piper"), engine="piper", source="/nowhere/voice.onnx", device="cpu"
    )
    voice = Voice.objects.create(model=model, name="nobody")
    yield model, voice
    model.delete()


def test_previews_that_cannot_play_say_why_and_are_never_a_500(admin, broken_piper):
    model, voice = broken_piper
    joe_model = TextToSpeechModel.objects.get(model_id=PIPER)

    response = admin.get(f"/admin/registry/voice/{voice.pk}/preview/")  # the engine cannot load
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/plain")
    assert "/nowhere/voice.onnx" in response.text and "nobody" in response.text
    assert audit_row(response.headers["x-request-id"]).status_code == 503

    missing = admin.get("/admin/registry/voice/987654321/preview/")
    assert missing.status_code == 404 and "no voice with id 987654321" in missing.text

    disabled = Voice.objects.create(model=joe_model, name=unique("off"), enabled=False)
    try:
        response = admin.get(f"/admin/registry/voice/{disabled.pk}/preview/")
        assert response.status_code == 409 and "is disabled" in response.text
    finally:
        disabled.delete()

    TextToSpeechModel.objects.filter(pk=model.pk).update(enabled=False)
    response = admin.get(f"/admin/registry/voice/{voice.pk}/preview/")
    assert response.status_code == 409 and f"model {model.model_id} is disabled" in response.text


def test_a_preview_needs_an_admin_login(gateway):
    joe = Voice.objects.get(model__model_id=PIPER, name="joe")
    response = httpx.get(f"{gateway.url}/admin/registry/voice/{joe.pk}/preview/")
    assert response.status_code == 302 and "/admin/login/" in response.headers["location"]


# --- load now ----------------------------------------------------------------------------------------------


def test_load_now_says_why_the_memory_budget_refuses_never_a_500(settings):
    """ "Load now" refused because the models in use fill the memory budget (ModelMemoryBusy, a
    ServerBusy rather than a ModelUnavailable) is an error message on the page. In this process,
    with a real Piper voice in use and a budget one byte short of it plus the Whisper model."""
    from django.contrib import admin as django_admin
    from django.contrib import messages
    from django.contrib.auth.models import User
    from django.contrib.messages.storage.cookie import CookieStorage
    from django.test import RequestFactory

    from bench.harness.speech import piper_voice_path, whisper_model_dir
    from registry import fleet
    from registry.models import CacheCommand
    from registry.resolved import ResolvedModel
    from registry.speech import memory
    from registry.speech.cache import model_cache
    from registry.speech.engines.base import EngineSpec

    settings.VOICEPROXY_MODEL_MEMORY = ""
    held_id = unique("busy-piper")
    spec = EngineSpec(model_id=held_id, engine="piper", source=str(piper_voice_path()), device="cpu")
    held = ResolvedModel(model_id=held_id, task="tts", spec=spec, idle_ttl=0, names=(held_id,), pk=0)
    row = SpeechToTextModel.objects.create(
        model_id=unique("busy-whisper"),
        engine="faster-whisper",
        source=str(whisper_model_dir()),
        device="cpu",
    )
    request = RequestFactory().post("/admin/registry/speechtotextmodel/")
    request.user = User(username=unique("busy"))
    request._messages = CookieStorage(request)
    model_admin = django_admin.site._registry[SpeechToTextModel]
    try:
        with model_cache.use(held):
            room = model_cache.status(held_id).memory_bytes + memory.on_disk(str(whisper_model_dir())) - 1
            settings.VOICEPROXY_MODEL_MEMORY = f"cpu={room}"
            model_admin.load_now(request, SpeechToTextModel.objects.filter(pk=row.pk))
        said = [(m.level, m.message) for m in request._messages]
        assert any(level == messages.ERROR and "retry shortly" in text for level, text in said), said
        assert model_cache.status(row.model_id).state != "loaded"
    finally:
        model_cache.unload(held_id)
        model_cache.unload(row.model_id)
        row.delete()
        # The action sent the load to the other server processes too: take it back.
        others = [p.id for p in fleet.read(fresh=True).others]
        fleet.send(action=CacheCommand.UNLOAD, model_id=row.model_id, targets=others)
