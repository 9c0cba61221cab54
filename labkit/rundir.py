"""Run directories and manifests.

Every run writes to a new ``outputs/<lab>/<profile>/<UTC timestamp>/`` and never touches an earlier
one; ``outputs/<lab>/<profile>/latest`` is a relative symlink to the newest *completed* one (a failed
or interrupted run never replaces it). ``manifest.json`` beside
the outputs records what is needed to reproduce and compare the run: lab, profile, seed, config and
overrides, git commit, image id, Python and package versions, accelerator, timings, peak memory.
Secrets (``HF_TOKEN``, ``OPENAI_API_KEY``) are never recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from labkit.config import REPO_ROOT
from labkit.errors import LabError

#: Environment variables copied into the manifest (never tokens).
RECORDED_ENV = ("HF_ENDPOINT", "HF_HOME", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES")


def check_writable(directory: Path) -> None:
    """Create ``directory`` if needed and prove a file can be written there.

    Raises:
        LabError: naming the directory, before any training starts.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise LabError(
            f"outputs directory {directory} is not writable ({exc.strerror}). Choose another with "
            "OUTPUT_ROOT=... or fix its permissions (in a container the lab runs as uid 1000)."
        ) from exc


def new_run_dir(output_root: Path, lab: str, profile: str) -> Path:
    """Create and return a fresh ``<output_root>/<lab>/<profile>/<UTC timestamp>``.

    Never reuses a directory: a second run in the same second gets a ``-1``, ``-2`` … suffix.
    ``latest`` moves to it when it completes (:func:`finish_manifest`).
    """
    parent = Path(output_root) / lab / profile
    check_writable(parent)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        run_dir = parent / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            continue
    return run_dir


def run_order(run_dir: Path) -> tuple[str, int]:
    """Sort key of run folders by start time: the UTC stamp, then the ``-N`` suffix of runs started in
    the same second (``...Z-10`` after ``...Z-2``)."""
    stamp, _, n = Path(run_dir).name.partition("-")
    return stamp, int(n) if n.isdigit() else 0


def point_latest(run_dir: Path) -> None:
    """Point ``<run_dir>/../latest`` at ``run_dir`` (a relative symlink, replaced atomically), unless a
    newer run completed first (two runs at once: ``latest`` stays on the newer)."""
    parent = Path(run_dir).parent
    current = parent / "latest"
    if current.exists() and run_order(current.resolve()) > run_order(run_dir):
        return
    tmp = parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(run_dir).name)
    os.replace(tmp, parent / "latest")


def run_status(run_dir: Path) -> str:
    """``status`` from a run's ``manifest.json`` (``completed``, ``failed``, ``running``), or ``missing``."""
    try:
        return str(json.loads((Path(run_dir) / "manifest.json").read_text(encoding="utf-8")).get("status"))
    except (OSError, ValueError, AttributeError):
        return "missing"


def newest_completed_run(output_root: Path, lab: str, profile: str) -> tuple[Path | None, Path | None]:
    """``(newest completed run, newer run that did not complete)`` of a lab's profile.

    Run folders are UTC timestamps, so name order is time order. Verification and the report use
    the newest *completed* one (where ``latest`` points) and name the newer failure. Either element
    is ``None`` when there is no such run.
    """
    parent = Path(output_root) / lab / profile
    runs = (
        sorted((p for p in parent.iterdir() if p.is_dir() and not p.is_symlink()), key=run_order, reverse=True)
        if parent.is_dir()
        else []
    )
    newer_failure = None
    for run_dir in runs:
        if run_status(run_dir) == "completed":
            return run_dir.resolve(), newer_failure
        newer_failure = newer_failure or run_dir.resolve()
    return None, newer_failure


def remove_if_empty(directory: Path) -> None:
    """Remove ``directory`` if it exists and is empty (a Trainer ``output_dir`` nothing was saved to)."""
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def git_commit() -> dict:
    """``{"commit": sha, "dirty": bool}`` of the repo, or what the container was given in ``LABS_GIT_COMMIT``."""
    if os.environ.get("LABS_GIT_COMMIT"):
        sha, _, dirty = os.environ["LABS_GIT_COMMIT"].partition("+")
        return {"commit": sha, "dirty": dirty == "dirty"}
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha, "dirty": dirty}


def package_versions() -> dict[str, str]:
    """Every installed distribution and its version, sorted by name."""
    versions = {
        dist.metadata["Name"].lower(): dist.version for dist in metadata.distributions() if dist.metadata["Name"]
    }
    return dict(sorted(versions.items()))


def cuda_path_record() -> dict | None:
    """The CUDA path the host side chose for this run (labkit.host.nvidia.cuda_path, handed over as
    ``LABS_CUDA_IMAGE`` / ``LABS_CUDA_COMPAT`` / ``LABS_CUDA_WHY``) and whether the forward compatibility
    libraries really are first on ``LD_LIBRARY_PATH`` (images/common/cuda-env); None for a run the host
    side did not plan on a CUDA image (an Ascend image, a script started by hand)."""
    if "LABS_CUDA_IMAGE" not in os.environ:
        return None
    compat_dir = os.environ.get("LABS_CUDA_COMPAT_DIR", "/usr/local/cuda/compat")
    return {
        "image": os.environ["LABS_CUDA_IMAGE"],
        "forward_compat": os.environ.get("LABS_CUDA_COMPAT") == "1",
        "compat_libraries_first": os.environ.get("LD_LIBRARY_PATH", "").split(":")[0] == compat_dir,
        "why": os.environ.get("LABS_CUDA_WHY"),
    }


