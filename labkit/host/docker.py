"""Docker on the host: is an engine usable, building images with BuildKit, and ``docker run`` arguments.

Images: the shared ones (``images/cuda``, ``images/ascend``: ``llm-labs/<name>:dev``) and one per lab
and variant (``llm-labs/<lab>[-<variant>]:dev``), all built from the repository root. The lab image
of most labs comes from the one shared ``labs/Dockerfile`` with ``--build-arg LAB=<lab>``, the npu
variants' from ``labs/Dockerfile.npu``; labs that need more (a variant's older stack, a source build)
keep their own.

Environment: ``DOCKER`` (the CLI, default ``docker``), ``BASE_IMAGE`` / ``ASCEND_BASE_IMAGE`` (the
shared images' bases), ``ASCEND_BUILD_BASE_IMAGE`` (the Ascend base for the build machine's own
platform, where the Ascend image's env is installed; default: ``ASCEND_BASE_IMAGE`` itself, a
multi-arch image), ``ASCEND_PLATFORM`` (``linux/arm64``: emulated under QEMU on x86_64),
``PIP_INDEX_URL``, ``EXTRA_CA_CERT`` (a BuildKit secret, never a layer), ``ASCEND_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from labkit.config import REPO_ROOT, Lab
from labkit.errors import LabError
from labkit.rundir import check_writable

IMAGE_PREFIX = "llm-labs"
SHARED_IMAGES = {
    "cuda": REPO_ROOT / "images" / "cuda",
    "cuda12": REPO_ROOT / "images" / "cuda12",  # the CUDA 12 flavor, for older drivers (labkit.host.nvidia)
    "ascend": REPO_ROOT / "images" / "ascend",
}
#: The user the lab images run as (``useradd -u 1000`` in images/*/Dockerfile).
LAB_UID = 1000
#: Variables passed into containers by name (values never appear on the command line).
PASSED_ENV = (
    "HF_TOKEN",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "OMP_NUM_THREADS",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
)
#: Environment that retargets a shared image: its base (two bases, so CI can give each its stand-in)
#: and its platform (the Ascend image for linux/arm64 from an x86_64 machine, under QEMU).
BASE_IMAGE_ENV = {"cuda": "BASE_IMAGE", "cuda12": "CUDA12_BASE_IMAGE", "ascend": "ASCEND_BASE_IMAGE"}
PLATFORM_ENV = {"ascend": "ASCEND_PLATFORM"}
#: Shared images whose env is installed in a stage on the build machine's own platform (``build``),
#: tagged ``llm-labs/<name>-build:dev`` for the images on them to install their packages the same way
#: (``BUILD_IMAGE``), with the base for that platform in ``BUILD_BASE_IMAGE`` (from this variable).
BUILD_STAGE_BASE_ENV = {"ascend": "ASCEND_BUILD_BASE_IMAGE"}
GPU_DRIVER_HELP = (
    'Docker could not give the container a GPU ("could not select device driver "nvidia""): the '
    "NVIDIA Container Toolkit is missing or not configured. Install nvidia-container-toolkit, run "
    "`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`, then check "
    "with `docker run --rm --gpus all ubuntu nvidia-smi` and `invoke doctor`. Or run PROFILE=smoke."
)


def docker_cli() -> list[str]:
    """The docker CLI as a command prefix (``DOCKER``, default ``docker``)."""
    return shlex.split(os.environ.get("DOCKER", "docker"))


def image_tag(name: str) -> str:
    """``llm-labs/<name>:dev``."""
    return f"{IMAGE_PREFIX}/{name}:dev"


#: Seconds a Docker CLI probe (``version``, ``info``, ``image inspect``) may take: an engine whose
#: socket accepts but never answers (a hung ``dockerd``) then counts as not answering instead of
#: hanging ``make`` and ``doctor``.
PROBE_TIMEOUT_S = 30


def probe_cli(args: list[str]) -> subprocess.CompletedProcess:
    """``docker <args>`` with captured text output; exit status 124 and a one-line stderr when it does
    not finish within :data:`PROBE_TIMEOUT_S`."""
    cmd = [*docker_cli(), *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"{shlex.join(cmd)} gave no answer in {PROBE_TIMEOUT_S} s")


def engine_error() -> str | None:
    """None if a Docker engine answers, else why not (with what to do)."""
    if not shutil.which(docker_cli()[0]):
        return (
            f"no docker CLI ({docker_cli()[0]!r}) on PATH: install Docker Engine "
            "(https://docs.docker.com/engine/install/, or Debian's docker.io) or use RUNTIME=native"
        )
    probe = probe_cli(["version", "--format", "{{.Server.Version}}"])
    if probe.returncode != 0:
        return (
            "the Docker engine does not answer ("
            + (probe.stderr.strip().splitlines() or ["?"])[-1]
            + "). Start it (`sudo systemctl start docker`, or `dockerd &`) or use RUNTIME=native"
        )
    return None


def buildkit_error() -> str | None:
    """None if the docker CLI builds with BuildKit (buildx plugin, or a pre-23 client), else what to do."""
    if probe_cli(["buildx", "version"]).returncode == 0:
        return None
    client = probe_cli(["version", "--format", "{{.Client.Version}}"]).stdout.strip()
    if client and client.split(".")[0].isdigit() and int(client.split(".")[0]) < 23:
        return None  # 20.10-22.x clients build with BuildKit themselves when DOCKER_BUILDKIT=1
    return (
        f"the docker CLI ({shlex.join(docker_cli())}, client {client or '?'}) has no buildx plugin, which "
        "image builds need (BuildKit secrets): install docker-buildx-plugin (Docker CE) or docker-buildx "
        "(Debian/Ubuntu), or set DOCKER to a docker CLI that builds with DOCKER_BUILDKIT=1"
    )


def docker_error() -> str | None:
    """None if labs can be built and run in containers here, else why not."""
    return engine_error() or buildkit_error()


def registered_runtimes() -> str:
    """``docker info``'s runtimes as JSON text (``nvidia`` is there when the NVIDIA toolkit is configured)."""
    return probe_cli(["info", "--format", "{{json .Runtimes}}"]).stdout


