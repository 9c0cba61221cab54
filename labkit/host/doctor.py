"""``invoke doctor``: what this host offers the labs, one line per fact, and what is wrong.

Runtimes (Docker and BuildKit, the NVIDIA runtime, native: Python 3.11 and disk), the GPU and its
driver against the CUDA of the image's torch and the CUDA path the host gets (the CUDA 13 image, the
same with CUDA forward compatibility, or the CUDA 12 image: :func:`labkit.host.nvidia.cuda_path`; a
host none serves gets one line naming the minimum driver), Ascend NPUs (npu-smi, the driver against the Ascend
image's CANN, every device node and driver file a container needs), and, for a lab, whether its full
profile fits the GPU (``labs/<lab>/bench.yaml``, measured) and the largest per-device batch that does.
"""

from __future__ import annotations

import shutil
import subprocess

from labkit.config import Lab
from labkit.host import ascend, benchtable, docker, nvidia
from labkit.host.native import PYTHON_VERSION, VENVS_DIR, uv_command
from labkit.host.probe import Accelerators, probe

WIDTH = 16


def say(topic: str, text: str) -> None:
    print(f"{topic:<{WIDTH}}: {text}")


def npu_lines(host: Accelerators, docker_runtimes: str) -> list[str]:
    """The Ascend lines (cards and health, driver vs CANN, missing device nodes or driver files).

    Returns:
        Problem tags for the exit status. A host with neither npu-smi nor /dev/davinci* gets one line
        and no problem (it is not an Ascend host).
    """
    if not host.npus and not host.npu_problem and not ascend.card_nodes():
        say("npu", "none found (npu-smi, /dev/davinci*)")
        return []
    problems = []
    if host.npu_problem:
        say("npu", host.npu_problem)
        problems.append("npu")
    for card in host.npus:
        health = "" if card.health == "OK" else f": health {card.health} (npu-smi info -t health -i {card.npu_id})"
        memory = f"{card.memory_gib:.1f} GiB HBM" if card.memory_gib else "HBM unknown"
        say("npu", f"{card.npu_id}: Ascend {card.name}, {memory}{health}")
        problems += ["npu"] if health else []
    cann = ascend.image_cann(docker.SHARED_IMAGES["ascend"] / "Dockerfile")
    driver = ascend.driver_version() or host.npu_driver
    old = ascend.driver_problem(driver, cann) if driver else None
    say(
        "npu driver",
        f"{driver or 'unknown (no /usr/local/Ascend/driver/version.info)'}; images/ascend is CANN "
        f"{cann}, documented with driver {ascend.CANN_DRIVER.get(cann or '', '?')}" + (f": {old}" if old else ""),
    )
    problems += ["npu-driver"] if old or not driver else []
    for line in ascend.missing_pieces():
        say("npu mount", line)
        problems.append("npu-mount")
    if "ascend" in docker_runtimes:
        say("npu runtime", "Ascend Docker Runtime registered; the labs pass the devices themselves")
    return problems


def cuda_path_lines(host: Accelerators, lab: Lab | None, docker_ok: bool) -> list[str]:
    """The CUDA path lines of a GPU host: which image a GPU run takes and why (driver, GPU class,
    flavor), for containers and natively; a lab without a CUDA 12 lock on a host that needs it.

    Returns:
        ``["driver"]`` when no path serves this host (the line names the minimum driver), else nothing.
    """
    cuda = nvidia.flavor_cuda()
    path = nvidia.cuda_path(host.gpus, cuda, docker=docker_ok)
    flavor = {"cuda": f"images/cuda (CUDA {cuda['cuda']})", "cuda12": f"images/cuda12 (CUDA {cuda['cuda12']})"}
    compat = ", CUDA forward compatibility ON" if path.compat else ""
    where = "in containers" if docker_ok else "natively (Docker not usable)"
    say("cuda path", f"{flavor.get(path.flavor, 'NONE')}{compat} {where}: {path.why}")
    if path.flavor is None:
        return ["driver"]
    if docker_ok and path.compat:
        native = nvidia.cuda_path(host.gpus, cuda, docker=False)
        say("cuda native", f"{flavor.get(native.flavor, 'NONE')} with RUNTIME=native: {native.why}")
    if lab and path.flavor == "cuda12" and not lab.requirements(None, "cuda12").is_file():
        floor = nvidia.MIN_DRIVER[int(cuda["cuda"].split(".")[0])]
        say(
            lab.name,
            f"has no CUDA 12 lock (its pins need images/cuda's torch): on this host it needs driver >= {floor}",
        )
        return ["driver"]
    return []


