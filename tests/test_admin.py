"""The admin through HTTP on the live server: logged in as a superuser with a real session and CSRF token."""

from __future__ import annotations

import hashlib
import html
import re

import httpx
import pytest

from bench.harness import speech
from registry.models import ApiKey, SpeechToTextModel, TextToSpeechModel, Upstream
from tests.admin_client import key_form_token, unique
from tests.audit_log import audit_row

LOOPBACK_KEY = "sk-upstream-SECRET-never-shown"  # conftest's registry gives "loopback" this key
TINY_EN = "Systran/faster-whisper-tiny.en"


# --- upstream keys: write-only -------------------------------------------------------------------


def test_upstream_pages_never_show_the_key_nor_its_ciphertext(admin):
    loopback = Upstream.objects.get(name="loopback")
    assert loopback.get_api_key() == LOOPBACK_KEY
    ciphertext = loopback.api_key_encrypted
    pages = [
        admin.page("/admin/registry/upstream/"),
        admin.page(f"/admin/registry/upstream/{loopback.pk}/change/"),
        admin.page(f"/admin/registry/upstream/{loopback.pk}/history/"),
        admin.page(f"/admin/registry/upstream/{loopback.pk}/delete/"),
        admin.page("/admin/registry/upstream/", q="loopback"),
    ]
    assert "loopback" in pages[0]
    for page in pages:
        assert LOOPBACK_KEY not in page
        assert ciphertext not in page
        assert ciphertext[:24] not in page
    # The search box echoes what was typed, so search only to see the key is not searched. A fragment:
    # the whole key in a URL would reach the server's access log, which test_voice_chat checks.
    assert "0 upstreams" in admin.page("/admin/registry/upstream/", q=LOOPBACK_KEY[3:15])


def test_the_stored_ciphertext_cannot_be_probed_through_url_filters(admin):
    ciphertext = Upstream.objects.get(name="loopback").api_key_encrypted
    response = admin.get("/admin/registry/upstream/", api_key_encrypted__startswith=ciphertext[:8])
    assert response.status_code == 400
    response = admin.get("/admin/registry/apikey/", **{"secret_hash__startswith": "a"})
    assert response.status_code == 400


@pytest.fixture
def own_upstream():
    row = Upstream(name=unique("admin-upstream"), base_url="http://127.0.0.1:9/v1", is_default=False)
    row.set_api_key("sk-first")
    row.save()
    yield row
    row.delete()


def change_upstream(admin, upstream, *, expect=302, **fields):
    data = {
        "name": upstream.name,
        "base_url": upstream.base_url,
        "timeout": "5",
        "enabled": "on",
        "chat_models": "",
        "key_action": "keep",
        "api_key": "",
        "_save": "Save",
        **fields,
    }
    response = admin.post(f"/admin/registry/upstream/{upstream.pk}/change/", data)
    assert response.status_code == expect, html.unescape(response.text)[:2000]
    upstream.refresh_from_db()
    return html.unescape(response.text)


def key_stored(admin, upstream):
    page = admin.page(f"/admin/registry/upstream/{upstream.pk}/change/")
    assert ("A key is stored." in page) != ("No key is stored." in page)
    return "A key is stored." in page


def test_the_change_form_sets_keeps_and_clears_the_upstream_key(admin, own_upstream):
    # The form's finer points (its choices, its errors) are in test_admin_forms.py.
    page = admin.page(f"/admin/registry/upstream/{own_upstream.pk}/change/")
    assert 'type="password"' in page and "sk-first" not in page
    assert own_upstream.api_key_encrypted not in page

    change_upstream(admin, own_upstream, key_action="replace", api_key="sk-second")
    assert own_upstream.get_api_key() == "sk-second"
    assert "sk-second" not in own_upstream.api_key_encrypted
    history = admin.page(f"/admin/registry/upstream/{own_upstream.pk}/history/")
    assert "sk-second" not in history and own_upstream.api_key_encrypted not in history

    change_upstream(admin, own_upstream)  # "keep": the key stays
    assert own_upstream.get_api_key() == "sk-second"
    assert own_upstream.timeout == 5

    assert key_stored(admin, own_upstream)

    page = change_upstream(admin, own_upstream, expect=200, key_action="remove", api_key="sk-third")
    assert "“Replace it” is not chosen" in page and "sk-third" not in page
    assert own_upstream.get_api_key() == "sk-second"

    change_upstream(admin, own_upstream, key_action="remove")
    assert own_upstream.api_key_encrypted == "" and not own_upstream.has_api_key
    assert not key_stored(admin, own_upstream)


