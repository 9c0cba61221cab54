"""Carrying out a run plan on the host: the lab's script natively (in its virtualenv) or in its
container, its output streamed; then which runs ``invoke verify`` checks; and ``invoke bench``.

Outputs go to ``OUTPUT_ROOT`` (default ``outputs/``): ``<lab>/<profile>/<UTC time>/`` per run, never
overwritten. The git commit is read once here (:func:`labkit.rundir.git_commit`) and handed to the
run (``LABS_GIT_COMMIT``), so a container without the repository records it too.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from labkit.config import REPO_ROOT, Lab
from labkit.errors import LabError
from labkit.host import docker
from labkit.host.native import ensure_env
from labkit.host.plan import RunPlan
from labkit.rundir import check_writable, git_commit, newest_completed_run, run_status

#: Where the container sees the outputs folder, and ``CV_DIR`` (a Common Voice locale folder).
CONTAINER_OUTPUTS = "/opt/labs/outputs"
CONTAINER_CV_DIR = "/data/common_voice"


def output_root() -> Path:
    """``OUTPUT_ROOT`` (default ``<repo>/outputs``), absolute."""
    return Path(os.environ.get("OUTPUT_ROOT", REPO_ROOT / "outputs")).resolve()


def git_describe() -> str:
    """``<sha>`` or ``<sha>+dirty`` for ``LABS_GIT_COMMIT`` (``unknown`` outside a git checkout)."""
    found = git_commit()
    if not found["commit"]:
        return "unknown"
    return found["commit"] + ("+dirty" if found["dirty"] else "")


def stream(cmd: list[str], env: dict | None = None) -> tuple[int, str]:
    """Run ``cmd`` from the repository root, echoing its output live; return (exit code, last 4 KB)."""
    print("+ " + shlex.join(cmd), flush=True)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, text=True, bufsize=1
    )
    tail = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        tail = (tail + line)[-4096:]
    return proc.wait(), tail


def common_data_mount(plan: RunPlan) -> str | None:
    """``CV_DIR`` for a lab whose data source is a Common Voice folder, unless ``data.path`` is set."""
    cv_dir = os.environ.get("CV_DIR")
    if not cv_dir or plan.config.get("data", {}).get("source") != "common_voice_dir":
        return None
    if "data.path" in plan.applied:
        return None
    path = Path(cv_dir).expanduser()
    if not path.is_dir():
        raise LabError(f"CV_DIR={cv_dir}: no such folder; point it at a Common Voice locale folder (with train.tsv)")
    return str(path.resolve())


def host_path_mounts(plan: RunPlan) -> list[tuple[str, str]]:
    """``(host path, container path:ro)`` for every override whose value names a file or folder on this
    host that the lab's image lacks: an absolute path at the same path, a path relative to the
    repository (outside ``labkit/`` and the lab's own folder, which the image holds) under
    ``/opt/labs``. So ``SET=data.files.train=/data/my.csv`` reads the same file in the container as
    natively, read-only."""
    mounts = []
    inside = (REPO_ROOT / "labkit", plan.lab.dir)
    for item in plan.overrides:
        value = item.partition("=")[2].strip()
        if not value or "\n" in value:
            continue
        path = Path(value)  # ~/ expanded already (plan.split_overrides)
        if path.is_absolute():
            if path.exists():
                mounts.append((str(path), f"{path}:ro"))
            continue
        here = (REPO_ROOT / path).resolve()
        if here.exists() and here.is_relative_to(REPO_ROOT) and not any(here.is_relative_to(d) for d in inside):
            mounts.append((str(here), f"/opt/labs/{here.relative_to(REPO_ROOT)}:ro"))
    return mounts


def script_args(plan: RunPlan, output_root_arg: str, overrides: list[str]) -> list[str]:
    """The lab script's arguments: profile, output root, each override as ``--set``."""
    return ["--profile", plan.profile, "--output-root", output_root_arg] + [
        arg for o in overrides for arg in ("--set", o)
    ]


def run(plan: RunPlan, root: Path | None = None) -> tuple[int, str]:
    """Run ``plan`` (its image built already for Docker: :func:`build`); returns (exit code, output tail).

    Raises:
        LabError: the profile needs an accelerator the host lacks, the outputs folder is not writable,
            the image is not built, the native environment cannot be made, ``CV_DIR`` is not a folder.
    """
    root = Path(root) if root else output_root()
    plan.check_accelerator()
    env = run_env(plan)
    if plan.runtime == "native":
        check_writable(root / plan.lab.name / plan.profile)
        overrides = native_overrides(plan)  # a CV_DIR that is not there: said before the environment is made
        cmd = [str(ensure_env(plan.lab, plan.variant, plan.flavor)), str(plan.lab.dir / plan.lab.entrypoint)]
        return stream(cmd + script_args(plan, str(root), overrides), {**os.environ, **env})

    tag = docker.image_tag(plan.image_name)
    found = docker.image_id(tag)
    if not found:
        raise LabError(f"image {tag} is not built yet: run `invoke build --lab {plan.lab.name}` (make lab-... does)")
    cmd, overrides = container_args(plan, root, {"LAB_IMAGE_ID": found, **env})
    cmd += [tag, *script_args(plan, CONTAINER_OUTPUTS, overrides)]
    code, tail = stream(cmd)
    if code != 0 and "could not select device driver" in tail:
        print(f"error: {docker.GPU_DRIVER_HELP}", file=sys.stderr)
    return code, tail


def run_env(plan: RunPlan, offline: bool = True) -> dict[str, str]:
    """What every run of ``plan`` is told, natively and in a container, script or notebook: the git
    commit, its CUDA path (``cuda-env``) and, with ``offline``, ``HF_HUB_OFFLINE=1`` for a profile
    that needs no Hub (a notebook server passes False: its kernel may start another profile)."""
    hub = {"HF_HUB_OFFLINE": "1"} if offline and plan.offline else {}
    return {"LABS_GIT_COMMIT": git_describe(), **hub, **plan.cuda_env}


def native_overrides(plan: RunPlan) -> list[str]:
    """The plan's overrides for a native run: ``data.path`` from ``CV_DIR`` added where it applies.

    Raises:
        LabError: ``CV_DIR`` is not a folder.
    """
    cv_dir = common_data_mount(plan)
    return [*plan.overrides, *([f"data.path={cv_dir}"] if cv_dir else [])]


def container_args(
    plan: RunPlan, root: Path, env: dict[str, str], mounts: list[tuple[str, str]] = ()
) -> tuple[list[str], list[str]]:
    """``docker run`` up to the image for ``plan`` (:func:`labkit.host.docker.run_args`: the outputs
    folder at :data:`CONTAINER_OUTPUTS`, the host files the overrides name, ``CV_DIR``, ``env`` and the
    plan's accelerator, cards and platform), what ``make lab`` and ``make notebook`` both start; and the
    overrides as the container sees them. ``mounts``: more ``(host, container)`` pairs.

    Raises:
        LabError: the outputs folder cannot be made writable for the container's user; ``CV_DIR`` is
            not a folder.
    """
    docker.container_writable(root / plan.lab.name / plan.profile, top=root)
    overrides = list(plan.overrides)
    all_mounts = [(str(root), CONTAINER_OUTPUTS), *host_path_mounts(plan), *mounts]
    if cv_dir := common_data_mount(plan):
        all_mounts.append((str(Path(cv_dir).resolve()), f"{CONTAINER_CV_DIR}:ro"))
        overrides.append(f"data.path={CONTAINER_CV_DIR}")
    cmd = docker.run_args(all_mounts, env, plan.container_accelerator, cards=plan.nproc)
    cmd += docker.platform_args(plan.lab.base_image(plan.variant))  # --platform (and QEMU's CPU model)
    return cmd, overrides


def build(plan: RunPlan) -> None:
    """Build the image ``plan`` runs in (nothing for a native run).

    Raises:
        LabError: the profile needs an accelerator the host lacks: said before a multi-GB build.
    """
    plan.check_accelerator()
    if plan.runtime == "docker":
        docker.build_lab_image(plan.lab, plan.variant, plan.flavor)


def verify_targets(lab: Lab, root: Path, profile: str | None = None) -> list[tuple[str, Path]]:
    """``(profile, run directory)`` pairs ``invoke verify`` checks: each profile's newest completed run
    (``profile`` given: that one only). A newer run that did not complete is named in a note.

    Raises:
        LabError: ``profile`` given and never run; no run of the lab at all (says what to run).
    """
    targets = []
    for name in [profile] if profile else lab.profiles:
        found, newer_failure = newest_completed_run(root, lab.name, name)
        if newer_failure:
            print(
                f"note: {lab.name} / {name}: the newest run {newer_failure} did not complete "
                f"({run_status(newer_failure)}); "
                + (
                    f"checking the newest completed run instead (--run {newer_failure} checks that one)"
                    if found
                    else "checking it"
                )
            )
        found = found or newer_failure
        if found:
            targets.append((name, found))
        elif profile:
            raise LabError(f"no {name} run of {lab.name} under {root}: run `make lab-{lab.name} PROFILE={name}`")
    if not targets:
        raise LabError(f"no runs of {lab.name} under {root}: run `make lab-{lab.name}` first")
    return targets


def bench(
    lab: Lab, runtime: str, args: list[str], device: str, host_kind: str | None, root: Path | None = None
) -> tuple[int, Path]:
    """Run ``labs/<lab>/bench.py`` with ``args`` natively or in the lab's image; returns (exit code,
    output folder ``<root>/<lab>/bench/<UTC time>/``). The folder is made only once the bench can run.

    Raises:
        LabError: no bench.py; an NPU bench (not written); ``device=accelerator`` on a host without one.
    """
    if not (lab.dir / "bench.py").is_file():
        raise LabError(f"lab {lab.name} has no bench.py")
    if device == "npu" or (device == "accelerator" and host_kind == "npu"):
        raise LabError(
            "invoke bench measures the CUDA (or CPU) image's step; an NPU bench is not written yet (the npu "
            f"variants train bf16 LoRA, not bench.py's 4-bit step): run `make lab-{lab.name} VARIANT=npu` and read "
            "peak_memory_bytes and train.samples_per_second in its manifest and metrics"
        )
    if device in ("accelerator", "cuda") and not host_kind:
        raise LabError(
            "invoke bench measures the full profile's step on a GPU and this host has none (nvidia-smi finds "
            "nothing). On a CPU: `invoke bench --lab X --arch tiny --device cpu` runs the same step at tiny scale "
            "(make bench-X ARCH=tiny DEVICE=cpu)"
        )
    root = Path(root) if root else output_root()
    out = root / lab.name / "bench" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    check_writable(out)
    if runtime == "native":
        cmd = [str(ensure_env(lab)), str(lab.dir / "bench.py"), *args, "--out", str(out)]
        code, _ = stream(cmd, {**os.environ, "HF_HUB_OFFLINE": "1"})
    else:
        docker.build_lab_image(lab)
        docker.container_writable(out, top=root)
        accel = None if device == "cpu" else "cuda"
        cmd = docker.run_args([(str(out), "/opt/labs/bench-out")], {"HF_HUB_OFFLINE": "1"}, accelerator=accel)
        cmd += ["--entrypoint", "cuda-env", docker.image_tag(lab.name), "python", f"labs/{lab.name}/bench.py", *args]
        code, _ = stream([*cmd, "--out", "/opt/labs/bench-out"])
    if code != 0 and out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # nothing measured: no empty folder left behind
    return code, out