def image_platform(image: str) -> str | None:
    """The ``--platform`` images on shared image ``image`` build and run for (None: the host's)."""
    return os.environ.get(PLATFORM_ENV.get(image, ""), "").strip() or None


#: The CPU model QEMU emulates where an image's architecture is not the host's (``QEMU_CPU``; a value
#: already in the environment wins). QEMU's default, ``max``, includes SVE, and torch's oneDNN kernels
#: take SVE code paths that QEMU emulates slowly: a 256 x 256 float32 matmul loop took 37.4 s under
#: ``max`` and 1.96 s under ``neoverse-n1`` (docs/benchmarks.md). Neoverse N1 is ARMv8.2-A without
#: SVE, as the Kunpeng 920 CPUs of Atlas 800T A2 hosts are.
EMULATED_CPU = {"aarch64": "neoverse-n1"}
PLATFORM_ARCH = {"linux/arm64": "aarch64", "linux/amd64": "x86_64"}
DOCKER_ARCH = {arch: platform.split("/")[1] for platform, arch in PLATFORM_ARCH.items()}  # uname -m -> Docker's


def platform_args(image: str) -> list[str]:
    """``docker run`` arguments for a container of shared image ``image``'s platform: ``--platform``
    (where one is set) and, where that is not the host's architecture (QEMU), ``QEMU_CPU``
    (:data:`EMULATED_CPU`)."""
    platform = image_platform(image)
    if not platform:
        return []
    arch = PLATFORM_ARCH.get(platform, os.uname().machine)
    cpu = os.environ.get("QEMU_CPU") or EMULATED_CPU.get(arch)
    emulated = arch != os.uname().machine and cpu
    return ["--platform", platform, *(["-e", f"QEMU_CPU={cpu}"] if emulated else [])]


