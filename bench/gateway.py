"""The throwaway gateway every benchmark talks to, and this process configured as it.

`Gateway` is the whole deployment: a temporary data dir with its own SQLite database, `migrate`,
the starter registry (Whisper base as the default STT model, alias whisper-1, and tiny.en, alias
whisper-tiny.en, which the benchmarks use: their figures stay comparable from run to run; the Piper
joe voice as the default TTS), one API key, and one daphne process on a free loopback port. It is
another process on purpose: what the client measures is what a client of the real server gets, event loop,
middleware, audit writes and all. `Gateway.use_settings()` then points this process's Django at the
same settings and database, so the benchmarks' direct side (bench/direct.py) resolves models
through the registry itself and builds the very engines the gateway builds.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx

from bench.harness import daphne
from bench.report import durations_in_seconds, timed_median

if TYPE_CHECKING:
    from bench.direct import Engines

ROOT = Path(__file__).resolve().parent.parent

# Inherited settings that would point the throwaway gateway at a real deployment's state.
_INHERITED_OUT = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "SECRET_KEY_FILE", "DJANGO_SETTINGS_MODULE")

Probe = tuple[str, str, str, dict[str, Any]]
"""A request for `Gateway.request_costs`: (label, method, path, httpx keyword arguments)."""

# The gateway's per-request work without any speech.
STT_MODEL = "whisper-tiny.en"  # the starter's tiny.en: what every benchmark transcribes with
HEALTH: Probe = ("GET /health (daphne + Django, no auth, no audit row)", "GET", "/health", {})
MODELS: Probe = ("GET /v1/models (+ auth, DRF, catalog reads, audit row)", "GET", "/v1/models", {})


class Gateway:
    """A fresh voiceproxy under daphne, for the length of a `with` block.

    `.url` is the server's root (http://127.0.0.1:PORT), `.key` a valid API key's secret,
    `.manage(...)` runs a manage.py command against the same database and returns its stdout,
    `.env` is the environment both use, `.use_settings()` configures this process's Django with it.
    `env` adds or overrides settings (VOICEPROXY_* knobs);
    `application` is the ASGI app daphne serves (a wrapper module on PYTHONPATH can profile it).
    Raises RuntimeError when a setup step fails or daphne does not answer /health within 60 s;
    the temporary directory is removed on exit unless `keep=True`.
    """

    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        keep: bool = False,
        application: str = "voiceproxy.asgi:application",
    ) -> None:
        self.extra_env = dict(env or {})
        self.application = application
        self.keep = keep
        self.data_dir = Path()
        self.env: dict[str, str] = {}
        self.port = 0
        self.url = ""
        self.key = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path()

    def __enter__(self) -> Self:
        self.data_dir = Path(tempfile.mkdtemp(prefix="voiceproxy-bench."))
        env = {
            k: v for k, v in os.environ.items() if k not in _INHERITED_OUT and not k.startswith("VOICEPROXY_")
        }
        env.update(
            DJANGO_SETTINGS_MODULE="voiceproxy.settings",
            VOICEPROXY_DATA_DIR=str(self.data_dir),
            DATABASE_URL=f"sqlite:///{self.data_dir / 'voiceproxy.sqlite3'}",
            VOICEPROXY_INFERENCE_THREADS="2",
            HF_HUB_OFFLINE="1",  # the starter models come from PyPI packages: never the hub
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        self.env = env
        try:
            self.manage("migrate", "--noinput")
            self.manage("loadregistry", "--starter")
            self.key = self.manage("createapikey", "bench").strip()
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if not self.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def manage(self, *args: str) -> str:
        """Run `manage.py ARGS` on the gateway's database; its stdout. Raises RuntimeError on failure."""
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
            )
        return done.stdout

    def django(self, code: str) -> Any:
        """Run Python `code` in `manage.py shell` and parse the JSON it prints as its last line."""
        out = self.manage("shell", "--no-startup", "-c", code).strip().splitlines()
        return json.loads(out[-1])

    def audit_rows(self, request_ids: Iterable[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        """RequestLog `fields` for each x-request-id, as {request_id: {field: value}}; durations
        (`*_ms` columns) in seconds, named without the suffix (see report.durations_in_seconds)."""
        rows = self.django(
            "import json\n"
            "from registry.models import RequestLog\n"
            f"rows = RequestLog.objects.filter(request_id__in={list(request_ids)!r})"
            f".values('request_id', *{list(fields)!r})\n"
            "print(json.dumps({r.pop('request_id'): r for r in rows}, default=str))\n"
        )
        return {request_id: durations_in_seconds(row) for request_id, row in rows.items()}

    def load_registry(self, registry: dict[str, Any], name: str = "bench-registry.json") -> str:
        """Write `registry` into the data dir and apply it with `manage.py loadregistry`; its summary line."""
        path = self.data_dir / name
        path.write_text(json.dumps(registry, indent=2))
        return self.manage("loadregistry", str(path)).strip()

    def use_settings(self) -> None:
        """Configure Django in this process as the gateway's (same env, same SQLite file), logging at
        WARNING so the engines' and the HTTP clients' INFO lines stay out of the figures. Once per
        process. This process only reads the registry and writes its own audit rows (method BENCH)."""
        import django

        for key, value in self.env.items():
            if key in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "HF_HUB_OFFLINE") or key.startswith(
                "VOICEPROXY_"
            ):
                os.environ[key] = value
        for key in _INHERITED_OUT:
            if key not in self.env:
                os.environ.pop(key, None)
        os.environ["VOICEPROXY_LOG_LEVEL"] = "WARNING"
        django.setup()

    def engines(self) -> Engines:
        """`use_settings()`, then an empty bench.direct.Engines: the direct side's models, for a `with`."""
        self.use_settings()
        from bench.direct import Engines  # imports the registry's models: Django must be set up first

        return Engines()

    def request_costs(self, probes: Sequence[Probe], runs: int = 20) -> list[tuple[str, float]]:
        """(label, median seconds) of each probe: `runs` identical requests with the bench key."""
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as http:
            return [
                (label, timed_median(functools.partial(http.request, method, path, **kwargs), runs=runs))
                for label, method, path, kwargs in probes
            ]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def _start(self) -> None:
        self.log_path = self.data_dir / "daphne.log"
        self.process, self.url = daphne.start(self.env, self.log_path, application=self.application)
        self.port = int(self.url.rpartition(":")[2])

    def stop(self) -> None:
        if self.process is not None:
            daphne.stop(self.process)
