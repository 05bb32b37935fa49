"""Decode, resample and encode audio with PyAV (FFmpeg).

Everything here blocks (FFmpeg does the work in C, with the GIL released for most of it), so the
services call it through `workers.run`, never on the event loop. No Django here: failures raise
`AudioError`, which the caller maps to its own 400.
"""

from __future__ import annotations

import io
import itertools
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Final, cast

import av
import av.error
import numpy as np

from registry.speech.engines.base import Samples

__all__ = [
    "FORMATS",
    "G711_RATE",
    "OPENAI_PCM_RATE",
    "Pcm",
    "AudioError",
    "AudioInput",
    "Resampler",
    "StreamEncoder",
    "decode",
    "encode_whole",
    "probe_duration",
    "from_s16le",
    "g711_decode",
    "g711_encode",
    "resample",
    "s16le",
    "seconds",
    "wav_stream_header",
]

FORMATS: Final[dict[str, str]] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # Ogg-encapsulated Opus
    "aac": "audio/aac",  # ADTS frames
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",  # raw s16le mono at OPENAI_PCM_RATE, no header
}
"""Response formats of /v1/audio/speech and the content types OpenAI serves them with."""

OPENAI_PCM_RATE: Final = 24_000
"""OpenAI documents `pcm` as 24 kHz 16-bit little-endian mono; we also default the others to it."""

# Demuxers we accept uploads in (FFmpeg names; "mov" covers mp4/m4a, "matroska" covers webm).
# A whitelist keeps FFmpeg's more adventurous demuxers (playlists, concat scripts, images...) away
# from untrusted bytes.
_INPUT_FORMATS: Final = "wav,w64,mp3,mov,mp4,m4a,ogg,matroska,webm,flac,aac,aiff,caf,mpeg"

# What PyAV muxes each response format into, with the encoder and the muxer options that make the
# output a plain, concatenable stream that a player can start on before it ends.
_CONTAINERS: Final[dict[str, tuple[str, str, dict[str, str]]]] = {
    # No ID3 tag and no Xing/LAME header: just MPEG frames, like a radio stream.
    "mp3": ("mp3", "libmp3lame", {"id3v2_version": "0", "write_xing": "0"}),
    "aac": ("adts", "aac", {}),
    # Ogg's default page duration is 1 s, which would hold a whole sentence back; 100 ms pages
    # cost a few header bytes each.
    "opus": ("ogg", "libopus", {"page_duration": "100000"}),
    "flac": ("flac", "flac", {}),
}

# Bitrates for 24 kHz mono speech, set here alone: at these a listener hears no codec (mp3 at
# FFmpeg's default for this rate, 32 kbps, is audibly swirly).
BITRATES: Final[dict[str, int]] = {"mp3": 64_000, "aac": 64_000, "opus": 32_000}

_WAV_STREAMING_SIZE: Final = 0xFFFFFFFF  # "unknown length": what streaming WAV writers use
_UNDECODABLE: Final = "The audio file could not be decoded: it is corrupt or not a supported format."


AudioInput = bytes | bytearray | memoryview | BinaryIO
"""Encoded audio: the bytes, or a seekable binary file (an upload) that FFmpeg reads in place."""


@dataclass(frozen=True)
class Pcm:
    """Raw mono samples and their rate: audio that needs no decoding (a Realtime input buffer)."""

    samples: Samples
    rate: int


class AudioError(Exception):
    """The audio could not be decoded or encoded; the message is safe to show to a client."""


def seconds(samples: Samples, rate: int) -> float:
    """Duration of `samples` at `rate` Hz."""
    return len(samples) / rate


def _frame(samples: Samples, rate: int, pts: int) -> av.AudioFrame:
    """Wrap mono float32 samples in a packed "flt" frame; pts lets the resampler track time."""
    data = np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(data, format="flt", layout="mono")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    return frame


