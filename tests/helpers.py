"""What the tests share besides fixtures: running a lab as `make lab-<name>` does."""

from __future__ import annotations

from pathlib import Path

from labkit.config import Lab
from labkit.host import runs
from labkit.host.plan import resolve


def latest_run(output_root: Path, lab: str, profile: str) -> Path | None:
    """The run ``<output_root>/<lab>/<profile>/latest`` points at (the newest completed), or None."""
    link = Path(output_root) / lab / profile / "latest"
    return link.resolve() if link.exists() else None


def run_lab(lab: Lab, profile: str, runtime: str, overrides: list[str] | str, root: Path) -> tuple[int, str]:
    """Plan and run one profile of ``lab`` (``smoke``, ``full`` or a variant's, e.g. ``npu-smoke``) into
    ``root``, as ``invoke run`` does before verifying; returns (exit code, output tail).

    Raises:
        LabError: what the plan or the run refuses before the lab starts.
    """
    return runs.run(resolve(lab, profile, runtime, overrides), root)
