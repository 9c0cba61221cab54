"""Write the smoke profile's bundled ad-copy rows in AdvertiseGen's shape, written here (none copied).

AdvertiseGen (``HasturOfficial/adgen``) pairs a ``content`` attribute string such as
``类型#裙*颜色#蓝色*风格#清新`` (key#value pairs joined by ``*``) with a ``summary``: a short Chinese
ad copy for the garment. These rows draw attributes from small lists and phrase the copy from
templates keyed on them, with a fixed seed. Run from the repo root:

    python labs/chatglm-qlora/make_smoke_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).parent / "data" / "smoke"
KINDS = {"裙": "连衣裙", "裤": "阔腿裤", "上衣": "衬衫", "外套": "风衣"}
COLORS = {"蓝色": "清爽的蓝色", "白色": "干净的白色", "黑色": "利落的黑色", "红色": "热烈的红色", "绿色": "自然的绿色"}
STYLES = {"清新": "清新自然", "简约": "简约大方", "复古": "复古优雅", "休闲": "休闲随性", "文艺": "文艺温柔"}
MATERIALS = {"棉": "柔软的棉质面料", "雪纺": "轻盈的雪纺面料", "牛仔": "耐穿的牛仔面料", "针织": "舒适的针织面料"}
PATTERNS = {"条纹": "经典的条纹图案", "印花": "精致的印花", "纯色": "纯色设计", "格子": "俏皮的格子图案"}
FITS = {"宽松": "宽松的版型", "修身": "修身的剪裁", "直筒": "直筒的廓形"}
OPENERS = ["这款{kind}", "这件{kind}", "一款{kind}"]
ENDINGS = ["穿出好心情。", "轻松展现你的魅力。", "日常出行都很合适。", "让你在人群中脱颖而出。"]


def row(rng: random.Random) -> dict:
    kind = rng.choice(list(KINDS))
    color, style, material = rng.choice(list(COLORS)), rng.choice(list(STYLES)), rng.choice(list(MATERIALS))
    pattern, fit = rng.choice(list(PATTERNS)), rng.choice(list(FITS))
    pairs = [("类型", kind), ("颜色", color), ("风格", style), ("材质", material), ("图案", pattern), ("版型", fit)]
    keep = [pairs[0]] + rng.sample(pairs[1:], rng.randint(2, 4))
    content = "*".join(f"{k}#{v}" for k, v in keep)
    parts = [rng.choice(OPENERS).format(kind=KINDS[kind]) + "，"]
    phrases = {
        "颜色": f"选用{COLORS[color]}",
        "风格": f"整体风格{STYLES[style]}",
        "材质": f"采用{MATERIALS[material]}",
        "图案": f"点缀{PATTERNS[pattern]}",
        "版型": f"搭配{FITS[fit]}",
    }
    parts.append("，".join(phrases[k] for k, _ in keep[1:]) + "，")
    parts.append(rng.choice(ENDINGS))
    return {"content": content, "summary": "".join(parts)}


def main() -> None:
    rng = random.Random(8)  # the course's seed
    rows = [row(rng) for _ in range(320)]
    OUT.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:288]), ("validation", rows[288:])):
        with (OUT / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
    print(f"wrote 288 train and 32 validation rows to {OUT}")


if __name__ == "__main__":
    main()
