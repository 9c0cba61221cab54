"""Synthesise the smoke profile's bundled Mandarin clips as a small Common Voice release folder.

Writes ``data/smoke/cv-corpus-smoke/zh-CN/`` in the layout Mozilla distributes (``train.tsv``,
``dev.tsv``, ``test.tsv`` with Common Voice's columns, and ``clips/*.mp3``), so the smoke run goes
through the same loader as a real Common Voice download. Speech comes from ``espeak-ng -v cmn``
at its native 22.05 kHz (so the pipeline's resampling to 16 kHz is exercised), encoded to MP3 by
libsndfile through ``soundfile``. The sentences are our own.

Run from the repo root (needs the Debian package espeak-ng)::

    python labs/whisper-lora/make_smoke_data.py
"""

from __future__ import annotations

import csv
import subprocess
import tempfile
from pathlib import Path

import soundfile as sf

OUT = Path(__file__).parent / "data" / "smoke" / "cv-corpus-smoke" / "zh-CN"
COLUMNS = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents", "locale", "segment"]
SPLITS = {
    "train": [
        "今天天气很好，我们去公园散步。",
        "请把窗户打开，房间里有点热。",
        "我每天早上七点起床。",
        "这本书讲的是中国的历史。",
        "他在大学学习计算机。",
        "明天下午三点开会。",
    ],
    "dev": ["火车站离这里不远。", "妈妈做的饺子非常好吃。", "我们周末一起去看电影吧。"],
    "test": ["这个问题需要认真思考。", "春天来了，花都开了。", "谢谢你的帮助。"],
}


def synthesise(text: str, mp3: Path) -> int:
    """Speak ``text`` with espeak-ng's Mandarin voice into ``mp3``; return the sample rate in Hz."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        subprocess.run(["espeak-ng", "-v", "cmn", "-s", "150", "-w", wav.name, text], check=True)
        samples, rate = sf.read(wav.name)
    sf.write(mp3, samples, rate, format="MP3")
    return rate


def main() -> None:
    (OUT / "clips").mkdir(parents=True, exist_ok=True)
    n = 0
    for split, sentences in SPLITS.items():
        rows = []
        for sentence in sentences:
            n += 1
            name = f"common_voice_zh-CN_smoke_{n:03d}.mp3"
            rate = synthesise(sentence, OUT / "clips" / name)
            rows.append(
                {
                    "client_id": f"smoke-speaker-{n % 3}",
                    "path": name,
                    "sentence": sentence,
                    "up_votes": 2,
                    "down_votes": 0,
                    "age": "",
                    "gender": "",
                    "accents": "",
                    "locale": "zh-CN",
                    "segment": "",
                }
            )
        with (OUT / f"{split}.tsv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, COLUMNS, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        print(f"{split}: {len(rows)} clips at {rate} Hz")


if __name__ == "__main__":
    main()
