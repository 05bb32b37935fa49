"""The upstream and key forms without JSON, "Test connection", and a key's page (revoke, usage, secret
shown once): through HTTP against the live server's admin, and in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from django.contrib.sessions.models import Session
from django.db.models import Count, Max, Q, Sum
from django.utils import timezone

from bench.harness import upstream as fake_upstream
from bench.harness.daphne import free_port
from registry import key_usage, upstream_probe
from registry.models import ApiKey, RequestLog, Upstream
from tests.admin_client import has_horizontal_scroll, key_form_token, unique

ADD_UPSTREAM = "/admin/registry/upstream/add/"
ADD_KEY = "/admin/registry/apikey/add/"


def field_error(page: str, name: str) -> str:
    """The text of the field's error list ("" when it has none)."""
    match = re.search(rf'<ul class="errorlist"[^>]* id="id_{name}_error">(.*?)</ul>', page, re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", match.group(1))).strip() if match else ""


def upstream_data(**fields: str) -> dict[str, str]:
    return {
        "name": unique("form-upstream"),
        "base_url": "http://127.0.0.1:9/v1",
        "timeout": "5",
        "enabled": "on",
        "chat_models": "",
        "api_key": "",
        "_save": "Save",
        **fields,
    }


@pytest.fixture
def own_upstream(upstream: Any) -> Iterator[Upstream]:
    """An upstream of our own on the loopback fake LLM, with a key of its own."""
    row = Upstream(
        name=unique("probe"), base_url=upstream.base_url + "/", timeout=3, chat_models=["old-model"]
    )
    row.set_api_key("sk-" + unique("probe-key"))
    row.save()
    yield row
    row.delete()


def change(admin: Any, row: Upstream, *, expect: int = 302, **fields: str) -> str:
    data = upstream_data(**{"name": row.name, "base_url": row.base_url, "key_action": "keep", **fields})
    data["chat_models"] = fields.get("chat_models", "\n".join(row.chat_models))
    response = admin.post(f"/admin/registry/upstream/{row.pk}/change/", data)
    assert response.status_code == expect, html.unescape(response.text)[:3000]
    row.refresh_from_db()
    return html.unescape(response.text)


# --- upstream forms -------------------------------------------------------------------------------


def test_the_upstream_add_form_rejects_bad_input_with_field_errors(admin):
    page = html.unescape(admin.post(ADD_UPSTREAM, upstream_data(name="loopback")).text)
    assert "already exists" in field_error(page, "name")

    page = html.unescape(admin.post(ADD_UPSTREAM, upstream_data(chat_models="llama3, qwen")).text)
    assert "without commas" in field_error(page, "chat_models")

    page = html.unescape(admin.post(ADD_UPSTREAM, upstream_data(chat_models="llama3\n qwen \nllama3")).text)
    assert "'llama3' is listed twice" in field_error(page, "chat_models")

    page = html.unescape(admin.post(ADD_UPSTREAM, upstream_data(timeout="-1")).text)
    assert "positive" in field_error(page, "timeout").lower()

    page = html.unescape(admin.post(ADD_UPSTREAM, upstream_data(base_url="not a url")).text)
    assert field_error(page, "base_url")
    assert not Upstream.objects.filter(name__startswith="form-upstream").exists()


def test_the_add_form_asks_for_the_key_plainly_and_stores_it_encrypted(admin):
    page = admin.page(ADD_UPSTREAM)
    assert 'name="api_key"' in page and 'type="password"' in page
    assert "Sent as Authorization: Bearer to the upstream; encrypted at rest and never shown again." in page
    assert (
        'name="key_action"' not in page
        and "Keep the stored key" not in page
        and "keep the current key" not in page
    )
    assert 'name="chat_models"' in page and "<textarea" in page

    data = upstream_data(api_key="sk-added-in-form", chat_models="model-a\n\n  model-b  \n")
    response = admin.post(ADD_UPSTREAM, data)
    assert response.status_code == 302, html.unescape(response.text)[:3000]
    row = Upstream.objects.get(name=data["name"])
    try:
        assert row.get_api_key() == "sk-added-in-form" and "sk-added" not in row.api_key_encrypted
        assert row.chat_models == ["model-a", "model-b"]
        page = admin.page(f"/admin/registry/upstream/{row.pk}/change/")
        assert "sk-added-in-form" not in page and row.api_key_encrypted not in page
        assert "model-a\nmodel-b" in page  # one per line, not JSON
    finally:
        row.delete()


def test_a_pasted_json_list_is_read_as_its_names(admin, own_upstream):
    change(admin, own_upstream, chat_models='["m-one", "m-two"]')
    assert own_upstream.chat_models == ["m-one", "m-two"]


def test_the_change_form_keeps_replaces_and_removes_the_key(admin, own_upstream):
    first = own_upstream.get_api_key()
    page = admin.page(f"/admin/registry/upstream/{own_upstream.pk}/change/")
    assert "A key is stored." in page
    for label in ("Keep the stored key", "Replace it", "Remove it"):
        assert label in page
    assert first not in page and own_upstream.api_key_encrypted not in page

    page = change(admin, own_upstream, expect=200, key_action="replace")
    assert "Type the new key" in field_error(page, "api_key")

    page = change(admin, own_upstream, expect=200, api_key="sk-typed-but-kept")
    assert "Replace it" in field_error(page, "api_key")
    assert "sk-typed-but-kept" not in page
    assert own_upstream.get_api_key() == first

    change(admin, own_upstream, timeout="7")  # keep
    assert own_upstream.get_api_key() == first and own_upstream.timeout == 7

    change(admin, own_upstream, key_action="replace", api_key="sk-replaced")
    assert own_upstream.get_api_key() == "sk-replaced"
    history = admin.page(f"/admin/registry/upstream/{own_upstream.pk}/history/")
    assert "sk-replaced" not in history and own_upstream.api_key_encrypted not in history

    change(admin, own_upstream, key_action="remove")
    assert own_upstream.api_key_encrypted == "" and own_upstream.get_api_key() == ""
    page = admin.page(f"/admin/registry/upstream/{own_upstream.pk}/change/")
    assert "No key is stored." in page and "Remove it" not in page


# --- test connection ------------------------------------------------------------------------------


def test_test_connection_lists_what_the_loopback_upstream_serves(admin, own_upstream, upstream):
    key = own_upstream.get_api_key()
    change_page = admin.page(f"/admin/registry/upstream/{own_upstream.pk}/change/")
    test_url = f"/admin/registry/upstream/{own_upstream.pk}/test-connection/"
    assert f'action="{test_url}"' in change_page and "Test connection" in change_page

    response = admin.post(test_url, {})
    assert response.status_code == 200
    page = html.unescape(response.text)
    assert "Connected" in page and "HTTP 200" in page
    assert f"it serves {len(fake_upstream.MODELS)} models" in page
    for model_id in fake_upstream.MODELS:
        assert f'name="model" value="{model_id}"' in page
    assert f"GET {own_upstream.base_url.rstrip('/')}/models" in re.sub(r"<[^>]+>", "", page)
    assert key not in page and own_upstream.api_key_encrypted not in page
    sent = [
        r
        for r in upstream.requests
        if r["path"] == "/v1/models" and key in r["headers"].get("authorization", "")
    ]
    assert sent and sent[-1]["headers"]["authorization"] == f"Bearer {key}"


def test_use_these_as_chat_models_fills_the_list(admin, own_upstream):
    url = f"/admin/registry/upstream/{own_upstream.pk}/use-models/"
    response = admin.post(url, {"model": ["fake-llm", "echo-model"]}, follow=True)
    assert response.status_code == 200
    assert "now routes 2 chat model(s): fake-llm, echo-model" in html.unescape(response.text)
    own_upstream.refresh_from_db()
    assert own_upstream.chat_models == ["fake-llm", "echo-model"]

    page = html.unescape(admin.post(url, {"model": ["bad,name"]}, follow=True).text)
    assert "without commas" in page
    own_upstream.refresh_from_db()
    assert own_upstream.chat_models == ["fake-llm", "echo-model"]
    assert admin.get(url).status_code == 405


def test_a_closed_port_is_a_clear_error(admin, own_upstream):
    own_upstream.base_url = f"http://127.0.0.1:{free_port()}/v1"
    own_upstream.save()
    page = html.unescape(admin.post(f"/admin/registry/upstream/{own_upstream.pk}/test-connection/", {}).text)
    assert "Failed" in page and "Could not connect: connection refused." in page
    assert "Use these as chat models" not in page


class Misbehaving(BaseHTTPRequestHandler):
    """/echo/v1/models: a 401 quoting the key it was sent (whole and masked, as OpenAI does);
    /html/v1/models: a 200 that is not JSON; /empty/v1/models: JSON without a model list."""

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ")
        if self.path.startswith("/echo/"):
            masked = key[:8] + "*" * 10 + key[-4:]
            body = {"error": {"message": f"Incorrect API key provided: {masked}. You sent {auth!r}."}}
            self.answer(401, "application/json", json.dumps(body))
        elif self.path.startswith("/html/"):
            self.answer(200, "text/html", "<html><body>It works!</body></html>")
        else:
            self.answer(200, "application/json", json.dumps({"object": "list"}))

    def answer(self, status: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_key_the_upstream_echoes_back_is_redacted(admin, own_upstream, misbehaving):
    key = own_upstream.get_api_key()
    own_upstream.base_url = f"{misbehaving}/echo/v1"
    own_upstream.save()
    page = html.unescape(admin.post(f"/admin/registry/upstream/{own_upstream.pk}/test-connection/", {}).text)
    assert "HTTP 401: Incorrect API key provided: [redacted]. You sent 'Bearer [redacted]'." in page
    assert key not in page and key[:8] not in page and key[-8:] not in page
    assert own_upstream.api_key_encrypted not in page


def test_the_list_action_tests_each_selected_upstream(admin, own_upstream, misbehaving):
    others = []
    for kind in ("html", "empty"):
        row = Upstream(name=unique(f"probe-{kind}"), base_url=f"{misbehaving}/{kind}/v1", timeout=3)
        row.save()
        others.append(row)
    try:
        page = admin.action(
            "/admin/registry/upstream/", "test_connection", [own_upstream.pk, *(r.pk for r in others)]
        )
        sections = {
            name: page[page.index(f"{name}</a></h2>") :][:3000]
            for name in [own_upstream.name, *(r.name for r in others)]
        }
        assert (
            "Connected" in sections[own_upstream.name] and 'value="fake-llm"' in sections[own_upstream.name]
        )
        assert "HTTP 200, but the answer is not JSON (text/html): <html><body>It works!" in html.unescape(
            re.sub(r"&lt;", "<", sections[others[0].name])
        )
        assert "the JSON holds no model list" in sections[others[1].name]
        assert own_upstream.get_api_key() not in page
    finally:
        for row in others:
            row.delete()


def test_an_upstream_that_does_not_answer_is_a_timeout():
    with socket.socket() as listening:  # accepts connections (the backlog) and never answers
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        row = Upstream(
            name="silent", base_url=f"http://127.0.0.1:{listening.getsockname()[1]}/v1", timeout=0.5
        )
        probe = upstream_probe.probe(row)
    assert not probe.ok and probe.status is None
    assert probe.error == "No answer within 0.5 s (timeout)."


def test_redaction_covers_the_key_its_ciphertext_and_their_pieces():
    row = Upstream(name="redact", base_url="http://127.0.0.1:9/v1")
    row.set_api_key("sk-proj-Abc123Def456Ghi789")
    secrets = [row.get_api_key(), row.api_key_encrypted]
    text = (
        f"whole {secrets[0]}; masked sk-proj-****i789; cut {secrets[0][:12]}; "
        f"cipher {secrets[1]}; cipher cut {secrets[1][5:30]}; a plain upstream word stays"
    )
    redacted = upstream_probe.redact(text, secrets)
    assert secrets[0][:10] not in redacted and secrets[1][5:20] not in redacted
    assert redacted.count("[redacted]") >= 5 and "a plain upstream word stays" in redacted


# --- API keys -------------------------------------------------------------------------------------


def key_data(name: str, **fields: str) -> dict[str, str]:
    return {
        "name": name,
        "expires_at_0": "",
        "expires_at_1": "",
        "allowed_models": "",
        "rate_limit_per_minute": "",
        "_save": "Save",
        **fields,
    }


def test_the_new_secret_is_shown_once_with_a_copy_button(admin, gateway):
    name = unique("form-key")
    data = key_data(name, allowed_models="whisper-1\ntts-1", submission=key_form_token(admin))
    response = admin.post(ADD_KEY, data)
    assert response.status_code == 200, html.unescape(response.text)[:3000]
    assert "no-store" in response.headers["cache-control"]
    page = html.unescape(response.text)
    secrets = re.findall(r"vp-[A-Za-z0-9_-]{40,}", page)
    assert len(set(secrets)) == 1, secrets
    secret = secrets[0]
    assert re.search(rf'<input type="text" id="vp-secret" value="{re.escape(secret)}" readonly', page)
    assert 'data-copy-target="vp-secret"' in page and ">Copy</button>" in page
    assert "registry/copy_secret.js" in page and "it will not be shown again" in page
    key = ApiKey.objects.get(name=name)
    assert key.allowed_models == ["whisper-1", "tts-1"] and key.prefix == secret[:12]

    models = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0).models.list()
    assert {m.id for m in models.data} >= {"whisper-1", "tts-1"}

    for path in (f"/admin/registry/apikey/{key.pk}/change/", "/admin/registry/apikey/", ADD_KEY, "/admin/"):
        assert secret not in admin.page(path)
    session = Session.objects.get(session_key=admin.client.cookies["sessionid"])
    assert secret not in json.dumps(session.get_decoded())
    key.delete()


def test_posting_the_add_form_again_adds_no_second_key(admin):
    """A refresh of the page that shows a new secret posts the add form again: that adds nothing."""
    name = unique("form-twice")
    data = key_data(name, submission=key_form_token(admin))
    first = admin.post(ADD_KEY, data)
    assert first.status_code == 200 and 'id="vp-secret"' in first.text
    again = admin.post(ADD_KEY, data)
    assert again.status_code == 200 and '<a href="/admin/registry/apikey/">key' in again.text  # a link
    page = html.unescape(again.text)
    assert 'id="vp-secret"' not in page
    assert re.search(
        r"This form was already submitted; the key was created — see the\s*"
        r"<a href=\"/admin/registry/apikey/\">key\s+list</a>",
        page,
    ), page[:3000]
    assert ApiKey.objects.filter(name=name).count() == 1

    # The form shown again carries a token of its own: saving it is a deliberate second key.
    fresh = re.search(r'name="submission" value="([^"]+)"', page)
    assert fresh and fresh.group(1) != data["submission"]
    assert 'id="vp-secret"' in admin.post(ADD_KEY, {**data, "submission": fresh.group(1)}).text
    assert ApiKey.objects.filter(name=name).count() == 2

    # A token this session was never given (a form from another login), or none, adds nothing either.
    for token in ("made-up", ""):
        refused = html.unescape(admin.post(ADD_KEY, {**data, "submission": token}).text)
        assert "This form is out of date" in refused and 'id="vp-secret"' not in refused
    assert ApiKey.objects.filter(name=name).count() == 2
    ApiKey.objects.filter(name=name).delete()


def test_urls_with_an_id_that_is_no_row_s_are_404s_never_500s(admin, own_upstream):
    for url in (
        "/admin/registry/apikey/abc/revoke/",
        "/admin/registry/apikey/abc/restore/",
        "/admin/registry/apikey/987654321/revoke/",
        "/admin/registry/upstream/abc/test-connection/",
        "/admin/registry/upstream/abc/use-models/",
        "/admin/registry/upstream/1.5/test-connection/",
        "/admin/registry/upstream/987654321/use-models/",
    ):
        assert admin.get(url).status_code in (404, 405), url  # 405: a POST-only URL
        assert admin.post(url, {"model": ["m"]}).status_code == 404, url
    for url in ("/admin/registry/apikey//revoke/", "/admin/registry/upstream//test-connection/"):
        assert admin.get(url).status_code in (302, 404), url  # the admin's "no such object" redirect
    assert own_upstream.chat_models == ["old-model"]


def test_the_key_form_has_list_fields_help_and_known_names(admin, make_key):
    key = make_key(unique("form-scope"), allowed_models=["whisper-1"])
    page = admin.page(f"/admin/registry/apikey/{key.row.pk}/change/")
    assert "Model ids or aliases this key may use, one per line; empty: every model." in page
    assert re.search(r'<textarea name="allowed_models"[^>]*>\s*whisper-1</textarea>', page)
    for known in ("whisper-1", "Systran/faster-whisper-tiny.en", "tts-1", "fake-llm"):
        assert f'data-name="{known}"' in page
    response = admin.post(
        f"/admin/registry/apikey/{key.row.pk}/change/", key_data(key.row.name, allowed_models="a\na")
    )
    assert "'a' is listed twice" in field_error(html.unescape(response.text), "allowed_models")


def test_revoke_and_restore_buttons(admin, make_key, openai_client):
    key = make_key(unique("form-revoke"))
    change_url = f"/admin/registry/apikey/{key.row.pk}/change/"
    page = admin.page(change_url)
    assert f'href="/admin/registry/apikey/{key.row.pk}/revoke/"' in page and 'id="vp-restore"' not in page
    assert f'href="/admin/registry/requestlog/?key={key.row.pk}"' in page and "View its requests" in page

    confirm = admin.page(f"/admin/registry/apikey/{key.row.pk}/revoke/")
    assert "gets 401" in confirm and 'value="Yes, revoke it"' in confirm
    key.row.refresh_from_db()
    assert not key.row.is_revoked  # asking is not revoking

    response = admin.post(f"/admin/registry/apikey/{key.row.pk}/revoke/", {}, follow=True)
    assert response.status_code == 200 and "its clients now get 401" in html.unescape(response.text)
    key.row.refresh_from_db()
    assert key.row.is_revoked
    with pytest.raises(openai.AuthenticationError):
        openai_client(api_key=key.secret).models.list()

    page = admin.page(change_url)
    assert 'id="vp-restore"' in page and "/revoke/" not in page
    assert admin.get(f"/admin/registry/apikey/{key.row.pk}/restore/").status_code == 405
    response = admin.post(f"/admin/registry/apikey/{key.row.pk}/restore/", {}, follow=True)
    assert "Restored" in html.unescape(response.text)
    key.row.refresh_from_db()
    assert not key.row.is_revoked
    assert openai_client(api_key=key.secret).models.list().data


def test_the_key_page_shows_its_usage_as_the_database_sums_it(admin, make_key):
    key = make_key(unique("form-usage"))
    now = timezone.now()
    seeded = [
        # (age, status, audio in, audio out, characters, usage)
        (
            timedelta(hours=1),
            200,
            2.5,
            1.5,
            40,
            {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        ),
        (timedelta(hours=3), 500, None, None, None, None),
        (
            timedelta(days=3),
            200,
            4.0,
            None,
            12,
            {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        ),
        (timedelta(days=10), 429, None, 2.0, None, {"total_tokens": "not a number"}),
        (
            timedelta(days=100),
            200,
            1.0,
            1.0,
            5,
            {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        ),
    ]
    for age, status, audio_in, audio_out, characters, usage in seeded:
        RequestLog.objects.create(
            created=now - age,
            request_id=unique("req-usage"),
            api_key=key.row,
            key_prefix=key.prefix,
            method="POST",
            endpoint="/v1/audio/speech",
            route="/v1/audio/speech",
            status_code=status,
            audio_seconds_in=audio_in,
            audio_seconds_out=audio_out,
            characters_in=characters,
            usage=usage,
        )
    page = admin.page(f"/admin/registry/apikey/{key.row.pk}/change/")
    cells: dict[str, list[str]] = {}
    for name, value in re.findall(r'<td data-usage="(\w+)">([^<]*)</td>', page):
        cells.setdefault(name, []).append(value)

    rows = RequestLog.objects.filter(api_key=key.row)
    for index, since in enumerate([now - timedelta(days=1), now - timedelta(days=30), None]):
        window = rows.filter(created__gte=since) if since else rows
        direct = window.aggregate(
            requests=Count("pk"),
            errors=Count("pk", filter=Q(status_code__gte=400)),
            audio_in=Sum("audio_seconds_in"),
            audio_out=Sum("audio_seconds_out"),
            characters=Sum("characters_in"),
            last=Max("created"),
        )
        in_window = [s for s in seeded if since is None or now - s[0] >= since]
        tokens = {
            kind: sum(u[kind] for *_, u in in_window if u and isinstance(u.get(kind), int))
            for kind in ("prompt_tokens", "completion_tokens", "total_tokens")
        }
        assert cells["requests"][index] == str(direct["requests"])
        assert cells["errors"][index] == str(direct["errors"])
        assert cells["audio_seconds_in"][index] == f"{direct['audio_in'] or 0:.1f}"
        assert cells["audio_seconds_out"][index] == f"{direct['audio_out'] or 0:.1f}"
        assert cells["characters_in"][index] == str(direct["characters"] or 0)
        for kind, total in tokens.items():
            assert cells[kind][index] == str(total)
        service = key_usage.usage(key.row.pk, now=now)[index]
        assert (service.requests, service.errors, service.total_tokens) == (
            direct["requests"],
            direct["errors"],
            tokens["total_tokens"],
        )
        assert service.last_request == direct["last"]
    assert cells["requests"] == ["2", "4", "5"] and cells["total_tokens"] == ["15", "25", "27"]
    rows.delete()


# --- in Chromium ----------------------------------------------------------------------------------


def test_in_chromium_copy_puts_the_secret_on_the_clipboard(admin_page, gateway):
    page = admin_page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gateway.url)
    page.goto(gateway.url + ADD_KEY)
    name = unique("browser-key")
    page.fill("#id_name", name)
    page.click("input[name=_save]")
    page.wait_for_selector("#vp-secret")
    secret = page.input_value("#vp-secret")
    assert secret.startswith("vp-") and page.get_attribute("#vp-secret", "readonly") is not None
    page.click("#vp-copy")
    page.wait_for_function("document.getElementById('vp-copy-status').textContent.length > 0")
    assert page.text_content("#vp-copy-status") == "Copied."
    assert page.evaluate("navigator.clipboard.readText()") == secret
    assert not has_horizontal_scroll(page)

    page.click("text=Open the key")
    page.wait_for_selector("#vp-key-usage")
    assert secret not in page.content()
    ApiKey.objects.filter(name=name).delete()


def test_in_chromium_the_upstream_pages_fit_at_1366_px(admin_page, gateway, own_upstream):
    page = admin_page
    page.goto(f"{gateway.url}/admin/registry/upstream/{own_upstream.pk}/change/")
    assert page.is_visible("text=Keep the stored key")
    assert not has_horizontal_scroll(page)
    page.click("button:has-text('Test connection')")
    page.wait_for_selector("text=Connected")
    assert not has_horizontal_scroll(page)
    page.uncheck("input[name=model][value=echo-model]")
    page.click("input[value='Use these as chat models']")
    page.wait_for_selector("text=now routes")
    own_upstream.refresh_from_db()
    assert own_upstream.chat_models == [m for m in fake_upstream.MODELS if m != "echo-model"]
    page.goto(gateway.url + ADD_UPSTREAM)
    assert page.is_visible("#id_api_key") and not has_horizontal_scroll(page)
