"""Benchmark the full profile's training step on random weights (``invoke bench --lab chatglm-private-data``).

GLM-4-9B's architecture with random weights loaded the lab's way (4-bit NF4 + double quant, LoRA
r=16 on q/k/v, ``Trainer`` at the full profile's settings): ``labkit.lab.bench.glm_bench``, on rows of
``TOKENS`` tokens (a generated question and its answer of a paragraph or a few; the profile allows
up to 512 + 1,536).

    python labs/chatglm-private-data/bench.py --batch-sizes 4,8,16 --steps 5
    python labs/chatglm-private-data/bench.py --arch tiny --device cpu --steps 1   # the CPU self-test
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

from labkit.lab.bench import glm_bench, main

TOKENS = 512

if __name__ == "__main__":
    main("chatglm-private-data", partial(glm_bench, "chatglm-private-data", TOKENS))
