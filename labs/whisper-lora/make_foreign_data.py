"""Synthesise the lab's second ("foreign") dataset: other Mandarin clips in a Common Voice folder.

``tests/test_labs.py`` runs the smoke profile on it (``lab.yaml`` ``foreign_data``) to show that the
verdict holds off the bundled path: the checks that count the bundled clips are skipped, the
mechanics checks still pass, and ``learning_rate=0`` still fails. So it is made differently from
``make_smoke_data.py`` on purpose:

* other sentences (numbers, a question, a list), none shared with the bundled clips;
* other size and balance: 3 train + 2 dev clips to train on (5, not 9) and 4 test clips (not 3);
* other voices: espeak-ng's Mandarin voice with other speeds, pitches and a female variant;
* other files: FLAC, not MP3, at 16 kHz (no resampling needed) and two at 8 kHz (upsampled);
* Common Voice 17's TSV columns (``sentence_id``, ``sentence_domain``, ``variant``), in its order.

Run from the repo root with the lab's environment (needs the Debian package espeak-ng)::

    .venvs/whisper-lora/bin/python labs/whisper-lora/make_foreign_data.py

espeak-ng is deterministic, so a rerun rewrites the same TSVs; the FLAC bytes may differ between
libsndfile versions, the audio does not.
"""

from __future__ import annotations

import csv
import subprocess
import tempfile
from pathlib import Path

import soundfile as sf
import soxr

OUT = Path(__file__).parent / "data" / "foreign" / "cv-corpus-foreign" / "zh-CN"
#: Common Voice 17.0's validated/train/dev/test TSV header.
COLUMNS = [
    "client_id",
    "path",
    "sentence_id",
    "sentence",
    "sentence_domain",
    "up_votes",
    "down_votes",
    "age",
    "gender",
    "accents",
    "variant",
    "locale",
    "segment",
]
#: (sentence, espeak-ng voice, words per minute, pitch 0-99, sample rate of the written file)
SPLITS = {
    "train": [
        ("图书馆每天晚上九点关门。", "cmn", 140, 40, 16000),
        ("你喜欢喝茶还是喝咖啡？", "cmn+f3", 165, 60, 16000),
        ("这条河从西边流到东边。", "cmn", 125, 50, 8000),
    ],
    "dev": [
        ("我买了三个苹果和两斤香蕉。", "cmn+f2", 150, 70, 16000),
        ("下雨的时候路上车很多。", "cmn", 170, 35, 16000),
    ],
    "test": [
        ("他的弟弟今年十二岁。", "cmn+f3", 135, 55, 16000),
        ("北京的冬天又冷又干。", "cmn", 155, 45, 8000),
        ("请在门口等我五分钟。", "cmn+f2", 145, 65, 16000),
        ("老师说明天没有考试。", "cmn", 160, 50, 16000),
    ],
}


def synthesise(text: str, voice: str, speed: int, pitch: int, rate: int, flac: Path) -> float:
    """Speak ``text`` with espeak-ng into a mono FLAC at ``rate`` Hz; return its duration in seconds."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", wav.name, text],
            check=True,
        )
        samples, native = sf.read(wav.name, dtype="float32")
    samples = soxr.resample(samples, native, rate, quality="HQ")
    sf.write(flac, samples, rate, format="FLAC", subtype="PCM_16")
    return len(samples) / rate


def main() -> None:
    (OUT / "clips").mkdir(parents=True, exist_ok=True)
    n = 0
    for split, clips in SPLITS.items():
        rows = []
        for sentence, voice, speed, pitch, rate in clips:
            n += 1
            name = f"common_voice_zh-CN_foreign_{n:02d}.flac"
            seconds = synthesise(sentence, voice, speed, pitch, rate, OUT / "clips" / name)
            rows.append(
                {
                    "client_id": f"foreign-{voice}",
                    "path": name,
                    "sentence_id": f"foreign-sentence-{n:02d}",
                    "sentence": sentence,
                    "sentence_domain": "",
                    "up_votes": 3,
                    "down_votes": 1,
                    "age": "",
                    "gender": "",
                    "accents": "",
                    "variant": "",
                    "locale": "zh-CN",
                    "segment": "",
                }
            )
            print(f"{split}: {name} {rate} Hz {seconds:.2f} s  {sentence}")
        with (OUT / f"{split}.tsv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, COLUMNS, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
