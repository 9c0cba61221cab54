"""Step 4, the comparison: one row per method in ``comparison.csv`` / ``comparison.md``, and the
classic plot of the task metric against trainable parameters (log scale) in ``comparison.png``.

Columns: method, kind, library, trainable parameters (count; without the classification head, which
every method trains, as the papers count them; and percent of the base model's parameters: encoder +
head, as loaded), where they sit, the metric before and after
training, the training-set loss drop, samples/s, training seconds, the method's wall seconds (load,
train, evaluate, save, reload), peak memory (GPU: ``max_memory_allocated`` during the method; CPU:
the process's resident set size, which only grows, so it is an upper bound for later methods), the
adapter's size on disk and the reloaded adapter's largest logit difference.

The adapters variant (Houlsby, UniPELT) runs in another environment, so another run: when the
newest completed run of the other variant used the same data, base model and budget, each run also
writes ``comparison-all.csv`` / ``.md`` / ``.png`` with every method of both (:func:`merge_other`),
each row naming its run, and the methods either run left out (``only=[...]``) listed as missing.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

COLUMNS = [
    "method",
    "kind",
    "library",
    "trainable_params",
    "without_head",
    "trainable_percent",
    "where",
    "metric_before",
    "metric",
    "loss_drop_ratio",
    "samples_per_s",
    "train_s",
    "wall_s",
    "peak_memory_mib",
    "adapter_bytes",
    "reload_max_abs_logit_diff",
    "variant",
    "run",
]
#: The ``run`` of this run's own rows (the other variant's rows name their run: ``<profile>/<UTC time>``).
THIS_RUN = "this run"


def rows_of(metrics: dict, variant: str | None, run: str = THIS_RUN) -> list[dict]:
    """One comparison row per method of a run's ``metrics.json``; ``run`` names the run it comes from."""
    rows = []
    for name, m in metrics["methods"].items():
        rows.append(
            {
                "method": name,
                "kind": m["kind"],
                "library": m["library"],
                "trainable_params": m["params"]["trainable"],
                "without_head": m["params"]["without_head"],
                "trainable_percent": round(m["params"]["trainable_percent"], 4),
                "where": "; ".join(f"{k} {v:,}" for k, v in m["params"]["by_place"].items()),
                "metric_before": round(m["eval"]["metric_before"], 4),
                "metric": round(m["eval"]["metric"], 4),
                "loss_drop_ratio": round(m["train"]["loss_drop_ratio"], 4),
                "samples_per_s": round(m["train"]["samples_per_second"], 1),
                "train_s": round(m["train"]["runtime_s"], 2),
                "wall_s": round(m["wall_s"], 2),
                "peak_memory_mib": round(m["peak_memory_bytes"] / 2**20, 1),
                "adapter_bytes": m["adapter"]["weights_bytes"],
                "reload_max_abs_logit_diff": m["reload"]["max_abs_logit_diff"],
                "variant": variant or "default",
                "run": run,
            }
        )
    return rows


