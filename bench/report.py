"""Timing, statistics and printing for every benchmark: one unit, the second.

Everything measured is kept in seconds (the gateway's RequestLog columns in milliseconds are
converted on the way in: `durations_in_seconds`); only the formatting helpers (`ms`, `signed`,
`runs_ms`) turn seconds into milliseconds, for printing. Also what a reader needs to judge the
figures: the machine (`machine_facts`) and how busy other processes kept it (`Neighbours`,
`warn_if_busy`).
"""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

WARMUP = 2  # untimed calls before the timed ones: first-call allocations, connections, caches


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


def timed_median(fn: Callable[[], object], *, runs: int = 20, pause: float = 0.0) -> float:
    """Median seconds of `runs` calls of `fn` after WARMUP untimed ones, `pause` seconds apart."""
    times: list[float] = []
    for _ in range(WARMUP + runs):
        time.sleep(pause)
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return median(times[WARMUP:])


async def atimed_median(fn: Callable[[], Awaitable[object]], *, runs: int = 20, pause: float = 0.0) -> float:
    """`timed_median` for a coroutine function, awaited on the running loop."""
    times: list[float] = []
    for _ in range(WARMUP + runs):
        await asyncio.sleep(pause)
        started = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - started)
    return median(times[WARMUP:])


def durations_in_seconds(row: Mapping[str, Any]) -> dict[str, Any]:
    """A RequestLog row's values with every `*_ms` column in seconds, named without the suffix
    (`stt_ms` -> `stt`, `duration_ms` -> `duration`); other columns as they are. None stays None."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name.endswith("_ms"):
            out[name.removesuffix("_ms")] = None if value is None else float(value) / 1000
        else:
            out[name] = value
    return out


def ms(seconds: float) -> str:
    """`seconds` printed in milliseconds: "936 ms", "13.4 ms"."""
    value = seconds * 1000
    return f"{value:.0f} ms" if abs(value) >= 100 else f"{value:.1f} ms"


def signed(seconds: float, of: float | None = None) -> str:
    """A difference in milliseconds with its sign, and as a share of `of` when given: "+13.4 ms (+1.4 %)"."""
    text = f"{seconds * 1000:+.1f} ms"
    return text if of is None else f"{text} ({100 * seconds / of:+.1f} %)"


def runs_ms(values: Iterable[float], sep: str = " ") -> str:
    """Each run's seconds as whole milliseconds: "936 940 951" (or "936/940/951" with sep="/")."""
    return sep.join(f"{v * 1000:.0f}" for v in values)


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


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


def print_machine() -> tuple[dict[str, str], float]:
    """Print the machine facts and the load average before the run; returns both."""
    facts = machine_facts()
    load = os.getloadavg()[0]
    print("machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    print(f"load:    1-minute load average {load:.2f} before the run")
    return facts, load


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
        self.wall, self.busy, self.own = time.monotonic(), busy_cpu_seconds(), own_cpu_seconds()

    def cores(self) -> float:
        others = (busy_cpu_seconds() - self.busy) - (own_cpu_seconds() - self.own)
        return max(0.0, others) / (time.monotonic() - self.wall)


def warn_if_busy(load_before: float, busy: float) -> None:
    """Say when other processes shared the CPUs: the figures are then noisier."""
    load_after = os.getloadavg()[0]
    if load_before > busy:
        print(
            f"\nWARNING: the 1-minute load average was {load_before:.2f} before the run ({load_after:.2f} "
            "after, this bench included): other processes shared the CPUs; expect noisier figures."
        )
