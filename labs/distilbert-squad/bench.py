"""Benchmark the full profile's training step on random weights (``invoke bench --lab distilbert-squad``).

``distilbert-base-uncased``'s architecture (its config.json: dim 768, 6 layers, 12 heads, hidden
3072, vocabulary 30,522) with a span (start/end) head, trained with ``Trainer`` at the full
profile's settings (fp16 on CUDA) on random 384-token windows, the course's ``max_length``.

    python labs/distilbert-squad/bench.py --batch-sizes 16,32,64 --steps 5
    python labs/distilbert-squad/bench.py --arch tiny --device cpu --steps 1   # the CPU self-test
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import torch
from transformers import DistilBertConfig, DistilBertForQuestionAnswering

from labkit.config import get_lab, load_profile
from labkit.lab.bench import main, trainer_bench

#: distilbert-base-uncased config.json (the full profile's model); ``tiny`` is the CPU self-test's.
ARCHS = {
    "full": dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072),
    "tiny": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64),
}
VOCAB = 30522


def make(arch: str, device: str):
    cfg = load_profile(get_lab("distilbert-squad"), "full")[0]
    seq = cfg["qa"]["max_length"] if arch == "full" else 64
    config = DistilBertConfig(vocab_size=VOCAB, **ARCHS[arch])

    def build():
        torch.manual_seed(0)
        return DistilBertForQuestionAnswering(config)

    shapes = {
        "input_ids": ((seq,), torch.long, VOCAB),
        "attention_mask": ((seq,), torch.long, 2),
        "start_positions": ((), torch.long, seq),
        "end_positions": ((), torch.long, seq),
    }
    what = f"distilbert-base-uncased architecture ({arch}), random weights, span head, windows of {seq}, Trainer"
    return trainer_bench(what, build, cfg["training"], shapes, device, tokens_per_sample=seq)


if __name__ == "__main__":
    main("distilbert-squad", make)