def write(
    rows: list[dict], out: Path, stem: str, metric: str, title: str, memory: str, notes: list[str] = ()
) -> list[Path]:
    """``<stem>.csv``, ``<stem>.md`` and ``<stem>.png`` in ``out``; returns their paths. ``notes``: lines
    under the Markdown table (which methods are missing, and why)."""
    out = Path(out)
    with (out / f"{stem}.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    head = [
        "method", "library", "trainable params", "without the head", "% of base", f"{metric} before",
        f"{metric} after", "loss drop", "samples/s", "train s", f"peak {memory} MiB", "adapter on disk",
        "reload max logit diff", "run",
    ]  # fmt: skip
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["method"], r["library"], f"{r['trainable_params']:,}", f"{r['without_head']:,}",
            f"{r['trainable_percent']:.3f}", f"{r['metric_before']:.4f}", f"{r['metric']:.4f}",
            f"{r['loss_drop_ratio']:.3f}", r["samples_per_s"], r["train_s"], r["peak_memory_mib"],
            human_bytes(r["adapter_bytes"]), f"{r['reload_max_abs_logit_diff']:.2e}", r["run"],
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", *notes] if notes else []
    lines += ["", "Where the trainable parameters sit:", ""]
    lines += [f"- {r['method']}: {r['where']}" for r in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(rows, out / f"{stem}.png", metric, title)
    return [out / f"{stem}.{ext}" for ext in ("csv", "md", "png")]


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def plot(rows: list[dict], png: Path, metric: str, title: str) -> None:
    """The metric after training against trainable parameters (log x; the method's own, without the
    classification head every method trains, as the papers plot them), one labelled point per method;
    the full fine-tuning reference as a dashed line; adapters-variant methods as squares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
    labels: dict[tuple[int, float], list[str]] = {}  # methods at the same point share one label
    for r in rows:
        marker = "s" if r["library"].startswith("adapters") else ("*" if r["kind"] == "full" else "o")
        ax.scatter(r["without_head"], r["metric"], marker=marker, s=60 if marker == "*" else 36)
        labels.setdefault((r["without_head"], r["metric"]), []).append(r["method"])
    span = (max(r["metric"] for r in rows) - min(r["metric"] for r in rows)) or 1.0
    placed: list[tuple[float, float]] = []
    for (x, y), names in sorted(labels.items()):
        crowded = sum(abs(math.log10(x / px)) < 0.25 and abs(y - py) < 0.04 * span for px, py in placed)
        ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(4, 3 - 9 * crowded), fontsize=7)
        placed.append((x, y))
    full = [r for r in rows if r["kind"] == "full"]
    if full:
        ax.axhline(full[0]["metric"], linestyle="--", linewidth=0.8, color="grey", label="full fine-tuning")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters besides the classification head (log scale)", ylabel=metric, title=title)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def plot_losses(logs: dict[str, Path], png: Path, title: str) -> None:
    """Each method's training loss against step (its ``train_log.jsonl``), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit.lab.metrics import read_jsonl

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
    for name, path in logs.items():
        points = [(r["step"], r["loss"]) for r in read_jsonl(path) if "loss" in r]
        if points:
            ax.plot(*zip(*points), label=name, linewidth=1)
    ax.set(xlabel="optimizer step", ylabel="training loss (cross-entropy)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def same_setup(a: dict, b: dict) -> bool:
    """Two runs' metrics compare: same data fingerprint, base model and budget."""
    return (
        a["data"]["fingerprint"] == b["data"]["fingerprint"] and a["model"] == b["model"] and a["budget"] == b["budget"]
    )


def completed_runs(output_root: Path, lab: str, profile: str) -> list[Path]:
    """Completed runs of ``profile``, newest first (``labkit.rundir.run_status``)."""
    from labkit.rundir import run_status

    parent = Path(output_root) / lab / profile
    found = (
        sorted((p for p in parent.iterdir() if p.is_dir() and not p.is_symlink()), reverse=True)
        if parent.is_dir()
        else []
    )
    return [p for p in found if run_status(p) == "completed"]


def left_out(metrics: dict) -> dict[str, str]:
    """The methods of a run's profile that it did not run (``only=[...]``), each with the reason its
    ``metrics.json`` ``not_run`` gives (``"left out with only=[ia3]"``)."""
    return {
        key.removeprefix("methods.").rstrip("."): why
        for key, why in metrics.get("not_run", {}).items()
        if key.startswith("methods.")
    }


def merge_other(metrics: dict, variant: str | None, out: Path, candidates: list[Path], metric: str, memory: str):
    """Write ``comparison-all.*`` in ``out`` with this run's rows and those of the newest of
    ``candidates`` (the other variant's completed runs, newest first) that used the same data, base
    and budget (:func:`same_setup`); ``full`` runs in both, and this run's row is kept. Each row names
    the run it comes from (``run``), and the Markdown says which methods either run left out
    (``only=[...]``), so a subset run is not taken for the whole comparison.

    Returns:
        ``(that run, None)`` when merged, else ``(None, why not)``.
    """
    for other_run in candidates:
        theirs = json.loads((Path(other_run) / "metrics.json").read_text(encoding="utf-8"))
        if not same_setup(metrics, theirs):
            continue
        label = f"{Path(other_run).parent.name}/{Path(other_run).name}"
        mine, their_rows = rows_of(metrics, variant), rows_of(theirs, None if variant else "adapters", label)
        names = {r["method"] for r in mine}
        rows = mine + [r for r in their_rows if r["method"] not in names]
        shown = {r["method"] for r in rows}
        notes = [
            f"Missing: {name} ({why} in {run})"
            for run, gone in ((THIS_RUN, left_out(metrics)), (label, left_out(theirs)))
            for name, why in gone.items()
            if name not in shown
        ]
        title = f"every method: this run and {label}" + (f" ({len(notes)} missing)" if notes else "")
        write(rows, out, "comparison-all", metric, title, memory, notes)
        return other_run, None
    if not candidates:
        return None, "no completed run of the other variant yet"
    return None, f"none of the other variant's {len(candidates)} completed runs used this data, base model and budget"
