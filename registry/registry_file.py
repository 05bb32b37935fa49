"""The declarative registry file that `loadregistry` applies (format in README.md).

Creates or updates upstreams, speech models, voices and aliases, matched by name / id; never
deletes. Unknown fields, wrong types and invalid values are a `RegistryFileError` naming the path
(`models[1].engine`), and nothing is written unless the whole file applies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet

from registry.models import SpeechModel, SpeechToTextModel, TextToSpeechModel, Upstream, Voice
from registry.speech import sources
from registry.speech.engines import ENGINE_TASKS

STARTER_FILE = Path(__file__).with_name("starter.json")

_TOP = {"upstreams", "models"}
_UPSTREAM = {"name", "base_url", "api_key", "models", "default", "timeout", "enabled"}
_MODEL = {
    "id",
    "task",
    "engine",
    "source",
    "device",
    "compute_type",
    "default",
    "enabled",
    "aliases",
    "idle_ttl",
    "voices",
}
_VOICE = {"name", "source", "language", "aliases", "enabled"}
_REQUIRED = {"upstream": {"name", "base_url"}, "model": {"id", "engine", "source"}, "voice": {"name"}}


class RegistryFileError(Exception):
    pass


def _check_fields(entry: Any, allowed: set[str], kind: str, path: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise RegistryFileError(f"{path}: must be an object")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise RegistryFileError(
            f"{', '.join(f'{path}.{name}' for name in unknown)}: unknown field(s); "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    missing = sorted(_REQUIRED.get(kind, set()) - set(entry))
    if missing:
        raise RegistryFileError(f"{path}: missing field(s) {', '.join(missing)}")
    return entry


def _checked_source(source: str, path: str) -> str:
    """The source as written: a `pypi:` one is kept so (resolved when the model loads, so no path
    into this virtual environment is stored), but its packages must be installed."""
    try:
        sources.check(source)
    except sources.SourceError as exc:
        raise RegistryFileError(f"{path}: source {source!r}: {exc}") from exc
    return source


def _name(entry: dict[str, Any], field: str, path: str) -> str:
    """A required identifying string (an id or a name): never a number or list turned into text."""
    value = entry.get(field)
    if not isinstance(value, str) or not value.strip():
        raise RegistryFileError(f"{path}.{field}: wrong type (must be a non-empty string)")
    return value


def _full_clean(row: Any, path: str, exclude: list[str] | None = None) -> None:
    try:
        row.full_clean(exclude=exclude, validate_unique=True)
    except ValidationError as exc:
        details = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
        raise RegistryFileError(f"{path}: {details}") from exc


def load_file(path: Path, *, keep_defaults: bool = False) -> Report:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise RegistryFileError(f"{path}: cannot be read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise RegistryFileError(f"{path}: not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise RegistryFileError(f"{path}: not valid JSON ({exc})") from exc
    return apply(data, keep_defaults=keep_defaults)


@dataclass
class Report:
    """What applying a file did: rows written (and how many already existed), and what an operator
    should hear about (a default that moved, or one that was kept)."""

    counts: dict[str, int] = field(default_factory=lambda: {"upstreams": 0, "models": 0, "voices": 0})
    existed: int = 0
    notes: list[str] = field(default_factory=list)
    keep_defaults: bool = False  # the starter's way: never take the default from what an operator set


def apply(data: Any, *, keep_defaults: bool = False) -> Report:
    """Apply a parsed registry file in one transaction.

    With `keep_defaults`, an entry marked default becomes the default only where none is set yet.
    """
    _check_fields(data, _TOP, "file", "file")
    report = Report(keep_defaults=keep_defaults)
    with transaction.atomic():
        for i, entry in enumerate(_list(data.get("upstreams", []), "upstreams")):
            path = f"upstreams[{i}]"
            _apply_upstream(_check_fields(entry, _UPSTREAM, "upstream", path), path, report)
            report.counts["upstreams"] += 1
        for i, entry in enumerate(_list(data.get("models", []), "models")):
            path = f"models[{i}]"
            report.counts["voices"] += _apply_model(_check_fields(entry, _MODEL, "model", path), path, report)
            report.counts["models"] += 1
    return report


def _claim_default(others: QuerySet[Any], field_name: str, kind: str, name: str, report: Report) -> bool:
    """Make `name` the default of its kind, moving it from the others (and saying so), unless the
    report keeps defaults and another one already is. Returns whether `name` is the default."""
    previous = list(others.filter(is_default=True).values_list(field_name, flat=True))
    if not previous:
        return True
    if report.keep_defaults:
        report.notes.append(
            f"Kept {kind} '{previous[0]}' as the default; '{name}' was loaded but not made the default."
        )
        return False
    others.filter(is_default=True).update(is_default=False)
    report.notes.append(f"The {kind} '{previous[0]}' is no longer the default: '{name}' is.")
    return True


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise RegistryFileError(f"{path}: must be a list")
    return value


def _typed(entry: dict[str, Any], name: str, kind: type | tuple[type, ...], path: str, default: Any) -> Any:
    value = entry.get(name, default)
    if value is not default and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        raise RegistryFileError(f"{path}.{name}: wrong type")
    return value


def _apply_upstream(entry: dict[str, Any], path: str, report: Report) -> None:
    name = _name(entry, "name", path)
    existing = Upstream.objects.filter(name=name).first()
    report.existed += existing is not None
    upstream = existing or Upstream(name=name)
    upstream.base_url = _typed(entry, "base_url", str, path, "")
    upstream.chat_models = _typed(entry, "models", list, path, upstream.chat_models or [])
    upstream.timeout = float(_typed(entry, "timeout", (int, float), path, upstream.timeout))
    upstream.enabled = _typed(entry, "enabled", bool, path, True)
    is_default = _typed(entry, "default", bool, path, False)
    if "api_key" in entry:
        upstream.set_api_key(_typed(entry, "api_key", str, path, ""))
    if is_default:
        is_default = _claim_default(Upstream.objects.exclude(name=name), "name", "upstream", name, report)
    elif report.keep_defaults and existing is not None:
        is_default = existing.is_default  # an operator's choice stands
    upstream.is_default = is_default
    _full_clean(upstream, path)
    upstream.save()


def _apply_model(entry: dict[str, Any], path: str, report: Report) -> int:
    model_id = _name(entry, "id", path)
    engine = _typed(entry, "engine", str, path, "")
    task = _typed(entry, "task", str, path, ENGINE_TASKS.get(engine, ""))
    if task not in ("stt", "tts"):
        raise RegistryFileError(f"{path}.task: must be 'stt' or 'tts'")
    if engine not in ENGINE_TASKS or ENGINE_TASKS[engine] != task:
        engines = sorted(e for e, t in ENGINE_TASKS.items() if t == task)
        raise RegistryFileError(f"{path}.engine: {engine!r} is not a {task} engine ({', '.join(engines)})")
    cls: type[SpeechModel] = SpeechToTextModel if task == "stt" else TextToSpeechModel
    other: type[SpeechModel] = TextToSpeechModel if task == "stt" else SpeechToTextModel
    if other.objects.filter(model_id=model_id).exists():
        raise RegistryFileError(f"{path}.id: {model_id!r} is already registered for the other task")
    existing = cls.objects.filter(model_id=model_id).first()
    report.existed += existing is not None
    row = existing or cls(model_id=model_id)
    row.engine = engine
    row.source = _checked_source(_typed(entry, "source", str, path, ""), f"{path}.source")
    row.device = _typed(entry, "device", str, path, "auto")
    row.compute_type = _typed(entry, "compute_type", str, path, "auto")
    row.enabled = _typed(entry, "enabled", bool, path, True)
    row.aliases = _typed(entry, "aliases", list, path, [])
    row.idle_ttl = _typed(entry, "idle_ttl", int, path, None)
    is_default = _typed(entry, "default", bool, path, False)
    words = "speech-to-text model" if task == "stt" else "text-to-speech model"
    if is_default:
        is_default = _claim_default(
            cls.objects.exclude(model_id=model_id), "model_id", words, model_id, report
        )
    elif report.keep_defaults and existing is not None:
        is_default = existing.is_default
    row.is_default = is_default
    _full_clean(row, path)
    row.save()
    voices = _list(entry.get("voices", []), f"{path}.voices")
    if voices and task != "tts":
        raise RegistryFileError(f"{path}.voices: only text-to-speech models have voices")
    for j, raw in enumerate(voices):
        vpath = f"{path}.voices[{j}]"
        v = _check_fields(raw, _VOICE, "voice", vpath)
        voice_name = _name(v, "name", vpath)
        voice = Voice.objects.filter(model=row, name=voice_name).first() or Voice(model=row, name=voice_name)
        voice.source = _checked_source(_typed(v, "source", str, vpath, ""), f"{vpath}.source")
        voice.language = _typed(v, "language", str, vpath, "")
        voice.aliases = _typed(v, "aliases", list, vpath, [])
        voice.enabled = _typed(v, "enabled", bool, vpath, True)
        _full_clean(voice, vpath)
        voice.save()
    return len(voices)