# --- client keys: the secret is shown once --------------------------------------------------------


def add_key(admin, name):
    """Add a key through the form; its secret is in the answer to the POST itself, shown once."""
    response = admin.post(
        "/admin/registry/apikey/add/",
        {
            "name": name,
            "expires_at_0": "",
            "expires_at_1": "",
            "allowed_models": "",
            "rate_limit_per_minute": "",
            "submission": key_form_token(admin),
            "_save": "Save",
        },
    )
    assert response.status_code == 200, html.unescape(response.text)[:2000]
    secrets = set(re.findall(r"vp-[A-Za-z0-9_-]{40,}", html.unescape(response.text)))
    assert len(secrets) == 1, secrets
    return ApiKey.objects.get(name=name), secrets.pop()


def test_a_key_added_in_the_admin_shows_its_secret_once_and_works(admin, gateway):
    key, secret = add_key(admin, unique("admin-key"))
    assert key.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert key.prefix == secret[:12]
    stored = [str(v) for v in ApiKey.objects.filter(pk=key.pk).values().first().values()]
    assert not any(secret in value for value in stored)

    response = httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200

    assert secret not in admin.page("/admin/registry/apikey/")  # never shown again
    change = admin.page(f"/admin/registry/apikey/{key.pk}/change/")
    assert key.name in change and secret not in change and key.secret_hash not in change


def test_the_revoke_action_makes_the_key_a_401(admin, gateway):
    key, secret = add_key(admin, unique("admin-revoke"))
    page = admin.action("/admin/registry/apikey/", "revoke", [key.pk])
    assert "Revoked 1 key(s)." in page
    key.refresh_from_db()
    assert key.is_revoked
    response = httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


# --- the audit log: read-only ---------------------------------------------------------------------


def test_the_request_log_is_listed_filtered_and_read_only(admin, gateway, make_key):
    key = make_key(unique("log"))
    ok = httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {key.secret}"})
    denied = httpx.get(f"{gateway.url}/v1/models")
    assert (ok.status_code, denied.status_code) == (200, 401)
    ok_id, denied_id = ok.headers["x-request-id"], denied.headers["x-request-id"]

    audit_row(ok_id)
    audit_row(denied_id)
    listing = admin.page("/admin/registry/requestlog/")
    assert ok_id in listing and denied_id in listing
    assert '<nav class="toplinks">' not in listing  # no date hierarchy: since/until filter instead
    row = audit_row(denied_id)
    assert admin.get("/admin/registry/requestlog/", created__year=str(row.created.year)).status_code == 200

    only_401 = admin.page("/admin/registry/requestlog/", status_code__exact="401")
    assert denied_id in only_401 and ok_id not in only_401

    assert admin.get("/admin/registry/requestlog/add/").status_code == 403

    detail = admin.page(f"/admin/registry/requestlog/{row.pk}/change/")
    assert denied_id in detail and "invalid_api_key" in detail
    form = detail[detail.index('id="requestlog_form"') :]
    assert 'name="_save"' not in form and "<textarea" not in form and "<select" not in form
    inputs = re.findall(r"<input[^>]*>", form)
    assert all('type="hidden"' in tag for tag in inputs), inputs

    response = admin.post(f"/admin/registry/requestlog/{row.pk}/change/", {"status_code": "200"})
    assert response.status_code == 403
    row.refresh_from_db()
    assert row.status_code == 401


# --- the model cache --------------------------------------------------------------------------------


def cache_row(page: str, model_id: str) -> str:
    """The text of the list row whose model id link is `model_id`."""
    start = page.index(f">{model_id}</a>", page.index('id="result_list"'))
    row = page[start : page.index("</tr>", start)]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row))


def test_load_now_and_unload_act_on_the_server_processes_cache(admin):
    model = SpeechToTextModel.objects.get(model_id=TINY_EN)
    changelist = "/admin/registry/speechtotextmodel/"
    admin.action(changelist, "unload", [model.pk])  # whatever other tests left loaded
    listing = admin.page(changelist)
    headers = [
        re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<th scope=\"col\".*?</th>", listing, re.S)
    ]
    assert "Cache" in headers, headers  # one column in the list; each figure on the change page
    assert " not loaded " in cache_row(listing, TINY_EN)

    page = admin.action(changelist, "load_now", [model.pk])
    loaded = re.search(rf"Loaded {re.escape(TINY_EN)} on (cpu|cuda) in [0-9.]+ s\.", page)
    assert loaded, page
    row = cache_row(page, TINY_EN)
    assert f" loaded on {loaded.group(1)}, " in row

    change = admin.page(f"/admin/registry/speechtotextmodel/{model.pk}/change/")
    assert "Model cache" in change and loaded.group(1) in change

    page = admin.action(changelist, "load_now", [model.pk])
    assert f"{TINY_EN} is already loaded" in page

    page = admin.action(changelist, "unload", [model.pk])
    assert f"Unloaded {TINY_EN}." in page
    assert " not loaded " in cache_row(page, TINY_EN)


