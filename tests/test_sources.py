"""`pypi:` model sources: one package, or a model split across packages joined once (in process)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from registry.speech import sources


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """Two importable packages holding a model's parts in their data/ directories."""
    root = tmp_path / "site"
    root.mkdir()  # before it joins sys.path: a missing directory is remembered as holding nothing
    monkeypatch.syspath_prepend(str(root))
    made: list[str] = []

    def make(name: str, files: dict[str, bytes]) -> str:
        data = root / name / "data"
        data.mkdir(parents=True)
        (root / name / "__init__.py").write_text('"""Model data only."""\n')
        for file_name, content in files.items():
            (data / file_name).write_bytes(content)
        made.append(name)
        return name.replace("_", "-")

    yield make
    for name in made:
        sys.modules.pop(name, None)


def test_a_split_model_is_joined_once_in_order(packages, tmp_path):
    first = packages("vp_model_part1", {"config.json": b"{}", "model.bin.part1": b"A" * 1000})
    second = packages("vp_model_part2", {"model.bin.part2": b"B" * 500})
    source = f"pypi:{first}+{second}"
    sources.check(source)
    path = Path(sources.local(source, str(tmp_path / "models")))
    assert (path / "model.bin").read_bytes() == b"A" * 1000 + b"B" * 500
    assert (path / "config.json").read_bytes() == b"{}" and not (path / "model.bin.part1").exists()
    stamp = (path / "model.bin").stat().st_mtime_ns
    assert sources.local(source, str(tmp_path / "models")) == str(path)
    assert (path / "model.bin").stat().st_mtime_ns == stamp  # not joined again


def test_concurrent_first_loads_join_it_once_and_alike(packages, tmp_path):
    first = packages("vp_conc_part1", {"model.bin.part1": b"x" * 3_000_000})
    second = packages("vp_conc_part2", {"model.bin.part2": b"y" * 3_000_000})
    results: list[str] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            results.append(sources.local(f"pypi:{first}+{second}", str(tmp_path / "models")))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(set(results)) == 1 and len(results) == 6
    assert (Path(results[0]) / "model.bin").stat().st_size == 6_000_000
    leftovers = [p.name for p in (tmp_path / "models" / "pypi").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no half-joined scratch directories


def test_changed_packages_are_joined_again(packages, tmp_path):
    first = packages("vp_change_part1", {"w.bin.part1": b"1" * 10})
    second = packages("vp_change_part2", {"w.bin.part2": b"2" * 10})
    source, models = f"pypi:{first}+{second}", str(tmp_path / "models")
    path = Path(sources.local(source, models))
    (tmp_path / "site" / "vp_change_part2" / "data" / "w.bin.part2").write_bytes(b"3" * 20)
    assert (Path(sources.local(source, models)) / "w.bin").read_bytes() == b"1" * 10 + b"3" * 20
    assert path.exists()


def test_missing_packages_and_gaps_in_the_parts_are_refused(packages, tmp_path):
    with pytest.raises(sources.SourceError, match="not installed"):
        sources.check("pypi:no-such-voiceproxy-package+another")
    first = packages("vp_gap_part1", {"m.bin.part1": b"a"})
    third = packages("vp_gap_part3", {"m.bin.part3": b"c"})
    with pytest.raises(sources.SourceError, match="not numbered 1 to 2"):
        sources.local(f"pypi:{first}+{third}", str(tmp_path / "models"))


def test_anything_but_pypi_is_left_as_it_is(tmp_path):
    assert sources.local("Systran/faster-whisper-small", str(tmp_path)) == "Systran/faster-whisper-small"
    assert sources.local("/models/whisper", str(tmp_path)) == "/models/whisper"
