"""Benchmark the full profile's training step on random weights (``invoke bench --lab moe``).

``ibm-granite/granite-3.0-1b-a400m-base``'s architecture (its config.json: hidden 1024, 24 layers,
16 query / 8 key-value heads, 32 experts of intermediate size 512, top-8, vocabulary 49,155, tied
embeddings, multipliers 12 / 0.22 / 6 / 1/64) with random weights, saved in bf16 (2.7 GB of disk)
and loaded the lab's way: router logits on and the aux loss in the loss, LoRA on q/k/v/o and on the
3-D experts and the routers (``target_parameters``), the lab's ``AuxLossTrainer`` at the full profile's
settings (bf16, gradient checkpointing) on random rows of ``block_size`` tokens. Two variants: ``lora``
(bf16 base, the full profile) and ``qlora`` (``load_in_4bit``: NF4 attention; the experts, 3-D
parameters bitsandbytes does not quantize, stay bf16).

    python labs/moe/bench.py --batch-sizes 4,8,16 --steps 5
    python labs/moe/bench.py --arch tiny --device cpu --steps 1   # the CPU self-test

MFU counts ``6 * N_active`` FLOPs per trained token, with N_active the non-embedding parameters one
token uses (attention, routers, and k of the E experts): a sparse MoE computes only the experts a token
is routed to (Switch Transformer sec. 2: FLOPs per token follow the active, not the total, parameters).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import torch
from peft import LoraConfig, get_peft_model
from transformers import GraniteMoeConfig, GraniteMoeForCausalLM, TrainingArguments

from labkit.config import get_lab, load_profile
from labkit.lab.bench import Bench, RandomTokens, bench_training, main, non_embedding_params, scratch_dir, train_steps
from labkit.lab.llm.loading import load_causal_lm, prepare_for_training

from routing import AuxLossTrainer, expert_parameters

#: ibm-granite/granite-3.0-1b-a400m-base config.json (the full profile's model); ``tiny`` is the CPU self-test's.
ARCHS = {
    "full": dict(
        hidden_size=1024,
        intermediate_size=512,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=8,
        num_local_experts=32,
        num_experts_per_tok=8,
        vocab_size=49155,
        max_position_embeddings=4096,
        embedding_multiplier=12.0,
        residual_multiplier=0.22,
        logits_scaling=6.0,
        attention_multiplier=0.015625,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=8,
        num_experts_per_tok=2,
        vocab_size=600,
        max_position_embeddings=512,
    ),
}


def active_non_embedding_params(model, top_k: int, num_experts: int) -> int:
    """Non-embedding parameters one token uses: all but the (1 - k/E) of the experts it skips."""
    experts = sum(torch.Size(shape).numel() for shape in expert_parameters(model).values())
    return int(non_embedding_params(model) - experts * (1 - top_k / num_experts))


def make(arch: str, device: str) -> Bench:
    cfg = load_profile(get_lab("moe"), "full")[0]
    seq = cfg["data"]["block_size"] if arch == "full" else 32
    folder = scratch_dir()
    torch.manual_seed(0)
    config = GraniteMoeConfig(tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0, **ARCHS[arch])
    model = GraniteMoeForCausalLM(config)
    top_k, experts = config.num_experts_per_tok, config.num_local_experts
    active = active_non_embedding_params(model, top_k, experts)
    total = non_embedding_params(model)
    model.to(torch.bfloat16).save_pretrained(folder)
    del model
    moe = cfg["moe"]

    def step(batch: int, n: int, variant: str = "") -> tuple[list[float], dict]:
        quantization = dict(cfg["model"]["quantization"], load_in_4bit=variant == "qlora")
        if device != "cuda":
            quantization["bnb_4bit_compute_dtype"] = "float32"  # CPU self-test: no bf16 autocast
        model = load_causal_lm(
            folder,
            quantization,
            device,
            "sdpa",
            experts_implementation=cfg["model"]["experts_implementation"],
            output_router_logits=moe["output_router_logits"],
            router_aux_loss_coef=moe["router_aux_loss_coef"],
        )
        model = prepare_for_training(model, quantization)
        model = get_peft_model(model, LoraConfig(**cfg["lora"]))
        training = bench_training(cfg["training"], batch, n, device)
        training.update(bf16=device == "cuda", gradient_checkpointing=cfg["training"]["gradient_checkpointing"])
        args = TrainingArguments(
            output_dir=scratch_dir(), gradient_checkpointing_kwargs={"use_reentrant": False}, **training
        )
        shape = ((seq,), torch.long, config.vocab_size)
        rows = RandomTokens(batch * n, {"input_ids": shape, "labels": shape})
        trainer = AuxLossTrainer(model=model, args=args, train_dataset=rows, aux_coef=moe["router_aux_loss_coef"])
        times, extra = train_steps(trainer, device)
        logged = [row["aux_loss"] for row in trainer.state.log_history if "aux_loss" in row]
        extra["aux_loss_last"] = logged[-1] if logged else None
        return times, extra

    return Bench(
        what=f"Granite-3.0-1B-A400M architecture ({arch}: {experts} experts, top-{top_k}), random weights, "
        f"{'bf16' if device == 'cuda' else 'float32'}, "
        f"LoRA r={cfg['lora']['r']} on attention + experts + routers, router aux loss, rows of {seq} tokens",
        setting="per_device_train_batch_size",
        default_batch=cfg["training"]["per_device_train_batch_size"],
        tokens_per_sample=seq,
        flops_per_token=6.0 * active,
        flops_note=f"6 x {active:,} active non-embedding parameters per trained token ({total:,} in all; "
        f"a token runs {top_k} of {experts} experts; Kaplan et al. 2020 sec. 2.1, Switch Transformer sec. 2)",
        step=step,
        variants=("lora", "qlora"),
    )


if __name__ == "__main__":
    main("moe", make)
