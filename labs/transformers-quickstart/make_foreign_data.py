"""Write the audio clip of the lab's second set of inputs (``data/foreign/``), with the standard library.

``data/foreign/inputs.yaml`` (written by hand) holds other texts than the bundled ``data/inputs.yaml``:
other counts, languages and punctuation, a question whose answer ends its context. Its clip is made
unlike the bundled one (espeak-ng Mandarin speech, 22.05 kHz MP3): a 1.2 s, 8 kHz, 16-bit mono WAV
of five rising "syllables" (tones with a voice-like set of harmonics, fixed-seed noise between), so
the run also resamples 8 kHz to Whisper's 16 kHz. Run from the repo root:

    python labs/transformers-quickstart/make_foreign_data.py
"""

from __future__ import annotations

import math
import random
import struct
import wave
from pathlib import Path

OUT = Path(__file__).parent / "data" / "foreign" / "tones_8k.wav"
RATE = 8000  # Hz
SECONDS = 1.2


def samples(seed: int = 7) -> list[int]:
    """16-bit sample values: five 0.18 s syllables (fundamental 140-220 Hz, 3 harmonics) and noise."""
    rng = random.Random(seed)
    out = []
    for n in range(int(RATE * SECONDS)):
        t = n / RATE
        syllable, within = divmod(t, 0.24)
        value = rng.gauss(0.0, 0.01)
        if within < 0.18 and syllable < 5:
            f0 = 140 + 20 * syllable + 60 * within  # a rising pitch in each syllable
            envelope = math.sin(math.pi * within / 0.18)
            value += envelope * sum(0.3 / k * math.sin(2 * math.pi * k * f0 * t) for k in (1, 2, 3))
        out.append(max(-32768, min(32767, round(value * 32767))))
    return out


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(OUT), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes(b"".join(struct.pack("<h", v) for v in samples()))
    print(f"{OUT}: {SECONDS} s at {RATE} Hz")


if __name__ == "__main__":
    main()
