"""Benchmark every method's training step on roberta-base's architecture with random weights
(``invoke bench --lab peft-methods``): peak memory and samples/s per method, one row each.

``FacebookAI/roberta-base``'s config.json (hidden 768, 12 layers, 12 heads, FFN 3072, vocabulary
50,265, 514 positions) with a 2-class head; each method attached by ``run.attach`` exactly as the
full profile does (QLoRA: the random weights saved once and loaded in 4-bit NF4), ``Trainer`` at
the full profile's ``training`` settings, on random sentences of ``max_length`` (128) tokens, so
nothing is downloaded. The methods are those of the environment it runs in: PEFT's and full
fine-tuning in the default one, Houlsby adapters and UniPELT in the adapters variant's
(``.venvs/peft-methods-adapters/bin/python labs/peft-methods/bench.py``). Prompt tuning with text
initialisation is benchmarked with random initialisation (the same parameters; no tokenizer here).
``--arch tiny`` takes the methods' settings from the smoke profile (sized for its hidden size 64).

    python labs/peft-methods/bench.py --batch-sizes 16,32,64 --steps 5
    python labs/peft-methods/bench.py --arch tiny --device cpu --steps 1   # the CPU self-test
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import importlib.util

import torch
from transformers import RobertaConfig, RobertaForSequenceClassification, Trainer, TrainingArguments

from labkit.config import get_lab, load_profile
from labkit.lab.bench import Bench, RandomTokens, bench_training, main, non_embedding_params, scratch_dir, train_steps

from methods import selected_methods
from run import attach, load_base

#: roberta-base's config.json (the full profile's model); ``tiny`` is the CPU self-test's.
ARCHS = {
    "full": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
}
VOCAB = 50265


def make(arch: str, device: str) -> Bench:
    variant = "adapters" if importlib.util.find_spec("adapters") else None
    lab = get_lab("peft-methods")
    cfg = load_profile(lab, "adapters-full" if variant else "full")[0]
    if arch == "tiny":  # the smoke profile's method settings, sized for hidden 64 (the full profile's training)
        cfg["methods"] = load_profile(lab, "smoke")[0]["methods"]
    names = selected_methods(cfg, variant)
    seq = cfg["max_length"] if arch == "full" else 32
    config = RobertaConfig(
        vocab_size=VOCAB,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=2,
        **ARCHS[arch],
    )
    folder = scratch_dir()  # the random weights, for QLoRA's 4-bit load
    torch.manual_seed(0)
    RobertaForSequenceClassification(config).save_pretrained(folder)
    with torch.device("meta"):
        params = non_embedding_params(RobertaForSequenceClassification(config))
    base = {"path": folder, "revision": None, "label_names": ["negative", "positive"], "dropout": None}

    def step(batch: int, n: int, name: str) -> tuple[list[float], dict]:
        method = cfg["methods"][name]
        if method["kind"] == "prompt_tuning":
            method = dict(method, config=dict(method["config"], prompt_tuning_init="RANDOM"))
        quantization = method["quantization"] if method["kind"] == "qlora" else None
        model = load_base(base, device, method["kind"], quantization)
        model = attach(name, method, model, base, cfg["training"]["gradient_checkpointing"])
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        training = dict(bench_training(cfg["training"], batch, n, device), learning_rate=method["learning_rate"])
        args = TrainingArguments(output_dir=scratch_dir(), **training)
        shapes = {
            "input_ids": ((seq,), torch.long, VOCAB),
            "attention_mask": ((seq,), torch.long, 2),
            "labels": ((), torch.long, 2),
        }
        times, extra = train_steps(
            Trainer(model=model, args=args, train_dataset=RandomTokens(batch * n, shapes)), device
        )
        return times, {**extra, "trainable": trainable}

    return Bench(
        what=f"roberta-base architecture ({arch}), random weights, 2 classes, {seq} tokens, Trainer, "
        f"{len(names)} methods ({'adapters variant' if variant else 'default variant'})",
        setting="per_device_train_batch_size",
        default_batch=int(cfg["training"]["per_device_train_batch_size"]),
        tokens_per_sample=seq,
        flops_per_token={n: (6.0 if cfg["methods"][n]["kind"] == "full" else 4.0) * params for n in names},
        flops_note=f"full fine-tuning: 6 x {params:,} non-embedding parameters per token (Kaplan et al. 2020, "
        "sec. 2.1); the methods with a frozen base skip the base's weight gradients: 4 x (forward 2, input "
        "gradients 2); virtual tokens and adapter layers are not counted",
        step=step,
        variants=tuple(names),
    )


if __name__ == "__main__":
    main("peft-methods", make)