def ascend_image_error() -> str | None:
    """None if the Ascend image can be built here, else why not (and what to set)."""
    if why := docker_error():
        return why
    arch = PLATFORM_ARCH.get(image_platform("ascend") or "", os.uname().machine)
    if not (SHARED_IMAGES["ascend"] / f"requirements-{arch}.txt").is_file():
        return (
            f"images/ascend has no lock for {arch} (x86_64 needs https://download.pytorch.org/whl/cpu when locking: "
            "`invoke lock`); ASCEND_PLATFORM=linux/arm64 builds the aarch64 image (QEMU binfmt on an x86_64 machine)"
        )
    if (
        arch == "aarch64"
        and os.uname().machine != "aarch64"
        and not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists()
    ):
        return "building for linux/arm64 on this x86_64 machine needs QEMU's binfmt handler (qemu-user-static)"
    return None


def build_image(
    dockerfile: Path,
    tag: str,
    base_image: str | None,
    platform: str | None = None,
    build_args: dict | None = None,
    target: str | None = None,
) -> None:
    """``docker build`` with BuildKit from the repo root; EXTRA_CA_CERT becomes the ``extra_ca`` secret;
    ``platform`` (``linux/arm64``) builds for another architecture (QEMU); ``build_args`` (``LAB``) too;
    ``target``: that stage alone.

    Raises:
        LabError: EXTRA_CA_CERT is not a file, or the build failed (with the likely way out).
    """
    cmd = [*docker_cli(), "build", "-f", str(dockerfile.relative_to(REPO_ROOT)), "-t", tag]
    cmd += ["--platform", platform] if platform else []
    args = {"BASE_IMAGE": base_image, "PIP_INDEX_URL": os.environ.get("PIP_INDEX_URL"), **(build_args or {})}
    cmd += ["--target", target] if target else []
    cmd += [arg for key, value in args.items() if value for arg in ("--build-arg", f"{key}={value}")]
    ca = os.environ.get("EXTRA_CA_CERT")
    if ca:
        if not Path(ca).is_file():
            raise LabError(f"EXTRA_CA_CERT={ca} is not a readable file")
        cmd += ["--secret", f"id=extra_ca,src={Path(ca).resolve()}"]
    cmd.append(".")
    print("+ " + shlex.join(re.sub(r"//[^/@\s]+@", "//***@", arg) for arg in cmd), flush=True)  # no credentials
    result = subprocess.run(cmd, cwd=REPO_ROOT, env={**os.environ, "DOCKER_BUILDKIT": "1"}, check=False)
    if result.returncode != 0:
        hint = ""
        if "ascend" in str(dockerfile):
            hint = (
                ". If the CANN base could not be pulled: build an arm64 Debian stand-in (no CANN: CPU only) with "
                "`STANDIN_ARCH=arm64 images/standin/build.sh labs-standin-base:bookworm-arm64` and pass "
                "ASCEND_BASE_IMAGE=labs-standin-base:bookworm-arm64 ASCEND_PLATFORM=linux/arm64 (QEMU on x86_64) "
                "with ASCEND_BUILD_BASE_IMAGE=labs-standin-base:bookworm (the same Debian for this machine)"
            )
        elif not base_image or "nvidia/cuda" in base_image:
            hint = (
                ". If the base image could not be pulled (no registry access), build a local stand-in with "
                "images/standin/build.sh and pass BASE_IMAGE=labs-standin-base:bookworm"
            )
        raise LabError(f"building {tag} failed (exit {result.returncode}); see the build log above{hint}")


