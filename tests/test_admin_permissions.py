"""Who may do what in the admin: a staff user who may only view is shown no state-changing action or
button, and gets 403 from every URL that changes state (or calls out with a stored key); the operator's
pages (dashboard, model cache) need their own view permissions; what a user with the change permission
does is recorded in the object's history (Django's LogEntry).

Staff users are made with only the permissions named, and logged in over HTTP against the live server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone

from registry.models import ApiKey, SpeechToTextModel, TextToSpeechModel, Upstream, Voice
from tests.admin_client import logged_in, unique

VIEW_ALL = [
    "registry.view_apikey",
    "registry.view_upstream",
    "registry.view_speechtotextmodel",
    "registry.view_texttospeechmodel",
    "registry.view_voice",
    "registry.view_requestlog",
]
KEYS = "/admin/registry/apikey/"
UPSTREAMS = "/admin/registry/upstream/"
STT = "/admin/registry/speechtotextmodel/"
TTS = "/admin/registry/texttospeechmodel/"
MODEL_CACHE = "/admin/model-cache/"
DASHBOARD = "/admin/dashboard/"


@pytest.fixture(scope="module")
def viewer(gateway: Any) -> Iterator[Any]:
    """A staff user who may view every registry model, and change none."""
    with logged_in(gateway.url, permissions=VIEW_ALL) as session:
        yield session


@pytest.fixture(scope="module")
def bare(gateway: Any) -> Iterator[Any]:
    """A staff user with no permission at all."""
    with logged_in(gateway.url, permissions=[]) as session:
        yield session


@pytest.fixture
def rows() -> Iterator[dict[str, Any]]:
    """A live key, a revoked key, an upstream and a speech model of each task, all this test's own."""
    live, _ = ApiKey.issue(name=unique("perm-live"))
    revoked, _ = ApiKey.issue(name=unique("perm-revoked"))
    ApiKey.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    upstream = Upstream(
        name=unique("perm-upstream"), base_url="http://127.0.0.1:9/v1", chat_models=["kept"], enabled=True
    )
    upstream.set_api_key("sk-" + unique("perm"))
    upstream.save()
    stt = SpeechToTextModel.objects.create(
        model_id=unique("perm-stt"), engine="faster-whisper", source="/nowhere", device="cpu"
    )
    tts = TextToSpeechModel.objects.create(
        model_id=unique("perm-tts"), engine="piper", source="/nowhere/voice.onnx", device="cpu"
    )
    voice = Voice.objects.create(model=tts, name="perm")
    yield {"live": live, "revoked": revoked, "upstream": upstream, "stt": stt, "tts": tts, "voice": voice}
    for row in (live, revoked, upstream, stt, tts):
        row.delete()


# --- list actions: not offered, and not run when posted anyway ------------------------------------------


@pytest.mark.parametrize(
    ("changelist", "actions"),
    [
        (KEYS, ["revoke", "unrevoke"]),
        (UPSTREAMS, ["test_connection", "enable", "disable"]),
        (STT, ["enable", "disable", "load_now", "unload"]),
        (TTS, ["enable", "disable", "load_now", "unload"]),
    ],
)
def test_a_viewer_is_offered_no_state_changing_action(viewer, admin, rows, changelist, actions):
    page = viewer.page(changelist)
    for action in actions:
        assert f'value="{action}"' not in page, action
        assert f'value="{action}"' in admin.page(changelist), action  # the superuser has them


def test_actions_posted_by_a_viewer_change_nothing(viewer, rows):
    live, revoked, upstream, stt = rows["live"], rows["revoked"], rows["upstream"], rows["stt"]
    viewer.action(KEYS, "revoke", [live.pk])
    viewer.action(KEYS, "unrevoke", [revoked.pk])
    viewer.action(UPSTREAMS, "disable", [upstream.pk])
    page = viewer.action(UPSTREAMS, "test_connection", [upstream.pk])
    assert f'id="probe-{upstream.pk}"' not in page  # no test was run
    viewer.action(STT, "disable", [stt.pk])
    page = viewer.action(STT, "load_now", [stt.pk])
    assert "Loaded" not in page and "could not be loaded" not in page
    live.refresh_from_db()
    revoked.refresh_from_db()
    upstream.refresh_from_db()
    stt.refresh_from_db()
    assert not live.is_revoked and revoked.is_revoked
    assert upstream.enabled and stt.enabled


# --- custom URLs: 403 for a viewer, and nothing changes -----------------------------------------------


def test_a_viewer_cannot_revoke_restore_or_see_the_buttons(viewer, rows):
    live, revoked = rows["live"], rows["revoked"]
    page = viewer.page(f"{KEYS}{live.pk}/change/")
    assert "/revoke/" not in page and 'id="vp-restore"' not in page
    assert viewer.get(f"{KEYS}{live.pk}/revoke/").status_code == 403
    assert viewer.post(f"{KEYS}{live.pk}/revoke/", {}).status_code == 403
    assert viewer.post(f"{KEYS}{revoked.pk}/restore/", {}).status_code == 403
    live.refresh_from_db()
    revoked.refresh_from_db()
    assert not live.is_revoked and revoked.is_revoked


