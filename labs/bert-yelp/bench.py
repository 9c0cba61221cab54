"""Benchmark the full profile's training step on random weights (``invoke bench --lab bert-yelp``).

``bert-base-cased``'s architecture (its config.json: hidden 768, 12 layers, 12 heads, FFN 3072,
vocabulary 28,996, 512 positions) with a 5-class head, full fine-tuning with ``Trainer`` at the
full profile's settings, on random reviews padded to ``max_length`` (512) tokens as the course pads.

    python labs/bert-yelp/bench.py --batch-sizes 8,16,32 --steps 5
    python labs/bert-yelp/bench.py --arch tiny --device cpu --steps 1   # the CPU self-test
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import torch
from transformers import BertConfig, BertForSequenceClassification

from labkit.config import get_lab, load_profile
from labkit.lab.bench import main, trainer_bench

#: bert-base-cased config.json (the full profile's model); ``tiny`` is the CPU self-test's.
ARCHS = {
    "full": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
}
VOCAB = 28996


def make(arch: str, device: str):
    cfg = load_profile(get_lab("bert-yelp"), "full")[0]
    seq = cfg["max_length"] if arch == "full" else 64
    config = BertConfig(vocab_size=VOCAB, max_position_embeddings=512, num_labels=5, **ARCHS[arch])

    def build():
        torch.manual_seed(0)
        return BertForSequenceClassification(config)

    shapes = {
        "input_ids": ((seq,), torch.long, VOCAB),
        "attention_mask": ((seq,), torch.long, 2),
        "labels": ((), torch.long, 5),
    }
    what = (
        f"bert-base-cased architecture ({arch}), random weights, 5 classes, sequence {seq}, Trainer, full fine-tuning"
    )
    return trainer_bench(what, build, cfg["training"], shapes, device, tokens_per_sample=seq)


if __name__ == "__main__":
    main("bert-yelp", make)
