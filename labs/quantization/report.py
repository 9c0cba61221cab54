"""The run's comparison table (CSV + Markdown) and bar chart (PNG), one row per step."""

from __future__ import annotations

import csv
import math
from pathlib import Path

MIB = 2**20
COLUMNS = [
    ("step", "step"),
    ("method", "method"),
    ("status", "status"),
    ("calibration", "calibration"),
    ("footprint_mib", "weights MiB"),
    ("footprint_vs_fp16", "x smaller than fp16"),
    ("perplexity", "perplexity"),
    ("perplexity_vs_fp16", "ppl / fp16 ppl"),
    ("quantize_s", "quantize s"),
    ("quantize_peak_mib", "quantize peak MiB"),
    ("generate_peak_mib", "generate peak MiB"),
    ("tokens_per_s", "tokens/s"),
]


def table_rows(steps: dict[str, dict]) -> list[dict]:
    """One flat row per step, sizes in MiB (2**20 bytes), blanks where a step did not run."""
    rows = []
    for name, s in steps.items():
        row = {"step": name, **{k: s.get(k) for k, _ in COLUMNS if k in s}}
        for key in ("footprint", "quantize_peak", "generate_peak"):
            raw = s.get(f"{key}_bytes")
            row[f"{key}_mib"] = round(raw / MIB, 2) if raw is not None else None
        rows.append(row)
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


PEAK_NOTE = (
    "on CPU, the whole process's resident set size (Python and libraries included), sampled every 10 ms",
    "torch.cuda.max_memory_allocated() after a reset at the start of the phase",
)


def write_tables(steps: dict[str, dict], out_dir: Path, device: str = "cpu") -> list[dict]:
    """Write ``comparison.csv`` and ``comparison.md`` into ``out_dir``; returns the rows."""
    rows = table_rows(steps)
    with open(out_dir / "comparison.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k, _ in COLUMNS], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    lines += ["", f"Peak MiB: {PEAK_NOTE[device != 'cpu']}. Sizes in MiB (2**20 bytes)."]
    (out_dir / "comparison.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def plot(rows: list[dict], png: Path, title: str) -> None:
    """Bar chart: weight footprint (MiB) and perplexity per step; steps that did not run are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [r for r in rows if r.get("footprint_mib") is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["step"] for r in ran]
    ax1.bar(names, [r["footprint_mib"] for r in ran], color="tab:blue")
    ax1.set_ylabel("weight footprint (MiB)")
    ppl = [r["perplexity"] for r in ran]
    ax2.bar(names, ppl, color="tab:orange")
    ax2.set_ylabel("perplexity (held-out text)")
    finite = [v for v in ppl if math.isfinite(v)]
    if finite:  # zoom in: the differences between methods are a few percent
        ax2.set_ylim(min(finite) * 0.98, max(finite) * 1.02)
    not_run = [f"{r['step']} ({r['status']})" for r in rows if r.get("footprint_mib") is None]
    if not_run:
        fig.text(0.01, 0.01, "not measured here: " + "; ".join(not_run), fontsize=7, wrap=True)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1 if not_run else 0, 1, 1))  # room for the "not measured" note
    fig.savefig(png, dpi=100)
    plt.close(fig)
