"""Benchmark the full profile's training step on random weights (``invoke bench --lab llama2-sft``).

``meta-llama/Llama-2-7b-hf``'s architecture (its config.json: hidden 4096, 32 layers, 32 heads,
MLP 11008, vocabulary 32000, 4096 positions) with random weights, saved in fp16 (13.5 GB of disk)
and loaded the lab's way: 4-bit NF4 with double quantization and bf16 compute, LoRA r=16 on
q_proj/v_proj, ``SFTTrainer`` steps at the full profile's settings (bf16, paged AdamW, gradient
checkpointing) on random rows of ``max_length`` tokens (the worst case: every row full).

    python labs/llama2-sft/bench.py --batch-sizes 1,2,3,4 --steps 5
    python labs/llama2-sft/bench.py --arch tiny --device cpu --steps 1   # the CPU self-test

MFU counts ``6 * N`` FLOPs per trained token with N the non-embedding parameters (the frozen 4-bit
base still runs forward and backward through every layer; LoRA's own FLOPs are negligible).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import LlamaConfig, LlamaForCausalLM
from trl import SFTConfig, SFTTrainer

from labkit.config import get_lab, load_profile
from labkit.lab.bench import Bench, RandomTokens, bench_training, main, non_embedding_params, scratch_dir, train_steps

from run import load_base

#: meta-llama/Llama-2-7b-hf config.json (the full profile's model); ``tiny`` is the CPU self-test's.
ARCHS = {
    "full": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
}
VOCAB = 32000


def placeholder_tokenizer():
    """The rows are token ids already; SFTTrainer still wants a tokenizer (for the padding id): Llama 2's
    three special tokens are enough (<unk> pads, as in the lab)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<unk>", eos_token="</s>", bos_token="<s>"
    )


def make(arch: str, device: str) -> Bench:
    cfg = load_profile(get_lab("llama2-sft"), "full")[0]
    seq = cfg["training"]["max_length"] if arch == "full" else 64
    folder = scratch_dir()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=4096, rms_norm_eps=1e-5, **ARCHS[arch])
    model = LlamaForCausalLM(config)
    params = non_embedding_params(model)
    model.to(torch.float16).save_pretrained(folder)
    del model

    def step(batch: int, n: int, variant: str = "") -> tuple[list[float], dict]:
        model = load_base(folder, cfg["model"], device, "sdpa")
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(model, LoraConfig(**cfg["lora"]))
        training = bench_training(cfg["training"], batch, n, device)
        training.update(bf16=device == "cuda", optim=cfg["training"]["optim"] if device == "cuda" else "adamw_torch")
        args = SFTConfig(output_dir=scratch_dir(), gradient_checkpointing_kwargs={"use_reentrant": False}, **training)
        rows = RandomTokens(
            batch * n, {"input_ids": ((seq,), torch.long, VOCAB), "labels": ((seq,), torch.long, VOCAB)}
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list([rows[i] for i in range(len(rows))]),
            processing_class=placeholder_tokenizer(),
        )
        return train_steps(trainer, device)

    return Bench(
        what=f"Llama-2-7b architecture ({arch}), random weights, NF4 + double quant, LoRA r={cfg['lora']['r']}, "
        f"SFTTrainer, rows of {seq} tokens",
        setting="per_device_train_batch_size",
        default_batch=cfg["training"]["per_device_train_batch_size"],
        tokens_per_sample=seq,
        flops_per_token=6.0 * params,
        flops_note=f"6 x {params:,} non-embedding parameters per trained token (Kaplan et al. 2020, sec. 2.1)",
        step=step,
    )


if __name__ == "__main__":
    main("llama2-sft", make)
