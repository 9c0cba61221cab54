"""Host facts without torch: the NVIDIA driver and GPUs, known GPU-access faults, native readiness,
and which CUDA path a host with an older driver takes (:func:`cuda_path`).

Used by ``invoke doctor`` (host tooling), by the run plan (:mod:`labkit.host.plan`: the image flavor and
CUDA forward compatibility) and by :func:`labkit.lab.device.select_device` when a full profile finds
no GPU, so all give the same one-line cause.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Oldest Linux driver branch that runs any CUDA ``major.x`` application through minor version
#: compatibility (NVIDIA, "CUDA Compatibility", Minor Version Compatibility, Table 1: CUDA 13.x >= 580,
#: CUDA 12.x >= 525; docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html).
MIN_DRIVER = {13: 580, 12: 525}
#: Driver branches on which a CUDA 13.0 application runs with the ``cuda-compat-13-0`` forward
#: compatibility package: the branches the ``nvidia/cuda:13.0.x`` images list in ``NVIDIA_REQUIRE_CUDA``
#: (``brand=tesla,driver>=535,driver<536`` ... ``driver>=575,driver<576``), which the NVIDIA Container
#: Toolkit checks before it starts a container; NVIDIA's "CUDA Compatibility" guide, Forward
#: Compatibility (docs.nvidia.com/deploy/cuda-compatibility/forward-compatibility.html): "applicable
#: only for systems with NVIDIA Data Center GPUs, select NGC Server Ready SKUs of RTX cards, Jetson".
FORWARD_COMPAT_BRANCHES = {13: (535, 550, 565, 570, 575)}
#: Where the image's forward compatibility libraries live (``cuda-compat-13-0`` installs them under
#: /usr/local/cuda-13.0/compat; /usr/local/cuda links there), put first on LD_LIBRARY_PATH by
#: images/cuda/cuda-env when :data:`COMPAT_ENV` is ``1``.
COMPAT_DIR = "/usr/local/cuda/compat"
#: The variables the host hands a run: forward compatibility on (``1``) or off (``0``), the image
#: flavor (``cuda``, ``cuda12``) and why, in one line. The manifest records them (labkit.rundir).
COMPAT_ENV, FLAVOR_ENV, WHY_ENV = "LABS_CUDA_COMPAT", "LABS_CUDA_IMAGE", "LABS_CUDA_WHY"
#: The CUDA of each CUDA image flavor's torch (images/<flavor>/constraints.txt, read by :func:`image_cuda`).
FLAVORS = ("cuda", "cuda12")
#: Oldest compute capability both torch builds carry kernels for: torch 2.10's CUDA 12.8 wheels and the
#: CUDA 13.0 ones are built for Turing (7.5) to Blackwell (pytorch/pytorch#172352, the 2.10 support
#: matrix; Volta 7.0 and older only in the CUDA 12.6 builds, which are not the PyPI default).
MIN_COMPUTE_CAPABILITY = (7, 5)
#: Data-center GPU names (``nvidia-smi``'s ``name``): the Tesla brand, and the data-center models
#: without it (K80 to B200). Workstation RTX cards (``RTX A6000``, ``RTX 6000 Ada``) and GeForce are
#: not: forward compatibility fails on them (cudaErrorCompatNotSupportedOnDevice, 804). A name not
#: recognised counts as "other", which only costs the CUDA 12 image instead of forward compatibility.
DATA_CENTER = re.compile(
    r"\bTesla\b|\b(?:K80|P4|P40|P100|V100|T4G?|A2|A10G?|A10M|A16|A30|A40|A100|A800|H20|H100|H800|H200|GH200|"
    r"L4|L20|L40S?|B100|B200|B300|GB200|GB300)\b"
)

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
    """One GPU as ``nvidia-smi`` lists it: name, memory (GiB), driver version (``535.104.05``) and
    compute capability (``7.5``; None from a driver too old to report it)."""

    name: str
    memory_gib: float
    driver: str
    compute_cap: str | None = None

    @property
    def data_center(self) -> bool:
        """Whether :data:`DATA_CENTER` recognises the name (forward compatibility needs one)."""
        return bool(DATA_CENTER.search(self.name))

    @property
    def branch(self) -> int | None:
        """The driver branch (``535`` of ``535.104.05``), or None when unreadable."""
        head = self.driver.split(".")[0]
        return int(head) if head.isdigit() else None


QUERY = ("name", "memory.total", "driver_version", "compute_cap")


def nvidia_smi() -> tuple[list[Gpu], str | None]:
    """``(GPUs, problem)`` from ``nvidia-smi``: no GPUs and ``None`` when it is not installed;
    a one-line ``problem`` when it is installed but fails (NVML lost, driver not loaded). A driver whose
    nvidia-smi does not know ``compute_cap`` (before R510) is asked again without it."""
    if not shutil.which("nvidia-smi"):
        return [], None
    fields = QUERY
    for _ in range(2):
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=False,
        )
        text = (out.stdout + out.stderr).strip()
        if out.returncode == 0 or "compute_cap" not in text or "compute_cap" not in fields:
            break
        fields = QUERY[:3]
    if "Failed to initialize NVML" in text:
        return [], NVML_LOST
    if out.returncode != 0:
        return [], f"nvidia-smi failed ({text.splitlines()[-1] if text else out.returncode}): is the driver loaded?"
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) in (3, 4) and re.fullmatch(r"[\d.]+", parts[1]):
            cap = parts[3] if len(parts) > 3 and re.fullmatch(r"\d+\.\d+", parts[3]) else None
            gpus.append(Gpu(parts[0], round(float(parts[1]) / 1024, 1), parts[2], cap))
    return gpus, None


def driver_problem(driver: str, cuda: str | None) -> str | None:
    """One line if ``driver`` (e.g. ``535.104.05``) is older than CUDA ``cuda`` (e.g. ``13.0``) needs."""
    if not cuda or not driver.split(".")[0].isdigit():
        return None
    need = MIN_DRIVER.get(int(cuda.split(".")[0]))
    if need and int(driver.split(".")[0]) < need:
        return (
            f"NVIDIA driver {driver} is older than CUDA {cuda} needs (>= {need}): PyTorch then quietly sees no "
            f"GPU. Update the host driver to >= {need}; `invoke doctor` says which image serves this host as it is."
        )
    return None


def gpu_problem(cuda: str | None) -> str | None:
    """Why a host with NVIDIA tooling shows no usable GPU, in one line; ``None`` if nothing is known."""
    gpus, problem = nvidia_smi()
    if problem:
        return problem
    for gpu in gpus:
        if why := driver_problem(gpu.driver, cuda):
            if os.environ.get(COMPAT_ENV) == "1":
                return (
                    f"NVIDIA driver {gpu.driver} is older than CUDA {cuda} needs and CUDA forward compatibility was "
                    f"on ({COMPAT_ENV}=1), yet CUDA found no GPU ({gpu.name}): forward compatibility works on "
                    "data-center GPUs only; run with IMAGE=cuda12, or update the host driver"
                )
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


@dataclass(frozen=True)
class CudaPath:
    """How a run uses the host's GPUs: which CUDA image flavor, and whether CUDA forward compatibility
    is on (only ever with the CUDA 13 image, a driver older than it needs, data-center GPUs and a
    supported branch).

    Attributes:
        flavor: ``cuda`` (torch on CUDA 13), ``cuda12`` (torch on CUDA 12), or None: no image serves
            this host (``why`` names the driver or GPU it needs).
        compat: put the image's ``cuda-compat`` libraries first (:data:`COMPAT_ENV` = ``1``).
        why: one line: the driver, the GPU class and the reason.
    """

    flavor: str | None
    compat: bool
    why: str


def gpu_class(gpus: list[Gpu] | tuple[Gpu, ...]) -> str:
    """``data-center`` when every GPU is one (CUDA sees them all), else ``other``."""
    return "data-center" if gpus and all(g.data_center for g in gpus) else "other"


def cuda_path(
    gpus: list[Gpu] | tuple[Gpu, ...], cuda: dict[str, str | None], docker: bool = True, need: str | None = None
) -> CudaPath:
    """The CUDA path of a host with ``gpus`` (one driver for all), torch-free.

    Args:
        gpus: what ``nvidia-smi`` lists (at least one).
        cuda: the CUDA version of each flavor's torch, ``{"cuda": "13.0", "cuda12": "12.8"}``
            (:func:`image_cuda` of each image's constraints); a flavor missing here is not offered
            (a lab with no CUDA 12 lock).
        docker: the run is in a container (forward compatibility needs the image's libraries; a native
            run takes the CUDA 12 flavor instead).
        need: a flavor asked for explicitly (``IMAGE=cuda12``): taken as it is, forward compatibility
            still decided by the rule.

    The rule, in order (sources: :data:`MIN_DRIVER`, :data:`FORWARD_COMPAT_BRANCHES`,
    :data:`MIN_COMPUTE_CAPABILITY`):

    1. a GPU older than compute capability 7.5: no flavor (neither torch build has its kernels);
    2. a driver new enough for the CUDA 13 image: ``cuda``, forward compatibility off;
    3. an older driver, data-center GPUs only, a branch forward compatibility supports, a container:
       ``cuda`` with forward compatibility on;
    4. else a driver new enough for CUDA 12: ``cuda12``;
    5. else none: the line names the minimum driver.
    """
    branch = min((g.branch for g in gpus if g.branch is not None), default=None)
    driver = gpus[0].driver
    klass = gpu_class(gpus)
    names = ", ".join(sorted({g.name for g in gpus}))
    seen = f"driver {driver}, {names} ({klass})"
    caps = [tuple(int(x) for x in g.compute_cap.split(".")) for g in gpus if g.compute_cap]
    if caps and min(caps) < MIN_COMPUTE_CAPABILITY:
        low = ".".join(map(str, min(caps)))
        return CudaPath(
            None,
            False,
            f"{seen}: compute capability {low} is older than the labs' torch builds support "
            f"(>= {'.'.join(map(str, MIN_COMPUTE_CAPABILITY))}, Turing or newer): no image serves this GPU",
        )
    major = {flavor: int(v.split(".")[0]) for flavor, v in cuda.items() if v}
    if branch is None:
        return CudaPath("cuda", False, f"{seen}: driver version unreadable; the CUDA 13 image, unchecked")
    fits = {flavor: branch >= MIN_DRIVER.get(m, 0) for flavor, m in major.items()}
    compat_ok = klass == "data-center" and branch in FORWARD_COMPAT_BRANCHES.get(major.get("cuda", 0), ())
    if need:
        compat = need == "cuda" and not fits.get("cuda") and compat_ok and docker
        short = (
            "" if fits.get(need) or compat else f"; the driver is older than it needs (>= {MIN_DRIVER[major[need]]})"
        )
        on = ", CUDA forward compatibility on" if compat else ""
        return CudaPath(need, compat, f"{seen}: IMAGE={need} asked for{on}{short}")
    if fits.get("cuda"):
        return CudaPath("cuda", False, f"{seen}: new enough for CUDA {cuda['cuda']} (>= {MIN_DRIVER[major['cuda']]})")
    old = f"{seen}: older than CUDA {cuda.get('cuda')} needs (>= {MIN_DRIVER.get(major.get('cuda', 13))})"
    if compat_ok and docker and "cuda" in major:
        return CudaPath(
            "cuda",
            True,
            f"{old}; branch {branch} on data-center GPUs: CUDA forward compatibility "
            f"(cuda-compat-{cuda['cuda'].replace('.', '-')} in the image) on",
        )
    why_not = (
        "not a data-center GPU, which CUDA forward compatibility needs"
        if klass != "data-center"
        else f"branch {branch} is not one CUDA forward compatibility supports "
        f"({', '.join(map(str, FORWARD_COMPAT_BRANCHES.get(major.get('cuda', 13), ())))})"
        if not compat_ok
        else "a native run cannot use the image's forward compatibility libraries (RUNTIME=docker can)"
    )
    if fits.get("cuda12"):
        return CudaPath("cuda12", False, f"{old}; {why_not}: the CUDA {cuda['cuda12']} image (IMAGE=cuda12)")
    floor = min((MIN_DRIVER[m] for m in major.values() if m in MIN_DRIVER), default=MIN_DRIVER[13])
    return CudaPath(None, False, f"{old}; {why_not}: update the NVIDIA driver to >= {floor}")


def flavor_cuda() -> dict[str, str | None]:
    """``{flavor: CUDA version of its torch}`` for every CUDA image flavor (``images/<flavor>/constraints.txt``)."""
    images = Path(__file__).resolve().parents[2] / "images"
    return {flavor: image_cuda(images / flavor / "constraints.txt") for flavor in FLAVORS}
