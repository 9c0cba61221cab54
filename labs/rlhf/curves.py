"""The stages' logged curves (one JSON-lines log per stage, ``logs/<stage>.jsonl``): read, summarized,
plotted into one PNG per stage.

A curve is the values a trainer logged under one key (``loss``, ``objective/kl``,
``rewards/margins`` ...) in step order; :func:`ends` gives the means of its first and last few values
(one logged value is noisy: PPO's and GRPO's rewards are means over one batch of sampled responses).
"""

from __future__ import annotations

from pathlib import Path

from labkit.lab.metrics import read_jsonl


def curve(log: Path, key: str) -> list[tuple[int, float]]:
    """``[(step, value)]`` of ``key`` in a stage's log (eval rows included when the key is theirs)."""
    if not Path(log).is_file():
        return []
    return [(row["step"], float(row[key])) for row in read_jsonl(log) if row.get(key) is not None]


def ends(log: Path, key: str, window: int = 3) -> dict:
    """``{"first", "last", "gain"}``: means of the first and the last ``window`` values of ``key``
    (at most half the curve each), and last - first; ``None`` values when nothing was logged."""
    values = [v for _, v in curve(log, key)]
    if not values:
        return {"first": None, "last": None, "gain": None}
    k = max(1, min(window, len(values) // 2))
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    return {"first": first, "last": last, "gain": last - first}


def plot(log: Path, panels: dict[str, list[str]], png: Path, title: str) -> None:
    """One figure of ``panels`` (panel title -> logged keys drawn in it) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), dpi=100, squeeze=False)
    for ax, (name, keys) in zip(axes[0], panels.items()):
        for key in keys:
            points = curve(log, key)
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=key)
        ax.set(xlabel="step", title=name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def plot_bars(values: dict[str, float | None], png: Path, title: str, ylabel: str) -> None:
    """A bar chart of named values (``None`` left out): held-out scores per stage, accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {k: v for k, v in values.items() if v is not None}
    fig, ax = plt.subplots(figsize=(1.2 * len(shown) + 2.5, 3.4), dpi=100)
    ax.bar(list(shown), list(shown.values()), color="#4c72b0")
    for i, v in enumerate(shown.values()):
        ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
