"""What the catalog hands to speech: a model as the registry resolved it, frozen and ORM-free.

No Django here, so speech code (the model cache, the STT and TTS services, the bench) depends on
this and never on the ORM; no model instance or queryset ever reaches a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from registry.speech.engines.base import EngineSpec

ModelTask = Literal["stt", "tts"]


@dataclass(frozen=True)
class ResolvedModel:
    model_id: str
    task: ModelTask
    spec: EngineSpec
    idle_ttl: int  # seconds kept loaded after the last use; 0: forever
    names: tuple[str, ...]  # the id, then its aliases
    pk: int
