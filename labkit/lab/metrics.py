"""Metric logging: a per-step training log, the loss curve, and ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from labkit.rundir import write_json


class JsonlLogger(TrainerCallback):
    """A ``transformers`` callback that appends every ``Trainer`` log event to a JSON-lines file.

    Each line: ``{"step": int, "epoch": float, **logs}`` (``loss``, ``learning_rate``, ``grad_norm``,
    ``eval_loss`` … as the Trainer reports them).
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss(train_log: Path, png: Path, title: str) -> None:
    """Plot training ``loss`` (and ``eval_loss`` where logged) against step into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(train_log)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key in ("loss", "eval_loss"):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points), marker="o", label=key)
    ax.set(xlabel="step", ylabel="cross-entropy loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def write_metrics(run_dir: Path, metrics: dict) -> None:
    """Write ``metrics.json`` in the run directory (the values expected files check)."""
    write_json(Path(run_dir) / "metrics.json", metrics)


def training_summary(loss_before: float, loss_after: float, result) -> dict:
    """The ``train`` section of ``metrics.json`` every lab that trains reports.

    Args:
        loss_before, loss_after: training-set loss in eval mode (no dropout) before and after
            ``trainer.train()``, so a run that learns nothing (learning rate 0) shows exactly 0 drop.
        result: the ``TrainOutput`` that ``trainer.train()`` returned.

    Returns:
        ``loss_before``, ``loss_after``, ``loss_drop_ratio`` (1 - after/before; None if before is 0),
        ``steps``, ``runtime_s`` (seconds) and ``samples_per_second``.
    """
    return {
        "loss_before": loss_before,
        "loss_after": loss_after,
        "loss_drop_ratio": 1 - loss_after / loss_before if loss_before else None,
        "steps": result.global_step,
        "runtime_s": result.metrics["train_runtime"],
        "samples_per_second": result.metrics["train_samples_per_second"],
    }
