"""Piper (VITS on onnxruntime) as a TextToSpeech engine."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
from piper import PiperConfig, PiperVoice, SynthesisConfig
from piper.phonemize_espeak import ESPEAK_DATA_DIR

from registry.speech.engines.base import EngineError, EngineSpec, Samples, UnknownVoice, VoiceSpec

logger = logging.getLogger(__name__)

# Piper's own naming (piper.download_voices): "en_US-joe-medium" lives in rhasspy/piper-voices
# under en/en_US/joe/medium/.
_PIPER_VOICES_REPO = "rhasspy/piper-voices"
_VOICE_NAME = re.compile(r"^(?P<family>[^-_/]+)_(?P<region>[^-/]+)-(?P<name>[^-/]+)-(?P<quality>[^/]+)$")


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when onnxruntime has its CUDA provider, else "cpu"; anything else as given."""
    if device == "auto":
        return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    return device


def _hub_files(source: str, download_root: str) -> tuple[Path, Path]:
    """Download a voice's .onnx and .onnx.json from the Hugging Face hub.

    `source` is either Piper's voice name ("en_US-joe-medium", from rhasspy/piper-voices) or
    "owner/repo/path/in/repo/voice.onnx".
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise EngineError(
            f"Piper source {source!r} is not a local file and huggingface_hub is not installed: "
            "use the path of a .onnx voice file."
        ) from exc
    if match := _VOICE_NAME.match(source):
        repo_id = _PIPER_VOICES_REPO
        lang = f"{match['family']}_{match['region']}"
        filename = f"{match['family']}/{lang}/{match['name']}/{match['quality']}/{source}.onnx"
    else:
        owner, _, rest = source.partition("/")
        name, _, filename = rest.partition("/")
        if not (owner and name and filename.endswith(".onnx")):
            raise EngineError(
                f"Piper source {source!r} is neither a local .onnx file, a Piper voice name like "
                "'en_US-joe-medium', nor 'owner/repo/path/voice.onnx' on the hub."
            )
        repo_id = f"{owner}/{name}"
    cache_dir = download_root or None
    try:
        model = hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=cache_dir)
        config = hf_hub_download(repo_id=repo_id, filename=f"{filename}.json", cache_dir=cache_dir)
    except Exception as exc:  # offline, missing repo or file, auth: the hub client has many of these
        raise EngineError(f"Could not download Piper voice {source!r} from the hub: {exc}") from exc
    return Path(model), Path(config)


def _local_files(source: Path) -> tuple[Path, Path]:
    if source.is_dir():
        # A directory holding exactly one voice is as unambiguous as the file itself.
        models = sorted(source.glob("*.onnx"))
        if len(models) != 1:
            raise EngineError(
                f"Piper directory {str(source)!r} must hold exactly one .onnx voice, found {len(models)}."
            )
        source = models[0]
    config = source.with_name(source.name + ".json")
    if not config.is_file():
        raise EngineError(f"Piper voice {str(source)!r} has no config beside it ({config.name}).")
    return source, config


class PiperEngine:
    """One Piper voice model (.onnx + .onnx.json).

    Source: a local .onnx path (its config is the .onnx.json beside it), a directory holding one,
    Piper's voice name ("en_US-joe-medium", fetched from rhasspy/piper-voices) or
    "owner/repo/path/voice.onnx" on the hub. Construction blocks (download + session setup) and
    raises EngineError when the voice cannot be loaded.

    Thread-safe: onnxruntime sessions allow concurrent run() calls, and Piper guards its shared
    espeak-ng phonemizer with a lock.
    """

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.device = resolve_device(spec.device)
        local = Path(spec.source).expanduser()
        if local.exists():
            model_path, config_path = _local_files(local)
        elif spec.source.endswith(".onnx") and spec.source.startswith(("/", ".", "~")):
            raise EngineError(f"Piper voice file {spec.source!r} does not exist.")
        else:
            model_path, config_path = _hub_files(spec.source, spec.download_root)
        if self.device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise EngineError("device 'cuda' was asked for, but onnxruntime has no CUDA provider here.")
        try:
            cuda = self.device == "cuda"
            self.voice = _load(model_path, config_path, cuda=cuda, threads=spec.cpu_threads)
            # A second session with fewer threads for calls that share the CPU with other work
            # (onnxruntime fixes a session's threads when it is made).
            narrow = spec.shared_threads and spec.shared_threads != spec.cpu_threads and not cuda
            self.shared_voice = (
                _load(model_path, config_path, cuda=cuda, threads=spec.shared_threads)
                if narrow
                else self.voice
            )
        except Exception as exc:  # bad JSON, a missing key, an ONNX file onnxruntime rejects
            raise EngineError(f"Could not load Piper voice {spec.source!r}: {exc}") from exc
        self.name = model_path.name.removesuffix(".onnx")  # e.g. "en_US-joe-medium"
        self.sample_rate: int = self.voice.config.sample_rate
        self._speakers: dict[str, int] = dict(self.voice.config.speaker_id_map)
        self._multi_speaker = self.voice.config.num_speakers > 1
        logger.info("loaded piper %s on %s (%d Hz)", self.name, self.device, self.sample_rate)

    def voices(self) -> list[str]:
        """The model's voice name for a single-speaker model; the speaker names of a multi-speaker one."""
        if self._multi_speaker and self._speakers:
            return sorted(self._speakers, key=self._speakers.__getitem__)
        return [self.name]

    def _speaker_id(self, voice: VoiceSpec) -> int | None:
        if not self._multi_speaker:
            # A single-speaker model has one voice, whatever the registry calls it ("joe",
            # "en_US-joe-medium", or an OpenAI name mapped onto it).
            return None
        if voice.name in self._speakers:
            return self._speakers[voice.name]
        if voice.name == self.name:
            return self.voice.config.default_speaker_id
        raise UnknownVoice(f"Voice {voice.name!r} is not a speaker of Piper model {self.name!r}.")

    def synthesize(
        self, text: str, *, voice: VoiceSpec, speed: float = 1.0, crowded: bool = False
    ) -> Iterator[Samples]:
        """Speak `text`, yielding one float32 chunk per sentence at `sample_rate` as Piper makes it;
        `crowded`, on the session with fewer threads.

        Raises UnknownVoice (before any work) for a speaker a multi-speaker model lacks, and
        EngineError for a speed that is not positive.
        """
        if speed <= 0:
            raise EngineError("speed must be positive.")
        speaker_id = self._speaker_id(voice)
        # Scale the voice's own length_scale rather than replace it: some voices ship a tuned
        # value (e.g. 1.1) that is their natural pace at speed 1.
        config = SynthesisConfig(speaker_id=speaker_id, length_scale=self.voice.config.length_scale / speed)
        return self._chunks(self.shared_voice if crowded else self.voice, text, config)

    def _chunks(self, voice: PiperVoice, text: str, config: SynthesisConfig) -> Iterator[Samples]:
        # A separate generator so that synthesize() validates eagerly, at call time.
        for chunk in voice.synthesize(text, syn_config=config):
            yield np.asarray(chunk.audio_float_array, dtype=np.float32)


def _load(model_path: Path, config_path: Path, *, cuda: bool, threads: int) -> PiperVoice:
    """PiperVoice.load, but with onnxruntime's threads set (`threads` per call; 0: its default, one
    per core), so the pool's threads times the engine's do not oversubscribe the cores."""
    options = onnxruntime.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    cuda_provider = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})
    providers: list[str | tuple[str, dict[str, str]]] = [cuda_provider] if cuda else ["CPUExecutionProvider"]
    with open(config_path, encoding="utf-8") as file:
        config = PiperConfig.from_dict(json.load(file))
    return PiperVoice(
        config=config,
        session=onnxruntime.InferenceSession(str(model_path), sess_options=options, providers=providers),
        espeak_data_dir=Path(ESPEAK_DATA_DIR),
        download_dir=Path.cwd(),
    )
