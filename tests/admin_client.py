"""The admin as an operator uses it: an httpx session logged in as a superuser (real session and CSRF
token, against the live daphne), and the same login in Debian's headless Chromium (Playwright).

The fixtures (`admin`, `admin_page`) are in conftest.py; the browser ones skip where no chromium is.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from django.contrib.auth.models import Permission, User
from django.db import connections

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAS_CHROMIUM = Path(CHROMIUM).exists()


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


class Admin:
    """An httpx session logged in to /admin/."""

    def __init__(self, client: httpx.Client, username: str, password: str) -> None:
        self.client = client
        self.username = username
        self.password = password

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.client.get(path, params=params)

    def page(self, path: str, **params: str) -> str:
        response = self.get(path, **params)
        assert response.status_code == 200, (path, response.status_code)
        return html.unescape(response.text)

    def post(self, path: str, data: dict[str, str | list[str]], *, follow: bool = False) -> httpx.Response:
        data = {"csrfmiddlewaretoken": self.client.cookies["csrftoken"], **data}
        return self.client.post(path, data=data, follow_redirects=follow)

    def action(self, changelist: str, action: str, pks: list[int]) -> str:
        """Run a list-page action; returns the page it redirects to, with its messages."""
        response = self.post(
            changelist,
            {"action": action, "_selected_action": [str(pk) for pk in pks], "index": "0"},
            follow=True,
        )
        assert response.status_code == 200
        return html.unescape(response.text)


def key_form_token(admin: Admin) -> str:
    """The one-time token of a freshly opened "Add API key" form (registry/admin/keys.py)."""
    page = admin.page("/admin/registry/apikey/add/")
    match = re.search(r'name="submission" value="([^"]+)"', page)
    assert match, "no one-time token in the add form"
    return match.group(1)


def csrf_token(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, "no CSRF token in the form"
    return match.group(1)


@contextmanager
def logged_in(base_url: str, *, permissions: list[str] | None = None) -> Iterator[Admin]:
    """A new superuser, logged in over HTTP; deleted afterwards. With `permissions` ("registry.view_apikey",
    ...): a staff user who has only those instead."""
    username = unique("admin")
    password = uuid.uuid4().hex
    if permissions is None:
        user = User.objects.create_superuser(username=username, email="", password=password)
    else:
        user = User.objects.create_user(username=username, password=password, is_staff=True)
        for name in permissions:
            app_label, codename = name.split(".")
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
    try:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            login = client.get("/admin/login/")
            assert "csrftoken" in client.cookies
            response = client.post(
                "/admin/login/",
                data={
                    "username": username,
                    "password": password,
                    "csrfmiddlewaretoken": csrf_token(login.text),
                    "next": "/admin/",
                },
            )
            assert response.status_code == 302 and response.headers["location"] == "/admin/", response.text[
                :500
            ]
            yield Admin(client, username, password)
    finally:
        user.delete()


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium under Playwright (which cannot download its own browsers here)."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop on this thread, and Django then refuses the ORM calls
    # of the fixtures; nothing else runs on that loop (Django documents this switch for it).
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            try:
                yield browser
            finally:
                browser.close()
                # Connections opened while Playwright's loop ran belong to its context: closed
                # here, while it still runs (after it, close_all() no longer sees them), or
                # PostgreSQL will not drop the test database at the end.
                connections.close_all()
    finally:
        connections.close_all()
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


def browser_login(browser: Any, base_url: str, admin: Admin, *, width: int = 1366, height: int = 900) -> Any:
    """A Playwright page at the given window size, logged in to the admin as `admin`'s user."""
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(base_url + "/admin/login/")
    page.fill("#id_username", admin.username)
    page.fill("#id_password", admin.password)
    page.click("input[type=submit]")
    page.wait_for_url(base_url + "/admin/")
    return page


def has_horizontal_scroll(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth > document.documentElement.clientWidth"))