def build_shared_image(name: str, base_image: str | None = None) -> None:
    """Build ``images/<name>/Dockerfile`` as ``llm-labs/<name>:dev`` on ``base_image`` (else the
    environment's ``BASE_IMAGE`` / ``ASCEND_BASE_IMAGE``, else the Dockerfile's pinned digest).

    Raises:
        LabError: unknown image, Docker not usable, the Ascend image not buildable here, a failed build.
    """
    if name not in SHARED_IMAGES:
        raise LabError(f"unknown shared image {name!r}; known: {', '.join(SHARED_IMAGES)}")
    if why := (ascend_image_error() if name == "ascend" else docker_error()):
        raise LabError(why)
    base = base_image or os.environ.get(BASE_IMAGE_ENV[name])
    dockerfile, platform = SHARED_IMAGES[name] / "Dockerfile", image_platform(name)
    if name not in BUILD_STAGE_BASE_ENV:
        build_image(dockerfile, image_tag(name), base, platform)
        return
    args = {"BUILD_BASE_IMAGE": os.environ.get(BUILD_STAGE_BASE_ENV[name])}
    build_image(dockerfile, image_tag(name), base, platform, args)
    # Stage `build` alone, for this machine's platform, its env still for the image's architecture
    # (the same layers, from the cache just filled): where the images on this one install theirs.
    if platform:  # another platform than the engine's own (which os.uname names here, as for QEMU_CPU)
        args = {**args, "VENV_ARCH": platform.split("/")[1]}
        platform = f"linux/{DOCKER_ARCH.get(os.uname().machine, os.uname().machine)}"
    build_image(dockerfile, image_tag(f"{name}-build"), base, platform, args, target="build")


def build_lab_image(lab: Lab, variant: str | None = None, flavor: str | None = None) -> str:
    """Build the shared image under ``variant``'s image (``flavor``: the CUDA image flavor, ``cuda12``
    for the CUDA 12 one), then the image itself; returns its tag (``llm-labs/<lab>[-cuda12]:dev``)."""
    shared = lab.shared_image(variant, flavor)
    build_shared_image(shared)
    tag = image_tag(lab.image_name(variant, flavor))
    args = lab_build_args(lab, variant, flavor)
    if shared in BUILD_STAGE_BASE_ENV:
        args["BUILD_IMAGE"] = image_tag(f"{shared}-build")
    build_image(lab.dockerfile(variant), tag, image_tag(shared), image_platform(lab.base_image(variant)), args)
    return tag


def lab_build_args(lab: Lab, variant: str | None = None, flavor: str | None = None) -> dict[str, str]:
    """``--build-arg`` values of a lab image from a shared Dockerfile (``labs/Dockerfile``,
    ``labs/Dockerfile.npu``): ``LAB``, ``ENTRYPOINT`` (``lab.yaml`` ``entrypoint``, where it is not the
    Dockerfile's default ``run.py``), the lab's ``lab.yaml`` ``build_args``, and ``LOCK`` where it is
    not ``requirements.txt`` (a CUDA image flavor's ``requirements-cuda12.txt``, a variant's); none for
    a lab's (or a variant's) own Dockerfile."""
    if lab.dockerfile(variant).parent != lab.dir.parent:
        return {}
    script = {} if lab.entrypoint == "run.py" else {"ENTRYPOINT": lab.entrypoint}  # the Dockerfile's default
    args = {"LAB": lab.name, **script, **{k: str(v) for k, v in (lab.meta.get("build_args") or {}).items()}}
    if lab.requirements(variant, flavor).name != "requirements.txt":
        args["LOCK"] = lab.requirements(variant, flavor).name
    return args


def image_id(tag: str) -> str | None:
    """The local image's id (``sha256:...``), or None when it is not built."""
    out = probe_cli(["image", "inspect", "--format", "{{.Id}}", tag])
    return out.stdout.strip() if out.returncode == 0 else None


def container_writable(folder: Path, top: Path | None = None) -> None:
    """Make ``folder`` (created if needed) writable by the container's user: uid 1000 when we are root,
    else our own uid (:func:`run_args` passes ``--user``). As root, the folders between ``top`` (the
    output root, left as it is) and ``folder`` are handed over too, with everything under the topmost
    of them: a lab writes beside its run folder (``<root>/<lab>/cache``, the chat-API reply cache),
    which an earlier native run as root may have made.

    Raises:
        LabError: the folder cannot be created or written (names it).
    """
    check_writable(folder)
    if os.geteuid() == 0:
        folder = Path(folder)
        chain = [folder, *folder.parents]
        stop = chain.index(Path(top)) if top is not None and Path(top) in chain else 1
        for path in chain[:stop]:
            os.chown(path, LAB_UID, LAB_UID)
        for base, dirs, files in os.walk(chain[stop - 1]):
            for name in dirs + files:
                os.chown(os.path.join(base, name), LAB_UID, LAB_UID, follow_symlinks=False)


