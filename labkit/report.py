"""One static HTML page of every lab's runs under ``outputs/`` (``invoke report``).

For each lab and profile it shows the newest completed run: the verification table (check /
expected / got / result, the same as ``invoke verify``), the run's plots (``loss_curve.png``,
``comparison.png`` ...), its scalar metrics, and the manifest's facts (status, runtime, image,
git commit, accelerator, wall time, peak memory, key package versions, overrides). A newer run
that did not complete is named with its error. The page is self-contained: CSS inline and images
as ``data:`` URIs, so it opens from disk or as a CI artifact with no server.

Host tooling: needs only PyYAML and Jinja2 (the tooling virtualenv), never torch.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from labkit.config import list_labs
from labkit.errors import LabError
from labkit.rundir import newest_completed_run, run_status
from labkit.verify import Check, verify_run

#: Package versions shown on the page (all of them are in each run's manifest.json).
KEY_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "bitsandbytes",
    "deepspeed",
    "gptqmodel",
    "optimum",
    "auto-gptq",
    "autoawq",
    "torch-npu",
)
MAX_METRICS = 200


@dataclass
class RunCard:
    """What the page shows for one lab profile."""

    lab: str
    title: str
    chapter: int
    profile: str
    run_dir: Path | None
    checks: list[Check] = field(default_factory=list)
    error: str | None = None  # verification could not run (malformed expected file ...)
    facts: dict[str, str] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, str]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (file name, data URI)
    newer_failure: tuple[str, str] | None = None  # (run dir, error)

    @property
    def passed(self) -> bool | None:
        """``None`` without a completed run; ``False`` when verification could not run or a check failed."""
        if self.error:
            return False
        return None if not self.checks else all(c.passed for c in self.checks)


def flatten(metrics: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``[(dotted key, value)]`` of every scalar (and short list) in ``metrics.json``, in file order."""
    if isinstance(metrics, dict):
        return [row for key, value in metrics.items() for row in flatten(value, f"{prefix}{key}.")]
    if isinstance(metrics, list) and (len(metrics) > 8 or any(isinstance(v, (dict, list)) for v in metrics)):
        return []  # long tables live in the run's own files
    if isinstance(metrics, float):
        return [(prefix[:-1], f"{metrics:.6g}")]
    return [(prefix[:-1], str(metrics))]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _facts(manifest: dict) -> dict[str, str]:
    acc = manifest.get("accelerator") or {}
    git = manifest.get("git") or {}
    peak = manifest.get("peak_memory_bytes")
    measure = "max_memory_allocated" if acc.get("device") in ("cuda", "npu") else "peak RSS"
    return {
        "status": str(manifest.get("status")),
        "started (UTC)": str(manifest.get("start_utc")),
        "wall time": f"{manifest['wall_time_s']:.1f} s"
        if isinstance(manifest.get("wall_time_s"), (int, float))
        else "?",
        "runtime": str(manifest.get("runtime")),
        "image": str(manifest.get("image_id") or "—"),
        "git commit": f"{(git.get('commit') or '?')[:12]}{' (dirty)' if git.get('dirty') else ''}",
        "accelerator": f"{acc.get('device', '?')}: {acc.get('name', '?')}"
        + (f" x{acc['count']}" if acc.get("count") else "")
        + (f", {acc['memory_gib']} GiB" if acc.get("memory_gib") else "")
        + (f", driver {acc['driver']}" if acc.get("driver") else ""),
        "peak memory": f"{peak / 2**30:.2f} GiB ({measure})" if isinstance(peak, (int, float)) else "?",
        "python": str(manifest.get("python")),
        "seed": str(manifest.get("seed")),
        "overrides": ", ".join(f"{k}={v}" for k, v in (manifest.get("overrides") or {}).items()) or "none",
    }


def _images(run_dir: Path) -> list[tuple[str, str]]:
    """The run's own PNG plots (top level only: models and checkpoints hold none we want)."""
    return [
        (png.name, "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii"))
        for png in sorted(run_dir.glob("*.png"))
    ]


def collect(output_root: Path) -> list[RunCard]:
    """A :class:`RunCard` per (lab, profile) with at least one run under ``output_root``, in lab order."""
    cards = []
    known = {lab.name: lab for lab in list_labs()}
    lab_dirs = sorted(p for p in Path(output_root).iterdir() if p.is_dir()) if Path(output_root).is_dir() else []
    for lab_dir in lab_dirs:
        lab = known.get(lab_dir.name)
        if lab is None:
            continue
        for profile in lab.profiles:  # not outputs/<lab>/bench/ and other folders
            run_dir, failure = newest_completed_run(output_root, lab.name, profile)
            if run_dir is None and failure is None:
                continue
            card = RunCard(lab.name, lab.title, lab.chapter, profile, run_dir)
            if failure is not None:
                error = _read_json(failure / "manifest.json").get("error") or run_status(failure)
                card.newer_failure = (str(failure), str(error))
            if run_dir is not None:
                manifest = _read_json(run_dir / "manifest.json")
                card.facts = _facts(manifest)
                packages = manifest.get("packages") or {}
                card.packages = {name: packages[name] for name in KEY_PACKAGES if name in packages}
                card.metrics = flatten(_read_json(run_dir / "metrics.json"))[:MAX_METRICS]
                card.images = _images(run_dir)
                try:
                    card.checks = verify_run(run_dir, lab.expected_path(profile))
                except LabError as exc:
                    card.error = str(exc)
            cards.append(card)
    return cards


TEMPLATE = Path(__file__).with_name("report.html.j2")


def render(cards: list[RunCard], output_root: Path, generated: str | None = None) -> str:
    """The page's HTML (every value escaped by Jinja2's autoescape)."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATE.parent), autoescape=select_autoescape(default=True, default_for_string=True)
    )
    generated = generated or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return env.get_template(TEMPLATE.name).render(cards=cards, output_root=str(output_root), generated=generated)


def write_report(output_root: Path, out: Path | None = None) -> tuple[Path, list[RunCard]]:
    """Write ``<output_root>/report.html`` (or ``out``); returns its path and the cards."""
    cards = collect(output_root)
    out = Path(out) if out else Path(output_root) / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(render(cards, output_root), encoding="utf-8")
    tmp.replace(out)
    return out, cards
