"""Host facts without torch: the NVIDIA driver and GPUs, known GPU-access faults, native readiness.

Used by ``invoke doctor`` (host tooling) and by :func:`labkit.lab.device.select_device` when a full
profile finds no GPU, so both give the same one-line cause.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Oldest Linux driver branch for a CUDA major version the labs' torch builds use (NVIDIA CUDA Toolkit
#: release notes, "CUDA Toolkit and Corresponding Driver Versions": CUDA 13.0 GA ships with the 580
#: branch; CUDA 12.1 GA, the course variant's torch 2.2 build, with 530).
MIN_DRIVER = {13: 580, 12: 530}

NVML_LOST = (
    "nvidia-smi says 'Failed to initialize NVML: Unknown Error': this container lost its GPU, which "
    "happens when the host runs `systemctl daemon-reload` while Docker manages cgroups with systemd "
    "(NVIDIA Container Toolkit notice, github.com/NVIDIA/nvidia-docker/issues/1730). Recreate the "
    "container; to avoid it, run `sudo nvidia-ctk system create-dev-char-symlinks --create-all` on the "
    'host (and its udev rule), or set `"exec-opts": ["native.cgroupdriver=cgroupfs"]` in '
    "/etc/docker/daemon.json and restart Docker."
)


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    driver: str


def nvidia_smi() -> tuple[list[Gpu], str | None]:
    """``(GPUs, problem)`` from ``nvidia-smi``: no GPUs and ``None`` when it is not installed;
    a one-line ``problem`` when it is installed but fails (NVML lost, driver not loaded)."""
    if not shutil.which("nvidia-smi"):
        return [], None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    )
    text = (out.stdout + out.stderr).strip()
    if "Failed to initialize NVML" in text:
        return [], NVML_LOST
    if out.returncode != 0:
        return [], f"nvidia-smi failed ({text.splitlines()[-1] if text else out.returncode}): is the driver loaded?"
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and re.fullmatch(r"[\d.]+", parts[1]):
            gpus.append(Gpu(parts[0], round(float(parts[1]) / 1024, 1), parts[2]))
    return gpus, None


def driver_problem(driver: str, cuda: str | None) -> str | None:
    """One line if ``driver`` (e.g. ``535.104.05``) is older than CUDA ``cuda`` (e.g. ``13.0``) needs."""
    if not cuda or not driver.split(".")[0].isdigit():
        return None
    need = MIN_DRIVER.get(int(cuda.split(".")[0]))
    if need and int(driver.split(".")[0]) < need:
        return (
            f"NVIDIA driver {driver} is older than CUDA {cuda} needs (>= {need}): PyTorch then quietly sees no "
            f"GPU. Update the host driver to >= {need} (or use a lab variant built for an older CUDA)."
        )
    return None


def gpu_problem(cuda: str | None) -> str | None:
    """Why a host with NVIDIA tooling shows no usable GPU, in one line; ``None`` if nothing is known."""
    gpus, problem = nvidia_smi()
    if problem:
        return problem
    for gpu in gpus:
        if why := driver_problem(gpu.driver, cuda):
            return why
    return None


def image_cuda(constraints: Path) -> str | None:
    """The CUDA version (``13.0``) of the torch build an image lock pins, from its
    ``nvidia-cuda-runtime`` (or ``nvidia-cuda-runtime-cuXX``) entry; ``None`` for a CPU-only lock."""
    text = Path(constraints).read_text(encoding="utf-8")
    match = re.search(r"^nvidia-cuda-runtime(?:-cu\d+)?==(\d+)\.(\d+)", text, re.MULTILINE)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def free_gib(path: Path) -> float:
    """Free space (GiB) on the file system holding ``path`` (or its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / 2**30
