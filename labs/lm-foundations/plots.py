"""The run's pictures and its table: loss curves, attention heat maps, the perplexity table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curves(rows: list[dict], png: Path, title: str) -> None:
    """Training loss (cross-entropy, nats per predicted token) against step, one line per model
    (rows of :func:`models.train`'s log: ``model``, ``step``, ``loss``)."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name in dict.fromkeys(r["model"] for r in rows):
        points = [(r["step"], r["loss"]) for r in rows if r["model"] == name]
        ax.plot(*zip(*points), marker=".", label=name)
    ax.set(xlabel="step", ylabel="training loss (nats / token)", title=f"{title}: loss curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def plot_attention(weights, tokens: list[str], png: Path, title: str) -> None:
    """Heat maps of attention weights ``(layers, heads, T, T)``: one panel per layer (row) and head
    (column); row = the attending (query) token, column = the attended (key) token."""
    layers, heads = weights.shape[:2]
    fig, axes = plt.subplots(layers, heads, figsize=(2.6 * heads, 2.6 * layers + 0.6), dpi=100, squeeze=False)
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            ax.imshow(weights[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8)
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=5)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=5)
    fig.suptitle(f"{title}: attention weights (row attends to column)")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def write_table(rows: list[dict], path: Path, vocabulary: int, unk_rate: float) -> str:
    """The chapter's story as one Markdown table (also printed): each model's parameters and held-out
    perplexity over the same predicted tokens."""
    lines = [
        f"Held-out perplexity, same {rows[0]['tokens']} predicted tokens (each word and one </s> per sentence), "
        f"same vocabulary ({vocabulary} types; {unk_rate:.1%} of held-out words are <UNK>). "
        "The n-gram model's parameters are the distinct n-grams it counted.",
        "",
        "| model | parameters | perplexity |",
        "|---|---:|---:|",
        *(f"| {r['model']} | {r['parameters']:,} | {r['perplexity']:.3f} |" for r in rows),
    ]
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    print(text, flush=True)
    return text