def _open_input(data: AudioInput) -> av.container.InputContainer:
    if isinstance(data, bytes | bytearray | memoryview):
        source: BinaryIO = io.BytesIO(data)
    else:
        source = data
        source.seek(0)  # an upload may have been read (sniffed, hashed) before
    return av.open(source, mode="r", container_options={"format_whitelist": _INPUT_FORMATS})


def _planes(frames: list[av.AudioFrame]) -> list[Samples]:
    # Packed mono "flt" frames are (1, n) arrays.
    return [frame.to_ndarray().reshape(-1).astype(np.float32, copy=False) for frame in frames]


def _concat(parts: list[Samples]) -> Samples:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def decode(
    data: AudioInput, *, sample_rate: int = 16_000, max_seconds: float | None = None
) -> tuple[Samples, float]:
    """Decode an uploaded file (wav, mp3, m4a, ogg/opus, webm, flac...) to mono float32.

    Returns the samples at `sample_rate` and their duration in seconds. Raises AudioError for
    empty input, anything that is not audio FFmpeg can read, corrupt data, a file without an
    audio stream, no decoded samples, or (when `max_seconds` is given) audio longer than that,
    checked while decoding so a small, highly compressed file cannot fill the memory.
    """
    if isinstance(data, bytes | bytearray | memoryview) and not len(data):
        raise AudioError("The audio file is empty and could not be decoded.")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    parts: list[Samples] = []
    total = 0
    limit = None if max_seconds is None else int(max_seconds * sample_rate)
    try:
        with _open_input(data) as container:
            if not container.streams.audio:
                raise AudioError("The file has no audio stream and could not be decoded.")
            stream = container.streams.audio[0]
            # Lazily, so the length limit stops the decoder itself; None flushes the resampler.
            for frame in itertools.chain(container.decode(stream), [None]):
                for chunk in _planes(resampler.resample(frame)):
                    parts.append(chunk)
                    total += len(chunk)
                if limit is not None and total > limit:
                    raise AudioError(f"The audio is longer than the limit of {max_seconds:g} seconds.")
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, UnicodeDecodeError) as exc:
        # FFmpeg's own messages ("Invalid data found when processing input") say nothing useful
        # to a client and may name internals; keep them for the logs through the cause chain.
        raise AudioError(_UNDECODABLE) from exc
    samples = _concat(parts)
    if not len(samples):
        raise AudioError("The audio file contains no samples and could not be decoded.")
    return samples, seconds(samples, sample_rate)


def probe_duration(data: AudioInput) -> float | None:
    """The duration the container declares, in seconds, without decoding; None when it declares none.

    Cheap (headers only), but only as honest as the file: use `decode` for the real length.
    """
    try:
        with _open_input(data) as container:
            if container.duration is not None:
                return container.duration / av.time_base
            for stream in container.streams.audio:
                if stream.duration is not None and stream.time_base is not None:
                    return float(stream.duration * stream.time_base)
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise AudioError(_UNDECODABLE) from exc
    return None


def resample(samples: Samples, from_rate: int, to_rate: int) -> Samples:
    """Resample mono float32 audio with FFmpeg's resampler (band-limited, unlike linear interpolation)."""
    if from_rate == to_rate or not len(samples):
        return np.asarray(samples, dtype=np.float32)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=to_rate)
    frames = resampler.resample(_frame(samples, from_rate, 0)) + resampler.resample(None)
    return _concat(_planes(frames))


