"""Benchmark the full profile's model in fp16, int8 and NF4 on random weights (``invoke bench --lab quantization``).

``facebook/opt-2.7b``'s architecture (its config.json: hidden 2560, 32 layers, 32 heads, FFN 10240,
vocabulary 50272) with random weights, saved in fp16 and loaded the way the lab's steps load it:
fp16 (the baseline), bitsandbytes 8-bit and bitsandbytes NF4 with double quantization (the
profile's ``bnb_int8`` and ``bnb_nf4_dq`` configs). For each, per generation batch size: the
weight footprint (``get_memory_footprint``, the course's measure), peak memory while generating,
and decode speed (greedy, exactly ``NEW_TOKENS`` tokens after a ``PROMPT_TOKENS``-token prompt).

    python labs/quantization/bench.py --batch-sizes 1,8,32 --steps 3
    python labs/quantization/bench.py --arch tiny --device cpu --steps 1   # the CPU self-test

GPTQ and AWQ need calibration on real text and are measured by the lab's own run, not here.
MFU counts ``2 * N`` FLOPs per generated token (N: non-embedding parameters; one forward pass).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import torch
from transformers import OPTConfig, OPTForCausalLM

from labkit.config import get_lab, load_profile
from labkit.lab.bench import Bench, main, non_embedding_params, scratch_dir
from labkit.lab.timing import timed_calls

from methods import bnb_config, load_model

#: facebook/opt-2.7b config.json (the full profile's model); ``tiny`` is the CPU self-test's.
ARCHS = {
    "full": dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, ffn_dim=10240),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, ffn_dim=128),
}
VOCAB = 50272
PROMPT_TOKENS = 32
NEW_TOKENS = 64  # the full profile's generation.max_new_tokens


def make(arch: str, device: str) -> Bench:
    cfg = load_profile(get_lab("quantization"), "full")[0]
    folder = scratch_dir()
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=VOCAB, word_embed_proj_dim=ARCHS[arch]["hidden_size"], **ARCHS[arch])
    model = OPTForCausalLM(config).to(torch.float16)
    params = non_embedding_params(model)
    model.save_pretrained(folder)
    del model
    quant = {
        "fp16": None,
        "int8": bnb_config(cfg["steps"]["bnb_int8"]["config"]),
        "nf4": bnb_config(cfg["steps"]["bnb_nf4_dq"]["config"]),
    }

    def step(batch: int, n: int, variant: str) -> tuple[list[float], dict]:
        kwargs = {"quantization_config": quant[variant]} if quant[variant] else {}
        model = load_model(folder, device, "float16" if device == "cuda" else "float32", **kwargs)
        prompt = torch.randint(4, VOCAB, (batch, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
        prompt = prompt.to(next(model.parameters()).device)
        fixed = {"do_sample": False, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "pad_token_id": 1}
        footprint = model.get_memory_footprint()

        def generate():
            with torch.no_grad():
                model.generate(prompt, **fixed)

        times = timed_calls(generate, n, device)
        return times, {"footprint_mib": round(footprint / 2**20, 2)}

    return Bench(
        what=f"opt-2.7b architecture ({arch}), random weights, fp16 / bitsandbytes int8 / NF4 + double quant, "
        f"greedy decode of {NEW_TOKENS} tokens after {PROMPT_TOKENS}",
        setting="generation batch size",
        default_batch=1,
        tokens_per_sample=NEW_TOKENS,
        flops_per_token=2.0 * params,
        flops_note=f"2 x {params:,} non-embedding parameters per generated token (one forward pass per token)",
        step=step,
        variants=("fp16", "int8", "nf4"),
    )


if __name__ == "__main__":
    main("quantization", make)