def test_the_cache_shows_on_text_to_speech_pages_but_not_when_adding(admin):
    model = TextToSpeechModel.objects.get(model_id="rhasspy/piper-en_US-joe-medium")
    row = cache_row(admin.page("/admin/registry/texttospeechmodel/"), model.model_id)
    assert re.search(r" (not loaded|loaded) ", row), row  # which one depends on the TTS tests run before
    change = admin.page(f"/admin/registry/texttospeechmodel/{model.pk}/change/")
    assert "Model cache" in change and "joe" in change  # the fieldset, and the voices inline
    assert "field-cache_state" not in admin.page("/admin/registry/speechtotextmodel/add/")


@pytest.fixture
def missing_model(tmp_path, admin):
    path = tmp_path / "models" / "not-here-yet"
    row = SpeechToTextModel.objects.create(
        model_id=unique("missing-whisper"), engine="faster-whisper", source=str(path), device="cpu"
    )
    yield row, path
    admin.action("/admin/registry/speechtotextmodel/", "unload", [row.pk])
    row.delete()


def transcribe(gateway, api_key, model_id):
    return httpx.post(
        f"{gateway.url}/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {api_key.secret}"},
        data={"model": model_id},
        files={"file": ("hello.wav", speech.speech("hello world"), "audio/wav")},
        timeout=60,
    )


def test_a_model_that_cannot_load_is_a_503_shown_failed_and_retried(admin, gateway, api_key, missing_model):
    row, path = missing_model
    response = transcribe(gateway, api_key, row.model_id)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "model_unavailable" and error["param"] == "model"
    assert row.model_id in error["message"] and str(path) in error["message"]

    listing = admin.page("/admin/registry/speechtotextmodel/")
    failed = cache_row(listing, row.model_id)
    assert " failed " in failed and "Could not load the Whisper" in failed
    change = admin.page(f"/admin/registry/speechtotextmodel/{row.pk}/change/")
    assert str(path) in change

    assert transcribe(gateway, api_key, row.model_id).status_code == 503  # still failing: tried again

    # The failure is not remembered against the model: once its files exist, the next request loads it.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(speech.whisper_model_dir(), target_is_directory=True)
    response = transcribe(gateway, api_key, row.model_id)
    assert response.status_code == 200, response.text
    assert "hello" in response.json()["text"].lower()
    assert " loaded " in cache_row(admin.page("/admin/registry/speechtotextmodel/"), row.model_id)

    # A new source is another engine: saving it drops the old one from this process's cache.
    response = admin.post(
        f"/admin/registry/speechtotextmodel/{row.pk}/change/",
        {
            "model_id": row.model_id,
            "engine": "faster-whisper",
            "source": str(speech.whisper_model_dir()),
            "device": "cpu",
            "compute_type": "auto",
            "enabled": "on",
            "idle_ttl": "",
            "aliases": "[]",
            "_save": "Save",
        },
    )
    assert response.status_code == 302, html.unescape(response.text)[:2000]
    assert " not loaded " in cache_row(admin.page("/admin/registry/speechtotextmodel/"), row.model_id)


# --- Django's site middleware: the admin has it, /v1/ does not -----------------------------------


def test_the_admin_keeps_csrf_sessions_and_frame_options_and_the_api_does_without(gateway, admin, http):
    # A form posted without its CSRF token is refused (CsrfViewMiddleware.process_view still runs).
    with httpx.Client(base_url=gateway.url, timeout=30) as anonymous:
        anonymous.get("/admin/login/")
        refused = anonymous.post("/admin/login/", data={"username": "x", "password": "y"})
    assert refused.status_code == 403 and "CSRF" in refused.text
    page = admin.get("/admin/")
    assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"

    api = http.get("/v1/models")
    assert api.status_code == 200
    assert "set-cookie" not in api.headers and "x-frame-options" not in api.headers
    assert api.headers["x-content-type-options"] == "nosniff"
    assert api.headers["content-length"] == str(len(api.content))
