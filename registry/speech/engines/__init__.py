"""Engine name -> class, imported on first use.

Importing this package must stay cheap: `migrate`, the admin and model-free tests import it, and
the engine modules pull in torch, CTranslate2 or onnxruntime. A new engine is one module plus one
line in each mapping below.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING, Final, Literal

ENGINES: Final[dict[str, str]] = {
    "faster-whisper": "registry.speech.engines.whisper.WhisperEngine",
    "kokoro": "registry.speech.engines.kokoro.KokoroEngine",
    "piper": "registry.speech.engines.piper.PiperEngine",
}
"""Engine name (what `EngineSpec.engine` and the admin store) -> dotted path of its class."""

ENGINE_TASKS: Final[dict[str, Literal["stt", "tts"]]] = {
    "faster-whisper": "stt",
    "kokoro": "tts",
    "piper": "tts",
}
"""Which protocol each engine implements: "stt" (SpeechToText) or "tts" (TextToSpeech)."""


@cache
def engine_class(name: str) -> type:
    """The class for engine `name`, importing its module on the first call.

    Raises KeyError for a name not in ENGINES, and ImportError when the engine's libraries are not
    installed (a deployment that never uses that engine need not install them).
    """
    module_name, _, class_name = ENGINES[name].rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


if TYPE_CHECKING:
    # Not imported at run time (see above): here the type checker holds each engine to its Protocol.
    from registry.speech.engines.base import SpeechToText, TextToSpeech
    from registry.speech.engines.kokoro import KokoroEngine
    from registry.speech.engines.piper import PiperEngine
    from registry.speech.engines.whisper import WhisperEngine

    _STT_ENGINES: tuple[type[SpeechToText], ...] = (WhisperEngine,)
    _TTS_ENGINES: tuple[type[TextToSpeech], ...] = (KokoroEngine, PiperEngine)