def check(lab: Lab | None = None, host: Accelerators | None = None) -> list[str]:
    """Print the host report; return the problem tags (empty: all good).

    Tags: ``runtime`` (neither Docker nor native usable), ``gpu`` / ``driver`` (nvidia-smi fails; a
    driver no CUDA image flavor serves, or the lab's flavor does not), ``npu`` / ``npu-driver`` /
    ``npu-mount``, ``memory`` (the lab's full profile does not fit the GPU).

    Raises:
        LabError: the lab's bench.yaml is malformed.
    """
    host = host if host is not None else probe()
    problems = []
    runtimes = ""
    engine = docker.engine_error()
    why = engine or docker.buildkit_error()
    say("docker", engine or "engine answers; " + (why or "BuildKit ok: images build"))
    if not engine:
        runtimes = docker.registered_runtimes()
        if "nvidia" in runtimes:
            toolkit = "registered"
        elif shutil.which("nvidia-smi"):
            toolkit = "not registered: containers get no GPU (install and configure nvidia-container-toolkit)"
        else:
            toolkit = "not registered (not needed: no NVIDIA GPU here)"
        say("nvidia runtime", toolkit)
    found = subprocess.run([*uv_command(), "python", "find", PYTHON_VERSION], capture_output=True, text=True)
    python = found.stdout.strip() if found.returncode == 0 else None
    from labkit.host.nvidia import free_gib

    disk = free_gib(VENVS_DIR)
    say(
        "native",
        f"Python {PYTHON_VERSION} "
        + (f"at {python}" if python else "NOT found (apt-get install python3.11, or `uv python install 3.11`)")
        + f"; {disk:.0f} GiB free for .venvs and uv's cache"
        + ("" if disk >= 12 else " (low: the first environment with CUDA torch takes ~7 GiB, each lab ~1 GiB more)")
        + "; audio decodes with the soundfile wheel (no FFmpeg needed)",
    )
    if why and not python:
        problems.append("runtime")
    if host.gpu_problem:
        say("gpu", host.gpu_problem)
        problems.append("gpu")
    for gpu in host.gpus:
        cap = f", compute capability {gpu.compute_cap}" if gpu.compute_cap else ""
        klass = "data-center" if gpu.data_center else "not data-center"
        say("gpu", f"{gpu.name}, {gpu.memory_gib:.1f} GiB, driver {gpu.driver}{cap} ({klass})")
    if host.gpus:
        problems += cuda_path_lines(host, lab, docker_ok=not why)
    problems += npu_lines(host, runtimes if not engine else "")
    if not host.gpus and not host.gpu_problem:
        also = "; NPU runs take a lab's npu variant (VARIANT=npu)" if host.npus else ": labs run their smoke profile"
        say("gpu", f"none found (nvidia-smi){also}")
    if lab and host.npus and not host.gpus:
        say(
            lab.name,
            f"npu variant: make lab-{lab.name} VARIANT=npu; its NPU memory is not measured yet"
            if "npu" in lab.variants
            else "no npu variant: on this host it runs its smoke profile only",
        )
    elif lab:
        memory = max((g.memory_gib for g in host.gpus), default=None)
        text, fits = benchtable.describe(lab, benchtable.load(lab), memory)
        print(text)
        problems += [] if fits else ["memory"]
    return problems
