"""Benchmark the full profile's tiny-GPT training step on random tokens (``invoke bench --lab lm-foundations``).

The full profile's decoder (``profiles/full.yaml`` ``model``: GPT2LMHeadModel, width 256, 4 layers,
8 heads, 48 positions) over the bundled corpus's vocabulary (243 ids), trained as step 4 trains it:
rows of ``TOKENS`` ids under the hand-written causal mask (a custom 4-D mask), AdamW, gradient
clipping, float32. One step = forward, backward, optimizer step, at each batch size.

    python labs/lm-foundations/bench.py --batch-sizes 64,256,1024 --steps 20
    python labs/lm-foundations/bench.py --arch tiny --device cpu --steps 1   # the CPU self-test

MFU counts ``6 * N`` FLOPs per trained token (N: non-embedding parameters; Kaplan et al. 2020 sec.
2.1); at this size attention over 24 positions and the optimizer add little.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: labkit/lab/__init__.py)

# isort: split

import torch
from transformers import GPT2LMHeadModel

from labkit.config import get_lab, load_profile
from labkit.lab.bench import Bench, main, non_embedding_params
from labkit.lab.timing import timed_calls

from attention import causal_mask, gpt2_config
from language_models import additive_mask

VOCAB = 243  # the bundled corpus's 241 words and <s>, </s>, <UNK> + <pad>, <mask> (expected/smoke.yaml)
TOKENS = 24  # a bundled sentence with <s> and </s>: 16 words on average, 22 at most
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "n_positions": 48}


def make(arch: str, device: str) -> Bench:
    cfg = load_profile(get_lab("lm-foundations"), "full")[0]
    shape = cfg["model"] if arch == "full" else TINY
    training = cfg["decoder"]["training"]
    torch.manual_seed(0)
    config = gpt2_config(
        shape["hidden_size"], shape["num_attention_heads"], shape["num_hidden_layers"], VOCAB, shape["n_positions"]
    )
    params = non_embedding_params(GPT2LMHeadModel(config))

    def step(batch: int, n: int, variant: str) -> tuple[list[float], dict]:
        model = GPT2LMHeadModel(config).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=training["learning_rate"])
        ids = torch.randint(VOCAB, (batch, TOKENS), generator=torch.Generator().manual_seed(0)).to(device)
        mask = additive_mask(causal_mask(TOKENS, device), batch, torch.float32)

        def one():
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), training["max_grad_norm"])
            optimizer.step()

        return timed_calls(one, n, device), {"params": sum(p.numel() for p in model.parameters())}

    return Bench(
        what=f"tiny GPT ({arch}: width {shape['hidden_size']}, {shape['num_hidden_layers']} layers), float32, "
        f"AdamW, rows of {TOKENS} tokens under the hand-written causal mask",
        setting="per_device_train_batch_size",
        default_batch=training["per_device_train_batch_size"],
        tokens_per_sample=TOKENS,
        flops_per_token=6.0 * params,
        flops_note=f"6 x {params:,} non-embedding parameters per trained token (Kaplan et al. 2020 sec. 2.1)",
        step=step,
    )


if __name__ == "__main__":
    main("lm-foundations", make)
