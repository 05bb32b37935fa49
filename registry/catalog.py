"""The registry's read side: resolve what a client names (id or alias) to an enabled model or voice.

Called from async services; everything is read from the in-memory registry (registry/snapshot.py,
checked against the database once per request). Resolution returns frozen specs, so no model
instance or queryset ever reaches a worker thread.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from registry import snapshot
from registry.access import check_model_allowed, may_use
from registry.errors import InvalidRequest, ModelNotFound
from registry.models import ApiKey, SpeechModel, SpeechToTextModel, TextToSpeechModel
from registry.resolved import ModelTask as Task
from registry.resolved import ResolvedModel
from registry.speech.engines.base import EngineSpec, VoiceSpec

_MODEL_CLASSES: dict[Task, type[SpeechModel]] = {"stt": SpeechToTextModel, "tts": TextToSpeechModel}
_TASK_WORDS = {"stt": "speech-to-text", "tts": "text-to-speech"}


def engine_spec(row: SpeechModel) -> EngineSpec:
    return EngineSpec(
        model_id=row.model_id,
        engine=row.engine,
        source=row.source,
        device=row.device,
        compute_type=row.compute_type,
        download_root=str(settings.VOICEPROXY_MODELS_DIR),
        cpu_threads=settings.VOICEPROXY_ENGINE_THREADS,
        shared_threads=settings.VOICEPROXY_ENGINE_THREADS_SHARED,
        workers=settings.VOICEPROXY_INFERENCE_THREADS,
    )


def resolved(row: SpeechModel) -> ResolvedModel:
    return ResolvedModel(
        model_id=row.model_id,
        task=row.task,  # type: ignore[arg-type]
        spec=engine_spec(row),
        idle_ttl=row.idle_ttl if row.idle_ttl is not None else settings.VOICEPROXY_MODEL_TTL,
        names=(row.model_id, *row.aliases),
        pk=row.pk,
    )


def _named(row: SpeechModel, name: str) -> bool:
    return name == row.model_id or name in (row.aliases or [])


async def model_for(
    *, task: Task, api_key: ApiKey | None, name: str | None, param: str = "model"
) -> ResolvedModel:
    """The enabled model of `task` that `name` names, or the task's default when name is empty.

    Raises ModelNotFound (unknown, disabled, or no default), InvalidRequest (a model of the
    other task) and PermissionDenied (outside the key's model list).
    """
    registry = await snapshot.current()
    rows = registry.models(task)
    if not name:
        row = next((r for r in rows if r.is_default), None)
        if row is None:
            raise ModelNotFound(
                f"No {_TASK_WORDS[task]} model is set as the default; name one in '{param}'.",
                param=param,
            )
    else:
        row = next((r for r in rows if _named(r, name)), None)
        if row is None:
            other: Task = "tts" if task == "stt" else "stt"
            if any(_named(r, name) for r in registry.models(other)):
                raise InvalidRequest(
                    f"The model '{name}' is a {_TASK_WORDS[other]} model; this endpoint needs "
                    f"a {_TASK_WORDS[task]} model.",
                    param=param,
                    code="wrong_model_type",
                )
            raise ModelNotFound(f"The model '{name}' does not exist.", param=param)
    model = resolved(row)
    check_model_allowed(api_key, [name or model.model_id, *model.names], param=param)
    return model


async def check_chat_model(name: str, *, param: str = "model") -> None:
    """Raise InvalidRequest (`wrong_model_type`) when `name` is a speech model's id or alias: it
    names no chat model, so it must not fall through to the default upstream."""
    registry = await snapshot.current()
    for task in _MODEL_CLASSES:
        if any(_named(row, name) for row in registry.models(task)):
            raise InvalidRequest(
                f"The model '{name}' is a {_TASK_WORDS[task]} model; chat completions need a chat model.",
                param=param,
                code="wrong_model_type",
            )


async def voice_for(*, model: ResolvedModel, name: str, param: str = "voice") -> VoiceSpec:
    """The model's enabled voice named `name` (its name or an alias). Raises InvalidRequest."""
    available: list[str] = []
    for voice in (await snapshot.current()).voices.get(model.pk, ()):
        if name == voice.name or name in (voice.aliases or []):
            return VoiceSpec(name=voice.name, source=voice.source, language=voice.language)
        available.extend([voice.name, *voice.aliases])
    listed = ", ".join(sorted(available)) or "none registered"
    raise InvalidRequest(
        f"The voice '{name}' is not a voice of the model '{model.model_id}' (voices: {listed}).",
        param=param,
        code="invalid_voice",
    )


async def default_voice(model: ResolvedModel) -> VoiceSpec | None:
    voices = (await snapshot.current()).voices.get(model.pk, ())
    voice = voices[0] if voices else None
    return VoiceSpec(name=voice.name, source=voice.source, language=voice.language) if voice else None


def _model_object(model_id: str, created: Any, owned_by: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": int(created.timestamp()),
        "owned_by": owned_by,
        **extra,
    }


async def model_objects(api_key: ApiKey | None) -> list[dict[str, Any]]:
    """Every model this key may use, in OpenAI's model-object shape, aliases included."""
    objects: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(model_id: str, created: Any, owned_by: str, names: list[str], **extra: Any) -> None:
        if model_id in seen or not may_use(api_key, names):
            return
        seen.add(model_id)
        objects.append(_model_object(model_id, created, owned_by, **extra))

    registry = await snapshot.current()
    for task in _MODEL_CLASSES:
        for row in registry.models(task):
            names = [row.model_id, *row.aliases]
            add(row.model_id, row.created, "voiceproxy", names, task=task)
            for alias in row.aliases:
                add(alias, row.created, "voiceproxy", names, task=task, alias_of=row.model_id)
    for upstream in registry.upstreams:
        for name in upstream.chat_models:
            add(name, upstream.created, upstream.name, [name], task="chat")
    return objects


async def model_object(api_key: ApiKey | None, model_id: str) -> dict[str, Any]:
    for obj in await model_objects(api_key):
        if obj["id"] == model_id:
            return obj
    raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")


async def voice_objects(api_key: ApiKey | None, *, model: str | None) -> list[dict[str, Any]]:
    """The enabled voices of the text-to-speech models this key may use (of `model` only, if given)."""
    registry = await snapshot.current()
    if model:
        models = [await model_for(task="tts", api_key=api_key, name=model)]
    else:
        models = [resolved(row) for row in registry.tts_models]
        models = [m for m in models if may_use(api_key, list(m.names))]
    objects: list[dict[str, Any]] = []
    for m in models:
        for voice in sorted(registry.voices.get(m.pk, ()), key=lambda v: v.name):
            objects.append(
                {
                    "id": voice.name,
                    "object": "voice",
                    "model": m.model_id,
                    "name": voice.name,
                    "language": voice.language,
                    "aliases": list(voice.aliases),
                }
            )
    return objects
