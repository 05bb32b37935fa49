"""What a server's threads spend their time on, sampled from outside with py-spy.

`record()` runs `py-spy record --threads --nonblocking --format raw` against a process for a few
seconds (nonblocking: the sampled process is never paused, so the latencies being measured are
disturbed least), in one of three modes:

- "gil" (`--gil`): only the stack of the thread holding the GIL, so its samples per thread say
  who held the GIL, and for how much of the wall time (`rate * seconds` samples).
- "idle" (`--idle`): every thread's stack at every sample, running or not. The event loop's
  (daphne's MainThread) samples split into waiting for sockets in the poll (the loop is free) and
  the rest: the loop is inside a callback, running or stopped there (waiting for the GIL, a core,
  a lock, a thread it started).
- "active" (neither): only threads that are running or runnable, as the kernel says; the loop's
  samples here, taken in the same seconds as an "idle" recording, are the part of its time in
  callbacks that it spent on a CPU.

`summarise` names the loop's non-poll samples by the innermost frame from a known package
(`bucket()`) and by leaf. py-spy is optional: `find()` returns None when it is not installed
(`pip install py-spy`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# One line of py-spy's raw output: "thread (TID): NAME;frame;frame... COUNT", a frame "function (file:line)".
_THREAD = re.compile(r"^thread \(\d+\): (?P<name>[^;]*)$")
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]+?)(?::\d+)?\)$")
# The reactor waiting for its sockets: the loop is free.
# daphne runs twisted on asyncio's loop (AsyncioSelectorReactor); twisted's own reactors poll in doPoll.
_POLL = ("EpollSelector.select", "EPollReactor.doPoll", "PollReactor.doPoll", "SelectReactor.doSelect")

# Innermost first match names a busy stack: stdlib work first, then our code, then the frameworks.
BUCKETS: tuple[tuple[str, str], ...] = (
    ("json/", "json encode/decode (stdlib)"),
    ("base64.py", "base64 (stdlib)"),
    ("logging/", "logging"),
    ("registry/api/", "voiceproxy edge (registry/api)"),
    ("registry/speech/", "voiceproxy speech, on the loop"),
    ("registry/", "voiceproxy registry (auth, catalog, audit)"),
    ("chat/", "voiceproxy chat"),
    ("rest_framework/", "DRF / adrf"),
    ("adrf/", "DRF / adrf"),
    ("django/", "Django (handler, middleware, request, response)"),
    ("asgiref/", "asgiref (sync_to_async / async_to_sync hops)"),
    ("httpx/", "httpx/httpcore (upstream client)"),
    ("httpcore/", "httpx/httpcore (upstream client)"),
    ("anyio/", "httpx/httpcore (upstream client)"),
    ("daphne/", "daphne (ASGI <-> twisted)"),
    ("twisted/", "twisted (sockets, HTTP parsing, timers)"),
    ("asyncio/", "asyncio (task scheduling)"),
)


MODES = ("gil", "idle", "active")


def find(explicit: str | None = None) -> str | None:
    """The py-spy executable: `explicit`, else the one on PATH; None when there is none."""
    return explicit if explicit else shutil.which("py-spy")


def record(
    py_spy: str, pid: int, seconds: int, output: Path, *, mode: str = "idle", rate: int = 100
) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `seconds` into `output`; returns the py-spy process (wait for it)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    flags = {"gil": ["--gil"], "idle": ["--idle"], "active": []}[mode]
    command = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(rate)]
    command += ["--threads", "--nonblocking", *flags, "--format", "raw", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def bucket(files: list[str]) -> str:
    """The name of one busy stack, from its frames' files (root first): the innermost known package."""
    for path in reversed(files):
        for fragment, name in BUCKETS:
            if fragment in path:
                return name
    return "other"


def thread_group(name: str) -> str:
    """A thread's name without its pool index: "voiceproxy-worker_1" -> "voiceproxy-worker"."""
    return re.sub(r"[_-]\d+$", "", name) or "?"


@dataclass
class Profile:
    loop_samples: int = 0  # the event loop thread's (MainThread) samples
    loop_polling: int = 0  # of them, waiting in the reactor's poll: free
    buckets: Counter[str] = field(default_factory=Counter)  # the loop's other samples by bucket()
    leaves: Counter[str] = field(default_factory=Counter)  # ... and by innermost frame
    threads: Counter[str] = field(default_factory=Counter)  # every sample by thread_group()

    @property
    def loop_occupied(self) -> int:
        return self.loop_samples - self.loop_polling


def summarise(path: Path) -> Profile:
    """Read a `record()` output file back (either mode)."""
    profile = Profile()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        named = _THREAD.match(thread)
        name = named["name"] if named else "?"
        profile.threads[thread_group(name)] += count
        if name != "MainThread":
            continue
        parsed = [m for m in (_FRAME.match(f) for f in frames) if m is not None]
        profile.loop_samples += count
        if parsed and parsed[-1]["function"] in _POLL:
            profile.loop_polling += count
            continue
        profile.buckets[bucket([m["file"] for m in parsed])] += count
        if parsed:
            leaf = parsed[-1]
            profile.leaves[f"{leaf['function']} ({_short(leaf['file'])})"] += count
    return profile


def _short(path: str) -> str:
    """A file from its package on: ".../site-packages/django/http/request.py" -> "django/http/request.py"."""
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in path:
            return path.rpartition(marker)[2]
    return path
