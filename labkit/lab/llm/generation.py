"""Generation and logits for the before/after comparisons and the reload checks."""

from __future__ import annotations

import torch

from labkit.errors import LabError


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, prompt_special_tokens: bool = True
) -> list[dict]:
    """Greedy continuations of ``prompts``: ``{"text", "stopped"}`` (EOS before ``max_new_tokens``)."""
    model.eval()
    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=prompt_special_tokens).to(device)
        seq = model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, use_cache=True
        )[0, ids["input_ids"].shape[1] :]
        stopped = any(int(t) in eos for t in seq)
        out.append({"text": tokenizer.decode(seq, skip_special_tokens=True).strip(), "stopped": stopped})
    return out


@torch.no_grad()
def logits_on(model, batch: dict) -> torch.Tensor:
    """Logits ``(batch, seq, vocab)`` in eval mode, as float32 on the CPU, of any model whose forward
    returns ``.logits`` (a seq2seq model's are the decoder's, ``(batch, label_len, vocab)``)."""
    model.eval()
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()


def compare_before_after(before: list[dict], after: list[dict], records: list[dict], path) -> dict:
    """Write ``predictions.jsonl`` (each of ``records`` with its ``before`` and ``after`` answer, as
    :func:`generate` returns them) and summarize: the share of answers tuning changed, and the share
    that stopped with EOS before and after.

    Raises:
        LabError: no answers (``generation.samples`` 0, or no held-out row).
        ValueError: the three lists differ in length.
    """
    import json

    if not before:
        raise LabError("generation.samples is 0 (or no held-out row is left): set it to 1 or more")
    if not len(before) == len(after) == len(records):
        raise ValueError(f"before/after/records: {len(before)}, {len(after)}, {len(records)} answers")
    with open(path, "w", encoding="utf-8") as f:
        for record, b, a in zip(records, before, after):
            f.write(json.dumps({**record, "before": b, "after": a}, ensure_ascii=False) + "\n")
    n = len(after)
    return {
        "samples": n,
        "changed_by_tuning": sum(b["text"] != a["text"] for b, a in zip(before, after)) / n,
        "stopped_with_eos_before": sum(g["stopped"] for g in before) / n,
        "stopped_with_eos_after": sum(g["stopped"] for g in after) / n,
    }