def s16le(samples: Samples) -> bytes:
    """Float samples as raw 16-bit little-endian PCM (what `pcm` and a wav body carry)."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def from_s16le(data: bytes) -> Samples:
    """Raw 16-bit little-endian PCM (a Realtime client's frames) as float samples. Raises AudioError."""
    if len(data) % 2:
        raise AudioError("16-bit PCM audio must have an even number of bytes.")
    return (np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0).astype(np.float32)


class Resampler:
    """Resample a stream of mono float32 chunks with one FFmpeg resampler, so chunk edges are seamless.

    `push()` returns what is ready (possibly empty); `flush()` the rest, once. Not thread-safe.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=to_rate)
        self._pts = 0

    def push(self, samples: Samples) -> Samples:
        if self.from_rate == self.to_rate:
            return np.asarray(samples, dtype=np.float32)
        if not len(samples):
            return np.zeros(0, dtype=np.float32)
        frame = _frame(samples, self.from_rate, self._pts)
        self._pts += len(samples)
        return _concat(_planes(self._resampler.resample(frame)))

    def flush(self) -> Samples:
        if self.from_rate == self.to_rate:
            return np.zeros(0, dtype=np.float32)
        return _concat(_planes(self._resampler.resample(None)))


def wav_stream_header(rate: int) -> bytes:
    """The header of a wav stream whose length is not known yet (sizes say "unknown")."""
    return _wav_header(rate=rate, data_size=_WAV_STREAMING_SIZE)


def _wav_header(*, rate: int, data_size: int) -> bytes:
    """A 44-byte PCM WAV header for s16le mono; sizes saturate at 0xFFFFFFFF ("unknown")."""
    riff_size = min(data_size + 36, _WAV_STREAMING_SIZE)
    return (
        struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE")
        + struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16)
        + struct.pack("<4sI", b"data", min(data_size, _WAV_STREAMING_SIZE))
    )


class _Sink:
    """A write-only file object that collects what the muxer writes until drained.

    It has no seek(): PyAV then tells FFmpeg the output is not seekable, so muxers neither go
    back to patch headers at the end nor hold data for it, and FFmpeg flushes its I/O buffer after
    every packet (the default for unseekable outputs). That is what makes the output a stream.
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def _open_output(
    sink: _Sink | io.BytesIO, fmt: str, rate: int
) -> tuple[av.container.OutputContainer, av.audio.stream.AudioStream]:
    container_format, codec, options = _CONTAINERS[fmt]
    container = av.open(sink, mode="w", format=container_format, container_options=options)
    stream = container.add_stream(codec, rate=rate, layout="mono")
    if not isinstance(stream, av.audio.stream.AudioStream):
        raise AudioError(f"FFmpeg's {codec} is not an audio codec.")
    if fmt in BITRATES:
        stream.bit_rate = BITRATES[fmt]
    return container, stream


class StreamEncoder:
    """Encode mono float32 audio, chunk by chunk, into one of `FORMATS`, returning bytes as they are ready.

    `encode()` may return b"" while the codec fills a frame; `close()` flushes the rest and must
    be called once at the end. wav is s16le behind a header whose sizes say "unknown" (0xFFFFFFFF),
    because the length is not known when the first bytes leave; pcm is raw s16le. Not thread-safe:
    one encoder per response. Raises AudioError for an unknown format.
    """

    def __init__(self, fmt: str, *, input_rate: int, output_rate: int | None = None) -> None:
        if fmt not in FORMATS:
            raise AudioError(f"Unknown audio format {fmt!r}; expected one of {', '.join(FORMATS)}.")
        self.format = fmt
        self.content_type = FORMATS[fmt]
        self.input_rate = input_rate
        # pcm has no header to carry a rate, so it is always what OpenAI documents.
        self.output_rate = OPENAI_PCM_RATE if fmt == "pcm" or output_rate is None else output_rate
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.output_rate)
        self._pts = 0  # input samples seen, the timeline the resampler expects
        self._closed = False
        self._header_sent = False
        self._sink: _Sink | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: av.audio.stream.AudioStream | None = None
        if fmt in _CONTAINERS:
            self._sink = _Sink()
            self._container, self._stream = _open_output(self._sink, fmt, self.output_rate)

    def encode(self, samples: Samples) -> bytes:
        """Add `samples` (mono float32 at `input_rate`); returns the bytes that are ready, possibly b""."""
        if self._closed:
            raise AudioError("The encoder is closed.")
        if not len(samples):
            return self._header()
        frame = _frame(samples, self.input_rate, self._pts)
        self._pts += len(samples)
        return self._write(self._resampler.resample(frame))

    def close(self) -> bytes:
        """Flush the resampler, the codec and the container; returns the last bytes."""
        if self._closed:
            return b""
        out = self._write(self._resampler.resample(None))
        self._closed = True
        if self._container is None or self._stream is None or self._sink is None:
            return out
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
        except av.error.FFmpegError as exc:
            raise AudioError(f"Could not finish the {self.format} stream.") from exc
        return out + self._sink.drain()

    def _header(self) -> bytes:
        if self.format != "wav" or self._header_sent:
            return b""
        self._header_sent = True
        return _wav_header(rate=self.output_rate, data_size=_WAV_STREAMING_SIZE)

    def _write(self, frames: list[av.AudioFrame]) -> bytes:
        if self._container is None or self._stream is None or self._sink is None:
            return self._header() + b"".join(s16le(chunk) for chunk in _planes(frames))
        try:
            for frame in frames:
                # The codec context re-chunks to the codec's frame size (1152 for mp3, 1024 for aac,
                # 960 for opus at 48 kHz...) and converts to its sample format, so any size goes in.
                self._container.mux(self._stream.encode(frame))
        except av.error.FFmpegError as exc:
            raise AudioError(f"Could not encode the audio as {self.format}.") from exc
        return self._sink.drain()


