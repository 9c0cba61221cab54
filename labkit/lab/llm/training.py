"""Training helpers around ``Trainer``: losses before and after, saving an adapter with the logits
its reload must give, TRL's token count."""

from __future__ import annotations

from pathlib import Path

import torch

from labkit.lab.llm.generation import logits_on
from labkit.lab.metrics import plot_loss, read_jsonl


def trained_tokens(train_log: Path) -> int:
    """The last ``num_tokens`` TRL logged: tokens fed to training so far (padding excluded)."""
    counts = [row["num_tokens"] for row in read_jsonl(train_log) if "num_tokens" in row and "loss" in row]
    return int(counts[-1]) if counts else 0


def train_between_evaluations(trainer, train_data, out: Path, title: str) -> dict:
    """``trainer.train()`` between two evaluations (eval mode: dropout off) of the training set and the
    held-out set (every rank takes part when several train), then ``loss_curve.png`` from
    ``out/train_log.jsonl`` (rank 0).

    Returns:
        ``{"train_before", "eval_before", "train_after", "eval_after"}`` (mean token cross-entropy,
        nats) and ``"result"`` (``trainer.train()``'s ``TrainOutput``).
    """
    losses = {"train_before": trainer.evaluate(train_data, metric_key_prefix="train")["train_loss"]}
    losses["eval_before"] = trainer.evaluate()["eval_loss"]
    losses["result"] = trainer.train()
    losses["train_after"] = trainer.evaluate(train_data, metric_key_prefix="train")["train_loss"]
    losses["eval_after"] = trainer.evaluate()["eval_loss"]
    if trainer.is_world_process_zero():  # one writer when several processes train (the log is rank 0's)
        plot_loss(out / "train_log.jsonl", out / "loss_curve.png", title)
    return losses


def save_adapter(model, tokenizer, out: Path, probe_ids: list[int]) -> tuple[Path, dict, torch.Tensor]:
    """Save the adapter and tokenizer to ``out/adapter`` and the trained model's logits on one probe
    row (``probe_ids``), for the reload check; drops an empty ``out/checkpoints``.

    Returns:
        ``(adapter folder, probe batch {"input_ids": (1, len) long}, logits (1, len, vocab) float32)``.
    """
    from labkit.rundir import remove_if_empty

    adapter_dir = out / "adapter"
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    probe = {"input_ids": torch.tensor([probe_ids])}
    trained_logits = logits_on(model, probe)
    remove_if_empty(out / "checkpoints")
    return adapter_dir, probe, trained_logits


def release(device: str) -> None:
    """Give memory back before loading another copy of a model: collect garbage and empty the
    accelerator's cache (``torch.cuda`` / ``torch.npu``). Drop your own references first."""
    import gc

    gc.collect()
    if device in ("cuda", "npu"):
        getattr(torch, device).empty_cache()