def test_a_viewer_cannot_test_an_upstream_or_change_its_models(viewer, rows):
    upstream = rows["upstream"]
    page = viewer.page(f"{UPSTREAMS}{upstream.pk}/change/")
    assert "test-connection" not in page
    assert viewer.get(f"{UPSTREAMS}{upstream.pk}/test-connection/").status_code == 403
    assert viewer.post(f"{UPSTREAMS}{upstream.pk}/test-connection/", {}).status_code == 403
    response = viewer.post(f"{UPSTREAMS}{upstream.pk}/use-models/", {"model": ["stolen"]})
    assert response.status_code == 403
    upstream.refresh_from_db()
    assert upstream.chat_models == ["kept"]


def test_the_model_cache_page_shows_a_viewer_no_buttons_and_refuses_its_posts(viewer, admin, rows):
    page = viewer.page(MODEL_CACHE)
    assert rows["stt"].model_id in page
    assert 'value="load"' not in page and 'value="unload"' not in page
    assert 'value="load"' in admin.page(MODEL_CACHE)
    for action in ("load", "unload"):
        response = viewer.post(
            MODEL_CACHE, {"action": action, "model_id": rows["stt"].model_id, "target": "*"}
        )
        assert response.status_code == 403


def test_a_voice_preview_needs_only_the_view_permission(viewer, bare, rows):
    url = f"/admin/registry/voice/{rows['voice'].pk}/preview/"
    assert bare.get(url).status_code == 403
    response = viewer.get(url)  # past the permission: the model cannot load (its source is nowhere)
    assert response.status_code == 503 and "/nowhere/voice.onnx" in response.text


# --- the operator's pages ---------------------------------------------------------------------------------


def header_links(page: str) -> str:
    start = page.find('id="voiceproxy-pages"')
    return "" if start < 0 else page[start : page.index("</nav>", start)]


def test_staff_without_permissions_get_403_and_no_links(bare):
    assert bare.get(DASHBOARD).status_code == 403
    assert bare.get(MODEL_CACHE).status_code == 403
    assert bare.post(MODEL_CACHE, {"action": "unload", "model_id": "x", "target": "*"}).status_code == 403
    assert header_links(bare.page("/admin/")) == ""


def test_each_page_needs_its_own_permission(gateway):
    with logged_in(gateway.url, permissions=["registry.view_requestlog"]) as log_reader:
        assert log_reader.get(DASHBOARD).status_code == 200
        assert log_reader.get(MODEL_CACHE).status_code == 403
        links = header_links(log_reader.page("/admin/"))
        assert "Dashboard" in links and "Model cache" not in links
    with logged_in(gateway.url, permissions=["registry.view_texttospeechmodel"]) as model_viewer:
        assert model_viewer.get(DASHBOARD).status_code == 403
        assert model_viewer.get(MODEL_CACHE).status_code == 200
        links = header_links(model_viewer.page("/admin/"))
        assert "Model cache" in links and "Dashboard" not in links


def test_changing_one_task_s_models_does_not_reach_the_other_s(gateway, rows):
    with logged_in(
        gateway.url, permissions=["registry.view_speechtotextmodel", "registry.change_texttospeechmodel"]
    ) as tts_editor:
        page = tts_editor.page(MODEL_CACHE)
        assert f'name="model_id" value="{rows["tts"].model_id}"' in page
        assert f'name="model_id" value="{rows["stt"].model_id}"' not in page
        response = tts_editor.post(
            MODEL_CACHE, {"action": "load", "model_id": rows["stt"].model_id, "target": "*"}
        )
        assert response.status_code == 403


# --- what is done is recorded ------------------------------------------------------------------------------


def history(obj: Any, username: str) -> list[str]:
    entries = LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(type(obj)),
        object_id=str(obj.pk),
        user__username=username,
    )
    return [entry.get_change_message() for entry in entries.order_by("action_time")]


def test_revokes_restores_enables_and_disables_are_in_the_history(admin, rows):
    live, upstream, stt, tts = rows["live"], rows["upstream"], rows["stt"], rows["tts"]
    assert "Revoked 1 key(s)." in admin.action(KEYS, "revoke", [live.pk])
    assert "Restored 1 key(s)." in admin.action(KEYS, "unrevoke", [live.pk])
    admin.post(f"{KEYS}{live.pk}/revoke/", {})
    assert history(live, admin.username) == ["Changed Revoked at."] * 3

    assert "Disabled 1 upstream(s)." in admin.action(UPSTREAMS, "disable", [upstream.pk])
    assert "Enabled 1 upstream(s)." in admin.action(UPSTREAMS, "enable", [upstream.pk])
    assert history(upstream, admin.username) == ["Changed Enabled."] * 2

    assert "Disabled 1 model(s)." in admin.action(STT, "disable", [stt.pk])
    assert "Disabled 1 model(s)." in admin.action(TTS, "disable", [tts.pk])
    assert "Disabled 0 model(s)." in admin.action(TTS, "disable", [tts.pk])  # already: nothing to record
    assert history(stt, admin.username) == ["Changed Enabled."]
    assert history(tts, admin.username) == ["Changed Enabled."]
    stt.refresh_from_db()
    live.refresh_from_db()
    assert not stt.enabled and live.is_revoked
