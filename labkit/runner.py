"""The command line every lab's entry script shares: profile, overrides, run directory, manifest.

A lab's script defines ``run(ctx) -> metrics`` and ends with ``raise SystemExit(main("<lab>", run))``.
``main`` parses ``--profile``/``--set``/``--output-root``, resolves the device (failing fast when a
full profile finds no accelerator), creates a fresh run directory, seeds everything, calls ``run``
and writes ``metrics.json`` and ``manifest.json``. A :class:`LabError` prints one clear line and
exits 2; the run directory is kept with ``status: failed`` and the error in its manifest.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labkit.config import REPO_ROOT, Lab, get_lab, load_profile
from labkit.errors import LabError

SMOKE_BANNER = """\
================================================================================
 SMOKE PROFILE: a tiny model of the same architecture built here (random or
 briefly trained; a course variant runs what it can without the real model),
 CPU, offline, on the bundled data unless you point the profile's data settings
 at yours (then the checks that count the bundled data are skipped, the others
 still apply). It checks the mechanics (data, training, quantizing, saving,
 reloading, metrics), not the course's results.
 For the real run use PROFILE={full} on a GPU host.
================================================================================"""


class _OncePerMessage(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def log_once(logger_name: str) -> None:
    """Let each distinct message of ``logger_name`` through once (for libraries that log per call)."""
    logging.getLogger(logger_name).addFilter(_OncePerMessage())


@dataclass
class RunContext:
    """What a lab's ``run`` function gets.

    Attributes:
        lab: the lab's metadata.
        profile: profile name (``smoke``, ``full``).
        config: the profile's settings with overrides applied.
        device: ``cuda``, ``npu`` or ``cpu`` (resolved from ``config["device"]``).
        run_dir: this run's fresh output folder.
        repo_root: the repository root (relative data paths resolve against it).
    """

    lab: Lab
    profile: str
    config: dict
    device: str
    run_dir: Path
    repo_root: Path = REPO_ROOT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run one lab profile and write a run directory.")
    parser.add_argument("--profile", default=os.environ.get("PROFILE", "smoke"))
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a profile value (repeatable), e.g. --set learning_rate=0",
    )
    parser.add_argument("--output-root", type=Path, default=Path(os.environ.get("OUTPUT_ROOT", REPO_ROOT / "outputs")))
    return parser.parse_args(argv)


def main(lab_name: str, run: Callable[[RunContext], dict], argv: list[str] | None = None) -> int:
    """Run ``run`` under one profile; returns the process exit status (0 ok, 2 bad input)."""
    args = parse_args(argv)
    run_dir = manifest = None
    try:
        lab = get_lab(lab_name)
        config, applied = load_profile(lab, args.profile, args.overrides)
        from labkit.device import accelerator_info, peak_memory_bytes, reset_peak_memory, select_device
        from labkit.rundir import base_manifest, finish_manifest, new_run_dir, write_json

        device = select_device(config["device"])
        if args.profile.endswith("smoke"):
            print(SMOKE_BANNER.format(full=args.profile.removesuffix("smoke") + "full"), flush=True)
        run_dir = new_run_dir(args.output_root, lab.name, args.profile)
        print(f"[{lab.name}] profile={args.profile} device={device} run_dir={run_dir}", flush=True)

        from transformers import set_seed

        set_seed(config["seed"])
        manifest = base_manifest(lab.name, args.profile, config["seed"], config, applied)
        write_json(run_dir / "manifest.json", {k: v for k, v in manifest.items() if k != "_t0"})
        # Trainer's TensorBoardCallback (report_to: tensorboard) writes its event files here.
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
        reset_peak_memory(device)
        metrics = run(RunContext(lab, args.profile, config, device, run_dir))
        from labkit.metrics import write_metrics

        write_metrics(run_dir, metrics)
        finish_manifest(
            run_dir,
            manifest,
            "completed",
            accelerator=accelerator_info(device),
            peak_memory_bytes=peak_memory_bytes(device),
        )
        print(f"[{lab.name}] done: {run_dir}", flush=True)
        return 0
    except LabError as exc:
        if manifest is not None:
            finish_manifest(run_dir, manifest, "failed", error=str(exc))
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except BaseException as exc:
        if manifest is not None:
            finish_manifest(run_dir, manifest, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