def encode_whole(samples: Samples, fmt: str, *, input_rate: int, output_rate: int | None = None) -> bytes:
    """Encode a complete clip into a file whose header carries its real length (a wav's sizes, a
    flac's total samples), which readers such as libsndfile need. Raises AudioError."""
    if fmt not in FORMATS:
        raise AudioError(f"Unknown audio format {fmt!r}; expected one of {', '.join(FORMATS)}.")
    rate = OPENAI_PCM_RATE if fmt == "pcm" or output_rate is None else output_rate
    resampled = resample(samples, input_rate, rate)
    if fmt not in _CONTAINERS:
        pcm = s16le(resampled)
        return pcm if fmt == "pcm" else _wav_header(rate=rate, data_size=len(pcm)) + pcm
    # A seekable output: the muxer goes back at the end to write the lengths into the header.
    buffer = io.BytesIO()
    try:
        container, stream = _open_output(buffer, fmt, rate)
        with container:
            if len(resampled):
                container.mux(stream.encode(_frame(resampled, rate, 0)))
            container.mux(stream.encode(None))
    except av.error.FFmpegError as exc:
        raise AudioError(f"Could not encode the audio as {fmt}.") from exc
    return buffer.getvalue()


G711_RATE: Final = 8_000
_G711_CODECS: Final = {"pcmu": "pcm_mulaw", "pcma": "pcm_alaw"}


def g711_encode(samples: Samples, law: str) -> bytes:
    """8 kHz float samples as G.711 bytes (`law`: "pcmu" for mu-law, "pcma" for A-law), the
    telephony formats of a Realtime session. One byte per sample: chunks concatenate."""
    if not len(samples):
        return b""
    codec = cast(av.AudioCodecContext, av.CodecContext.create(_G711_CODECS[law], "w"))
    codec.sample_rate, codec.layout, codec.format = G711_RATE, "mono", "s16"
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = G711_RATE
    return b"".join(bytes(packet) for packet in codec.encode(frame))


def g711_decode(data: bytes, law: str) -> Samples:
    """G.711 bytes (mu-law "pcmu" or A-law "pcma") as 8 kHz float samples."""
    if not data:
        return np.zeros(0, dtype=np.float32)
    codec = cast(av.AudioCodecContext, av.CodecContext.create(_G711_CODECS[law], "r"))
    codec.sample_rate, codec.layout = G711_RATE, "mono"
    frames = codec.decode(av.Packet(bytes(data)))
    pcm = np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames])
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)
