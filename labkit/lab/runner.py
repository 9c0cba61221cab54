"""The command line every lab's entry script shares: profile, overrides, run directory, manifest.

A lab's script defines ``run(ctx) -> metrics`` and ends with ``raise SystemExit(main("<lab>", run))``.
``main`` parses ``--profile``/``--set``/``--output-root``, resolves the device (failing fast when a
full profile finds no accelerator), creates a fresh run directory, seeds everything, calls ``run``
and writes ``metrics.json`` and ``manifest.json``. A :class:`LabError` prints one clear line and
exits 2; the run directory is kept with ``status: failed`` and the error in its manifest.

Several processes (a profile's
``nproc_per_node`` > 1: ``make lab-<name> NPROC=N``; deepspeed-zero, whose ``lab.yaml`` says
``launches_itself: true``, starts its own): ``main`` makes
the run directory and the manifest as above, checks there are that many devices, and starts the
same script on every rank with ``torchrun`` (:mod:`labkit.lab.launch`), handing the run directory over
in ``LABS_RUN_DIR``. Each rank seeds, runs ``run`` on its own device (``cuda:N`` / ``npu:N`` by
``LOCAL_RANK``; the Trainer joins them through NCCL, HCCL or gloo) and records its peak memory in
``ranks/rank<N>.json``; rank 0 writes ``metrics.json``. The lab's ``run`` does the single-process
steps (saving, reloading, generating) on ``ctx.is_main`` only.
"""

from __future__ import annotations

import argparse
import json
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
        run_dir: this run's fresh output folder (shared by every rank).
        repo_root: the repository root (relative data paths resolve against it).
        rank, world_size: this process among the run's (``RANK`` / ``WORLD_SIZE``; 0 and 1 alone).
    """

    lab: Lab
    profile: str
    config: dict
    device: str
    run_dir: Path
    repo_root: Path = REPO_ROOT
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that saves, reloads, generates and writes ``metrics.json``."""
        return self.rank == 0


#: The run directory a multi-process run's ranks share (set by :func:`main` for the launcher).
RUN_DIR_ENV = "LABS_RUN_DIR"
#: A launch of several processes may take as long as the training: a week, then it is stopped.
LAUNCH_TIMEOUT_S = 7 * 24 * 3600


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


def nproc_per_node(lab: Lab, config: dict) -> int:
    """Processes the runner starts for this run: the profile's ``nproc_per_node`` (1 when it has none),
    or 1 for a lab whose ``lab.yaml`` says ``launches_itself: true`` (deepspeed-zero starts its ranks
    with the launcher its profile names)."""
    return 1 if lab.meta.get("launches_itself") else int(config.get("nproc_per_node") or 1)


class _Tee:
    """A text stream that writes to the console and to the run's log file."""

    def __init__(self, console, log):
        self.console, self.log = console, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.console.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self.console, name)


def quiet_console(run_dir: Path):
    """The console shows the lab's steps, numbers and verdict; everything goes to ``<run>/run.log``.

    Everything printed is copied to ``run.log``; library chatter goes to ``run.log`` only: Python
    warnings (FutureWarning, DeprecationWarning), the Transformers / Datasets / Hub loggers (load
    reports such as a new classification head's "MISSING" table), and no progress bars (the Trainer's
    per-step losses still print, and are in ``train_log.jsonl``). Returns the open log file.
    """
    import warnings

    log = open(run_dir / "run.log", "a", encoding="utf-8", buffering=1)  # open for the whole run
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    for name in ("torch", "transformers", "datasets", "huggingface_hub", "accelerate", "peft", "trl"):
        library = logging.getLogger(name)
        for old in list(library.handlers):
            library.removeHandler(old)  # their own stderr handler: the file handler above gets it all
        library.propagate = True
    # httpx logs every request's URL at INFO (an endpoint's user:password part included): warnings only.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # TrainingArguments turns the Trainer's progress bar off when its module logs above WARNING
    # (``disable_tqdm``'s default); the Trainer then prints each logged step's numbers, one line each.
    logging.getLogger("transformers.training_args").setLevel(logging.ERROR)
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:  # each on its own: a lab without Datasets (peft-methods) still silences Transformers' bars
        import transformers

        transformers.utils.logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
    return log


#: torch's intra-op threads under ``deterministic: true`` (:func:`seed_everything`).
DETERMINISTIC_THREADS = 1


