"""Benchmark the full profile's training step on random weights (``invoke bench --lab chatglm-qlora``).

GLM-4-9B's architecture (Transformers' ``GlmConfig`` defaults are its config.json: hidden 4096,
40 layers, 32 heads with 2 key/value heads, MLP 13696, vocabulary 151552) with random weights, saved
in bf16 (19 GB of disk) and loaded the lab's way: 4-bit NF4 + double quant, LoRA r=4 on q/k/v,
``Trainer`` steps at the full profile's settings (bf16, gradient checkpointing) on random rows of
``TOKENS`` tokens (AdvertiseGen's prompt + summary are about 150-250 tokens).

    python labs/chatglm-qlora/bench.py --batch-sizes 4,8,16 --steps 5
    python labs/chatglm-qlora/bench.py --arch tiny --device cpu --steps 1   # the CPU self-test
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
import labkit  # noqa: F401  (first: it quiets a bitsandbytes start-up message)

# isort: split

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import GlmConfig, GlmForCausalLM, Trainer, TrainingArguments

from labkit.bench import Bench, RandomTokens, bench_training, main, non_embedding_params, scratch_dir, train_steps
from labkit.config import get_lab, load_profile
from labkit.qlora import load_4bit

ARCHS = {
    "full": {},  # GlmConfig() is GLM-4-9B
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=1000,
        pad_token_id=0,
        eos_token_id=[1],
    ),
}
TOKENS = 256


def make(arch: str, device: str) -> Bench:
    cfg = load_profile(get_lab("chatglm-qlora"), "full")[0]
    folder = scratch_dir()
    torch.manual_seed(0)
    config = GlmConfig(**ARCHS[arch])
    model = GlmForCausalLM(config)
    params = non_embedding_params(model)
    model.to(torch.bfloat16).save_pretrained(folder)
    del model

    def step(batch: int, n: int, variant: str = "") -> tuple[list[float], dict]:
        model = load_4bit(folder, cfg["model"]["quantization"], device, "sdpa")
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(model, LoraConfig(**cfg["lora"]))
        training = bench_training(cfg["training"], batch, n, device)
        training["bf16"] = device == "cuda"
        args = TrainingArguments(
            output_dir=scratch_dir(), gradient_checkpointing_kwargs={"use_reentrant": False}, **training
        )
        shape = ((TOKENS,), torch.long, config.vocab_size)
        rows = RandomTokens(batch * n, {"input_ids": shape, "labels": shape})
        return train_steps(Trainer(model=model, args=args, train_dataset=rows), device)

    return Bench(
        what=f"GLM-4-9B architecture ({arch}), random weights, NF4 + double quant, LoRA r={cfg['lora']['r']} on "
        f"q/k/v, Trainer, rows of {TOKENS} tokens",
        setting="per_device_train_batch_size",
        default_batch=cfg["training"]["per_device_train_batch_size"],
        tokens_per_sample=TOKENS,
        flops_per_token=6.0 * params,
        flops_note=f"6 x {params:,} non-embedding parameters per trained token (Kaplan et al. 2020, sec. 2.1)",
        step=step,
    )


if __name__ == "__main__":
    main("chatglm-qlora", make)
