"""Kokoro (StyleTTS2 + iSTFTNet on torch) as a TextToSpeech engine."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import spacy.util
import torch
from kokoro import KModel, KPipeline
from kokoro.pipeline import ALIASES, LANG_CODES
from misaki import espeak

from registry.speech.engines.base import EngineError, EngineSpec, Samples, UnknownVoice, VoiceSpec

logger = logging.getLogger(__name__)

SAMPLE_RATE = 24_000  # fixed by Kokoro's decoder (prod(upsample_rates) * hop = 300 per frame)

# KPipeline only uses repo_id to download voices by name and to pick the Chinese G2P version;
# for a local model it must still be given, or kokoro prints a warning on every construction.
_DEFAULT_REPO = "hexgrad/Kokoro-82M"
_SPACY_MODEL = "en_core_web_sm"  # what misaki's English G2P loads (and tries to download if missing)
_VOICE_PREFIX = re.compile(r"^([a-z])[fm]_")  # Kokoro names voices <lang><gender>_<name>: "af_heart"
_VOICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when torch sees a GPU, else "cpu"; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class _LockedG2P:
    """Serialises calls to a G2P object shared by the worker threads.

    misaki's English G2P runs spaCy and keeps lexicon state, and its espeak fallback drives one
    espeak-ng instance through ctypes; neither is documented as thread-safe. G2P takes
    milliseconds, so one lock costs little, while model inference (the slow part) stays parallel.
    """

    def __init__(self, g2p: Callable[..., Any], lock: threading.Lock) -> None:
        self._g2p = g2p
        self._lock = lock

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._g2p(*args, **kwargs)


def _hub_download(repo_id: str, filename: str, download_root: str) -> Path:
    from huggingface_hub import hf_hub_download  # a kokoro dependency

    return Path(hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=download_root or None))


class KokoroEngine:
    """One Kokoro model and its voices.

    Source: a local directory with config.json, one *.pth checkpoint and voices/NAME.pt, or a hub
    repo id ("hexgrad/Kokoro-82M"), whose config, weights and voices are downloaded (into
    `download_root` or the Hugging Face cache) on construction and first use. Construction blocks
    and raises EngineError when the model cannot be loaded.

    Thread-safe: pipelines and voice packs are created under locks, G2P is serialised, and model
    inference runs concurrently (torch modules in eval mode keep no per-call state).
    """

    sample_rate: int = SAMPLE_RATE

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.device = resolve_device(spec.device)
        local = Path(spec.source).expanduser()
        self.local_dir: Path | None = local if local.is_dir() else None
        self.repo_id = _DEFAULT_REPO if self.local_dir else spec.source
        if spec.cpu_threads > 0 and self.device == "cpu":
            torch.set_num_threads(spec.cpu_threads)
        try:
            config, weights = self._model_files()
            self.model = (
                KModel(repo_id=self.repo_id, config=str(config), model=str(weights)).to(self.device).eval()
            )
        except EngineError:
            raise
        except Exception as exc:  # hub errors, a corrupt checkpoint, a CUDA that is not there
            raise EngineError(f"Could not load the Kokoro model {spec.source!r}: {exc}") from exc
        self._lock = threading.Lock()  # guards the two caches below
        self._g2p_lock = threading.Lock()  # one for all pipelines: espeak-ng is one C library
        self._pipelines: dict[str, KPipeline] = {}
        self._packs: dict[str, torch.Tensor] = {}
        self._hub_voices: list[str] | None = None
        logger.info("loaded kokoro %s on %s", spec.source, self.device)

    def _model_files(self) -> tuple[Path, Path]:
        if self.local_dir is not None:
            config = self.local_dir / "config.json"
            weights = sorted(self.local_dir.glob("*.pth"))
            if not config.is_file() or len(weights) != 1:
                raise EngineError(
                    f"Kokoro directory {str(self.local_dir)!r} must hold config.json and exactly one "
                    f"*.pth checkpoint (found {len(weights)})."
                )
            return config, weights[0]
        if self.spec.source.startswith(("/", ".", "~")):
            raise EngineError(f"Kokoro directory {self.spec.source!r} does not exist.")
        weights_name = KModel.MODEL_NAMES.get(self.repo_id) or self._hub_checkpoint_name()
        return (
            _hub_download(self.repo_id, "config.json", self.spec.download_root),
            _hub_download(self.repo_id, weights_name, self.spec.download_root),
        )

    def _hub_checkpoint_name(self) -> str:
        # Repos kokoro does not know by name (fine-tunes, mirrors): take their one top-level .pth.
        from huggingface_hub import list_repo_files

        checkpoints = [f for f in list_repo_files(self.repo_id) if f.endswith(".pth") and "/" not in f]
        if len(checkpoints) != 1:
            raise EngineError(
                f"Kokoro repo {self.repo_id!r} must hold exactly one top-level .pth checkpoint."
            )
        return checkpoints[0]

    def voices(self) -> list[str]:
        """Voice names in the source: voices/*.pt in a local directory, or in the hub repo.

        For a hub repo this asks the hub once (blocking); when it cannot be reached (offline, no
        network) it answers with the voices already in the local hub cache, possibly [].
        """
        if self.local_dir is not None:
            return sorted(p.stem for p in (self.local_dir / "voices").glob("*.pt"))
        if self._hub_voices is None:
            from huggingface_hub import list_repo_files, snapshot_download

            try:
                files = list_repo_files(self.repo_id)
            except Exception as exc:  # offline (HF_HUB_OFFLINE), no network, a private repo
                logger.warning("could not list the voices of %s on the hub: %s", self.repo_id, exc)
                try:
                    snapshot = snapshot_download(
                        self.repo_id,
                        cache_dir=self.spec.download_root or None,
                        local_files_only=True,
                        allow_patterns=["voices/*.pt"],
                    )
                except Exception:  # nothing cached either
                    return []
                return sorted(p.stem for p in (Path(snapshot) / "voices").glob("*.pt"))
            self._hub_voices = sorted(
                f.removeprefix("voices/").removesuffix(".pt")
                for f in files
                if f.startswith("voices/") and f.endswith(".pt")
            )
        return list(self._hub_voices)

    def _voice_file(self, part: str, *, explicit: bool) -> Path:
        """Where one voice lives: an existing file, SOURCE/voices/NAME.pt, or a hub download."""
        if explicit and Path(part).expanduser().is_file():
            return Path(part).expanduser()
        if not explicit and not _VOICE_NAME.fullmatch(part):
            # A name, not a path: "../secret" must not reach the file system or the hub.
            raise UnknownVoice(f"{part!r} is not a Kokoro voice name.")
        if self.local_dir is not None:
            path = self.local_dir / "voices" / f"{part}.pt"
            if not explicit and path.is_file():
                return path
            raise UnknownVoice(f"Voice {part!r} is not in Kokoro model {self.spec.model_id!r}.")
        filename = part if explicit else f"voices/{part}.pt"
        try:
            return _hub_download(self.repo_id, filename, self.spec.download_root)
        except Exception as exc:  # the hub says 404 for a missing file; offline is also "not found"
            # The hub's own message (URLs, cache paths) stays in the cause chain, for the logs.
            raise UnknownVoice(f"Voice {part!r} could not be found in {self.repo_id!r}.") from exc

    def _pack(self, voice: VoiceSpec) -> torch.Tensor:
        """The style pack (510, 1, 256) for `voice`, loaded once; "a,b" averages packs as Kokoro does."""
        spelled = voice.source or voice.name
        key = ("file:" if voice.source else "name:") + spelled  # a name and a path may be spelled alike
        with self._lock:
            if key in self._packs:
                return self._packs[key]
        parts = [p.strip() for p in spelled.split(",") if p.strip()]
        if not parts:
            raise UnknownVoice("No Kokoro voice was named.")
        packs = []
        for part in parts:
            path = self._voice_file(part, explicit=bool(voice.source))
            try:
                packs.append(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as exc:  # not a tensor file, or a pickle that weights_only refuses
                raise EngineError(f"Voice file for {voice.name!r} could not be loaded.") from exc
        pack = packs[0] if len(packs) == 1 else torch.mean(torch.stack(packs), dim=0)
        with self._lock:
            return self._packs.setdefault(key, pack)

    def _lang_code(self, voice: VoiceSpec) -> str:
        if voice.language:
            code = ALIASES.get(voice.language.lower(), voice.language.lower())
            if code not in LANG_CODES:
                raise EngineError(f"Kokoro has no language {voice.language!r}.")
            return code
        # No language given: Kokoro's own voices say theirs in the name ("bf_emma" is British).
        match = _VOICE_PREFIX.match(voice.name)
        return match[1] if match and match[1] in LANG_CODES else "a"

    def _pipeline(self, lang_code: str) -> KPipeline:
        with self._lock:  # single flight: building the English G2P loads spaCy (~0.5 s)
            pipeline = self._pipelines.get(lang_code)
            if pipeline is None:
                pipeline = self._new_pipeline(lang_code)
                self._pipelines[lang_code] = pipeline
            return pipeline

    def _new_pipeline(self, lang_code: str) -> KPipeline:
        # model=False: the pipeline does G2P and chunking only; the engine passes its one model at
        # call time, so no pipeline ever builds (or downloads) a model of its own.
        try:
            if lang_code in "ab" and not spacy.util.is_package(_SPACY_MODEL):
                # misaki would call spacy.cli.download (a network fetch without timeout). Use its
                # espeak G2P instead: no word tokens, but correct English phonemes, offline.
                logger.warning(
                    "%s is not installed; Kokoro English G2P falls back to espeak-ng", _SPACY_MODEL
                )
                pipeline = KPipeline(lang_code="e", repo_id=self.repo_id, model=False)
                pipeline.g2p = espeak.EspeakG2P(language="en-gb" if lang_code == "b" else "en-us")
            else:
                pipeline = KPipeline(lang_code=lang_code, repo_id=self.repo_id, model=False)
        except ImportError as exc:  # Japanese and Chinese need misaki extras
            raise EngineError(f"Kokoro language {LANG_CODES[lang_code]!r} is not installed here.") from exc
        pipeline.g2p = _LockedG2P(pipeline.g2p, self._g2p_lock)
        return pipeline

    def synthesize(
        self, text: str, *, voice: VoiceSpec, speed: float = 1.0, crowded: bool = False
    ) -> Iterator[Samples]:
        """Speak `text`, yielding a 24 kHz float32 chunk per pipeline chunk (about a sentence).
        `crowded`: with other engine work beside it, torch gets `shared_threads` (set on the thread
        that runs each chunk: the pool may move a call between threads from one chunk to the next).

        The voice is found and loaded before this returns: UnknownVoice when it does not exist,
        EngineError for an unusable voice file, language or speed. Inference happens while the
        iterator is drained, one chunk at a time.
        """
        if speed <= 0:
            raise EngineError("speed must be positive.")
        pack = self._pack(voice)
        pipeline = self._pipeline(self._lang_code(voice))
        threads = self.spec.shared_threads if crowded else self.spec.cpu_threads
        return self._chunks(pipeline, text, pack, speed, threads if self.device == "cpu" else 0)

    def _chunks(
        self, pipeline: KPipeline, text: str, pack: torch.Tensor, speed: float, threads: int
    ) -> Iterator[Samples]:
        # The pack goes in as a CPU tensor: KPipeline moves it to the model's device per call and
        # would treat a CUDA tensor as a voice *name*.
        results = pipeline(text, voice=pack, speed=speed, model=self.model)
        while True:
            # inference_mode only around our own next(): it is thread-local and must not leak into
            # the consumer's code between chunks. The thread count too may act per thread (OpenMP).
            if threads > 0 and torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            with torch.inference_mode():
                result = next(results, None)
            if result is None:
                return
            if result.audio is not None:
                yield result.audio.numpy().astype(np.float32, copy=False)
