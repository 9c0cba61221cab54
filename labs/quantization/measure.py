"""What the lab measures for every model: weight footprint, perplexity, generation speed and memory."""

from __future__ import annotations

import math

import torch

from labkit.lab.device import PeakMemory
from labkit.lab.timing import median_seconds


@torch.no_grad()
def perplexity(model, ids: list[int], max_length: int, stride: int) -> float:
    """Perplexity of ``model`` on the token sequence ``ids`` with a sliding window.

    Windows of ``max_length`` tokens advance by ``stride``; each scores only the tokens not scored
    before (Hugging Face, "Perplexity of fixed-length models"). ``stride == max_length`` gives the
    GPTQ paper's wikitext-2 protocol: non-overlapping full windows, the last partial one dropped.

    Returns:
        exp(mean negative log-likelihood per scored token); ``inf`` if the loss overflows.
    """
    device = next(model.parameters()).device
    data = torch.tensor([ids], device=device)
    nll_sum, scored, prev_end = 0.0, 0, 0
    starts = range(0, len(ids) - 1, stride)
    if stride == max_length and len(ids) >= max_length:  # GPTQ's eval: only the len(ids) // max_length full windows
        starts = range(0, len(ids) - max_length + 1, stride)
    for begin in starts:
        end = min(begin + max_length, len(ids))
        target_len = end - prev_end
        input_ids = data[:, begin:end]
        labels = input_ids.clone()
        labels[:, :-target_len] = -100
        loss = model(input_ids=input_ids, labels=labels).loss.float().item()
        n = (labels[:, 1:] != -100).sum().item()  # the model shifts labels by one
        nll_sum += loss * n
        scored += n
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll_sum / scored) if nll_sum / scored < 700 else float("inf")


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int, device: str, repeats: int = 3) -> dict:
    """Greedy generation of exactly ``max_new_tokens`` tokens: one untimed full-length warm-up, then
    the median of ``repeats`` timed runs (``labkit.lab.timing``: the first call pays CUDA start-up).

    Returns:
        ``text`` (str), ``tokens_per_s`` (new tokens / median wall seconds), ``runs_tokens_per_s``
        (each timed run), ``peak_memory_bytes`` (bytes, :class:`labkit.lab.device.PeakMemory`:
        ``max_memory_allocated`` on a GPU, sampled RSS on CPU, over the warm-up and timed runs).
    """
    inputs = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    fixed = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    out = []

    def run():
        out[:] = [model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, **fixed)]

    with PeakMemory(device) as peak:
        seconds, runs = median_seconds(run, device, repeats=repeats, warmup=1)
    new = out[0].shape[1] - inputs["input_ids"].shape[1]
    return {
        "text": tokenizer.decode(out[0][0], skip_special_tokens=True),
        "tokens_per_s": round(new / seconds, 2),
        "runs_tokens_per_s": [round(new / s, 2) for s in runs],
        "peak_memory_bytes": peak.bytes,
    }


def footprint_bytes(model) -> int:
    """Bytes of the model's parameters and buffers: Transformers' ``get_memory_footprint()``, the
    course's measure (packed 4-bit weights, scales and zero points included)."""
    return int(model.get_memory_footprint())
