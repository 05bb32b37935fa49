"""The registry as Wyoming sees it: `info` lists the enabled models and voices, and the names a
client sends back (`transcribe.name`, `synthesize.voice`) resolve to the same models and voices the
OpenAI endpoints use. Read from the registry snapshot, so a change in the admin shows at the next
`describe`.

Voice names: a voice is listed by its own name when no other model has a voice of that name, else as
`<model id>:<voice>`; both forms, the voice's aliases, and a model id or alias with the voice as
`speaker` are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from faster_whisper.tokenizer import _LANGUAGE_CODES
from wyoming.info import AsrModel, AsrProgram, Attribution, Info, TtsProgram, TtsVoice
from wyoming.tts import SynthesizeVoice

import voiceproxy
from registry import snapshot
from registry.errors import InvalidRequest
from registry.models import SpeechToTextModel, TextToSpeechModel, Voice
from registry.speech import tts

M = TypeVar("M", SpeechToTextModel, TextToSpeechModel)
ATTRIBUTION = Attribution(name="voiceproxy", url="")
WHISPER_LANGUAGES = sorted(_LANGUAGE_CODES)


def stt_languages(row: SpeechToTextModel) -> list[str]:
    """Whisper's languages, or English alone for the English-only checkpoints (`*.en`, distil-*).

    Judged from the names, so that `describe` never has to load a model to answer."""
    names = [row.model_id, row.source.rstrip("/")]
    if any(n.endswith(".en") or "distil-" in n.lower() for n in names):
        return ["en"]
    return list(WHISPER_LANGUAGES)


@dataclass(frozen=True)
class ListedVoice:
    name: str  # as Wyoming clients see and send it
    model: TextToSpeechModel
    voice: Voice


def listed_voices(registry: snapshot.Snapshot) -> list[ListedVoice]:
    pairs = [(m, v) for m in _default_first(registry.tts_models) for v in registry.voices.get(m.pk, ())]
    counts: dict[str, int] = {}
    for _, voice in pairs:
        counts[voice.name] = counts.get(voice.name, 0) + 1
    return [
        ListedVoice(voice.name if counts[voice.name] == 1 else f"{model.model_id}:{voice.name}", model, voice)
        for model, voice in pairs
    ]


def _default_first(models: tuple[M, ...]) -> list[M]:
    return sorted(models, key=lambda m: not m.is_default)


async def info() -> Info:
    registry = await snapshot.current()
    version = voiceproxy.__version__
    asr_models = [
        AsrModel(
            name=row.model_id,
            description=f"{row.model_id} ({row.engine})",
            attribution=ATTRIBUTION,
            installed=True,
            version=version,
            languages=stt_languages(row),
        )
        for row in _default_first(registry.stt_models)
    ]
    voices = [
        TtsVoice(
            name=listed.name,
            description=f"{listed.voice.name} ({listed.model.model_id})",
            attribution=ATTRIBUTION,
            installed=True,
            version=version,
            languages=[listed.voice.language] if listed.voice.language else [],
        )
        for listed in listed_voices(registry)
    ]
    asr = [
        AsrProgram(
            name="voiceproxy-stt",
            description="voiceproxy speech to text",
            attribution=ATTRIBUTION,
            installed=True,
            version=version,
            models=asr_models,
            supports_transcript_streaming=True,
        )
    ]
    tts_programs = [
        TtsProgram(
            name="voiceproxy-tts",
            description="voiceproxy text to speech",
            attribution=ATTRIBUTION,
            installed=True,
            version=version,
            voices=voices,
            supports_synthesize_streaming=True,
        )
    ]
    return Info(asr=asr if asr_models else [], tts=tts_programs if voices else [])


def _language_matches(wanted: str, language: str) -> bool:
    wanted, language = wanted.lower().replace("-", "_"), language.lower().replace("-", "_")
    return language == wanted or language.split("_")[0] == wanted.split("_")[0]


async def voicing(voice: SynthesizeVoice | None) -> tts.Voicing:
    """The model and voice a `synthesize` asks for; the default model's first voice when it names none.

    Raises InvalidRequest (code invalid_voice) for a name or language nothing matches."""
    if voice is None or not (voice.name or voice.language):
        return await tts.voicing(api_key=None, model=None, voice=None)
    registry = await snapshot.current()
    listed = listed_voices(registry)
    if voice.name:
        name = voice.name
        for entry in listed:
            if name == entry.name:
                return await tts.voicing(api_key=None, model=entry.model.model_id, voice=entry.voice.name)
        for model in _default_first(registry.tts_models):
            if name == model.model_id or name in (model.aliases or []):
                return await tts.voicing(api_key=None, model=model.model_id, voice=voice.speaker or None)
        for entry in listed:
            if name == entry.voice.name or name in (entry.voice.aliases or []):
                return await tts.voicing(api_key=None, model=entry.model.model_id, voice=entry.voice.name)
        known = ", ".join(e.name for e in listed) or "none"
        raise InvalidRequest(
            f"No voice named '{name}' (voices: {known}).", param="voice", code="invalid_voice"
        )
    assert voice.language is not None  # noqa: S101 - checked above
    for entry in listed:
        if entry.voice.language and _language_matches(voice.language, entry.voice.language):
            return await tts.voicing(api_key=None, model=entry.model.model_id, voice=entry.voice.name)
    raise InvalidRequest(f"No voice speaks '{voice.language}'.", param="voice", code="invalid_voice")
