"""What every benchmark shares: a throwaway gateway process, machine facts, small statistics.

`Gateway` is the whole deployment a benchmark talks to: a temporary data dir with its own SQLite
database, `migrate`, the starter registry (tiny.en as the default STT model, alias whisper-1; the
Piper joe voice as the default TTS), one API key, and one daphne process on a free loopback port.
It is another process on purpose: what the client measures is what a client of the real server
gets, event loop, middleware, audit writes and all.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests import daphne

ROOT = Path(__file__).resolve().parent.parent

# Inherited settings that would point the throwaway gateway at a real deployment's state.
_INHERITED_OUT = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "SECRET_KEY_FILE", "DJANGO_SETTINGS_MODULE")

# Speech to text decodes to 16 kHz, capped at the gateway's default VOICEPROXY_MAX_AUDIO_SECONDS,
# as registry.speech.stt does: the benches' direct side passes the same to registry.speech.audio.decode.
STT_SAMPLE_RATE = 16_000
STT_MAX_SECONDS = 1800.0


class Gateway:
    """A fresh voiceproxy under daphne, for the length of a `with` block.

    `.url` is the server's root (http://127.0.0.1:PORT), `.key` a valid API key's secret,
    `.manage(...)` runs a manage.py command against the same database and returns its stdout,
    `.env` is the environment both use. `env` adds or overrides settings (VOICEPROXY_* knobs);
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

    def engine_spec(self, task: str) -> dict[str, Any]:
        """The EngineSpec fields the gateway builds for its default model of `task` ("stt" or "tts")."""
        return self.django(
            "import dataclasses, json\n"
            "from registry import catalog\n"
            "from registry.models import SpeechToTextModel, TextToSpeechModel\n"
            "rows = {'stt': SpeechToTextModel, 'tts': TextToSpeechModel}\n"
            f"row = rows[{task!r}].objects.get(enabled=True, is_default=True)\n"
            "print(json.dumps(dataclasses.asdict(catalog.engine_spec(row))))\n"
        )

    def audit_rows(self, request_ids: Iterable[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        """RequestLog `fields` for each x-request-id, as {request_id: {field: value}}."""
        return self.django(
            "import json\n"
            "from registry.models import RequestLog\n"
            f"rows = RequestLog.objects.filter(request_id__in={list(request_ids)!r})"
            f".values('request_id', *{list(fields)!r})\n"
            "print(json.dumps({r.pop('request_id'): r for r in rows}, default=str))\n"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def _start(self) -> None:
        self.log_path = self.data_dir / "daphne.log"
        self.process, self.url = daphne.start(self.env, self.log_path, application=self.application)
        self.port = int(self.url.rpartition(":")[2])

    def stop(self) -> None:
        if self.process is not None:
            daphne.stop(self.process)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> dict[str, str]:
    """Cores, CPU model, Python and library versions: what a reader needs to compare figures."""
    from importlib.metadata import PackageNotFoundError, version

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    facts = {
        "cores": f"{usable} usable ({os.cpu_count()} online)",
        "cpu": cpu_model(),
        "python": platform.python_version(),
    }
    for package in ("django", "daphne", "faster-whisper", "ctranslate2", "av", "openai"):
        try:
            facts[package] = version(package)
        except PackageNotFoundError:
            facts[package] = "not installed"
    return facts


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot, steal included (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for (daphne, once stopped)."""
    mine, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


class Neighbours:
    """How much CPU other processes (or, on a VM, other guests) took while a benchmark ran.

    Call `start()` first and `cores()` after every child process has exited: the figure is the
    machine's busy time minus this process tree's own, per second of wall time.
    """

    def start(self) -> None:
        self._wall, self._busy, self._own = time.monotonic(), busy_cpu_seconds(), own_cpu_seconds()

    def cores(self) -> float:
        others = (busy_cpu_seconds() - self._busy) - (own_cpu_seconds() - self._own)
        return max(0.0, others) / (time.monotonic() - self._wall)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linearly interpolated between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def warn_if_busy(load_before: float, busy: float) -> None:
    """Say when other processes shared the CPUs: the figures are then noisier."""
    load_after = os.getloadavg()[0]
    if load_before > busy:
        print(
            f"\nWARNING: the 1-minute load average was {load_before:.2f} before the run ({load_after:.2f} "
            "after, this bench included): other processes shared the CPUs; expect noisier figures."
        )
