"""Audio decoding for the labs: soundfile (libsndfile, bundled in its wheel) and soxr resampling.

Both come from PyPI as wheels that carry their native code, so decoding needs no FFmpeg and no
system library. The soundfile 0.14 wheel's libsndfile reads WAV, FLAC, OGG (Vorbis, Opus), MP3 and
the other formats ``soundfile.available_formats()`` lists; AAC/M4A, MP4, WebM and WMA are not among
them, and a file in one of those gets one line saying how to convert it.

Imported by lab code only (it needs numpy, soundfile and soxr); the host tooling never imports it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from labkit.errors import LabError

#: Whisper's input rate (Radford et al. 2022, "Robust Speech Recognition via Large-Scale Weak
#: Supervision", section 2.2: "All audio is re-sampled to 16,000 Hz").
WHISPER_RATE = 16_000

#: Containers libsndfile does not read (FFmpeg does); a file with one of these suffixes gets the
#: conversion command instead of libsndfile's "Format not recognised".
NEEDS_FFMPEG = {".m4a": "M4A/AAC", ".aac": "AAC", ".mp4": "MP4", ".webm": "WebM", ".wma": "WMA", ".amr": "AMR"}


@dataclass(frozen=True)
class Decoded:
    """A decoded clip.

    Attributes:
        array: mono samples, float32 in [-1, 1], shape ``(samples,)``, at ``sampling_rate``.
        sampling_rate: rate of ``array`` in Hz (the requested one).
        source_rate: the file's own rate in Hz, before resampling.
        duration_s: length in seconds.
    """

    array: np.ndarray
    sampling_rate: int
    source_rate: int
    duration_s: float


def decode(source: str | Path | bytes | dict, sampling_rate: int | None = WHISPER_RATE, name: str = "") -> Decoded:
    """Decode an audio file: a path, its bytes, or ``datasets``' ``Audio(decode=False)`` dict (``path``, ``bytes``).

    Channels are averaged to mono; ``sampling_rate`` (Hz) resamples with soxr's high-quality filter,
    ``None`` keeps the file's rate.

    Raises:
        LabError: the file does not exist, is empty, is not audio, or is in a container libsndfile
            cannot read (names the file and says how to convert it).
    """
    if isinstance(source, dict):
        name = name or str(source.get("path") or "")
        source = source["bytes"] if source.get("bytes") else source.get("path")
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or str(path)
        if not path.is_file():
            raise LabError(f"audio file {name} not found")
        handle = path
    elif isinstance(source, bytes):
        handle = io.BytesIO(source)
    else:
        raise LabError(f"audio {name or '?'}: expected a path or bytes, got {type(source).__name__}")
    suffix = Path(name).suffix.lower()
    try:
        array, rate = soundfile.read(handle, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        if suffix in NEEDS_FFMPEG:
            raise LabError(
                f"{name}: {NEEDS_FFMPEG[suffix]} is not a format libsndfile reads; convert it first, e.g. "
                f"`ffmpeg -i {name} {Path(name).with_suffix('.flac')}`"
            ) from exc
        raise LabError(f"{name or 'audio'} is not an audio file libsndfile can read ({exc})") from exc
    if array.shape[0] == 0:
        raise LabError(f"{name or 'audio'} holds no audio samples")
    mono = array.mean(axis=1)
    target = sampling_rate or rate
    if target != rate:
        mono = soxr.resample(mono, rate, target, quality="HQ").astype(np.float32)
    return Decoded(mono, int(target), int(rate), round(array.shape[0] / rate, 3))
