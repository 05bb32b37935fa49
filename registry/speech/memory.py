"""Memory for the model cache to budget by: how much each device may hold, how big a model will be
before it loads, and how much it took once loaded.

    budgets()          VOICEPROXY_MODEL_MEMORY ("cpu=6GiB,cuda=20GiB", or one size for every device)
    device_of(spec)    where a spec will load, as its engine resolves "auto"
    on_disk(path)      a model's files: the estimate of its size before its first load
    Measure            what a load added: free GPU memory taken (CUDA, device-wide, so CTranslate2
                       and onnxruntime count as well as torch), else the process's resident memory

Measured figures are estimates: other work may allocate or free memory while a model loads. The
cache remembers each model's last measured size and uses it as the next estimate.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

from django.conf import settings

from registry.speech.engines import ENGINES
from registry.speech.engines.base import EngineSpec

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """ "512MiB", "6 GB", "2.5GiB", "1000000" (bytes) -> bytes. ValueError when it is none of those."""
    match = _SIZE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 512MiB, 6GB, 2.5GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_budgets(text: str) -> dict[str, int]:
    """ "cpu=6GiB,cuda=20GiB" -> {"cpu": ..., "cuda": ...}; "8GiB" -> {"*": ...} (every device)."""
    budgets: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        device, sep, size = part.partition("=")
        if not sep:
            device, size = "*", part
        budgets[device.strip().lower()] = parse_size(size)
    return budgets


def budgets() -> dict[str, int]:
    return parse_budgets(settings.VOICEPROXY_MODEL_MEMORY)


def budget(device: str) -> int | None:
    """Bytes the cache may hold on `device` ("cuda:1" falls back to "cuda"), None: no budget."""
    known = budgets()
    for name in (device, device.split(":")[0], "*"):
        if name in known:
            return known[name]
    return None


def device_of(spec: EngineSpec) -> str:
    """Where `spec` will load: its device, "auto" resolved as its engine resolves it."""
    if spec.device != "auto":
        return spec.device
    module = importlib.import_module(ENGINES[spec.engine].rpartition(".")[0])
    return str(module.resolve_device(spec.device))


def on_disk(path: str) -> int:
    """The bytes of a model's files (a file, or a directory's files), 0 when it is not local."""
    root = Path(path)
    if root.is_file():
        return root.stat().st_size
    if not root.is_dir():
        return 0
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()) + sum(
        p.resolve().stat().st_size for p in root.rglob("*") if p.is_symlink() and p.resolve().is_file()
    )


def resident_bytes() -> int:
    """This process's resident memory (Linux's /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _cuda_free(device: str) -> int | None:
    """Free memory on `device` ("cuda": the current GPU; "cuda:1": that one), None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device if ":" in device else None)
    return int(free)


class Measure:
    """`with Measure(device) as m: load()`, then `m.bytes`: what the load took on that device."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.bytes = 0

    def __enter__(self) -> Measure:
        self._before = _cuda_free(self.device) if self.device.startswith("cuda") else resident_bytes()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._before is None:
            return
        if self.device.startswith("cuda"):
            after = _cuda_free(self.device)
            self.bytes = max(0, self._before - after) if after is not None else 0
        else:
            self.bytes = max(0, resident_bytes() - self._before) if self._before else 0
