"""The admin login's lockout (django-axes) through the live daphne server: failed logins are counted
per client address; past the limit every login from there, the right password included, is a 429
with Retry-After, until the lockout is reset or its cool-off has passed."""

from __future__ import annotations

import io
import random
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import httpx
import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db.models import F

LIMIT = settings.VOICEPROXY_ADMIN_LOGIN_FAILURES  # the server runs with the same defaults: 5
COOL_OFF = timedelta(minutes=settings.VOICEPROXY_ADMIN_LOCKOUT_MINUTES)


def own_address() -> str:
    """A loopback address of this test's own: the live server is shared, and lockouts are per address
    (127.0.0.1 is every other test's, the admin tests' logins included)."""
    return f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"


class Staff:
    def __init__(self) -> None:
        self.username = f"staff-{uuid.uuid4().hex[:8]}"
        self.password = uuid.uuid4().hex
        self.user = User.objects.create_user(username=self.username, password=self.password, is_staff=True)


@pytest.fixture
def make_staff() -> Iterator[Callable[[], Staff]]:
    made: list[Staff] = []

    def make() -> Staff:
        made.append(Staff())
        return made[-1]

    yield make
    for staff in made:
        staff.user.delete()


@pytest.fixture
def staff(make_staff: Callable[[], Staff]) -> Staff:
    return make_staff()


def login(gateway, address: str, username: str, password: str) -> httpx.Response:
    """One admin login from `address`, as a browser does it: the form (for its CSRF cookie), then the post."""
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=gateway.url, transport=transport, timeout=30) as browser:
        assert browser.get("/admin/login/").status_code == 200
        return browser.post(
            "/admin/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
                "next": "/admin/",
            },
        )


def assert_logged_in(response: httpx.Response) -> None:
    assert response.status_code == 302 and response.headers["location"] == "/admin/", response.text[:500]


def assert_wrong_password(response: httpx.Response) -> None:
    assert response.status_code == 200 and "Please enter the correct username" in response.text


def assert_locked_out(response: httpx.Response, address: str) -> None:
    assert response.status_code == 429, response.text[:500]
    assert 1 <= int(response.headers["retry-after"]) <= COOL_OFF.total_seconds()
    assert response.headers["content-type"].startswith("text/html")
    assert "Too many failed logins" in response.text and f"axes_reset_ip {address}" in response.text
    assert response.headers["x-frame-options"] == "DENY"  # the site's middleware still applies


def fail(gateway, address: str, staff: Staff, times: int) -> None:
    for _ in range(times):
        assert_wrong_password(login(gateway, address, staff.username, "wrong-" + uuid.uuid4().hex))


def test_an_address_is_locked_out_after_the_limit_even_with_the_right_password(gateway, staff, make_staff):
    other_staff = make_staff()
    address = own_address()
    fail(gateway, address, staff, LIMIT - 1)
    assert_locked_out(login(gateway, address, staff.username, "wrong"), address)  # the limit-th failure

    assert_locked_out(login(gateway, address, staff.username, staff.password), address)
    # Per address: another user from there is refused too (a guesser cannot spread over usernames)...
    assert_locked_out(login(gateway, address, other_staff.username, other_staff.password), address)
    assert_locked_out(login(gateway, address, f"nobody-{uuid.uuid4().hex[:8]}", "x"), address)
    # ...and the user is not locked out from elsewhere: a guesser cannot lock the administrators out.
    assert_logged_in(login(gateway, own_address(), staff.username, staff.password))

    # An administrator lifts it (the page names the command).
    out = io.StringIO()
    call_command("axes_reset_ip", address, stdout=out)
    assert "attempts removed" in out.getvalue()
    assert_logged_in(login(gateway, address, staff.username, staff.password))


def test_the_lockout_ends_once_the_cool_off_has_passed(gateway, staff):
    address = own_address()
    fail(gateway, address, staff, LIMIT - 1)
    assert_locked_out(login(gateway, address, staff.username, "wrong"), address)
    refused = login(gateway, address, staff.username, staff.password)
    assert_locked_out(refused, address)
    minutes = -(-int(refused.headers["retry-after"]) // 60)
    assert re.search(rf"Try again in {minutes} minute", refused.text)  # the page says what the header does

    # Rather than wait: the failures are moved back by the cool-off, as time would have done.
    moved = AccessAttempt.objects.filter(ip_address=address).update(attempt_time=F("attempt_time") - COOL_OFF)
    assert moved == 1  # one row per (username, address, user agent)
    assert_logged_in(login(gateway, address, staff.username, staff.password))


def test_a_successful_login_resets_the_count(gateway, staff):
    address = own_address()
    fail(gateway, address, staff, LIMIT - 1)
    assert_logged_in(login(gateway, address, staff.username, staff.password))
    assert not AccessAttempt.objects.filter(ip_address=address).exists()
    fail(gateway, address, staff, LIMIT - 1)  # counted from zero again
    assert_locked_out(login(gateway, address, staff.username, "wrong"), address)
