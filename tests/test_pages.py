"""The pages over plain HTTP: static files with cache headers, the landing page, and the staff
path to client secrets (the playground's way to never hand a long-lived key to a browser)."""

from __future__ import annotations

import httpx

from registry.models import ApiKey
from tests.admin_client import Admin
from tests.conftest import Server


def test_static_files_are_served_with_cache_headers(gateway: Server) -> None:
    for path in (
        "/static/admin/css/base.css",
        "/static/web/playground.js",
        "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css",
    ):
        response = httpx.get(gateway.url + path)
        assert response.status_code == 200, path
        assert "max-age=3600" in response.headers["cache-control"]
    assert httpx.get(gateway.url + "/static/web/nothing.js").status_code == 404


def test_landing_and_playground_pages_render(gateway: Server) -> None:
    home = httpx.get(gateway.url + "/")
    assert (
        home.status_code == 200 and "Systran/faster-whisper-tiny.en" in home.text and "fake-llm" in home.text
    )
    playground = httpx.get(gateway.url + "/playground/")
    assert playground.status_code == 200 and 'id="panel-talk"' in playground.text
    assert "Use my admin login" not in playground.text  # not for anonymous visitors


def test_a_staff_login_gets_client_secrets_that_stand_for_its_own_key(gateway: Server, admin: Admin) -> None:
    page = admin.page("/playground/")
    assert "Use my admin login" in page
    token = admin.client.cookies["csrftoken"]
    minted = admin.client.post("/playground/secret", headers={"X-CSRFToken": token})
    assert minted.status_code == 200
    secret = minted.json()["value"]
    assert secret.startswith("ek_")
    models = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert models.status_code == 200
    key = ApiKey.objects.get(name__startswith="playground:", revoked_at__isnull=True)
    assert key.prefix not in secret
    # Without the CSRF token, or without a staff login, there is no secret.
    assert admin.client.post("/playground/secret").status_code == 403
    assert httpx.post(gateway.url + "/playground/secret").status_code == 403
    wrong = httpx.get(gateway.url + "/v1/models", headers={"Authorization": "Bearer ek_nope"})
    assert wrong.status_code == 401
