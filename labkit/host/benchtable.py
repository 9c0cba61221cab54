"""Measured full-profile GPU figures per lab (``labs/<lab>/bench.yaml``), and what fits a given GPU.

``invoke bench --lab X`` on a GPU host prints rows in this file's format; committed with the GPU,
driver, versions, date and command, they let ``invoke doctor --lab X`` tell a user whether their
GPU fits the full profile and the largest per-device batch that does::

    setting: per_device_train_batch_size       # the swept setting
    default: 4                                 # its value in profiles/full.yaml
    runs:
      - gpu: NVIDIA H200
        memory_gib: 139.8
        date: "2026-11-29"
        versions: {torch: 2.11.0+cu130, transformers: 5.24.0}
        command: python labs/whisper-lora/bench.py --steps 5 --batch-sizes 16,64
        rows:
          - {batch: 64, peak_allocated_gib: 125.65, samples_per_s: 9.2}
          - {batch: 16, peak_allocated_gib: 32.72, samples_per_s: 7.0}

Host tooling: PyYAML only.
"""

from __future__ import annotations

from dataclasses import dataclass

from labkit.config import Lab, read_yaml
from labkit.errors import LabError

#: Share of a card's memory a run may plan to allocate: the CUDA context (~0.5 GiB), the caching
#: allocator's reserve over what is allocated, and fragmentation take the rest.
USABLE = 0.90


@dataclass(frozen=True)
class Fit:
    """What one measured run says about a GPU with ``memory_gib``."""

    gpu: str  # the GPU the figures were measured on
    default_batch: int
    need_gib: float  # peak allocated at the default batch (measured, or on the line through the rows)
    measured: bool  # need_gib is a measured row, not a point on the fitted line
    largest_batch: int  # the largest batch whose predicted peak fits (0: none)
    fits: bool


def load(lab: Lab) -> dict | None:
    """``labs/<lab>/bench.yaml``, or ``None`` when the lab has no measurements yet.

    Raises:
        LabError: the file is malformed (names the file and the entry).
    """
    path = lab.dir / "bench.yaml"
    if not path.is_file():
        return None
    data = read_yaml(path)
    if not isinstance(data, dict) or not {"setting", "default", "runs"} <= set(data):
        raise LabError(f"{path}: needs setting, default and runs")
    for i, run in enumerate(data["runs"]):
        missing = {"gpu", "memory_gib", "date", "command", "rows"} - set(run)
        if missing:
            raise LabError(f"{path}: runs[{i}] lacks {', '.join(sorted(missing))}")
        for row in run["rows"]:
            if not {"batch", "peak_allocated_gib"} <= set(row):
                raise LabError(f"{path}: runs[{i}] has a row without batch and peak_allocated_gib: {row}")
    return data


def line(rows: list[dict]) -> tuple[float, float]:
    """``(fixed GiB, GiB per sample)``: the least-squares line through (batch, peak) rows.

    Rows of one batch size (one distinct point) give a line through the origin: all of the peak
    per sample (conservative).
    """
    if len({r["batch"] for r in rows}) == 1:
        return 0.0, max(r["peak_allocated_gib"] for r in rows) / rows[0]["batch"]
    xs = [r["batch"] for r in rows]
    ys = [r["peak_allocated_gib"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def fit(table: dict, memory_gib: float) -> list[Fit]:
    """One :class:`Fit` per measured run for a GPU with ``memory_gib`` of memory."""
    out = []
    for run in table["runs"]:
        fixed, per_sample = line(run["rows"])
        default = int(table["default"])
        exact = [r["peak_allocated_gib"] for r in run["rows"] if r["batch"] == default]
        need = exact[0] if exact else fixed + per_sample * default
        budget = memory_gib * USABLE
        largest = int((budget - fixed) // per_sample) if per_sample > 0 and budget > fixed else 0
        out.append(Fit(run["gpu"], default, round(need, 2), bool(exact), max(largest, 0), need <= budget))
    return out


def describe(lab: Lab, table: dict | None, memory_gib: float | None) -> tuple[str, bool]:
    """One paragraph for ``invoke doctor`` and whether the full profile fits (``True`` without a GPU).

    Every measured run is shown; whether it fits is judged on the newest (the file's last run).
    """
    if table is None:
        return (
            f"{lab.name}: full profile not measured on a GPU yet (lab.yaml estimate: {lab.gpu_memory_gib:g} GiB); "
            f"`invoke bench --lab {lab.name}` on your GPU measures it",
            memory_gib is None or memory_gib >= lab.gpu_memory_gib * 0.95,
        )
    lines, ok = [], True
    fits = fit(table, memory_gib or 0)
    for i, (run, f) in enumerate(zip(table["runs"], fits)):
        rows = ", ".join(f"{r['batch']} -> {r['peak_allocated_gib']} GiB" for r in run["rows"])
        how = "measured" if f.measured else "on the line through the measurements (an estimate)"
        lines.append(
            f"{lab.name}: full profile ({table['setting']}={f.default_batch}) needs {f.need_gib} GiB, {how}; "
            f"measured on {run['gpu']} ({run['date']}): {rows}"
        )
        if memory_gib is not None and i == len(fits) - 1:
            ok = f.fits
            lines.append(
                f"  your GPU ({memory_gib:.1f} GiB, {USABLE:.0%} usable): "
                + (f"fits; largest {table['setting']} that fits: {f.largest_batch}" if f.fits else "does NOT fit")
                + ("" if f.fits else f"; largest {table['setting']} that fits: {f.largest_batch} (SET=...)")
            )
    return "\n".join(lines), ok