#: Loopback host names: an endpoint there is on the host, which a container reaches only through the
#: host's network.
LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")


def local_endpoint() -> str | None:
    """``OPENAI_BASE_URL`` when it points at this host (a local vLLM, Ollama or ``transformers serve``)."""
    from urllib.parse import urlsplit

    url = os.environ.get("OPENAI_BASE_URL", "")
    return url if url and urlsplit(url).hostname in LOOPBACK else None


def bind_mount(host: str, inside: str) -> str:
    """``--mount`` value binding ``host`` at ``inside`` (read-only when it ends with ``:ro``). Unlike
    ``-v host:inside``, a ``:`` in a path is no separator here; the value is a CSV record (Docker
    parses it so), so a ``,`` or ``"`` in a path is quoted."""
    target, readonly = (inside[:-3], True) if inside.endswith(":ro") else (inside, False)
    line = io.StringIO()
    fields = ["type=bind", f"source={host}", f"target={target}", *(["readonly"] if readonly else [])]
    csv.writer(line, lineterminator="").writerow(fields)
    return line.getvalue()


def run_args(
    mounts: list[tuple[str, str]], env: dict[str, str], accelerator: str | None, cards: int | None = None
) -> list[str]:
    """``docker run --rm`` with the shared settings: 8 GB of shared memory, the Hugging Face cache
    volume, ``mounts`` (host path, container path; ``:ro`` at the end for read-only: :func:`bind_mount`),
    ``env`` plus PASSED_ENV from ours (names only: values such as HF_TOKEN never appear on the command
    line), our uid when not root, and the accelerator: ``--gpus all`` for ``cuda``; for ``npu`` the
    Ascend device nodes, the host driver mounted read-only and ``ASCEND_RT_VISIBLE_DEVICES``
    (:func:`labkit.host.ascend.docker_args`; no ``--privileged``): ``ASCEND_VISIBLE_DEVICES``' host
    cards, else the first ``cards`` (all if None).

    Raises:
        LabError: ``npu`` on a host that lacks a piece of the Ascend recipe (each missing piece named).
    """
    cmd = [*docker_cli(), "run", "--rm", "--shm-size", "8g", "-v", f"{IMAGE_PREFIX}-hf-cache:/cache/huggingface"]
    for host, inside in mounts:
        cmd += ["--mount", bind_mount(host, inside)]
    if os.geteuid() != 0:
        cmd += ["--user", f"{os.geteuid()}:{os.getegid()}"]
    for key, value in env.items():
        cmd += ["-e", f"{key}={value}"]
    cmd += [arg for key in PASSED_ENV if key in os.environ and key not in env for arg in ("-e", key)]
    if local_endpoint():  # localhost inside a container is the container: share the host's network
        print("OPENAI_BASE_URL is on this host: the container shares the host's network (--network host)")
        cmd += ["--network", "host"]
    if accelerator == "npu":
        from labkit.host.ascend import docker_args

        npu = docker_args(os.environ.get("ASCEND_VISIBLE_DEVICES"), count=cards)
        devices = [node.removeprefix("/dev/davinci") for flag, node in zip(npu, npu[1:]) if flag == "--device"]
        given = [d for d in devices if d.isdigit()]  # the cards (the control nodes are not numbered)
        print(
            f"NPU: host card(s) {', '.join(given)}, npu:0-{len(given) - 1} inside (ASCEND_VISIBLE_DEVICES picks others)"
        )
        return cmd + npu
    return cmd + (["--gpus", "all"] if accelerator == "cuda" else [])
