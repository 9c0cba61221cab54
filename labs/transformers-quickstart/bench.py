"""Benchmark the full profile's generative pipelines on random weights (`invoke bench --lab transformers-quickstart`).

The full profile's largest per-token workloads: ``openai-community/gpt2`` text generation (its
config.json: 12 layers, 768 wide, 12 heads, vocabulary 50257) and ``openai/whisper-small`` speech
recognition (d_model 768, 12 + 12 layers, 12 heads, FFN 3072, vocabulary 51865) on a 30 s clip. Each
decodes exactly ``NEW_TOKENS`` tokens greedily, at each batch size, in fp16 on CUDA (fp32 on CPU).

    python labs/transformers-quickstart/bench.py --batch-sizes 1,8,32 --steps 3
    python labs/transformers-quickstart/bench.py --arch tiny --device cpu --steps 1   # the CPU self-test

MFU counts ``2 * N`` FLOPs per generated token (N: non-embedding parameters; Whisper's encoder pass
over the clip is not counted).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import torch
from transformers import GPT2Config, GPT2LMHeadModel, WhisperConfig, WhisperForConditionalGeneration

from labkit.lab.bench import Bench, main, non_embedding_params
from labkit.lab.timing import timed_calls

ARCHS = {
    "full": {
        "gpt2": dict(n_layer=12, n_embd=768, n_head=12),
        "whisper-small": dict(
            d_model=768,
            encoder_layers=12,
            decoder_layers=12,
            encoder_attention_heads=12,
            decoder_attention_heads=12,
            encoder_ffn_dim=3072,
            decoder_ffn_dim=3072,
        ),
    },
    "tiny": {
        "gpt2": dict(n_layer=2, n_embd=32, n_head=2),
        "whisper-small": dict(
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
        ),
    },
}
NEW_TOKENS = 32  # the full profile's max_new_tokens
PROMPT_TOKENS = 16


def make(arch: str, device: str) -> Bench:
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    models = {
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=50257, **ARCHS[arch]["gpt2"])),
        "whisper-small": WhisperForConditionalGeneration(
            WhisperConfig(vocab_size=51865, num_mel_bins=80, **ARCHS[arch]["whisper-small"])
        ),
    }
    params = {name: non_embedding_params(m) for name, m in models.items()}

    def step(batch: int, n: int, variant: str) -> tuple[list[float], dict]:
        model = models[variant].to(device=device, dtype=dtype).eval()
        g = torch.Generator().manual_seed(0)
        fixed = {"do_sample": False, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
        if variant == "gpt2":
            inputs = {"input_ids": torch.randint(0, 50257, (batch, PROMPT_TOKENS), generator=g).to(device)}
            fixed["pad_token_id"] = 50256
        else:
            inputs = {"input_features": torch.randn(batch, 80, 3000, generator=g).to(device=device, dtype=dtype)}

        def generate():
            with torch.no_grad():
                model.generate(**inputs, **fixed)

        try:
            times = timed_calls(generate, n, device)
        finally:  # back to the CPU, out of memory or not, so the next row starts clean
            models[variant] = model.to("cpu")
        return times, {"params": sum(p.numel() for p in model.parameters())}

    return Bench(
        what=f"gpt2 and whisper-small architectures ({arch}), random weights, {dtype}, "
        f"greedy decode of {NEW_TOKENS} tokens",
        setting="batch size",
        default_batch=1,
        tokens_per_sample=NEW_TOKENS,
        flops_per_token={"gpt2": 2.0 * params["gpt2"], "whisper-small": None},
        flops_note=f"gpt2: 2 x {params['gpt2']:,} non-embedding parameters per generated token; whisper-small: "
        "not reported (its encoder pass over the 30 s clip dominates)",
        step=step,
        variants=("gpt2", "whisper-small"),
    )


if __name__ == "__main__":
    main("transformers-quickstart", make)