def seed_everything(config: dict) -> dict:
    """Seed Python, NumPy and torch from ``config["seed"]``; with ``deterministic: true`` also
    Transformers' ``enable_full_determinism`` (``torch.use_deterministic_algorithms``, cuDNN
    deterministic, ``CUBLAS_WORKSPACE_CONFIG=:4096:8``) and one CPU thread (it costs speed, so full
    profiles leave it off). Returns what the manifest records: seed, whether deterministic, torch's
    thread count.

    Same seed, same numbers: a run repeated on the same machine and image gives the same metrics and
    weights when ``deterministic`` is true (and on a CPU also without it); on another GPU model or
    driver the kernels differ and values agree only within the expected files' tolerances.
    """
    import torch
    from transformers import enable_full_determinism, set_seed

    if config.get("deterministic"):
        enable_full_determinism(config["seed"])
        # A CPU's matrix products sum in blocks that depend on the thread count: one thread, so a run
        # gives the same numbers on a 2-core CI worker and a 64-core workstation (OMP_NUM_THREADS or not).
        torch.set_num_threads(DETERMINISTIC_THREADS)
    else:
        set_seed(config["seed"])
    return {
        "seed": config["seed"],
        "deterministic": bool(config.get("deterministic")),
        "torch_threads": torch.get_num_threads(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def _rank_main(lab: Lab, args: argparse.Namespace, config: dict, run: Callable[[RunContext], dict]) -> int:
    """One rank of a multi-process run: the shared run directory, this rank's device, ``run``;
    ``ranks/rank<N>.json`` (device, peak memory) and, on rank 0, ``metrics.json``."""
    from labkit.lab.device import local_rank, peak_memory_bytes, placement, reset_peak_memory, select_device
    from labkit.lab.metrics import write_metrics
    from labkit.rundir import write_json

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        device = select_device(config["device"])
        if device in ("cuda", "npu"):
            import torch

            getattr(torch, device).set_device(local_rank())  # torch.cuda / torch.npu: this rank's card
        run_dir = Path(os.environ[RUN_DIR_ENV])
        seed_everything(config)
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
        reset_peak_memory(device)
        metrics = run(RunContext(lab, args.profile, config, device, run_dir, rank=rank, world_size=world))
        (run_dir / "ranks").mkdir(exist_ok=True)
        mine = {
            "rank": rank,
            "world_size": world,
            "device": placement(device),
            "peak_memory_bytes": peak_memory_bytes(device),
        }
        write_json(run_dir / "ranks" / f"rank{rank}.json", mine)
        if rank == 0:
            write_metrics(run_dir, metrics)
        return 0
    except LabError as exc:
        print(f"error: rank {rank}: {exc}", file=sys.stderr, flush=True)
        return 2


def _launch_ranks(lab: Lab, args: argparse.Namespace, config: dict, device: str, run_dir: Path) -> dict:
    """Start ``nproc_per_node`` ranks of the lab's script with torchrun on this node and wait.

    Returns:
        ``{"launch": <the command as typed>, "ranks": [rank0.json, ...]}`` for the manifest.

    Raises:
        LabError: a rank failed (the log's tail); :func:`main` has refused more processes than devices.
    """
    from labkit.lab.launch import LaunchSpec, free_port, launch

    nproc = nproc_per_node(lab, config)
    spec = LaunchSpec(launcher="torchrun", nproc_per_node=nproc, master_port=free_port(), timeout_s=LAUNCH_TIMEOUT_S)
    script = lab.dir / lab.entrypoint
    argv = ["--profile", args.profile, "--output-root", str(args.output_root)]
    argv += [arg for o in args.overrides for arg in ("--set", o)]
    env = {**os.environ, RUN_DIR_ENV: str(run_dir)}
    print(f"[{lab.name}] {nproc} processes on this node; their output: {run_dir / 'ranks.log'}", flush=True)
    command = launch(spec, script, argv, run_dir / "ranks.log", env=env)
    ranks = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((run_dir / "ranks").glob("rank*.json"))]
    if len(ranks) != nproc or not (run_dir / "metrics.json").is_file():
        raise LabError(f"{command}: {len(ranks)} of {nproc} ranks finished; see {run_dir / 'ranks.log'}")
    return {"launch": command, "ranks": ranks}


@dataclass
class StartedRun:
    """A run :func:`start_run` began: its context, the manifest so far, and whether the runner must
    start the ranks (``nproc_per_node`` > 1)."""

    ctx: RunContext
    manifest: dict
    nproc: int


def start_run(lab: Lab, profile: str, overrides: list[str], output_root: Path) -> StartedRun:
    """Begin one run of ``lab`` (the script's :func:`main` and a notebook's first cell both call it):
    the profile with ``overrides`` applied, the device (and enough of them for several processes),
    a fresh run directory, the console copied to ``run.log``, seeds and determinism, and
    ``manifest.json`` with ``status: running``.

    Raises:
        LabError: unknown profile or override, no accelerator for a full profile, too few devices,
            an output folder that cannot be written.
    """
    config, applied = load_profile(lab, profile, overrides)
    kind, _ = lab.profile_of(profile)
    from labkit.lab.device import reset_peak_memory, select_device
    from labkit.rundir import base_manifest, new_run_dir, write_json

    device = select_device(config["device"])
    nproc = nproc_per_node(lab, config)
    if nproc > 1:  # several processes: enough devices, before any output
        from labkit.lab.launch import check_nproc

        check_nproc(nproc, device)
    if kind == "smoke":
        print(SMOKE_BANNER.format(full=profile.replace("smoke", "full")), flush=True)
    run_dir = new_run_dir(output_root, lab.name, profile)
    quiet_console(run_dir)
    print(f"[{lab.name}] profile={profile} device={device} run_dir={run_dir}", flush=True)
    print(f"[{lab.name}] library messages and warnings: {run_dir / 'run.log'}", flush=True)

    reproducibility = seed_everything(config)
    manifest = base_manifest(lab.name, profile, config["seed"], config, applied)
    manifest["reproducibility"] = reproducibility
    write_json(run_dir / "manifest.json", {k: v for k, v in manifest.items() if k != "_t0"})
    # Trainer's TensorBoardCallback (report_to: tensorboard) writes its event files here.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    if nproc == 1:
        reset_peak_memory(device)
    return StartedRun(RunContext(lab, profile, config, device, run_dir), manifest, nproc)


def finish_run(started: StartedRun, metrics: dict | None, launched: dict | None = None) -> dict:
    """Complete a run :func:`start_run` began: ``metrics.json`` (``metrics`` given: a single process;
    several processes wrote theirs), the manifest stamped ``completed`` with the accelerator, the peak
    memory (the largest rank's when ``launched`` holds the ranks), the weights' hashes and the Hub
    commits the profile's repositories resolved to (:func:`labkit.rundir.hub_commits`), and ``latest``
    pointed at the run. Returns the manifest written."""
    from labkit.lab.device import accelerator_info, peak_memory_bytes
    from labkit.rundir import finish_manifest, hub_commits, weight_hashes

    ctx = started.ctx
    if launched:
        peak = max(r["peak_memory_bytes"] for r in launched["ranks"])  # the largest rank's
    else:
        from labkit.lab.metrics import write_metrics

        write_metrics(ctx.run_dir, metrics)
        peak = peak_memory_bytes(ctx.device)
    manifest = finish_manifest(
        ctx.run_dir,
        started.manifest,
        "completed",
        accelerator=accelerator_info(ctx.device),
        peak_memory_bytes=peak,
        weights_sha256=weight_hashes(ctx.run_dir),
        hub=hub_commits(ctx.config),
        **(launched or {}),
    )
    print(f"[{ctx.lab.name}] done: {ctx.run_dir}", flush=True)
    return manifest


def fail_run(started: StartedRun, error: str) -> dict:
    """Stamp the run ``failed`` with ``error`` (one line) in its manifest; returns the manifest written."""
    from labkit.rundir import finish_manifest

    return finish_manifest(started.ctx.run_dir, started.manifest, "failed", error=error)


def main(lab_name: str, run: Callable[[RunContext], dict], argv: list[str] | None = None) -> int:
    """Run ``run`` under one profile; returns the process exit status (0 ok, 2 bad input, 130 interrupted by Ctrl-C)."""
    args = parse_args(argv)
    started = None
    try:
        lab = get_lab(lab_name)
        if os.environ.get(RUN_DIR_ENV):  # a rank started by _launch_ranks: the settings the run recorded
            manifest_path = Path(os.environ[RUN_DIR_ENV]) / "manifest.json"
            return _rank_main(lab, args, json.loads(manifest_path.read_text(encoding="utf-8"))["config"], run)
        started = start_run(lab, args.profile, args.overrides, args.output_root)
        if started.nproc > 1:  # this process touches no card while the ranks run (a context would hold card 0)
            ctx = started.ctx
            finish_run(started, None, _launch_ranks(lab, args, ctx.config, ctx.device, ctx.run_dir))
        else:
            finish_run(started, run(started.ctx))
        return 0
    except LabError as exc:
        if started is not None:
            fail_run(started, str(exc))
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; the run is marked failed, latest kept
        if started is not None:
            fail_run(started, "interrupted (Ctrl-C)")
        where = (
            f": {started.ctx.run_dir} is marked failed, latest still names the newest completed run" if started else ""
        )
        print(f"interrupted{where}", file=sys.stderr, flush=True)
        return 130
    except BaseException as exc:
        if started is not None:
            fail_run(started, f"{type(exc).__name__}: {exc}")
        raise