def base_manifest(lab: str, profile: str, seed: int, config: dict, overrides: dict) -> dict:
    """The manifest fields known before the run starts."""
    return {
        "lab": lab,
        "profile": profile,
        "seed": seed,
        "status": "running",
        "overrides": overrides,
        "config": config,
        "git": git_commit(),
        "image_id": os.environ.get("LAB_IMAGE_ID"),
        "runtime": os.environ.get("LAB_RUNTIME", "native"),  # set to docker by the lab images
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "env": {k: os.environ[k] for k in RECORDED_ENV if k in os.environ},
        "cuda_path": cuda_path_record(),
        "start_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "_t0": time.monotonic(),
    }


#: Files holding weights (the tiny model built for a smoke run, trained models, adapters, quantized models,
#: ZeRO checkpoints), and the Trainer's ``training_args.bin`` that is not weights (a pickled
#: TrainingArguments holding the run folder's path).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
NOT_WEIGHTS = ("training_args.bin",)


def weight_hashes(run_dir: Path) -> dict[str, str]:
    """``{path relative to the run: sha256 hex}`` of every weights file under ``run_dir`` (sorted): two
    runs of the same profile on the same machine and image must give the same (``tests/test_labs.py``)."""
    found = {}
    for path in sorted(Path(run_dir).rglob("*")):
        if path.suffix in WEIGHT_SUFFIXES and path.name not in NOT_WEIGHTS and path.is_file() and not path.is_symlink():
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            found[str(path.relative_to(run_dir))] = digest.hexdigest()
    return found


def _strings(value) -> set[str]:
    """Every string inside a profile's (nested) settings."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*map(_strings, value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*map(_strings, value)) if value else set()
    return set()


def hub_commits(config: dict, cache_dir: str | Path | None = None) -> list[dict]:
    """The Hugging Face Hub repositories a profile names (any setting whose value is a cached repo's
    id: ``model.name_or_path``, ``data.hub_dataset``, ...), as the local Hub cache resolves them at the
    end of the run: ``[{"repo", "type", "refs": {ref: commit}, "commits": [...]}]``, sorted. A profile
    that loads ``revision: main`` records the commit ``main`` was, so a rerun can pin it
    (``SET=model.revision=<commit>``). ``cache_dir``: the Hub cache (default ``HF_HUB_CACHE``, under
    ``HF_HOME``); empty where there is none or nothing named is cached (smoke profiles: tiny local
    models) or unreadable (a warning on stderr: a finished run is not failed for its record). Reads the
    cache with ``huggingface_hub.scan_cache_dir``; never downloads."""
    try:
        from huggingface_hub import constants, scan_cache_dir
        from huggingface_hub.errors import CacheNotFound, HFValidationError
        from huggingface_hub.utils import validate_repo_id
    except ImportError:  # a host-side caller without the Hub client
        return []

    def is_repo_id(text: str) -> bool:  # prose settings (a judge's prompt) and paths are not repo ids
        try:
            validate_repo_id(text)
        except HFValidationError:
            return False
        return True

    named = {text for text in _strings(config) if is_repo_id(text)}
    # The scan stats every cached file: skip it when no named repository has a cache folder (smoke
    # profiles, or a fresh cache). Folders are <type>s--<org>--<name> (huggingface_hub's cache layout).
    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    folders = {f"{kind}s--{name.replace('/', '--')}" for name in named for kind in ("model", "dataset", "space")}
    try:
        if not any((cache / folder).is_dir() for folder in folders):
            return []
        info = scan_cache_dir(cache)
    except CacheNotFound:
        return []
    except OSError as exc:  # an unreadable cache costs the record, never the finished run
        print(
            f"warning: the Hub cache {cache} could not be read ({exc}): the manifest records no commits",
            file=sys.stderr,
        )
        return []
    found = []
    for repo in info.repos:
        if repo.repo_id not in named:
            continue
        refs = {ref: rev.commit_hash for rev in repo.revisions for ref in rev.refs}
        commits = sorted(rev.commit_hash for rev in repo.revisions)
        found.append(
            {"repo": repo.repo_id, "type": repo.repo_type, "refs": dict(sorted(refs.items())), "commits": commits}
        )
    return sorted(found, key=lambda r: (r["type"], r["repo"]))


#: Metrics that may differ between two runs of the same profile that are otherwise identical: wall-clock
#: timings and speeds, memory peaks, the chat-API cache's counters (a rerun makes no request and counts
#: no tokens), and the
#: environment report (a native run's CPU torch build vs the image's CUDA build).
VOLATILE_METRIC = re.compile(
    r"(^|\.)([a-z_]*(_s|_seconds|seconds|runtime|per_second|per_s|_ms|_time)|time_[a-z_]*|[a-z_]*(peak|memory|rss)"
    r"[a-z_]*|requests|retries|cache_[a-z_]*|from_cache|(prompt|completion)_tokens|total_flos|environment)(\.|$)"
)


def comparable_metrics(metrics: dict, prefix: str = "") -> dict[str, object]:
    """``{dotted name: value}`` of a ``metrics.json`` without :data:`VOLATILE_METRIC` entries: what two
    runs of the same profile on the same machine and image must agree on exactly."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if VOLATILE_METRIC.search(name):
            continue
        if isinstance(value, dict):
            flat.update(comparable_metrics(value, name + "."))
        else:
            flat[name] = value
    return flat


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented UTF-8 JSON (atomically: a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def finish_manifest(run_dir: Path, manifest: dict, status: str, **extra) -> dict:
    """Stamp end time, wall time (s) and ``status`` (``completed`` / ``failed``) and write manifest.json."""
    manifest = dict(manifest)
    t0 = manifest.pop("_t0")
    manifest.update(
        status=status,
        end_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        wall_time_s=round(time.monotonic() - t0, 2),
        **extra,
    )
    write_json(run_dir / "manifest.json", manifest)
    if status == "completed":
        point_latest(run_dir)
    return manifest
