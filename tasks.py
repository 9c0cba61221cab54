"""Tasks (invoke) that build, run and verify the labs. `invoke --list` shows them.

    invoke run --lab whisper-lora [--profile auto|smoke|full] [--runtime auto|docker|native] [--set "k=v k2=v2"]
    invoke verify --lab whisper-lora [--profile smoke] [--run DIR]
    invoke test [--lab whisper-lora]
    invoke doctor [--lab whisper-lora]

Environment: DOCKER (the docker CLI, default `docker`; it must build with BuildKit), BASE_IMAGE
(base of the shared image), EXTRA_CA_CERT (CA bundle trusted while building), OUTPUT_ROOT
(default outputs/), CV_DIR (Common Voice locale folder for full runs), HF_TOKEN, HF_ENDPOINT.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from invoke import Exit, task

from labkit.config import LABS_DIR, REPO_ROOT, get_lab, list_labs, load_profile
from labkit.errors import LabError
from labkit.native import ensure_env
from labkit.rundir import check_writable, newest_completed_run, run_status
from labkit.verify import OTHER_DATA, format_table, load_expected, verify_run

IMAGE_PREFIX = "llm-labs"
SHARED_IMAGES = {"cuda": REPO_ROOT / "images" / "cuda", "ascend": REPO_ROOT / "images" / "ascend"}
LAB_UID = 1000
PASSED_ENV = (
    "HF_TOKEN",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "OMP_NUM_THREADS",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
)
GPU_DRIVER_HELP = (
    'Docker could not give the container a GPU ("could not select device driver "nvidia""): the '
    "NVIDIA Container Toolkit is missing or not configured. Install nvidia-container-toolkit, run "
    "`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`, then check "
    "with `docker run --rm --gpus all ubuntu nvidia-smi` and `invoke doctor`. Or run PROFILE=smoke."
)


def docker_cli() -> list[str]:
    return shlex.split(os.environ.get("DOCKER", "docker"))


def output_root() -> Path:
    return Path(os.environ.get("OUTPUT_ROOT", REPO_ROOT / "outputs")).resolve()


def image_tag(name: str) -> str:
    return f"{IMAGE_PREFIX}/{name}:dev"


def fail(message: str) -> Exit:
    return Exit(f"error: {message}", code=2)


def lab_or_exit(name: str):
    try:
        return get_lab(name)
    except LabError as exc:
        raise fail(str(exc)) from None


# --- environment probes ---------------------------------------------------------------------------


def engine_error() -> str | None:
    """None if a Docker engine answers, else why not (with what to do)."""
    if not shutil.which(docker_cli()[0]):
        return (
            f"no docker CLI ({docker_cli()[0]!r}) on PATH: install Docker Engine "
            "(https://docs.docker.com/engine/install/, or Debian's docker.io) or use RUNTIME=native"
        )
    probe = subprocess.run(
        [*docker_cli(), "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return (
            "the Docker engine does not answer ("
            + (probe.stderr.strip().splitlines() or ["?"])[-1]
            + "). Start it (`sudo systemctl start docker`, or `dockerd &`) or use RUNTIME=native"
        )
    return None


def buildkit_error() -> str | None:
    """None if the docker CLI builds with BuildKit (buildx plugin, or a pre-23 client), else what to do."""
    if subprocess.run([*docker_cli(), "buildx", "version"], capture_output=True, check=False).returncode == 0:
        return None
    client = subprocess.run(
        [*docker_cli(), "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True, check=False
    ).stdout.strip()
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


def host_accelerator() -> str | None:
    """``cuda`` if nvidia-smi lists a GPU, ``npu`` if npu-smi answers (on PATH or in /usr/local/sbin:
    :func:`labkit.ascend.find_npu_smi`), else None (no torch needed)."""
    from labkit.ascend import find_npu_smi

    for tool, args, kind in ((shutil.which("nvidia-smi"), ["-L"], "cuda"), (find_npu_smi(), ["info"], "npu")):
        if tool and subprocess.run([tool, *args], capture_output=True, check=False).returncode == 0:
            return kind
    return None


def resolve_profile(profile: str, accelerator: str | None = None) -> str:
    """``auto`` becomes ``full`` on a host with an accelerator (``accelerator``, probed when not given),
    else ``smoke`` with a banner; other profiles stay."""
    if profile != "auto":
        return profile
    if accelerator or host_accelerator():
        return "full"
    print(
        "No GPU or NPU found on this host: running the SMOKE profile "
        "(tiny model, CPU; the bundled data unless you set yours)."
    )
    return "smoke"


def npu_variant(spec, requested: str, profile: str, accelerator: str | None) -> tuple[str, str]:
    """``(profile, variant)`` for a run on an Ascend host (``accelerator == "npu"``): a full run takes the
    lab's ``npu`` variant (its image has torch_npu), said in one line; ``PROFILE=auto`` of a lab without
    one falls back to its smoke profile, said too. Elsewhere, or for the smoke profile: unchanged, no variant.

    Raises:
        Exit: ``PROFILE=full`` on an Ascend host for a lab without an ``npu`` variant (names the labs with one).
    """
    if profile != "full" or accelerator != "npu":
        return profile, ""
    if "npu" in spec.meta.get("variants", {}):
        print(f"This host has Ascend NPUs: running {spec.name}'s npu variant (VARIANT=npu, the llm-labs/ascend image).")
        return profile, "npu"
    if requested == "auto":
        print(
            f"This host's accelerator is an Ascend NPU and {spec.name} has no npu variant: running its SMOKE profile."
        )
        return "smoke", ""
    have = [lab.name for lab in list_labs() if "npu" in lab.meta.get("variants", {})]
    raise fail(
        f"this host's accelerator is an Ascend NPU, and {spec.name} runs on NPUs only through an npu variant, "
        f"which it does not have (labs with one: {', '.join(have) or 'none'}). PROFILE=smoke runs it on the CPU."
    )


def resolve_runtime(runtime: str) -> str:
    if runtime not in ("auto", "docker", "native"):
        raise fail(f"RUNTIME={runtime!r}: use auto, docker or native")
    if runtime == "auto":
        why = docker_error()
        if why:
            print(f"Docker is not usable here ({why}): running natively in a virtualenv.")
            return "native"
        return "docker"
    if runtime == "docker" and (why := docker_error()):
        raise fail(f"RUNTIME=docker: {why}")
    return runtime


# --- images ---------------------------------------------------------------------------------------


#: Environment that retargets a shared image: its base (BASE_IMAGE for the CUDA image, ASCEND_BASE_IMAGE
#: for the Ascend one: two bases, so CI can give each its stand-in) and its platform (the Ascend image
#: for linux/arm64 from an x86_64 machine, under QEMU: ASCEND_PLATFORM=linux/arm64).
BASE_IMAGE_ENV = {"cuda": "BASE_IMAGE", "ascend": "ASCEND_BASE_IMAGE"}
PLATFORM_ENV = {"ascend": "ASCEND_PLATFORM"}


def image_platform(image: str) -> str | None:
    """The ``--platform`` images on shared image ``image`` build and run for (None: the host's)."""
    return os.environ.get(PLATFORM_ENV.get(image, ""), "").strip() or None


def ascend_image_error() -> str | None:
    """None if the Ascend image can be built here, else why not (and what to set)."""
    if why := docker_error():
        return why
    arch = {"linux/arm64": "aarch64", "linux/amd64": "x86_64"}.get(image_platform("ascend") or "", os.uname().machine)
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


def build_image(c, dockerfile: Path, tag: str, base_image: str | None, platform: str | None = None) -> None:
    """``docker build`` with BuildKit from the repo root; EXTRA_CA_CERT becomes the `extra_ca` secret;
    ``platform`` (``linux/arm64``) builds for another architecture (QEMU)."""
    cmd = [*docker_cli(), "build", "-f", str(dockerfile.relative_to(REPO_ROOT)), "-t", tag]
    cmd += ["--platform", platform] if platform else []
    if base_image:
        cmd += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if os.environ.get("PIP_INDEX_URL"):
        cmd += ["--build-arg", f"PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
    ca = os.environ.get("EXTRA_CA_CERT")
    if ca:
        if not Path(ca).is_file():
            raise fail(f"EXTRA_CA_CERT={ca} is not a readable file")
        cmd += ["--secret", f"id=extra_ca,src={Path(ca).resolve()}"]
    cmd.append(".")
    print("+ " + shlex.join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=REPO_ROOT, env={**os.environ, "DOCKER_BUILDKIT": "1"}, check=False)
    if result.returncode != 0:
        hint = ""
        if "ascend" in str(dockerfile):
            hint = (
                ". If the CANN base could not be pulled: build an arm64 Debian stand-in (no CANN: CPU only) with "
                "`STANDIN_ARCH=arm64 images/standin/build.sh labs-standin-base:bookworm-arm64` and pass "
                "ASCEND_BASE_IMAGE=labs-standin-base:bookworm-arm64 ASCEND_PLATFORM=linux/arm64 (QEMU on x86_64)"
            )
        elif not base_image or "nvidia/cuda" in base_image:
            hint = (
                ". If the base image could not be pulled (no registry access), build a local stand-in with "
                "images/standin/build.sh and pass BASE_IMAGE=labs-standin-base:bookworm"
            )
        raise fail(f"building {tag} failed (exit {result.returncode}); see the build log above{hint}")


@task(
    positional=[],
    help={"name": "shared image to build (cuda, ascend)", "base_image": "overrides BASE_IMAGE / ASCEND_BASE_IMAGE"},
)
def images(c, name="cuda", base_image=None):
    """Build a shared base image (images/<name>/Dockerfile) as llm-labs/<name>:dev."""
    if name not in SHARED_IMAGES:
        raise fail(f"unknown shared image {name!r}; known: {', '.join(SHARED_IMAGES)}")
    if why := (ascend_image_error() if name == "ascend" else docker_error()):
        raise fail(why)
    base = base_image or os.environ.get(BASE_IMAGE_ENV[name])
    build_image(c, SHARED_IMAGES[name] / "Dockerfile", image_tag(name), base, image_platform(name))


@task(positional=[], help={"lab": "lab name", "profile": "build the image that runs this profile (a variant's)"})
def build(c, lab, profile=None):
    """Build a lab's image (and its shared base image first: the variant's, e.g. ascend for VARIANT=npu)."""
    spec = lab_or_exit(lab)
    base = spec.base_image(profile)
    images(c, name=base)
    tag = image_tag(spec.image_name(profile))
    build_image(c, spec.dockerfile(profile), tag, image_tag(base), image_platform(base))


# --- running ----------------------------------------------------------------------------------------


def run_streaming(cmd: list[str], env: dict | None = None) -> tuple[int, str]:
    """Run ``cmd``, echoing its output live; return (exit code, last 4 KB of output)."""
    print("+ " + shlex.join(cmd), flush=True)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, text=True, bufsize=1
    )
    tail = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        tail = (tail + line)[-4096:]
    return proc.wait(), tail


def run_lab(spec, profile: str, runtime: str, overrides: list[str], root: Path) -> tuple[int, str]:
    """Run one profile of a lab; returns (exit code, output tail)."""
    config, _ = load_profile(spec, profile, overrides)  # unknown keys fail here, before any build
    offline = {"HF_HUB_OFFLINE": "1"} if profile.endswith("smoke") else {}  # smoke, course-smoke: offline
    data = config.get("data", {})
    cv_dir = os.environ.get("CV_DIR")
    if runtime == "native":
        if config.get("device") in ("accelerator", "cuda", "npu") and not host_accelerator():
            raise LabError(
                f"PROFILE={profile} needs a CUDA GPU or an Ascend NPU, and this host has none (nvidia-smi and "
                "npu-smi find nothing). Use PROFILE=smoke here, or run on a GPU host (`invoke doctor` checks it)."
            )
        check_writable(root / spec.name / profile)
        if (
            cv_dir
            and data.get("source") == "common_voice_dir"
            and not any(o.startswith(("data.path=", "path=")) for o in overrides)
        ):
            overrides = [*overrides, f"data.path={cv_dir}"]
        cmd = [
            str(ensure_env(spec, profile)),
            str(spec.dir / spec.entrypoint),
            "--profile",
            profile,
            "--output-root",
            str(root),
        ]
        cmd += [arg for o in overrides for arg in ("--set", o)]
        env = {**os.environ, **offline, "LABS_GIT_COMMIT": git_describe()}
        return run_streaming(cmd, env)

    container_writable(root / spec.name / profile)
    image = image_tag(spec.image_name(profile))
    inspect = subprocess.run(
        [*docker_cli(), "image", "inspect", "--format", "{{.Id}}", image], capture_output=True, text=True, check=False
    )
    if inspect.returncode != 0:
        raise fail(
            f"image {image} is not built yet: run `invoke build --lab {spec.name} --profile {profile}` "
            f"(make lab-{spec.name} does)"
        )
    env = {"LAB_IMAGE_ID": inspect.stdout.strip(), "LABS_GIT_COMMIT": git_describe(), **offline}
    from labkit.runner import nproc_per_node

    accelerator = container_accelerator(spec, profile, config)
    cmd = docker_run([(str(root), "/opt/labs/outputs")], env, accelerator, cards=nproc_per_node(spec, config))
    if platform := image_platform(spec.base_image(profile)):
        cmd += ["--platform", platform]
    if cv_dir and data.get("source") == "common_voice_dir":
        cmd += ["-v", f"{Path(cv_dir).resolve()}:/data/common_voice:ro"]
    cmd += [image, "--profile", profile] + [arg for o in overrides for arg in ("--set", o)]
    code, tail = run_streaming(cmd)
    if code != 0 and "could not select device driver" in tail:
        print(f"error: {GPU_DRIVER_HELP}", file=sys.stderr)
    return code, tail


def container_writable(folder: Path) -> None:
    """Make ``folder`` (created if needed) writable by the container's user: uid 1000 when we are root,
    else our own uid (:func:`docker_run` passes ``--user``)."""
    check_writable(folder)
    if os.geteuid() == 0:
        os.chown(folder, LAB_UID, LAB_UID)


def container_accelerator(spec, profile: str, config: dict) -> str | None:
    """What a container running ``profile`` gets: ``npu`` (Ascend device nodes and driver mounts) for an
    image on the Ascend base, ``cuda`` (``--gpus all``) for the others, nothing for a CPU profile."""
    if config.get("device") == "cpu":
        return None
    return "npu" if spec.base_image(profile) == "ascend" else "cuda"


def docker_run(
    mounts: list[tuple[str, str]], env: dict[str, str], accelerator: str | None, cards: int | None = None
) -> list[str]:
    """``docker run --rm`` with the shared settings: 8 GB of shared memory, the Hugging Face cache
    volume, ``mounts`` (host path, container path), ``env`` plus PASSED_ENV from ours (names only:
    values such as HF_TOKEN never appear on the command line), our uid when not root, and the
    accelerator: ``--gpus all`` for ``cuda``; for ``npu`` the Ascend device nodes, the host driver
    mounted read-only and ``ASCEND_RT_VISIBLE_DEVICES`` (:func:`labkit.ascend.docker_args`; no
    ``--privileged``): ``ASCEND_VISIBLE_DEVICES``' host cards, else the first ``cards`` (all if None).

    Raises:
        LabError: ``npu`` on a host that lacks a piece of the Ascend recipe (each missing piece named).
    """
    cmd = [*docker_cli(), "run", "--rm", "--shm-size", "8g", "-v", f"{IMAGE_PREFIX}-hf-cache:/cache/huggingface"]
    for host, inside in mounts:
        cmd += ["-v", f"{host}:{inside}"]
    if os.geteuid() != 0:
        cmd += ["--user", f"{os.geteuid()}:{os.getegid()}"]
    for key, value in env.items():
        cmd += ["-e", f"{key}={value}"]
    cmd += [arg for key in PASSED_ENV if key in os.environ and key not in env for arg in ("-e", key)]
    if accelerator == "npu":
        from labkit.ascend import docker_args

        npu = docker_args(os.environ.get("ASCEND_VISIBLE_DEVICES"), count=cards)
        devices = [node.removeprefix("/dev/davinci") for flag, node in zip(npu, npu[1:]) if flag == "--device"]
        given = [d for d in devices if d.isdigit()]  # the cards (the control nodes are not numbered)
        print(
            f"NPU: host card(s) {', '.join(given)}, npu:0-{len(given) - 1} inside (ASCEND_VISIBLE_DEVICES picks others)"
        )
        return cmd + npu
    return cmd + (["--gpus", "all"] if accelerator == "cuda" else [])


def git_describe() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"


@task(
    positional=[],
    help={
        "lab": "lab name (invoke list)",
        "profile": "auto (full with a GPU, else smoke), smoke or full",
        "runtime": "auto (docker if an engine answers), docker or native",
        "set": 'space-separated profile overrides, e.g. "learning_rate=0 num_train_epochs=2"',
        "variant": "a lab variant (lab.yaml `variants`, e.g. course): runs its <variant>-<profile> profile",
    },
)
def run(c, lab, profile="auto", runtime="auto", set="", variant=""):  # noqa: A002 (invoke flag name)
    """Run a lab (building its image when the runtime is docker) and verify the run."""
    spec = lab_or_exit(lab)
    accelerator = host_accelerator()  # probed once: nvidia-smi, npu-smi
    requested, profile = profile, resolve_profile(profile, accelerator)
    if not variant:
        profile, variant = npu_variant(spec, requested, profile, accelerator)
    if variant:
        if variant not in spec.meta.get("variants", {}):
            known = ", ".join(spec.meta.get("variants", {})) or "none"
            raise fail(f"lab {spec.name} has no variant {variant!r} (variants: {known})")
        profile = f"{variant}-{profile}"
    runtime = resolve_runtime(runtime)
    overrides = set.split()
    try:
        load_profile(spec, profile, overrides)
        if runtime == "docker":
            build(c, lab=spec.name, profile=profile)
        code, _ = run_lab(spec, profile, runtime, overrides, output_root())
    except LabError as exc:
        raise fail(str(exc)) from None
    if code != 0:
        raise Exit(code=code)
    verify(c, lab=spec.name, profile=profile)


@task(
    positional=[],
    help={
        "lab": "lab name",
        "profile": "profile whose latest run to check (default: every profile found)",
        "run": "a run directory to check instead of the latest",
    },
)
def verify(c, lab=None, profile=None, run=None):
    """Check a run against the lab's expected outputs; prints check / expected / got / result."""
    if run and not lab:
        try:
            lab = json.loads((Path(run) / "manifest.json").read_text(encoding="utf-8"))["lab"]
        except (OSError, ValueError, KeyError):
            raise fail(f"{run} has no readable manifest.json naming its lab: give --lab") from None
    if not lab:
        raise fail("which lab? give --lab NAME (invoke list shows them) or --run DIR")
    spec = lab_or_exit(lab)
    targets = []
    if run:
        manifest_profile = profile or Path(run).resolve().parent.name
        targets.append((manifest_profile, Path(run)))
    else:
        for name in [profile] if profile else spec.profiles:
            found, newer_failure = newest_completed_run(output_root(), spec.name, name)
            if newer_failure:
                print(
                    f"note: {spec.name} / {name}: the newest run {newer_failure} did not complete "
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
                raise fail(
                    f"no {name} run of {spec.name} under {output_root()}: run `make lab-{spec.name} PROFILE={name}`"
                )
    if not targets:
        raise fail(f"no runs of {spec.name} under {output_root()}: run `make lab-{spec.name}` first")
    failed = False
    for name, run_dir in targets:
        try:
            checks = verify_run(run_dir, spec.expected_path(name))
        except LabError as exc:
            raise fail(str(exc)) from None
        ok = all(ch.passed for ch in checks)
        failed |= not ok
        print(f"\n{spec.name} / {name}: {run_dir}\n{format_table(checks)}")
        skipped = [ch for ch in checks if ch.skipped]
        for reason in sorted({ch.got.removeprefix("skipped: ") for ch in skipped}):
            count = sum(ch.got.removeprefix("skipped: ") == reason for ch in skipped)
            about = f" (they were set on {expected_data(spec, name)})" if reason in OTHER_DATA else ""
            print(f"{count} check(s) skipped: {reason}{about}; the other checks still apply.")
        print(f"=> {'PASS' if ok else 'FAIL'}" + (f" ({len(skipped)} skipped)" if skipped else ""))
    if failed:
        raise Exit(code=1)


@task(
    positional=[],
    help={
        "lab": "lab name",
        "batch_sizes": "comma-separated per-device batch sizes to sweep, e.g. 1,4,8,16,64 (default: the profile's)",
        "steps": "timed steps per batch size (after --warmup untimed ones)",
        "warmup": "untimed steps first (CUDA start-up, kernel loading)",
        "arch": "full (the full profile's architecture, random weights) or tiny (a CPU self-test)",
        "device": "accelerator (default), cuda, npu or cpu",
        "runtime": "auto (docker if an engine answers), docker or native",
    },
)
def bench(c, lab, batch_sizes="", steps=5, warmup=1, arch="full", device="accelerator", runtime="auto"):
    """Benchmark a lab's full-profile step on random weights: peak memory, samples/s, tokens/s, MFU.

    Writes outputs/<lab>/bench/<UTC time>/bench.json and bench.md; commit a run's rows to
    labs/<lab>/bench.yaml (with GPU, driver, versions, date, command) so `invoke doctor` can use them.
    """
    from datetime import UTC, datetime

    spec = lab_or_exit(lab)
    if not (spec.dir / "bench.py").is_file():
        raise fail(f"lab {spec.name} has no bench.py")
    if device == "npu" or (device == "accelerator" and host_accelerator() == "npu"):
        raise fail(
            "invoke bench measures the CUDA (or CPU) image's step; an NPU bench is not written yet (the npu "
            f"variants train bf16 LoRA, not bench.py's 4-bit step): run `make lab-{spec.name} VARIANT=npu` and read "
            "peak_memory_bytes and train.samples_per_second in its manifest and metrics"
        )
    runtime = resolve_runtime(runtime)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = output_root() / spec.name / "bench" / stamp
    args = ["--arch", arch, "--device", device, "--steps", str(steps), "--warmup", str(warmup)]
    args += ["--batch-sizes", batch_sizes] if batch_sizes else []
    try:
        check_writable(out)
        if runtime == "native":
            cmd = [str(ensure_env(spec)), str(spec.dir / "bench.py"), *args, "--out", str(out)]
            code, _ = run_streaming(cmd, {**os.environ, "HF_HUB_OFFLINE": "1"})
        else:
            build(c, lab=spec.name)
            container_writable(out)
            accel = None if device == "cpu" else ("npu" if device == "npu" else "cuda")
            cmd = docker_run([(str(out), "/opt/labs/bench-out")], {"HF_HUB_OFFLINE": "1"}, accelerator=accel)
            cmd += ["--entrypoint", "python", image_tag(spec.name), f"labs/{spec.name}/bench.py", *args]
            code, _ = run_streaming([*cmd, "--out", "/opt/labs/bench-out"])
    except LabError as exc:
        raise fail(str(exc)) from None
    if code != 0:
        raise Exit(code=code)
    print(f"wrote {out}/bench.json and bench.md")


def expected_data(spec, profile: str) -> str:
    """What the expected values of ``profile`` were set on (its expected file's ``data.about``)."""
    return (load_expected(spec.expected_path(profile)).get("data") or {}).get("about", "?")


@task(positional=[], help={"out": "where to write the page (default: <outputs>/report.html)"})
def report(c, out=None):
    """One static HTML page of every lab's newest completed runs: checks, plots, metrics, manifest."""
    from labkit.report import write_report

    path, cards = write_report(output_root(), Path(out) if out else None)
    for card in cards:
        verdict = "no completed run" if card.passed is None else ("PASS" if card.passed else "FAIL")
        print(f"{card.lab:<24} {card.profile:<14} {verdict}")
    print(f"wrote {path} ({len(cards)} lab profile(s)); open it in a browser")


@task(name="list")
def list_(c):
    """List the labs with their course chapter and profiles."""
    labs = list_labs()
    rows = [("lab", "chapter", "profiles", "title")]
    rows += [(s.name, str(s.chapter), " ".join(s.profiles), s.title) for s in labs]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])


LINUX = ("--python-platform", "x86_64-manylinux_2_28")
#: PyTorch's CPU wheels. torch_npu's x86_64 wheels require ``torch==X+cpu``, which only this index has
#: (PyPI's x86_64 torch is the CUDA build); on aarch64 PyPI's torch is the CPU build (Ascend/pytorch README).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: The shared images' locks: ``{image: {lock file suffix: uv options}}``. The CUDA image: Linux x86_64.
#: The Ascend image: one lock per architecture (``requirements-<uname -m>.txt``), aarch64 first: Atlas
#: 800T A2 hosts are Kunpeng (aarch64), and x86_64 needs the CPU index above.
IMAGE_LOCKS = {
    "cuda": {"": LINUX},
    "ascend": {
        "-aarch64": ("--python-platform", "aarch64-manylinux_2_28"),
        "-x86_64": (*LINUX, "--index", TORCH_CPU_INDEX, "--index-strategy", "unsafe-best-match", "--emit-index-url"),
    },
}


def image_locks(image: str) -> list[Path]:
    """The hash-locked requirements files of shared image ``image`` that exist (one per platform)."""
    return [p for suffix in IMAGE_LOCKS[image] if (p := SHARED_IMAGES[image] / f"requirements{suffix}.txt").is_file()]


def reachable(url: str, timeout_s: float = 10.0) -> bool:
    """Whether ``url`` answers at all (any HTTP status) within ``timeout_s``."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=timeout_s).close()  # noqa: S310 (a fixed https URL)
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
    return True


def uv_compile(c, src: Path, out: Path, *options: str) -> None:
    """``uv pip compile`` for Python 3.11, with repo-relative paths (uv records the command in the file)."""
    rel = [str(Path(p).resolve().relative_to(REPO_ROOT)) for p in (src, out)]
    cmd = [sys.executable, "-m", "uv", "pip", "compile", "--quiet", "--python-version", "3.11", rel[0], "-o", rel[1]]
    with c.cd(str(REPO_ROOT)):
        c.run(shlex.join([*cmd, *options]), echo=True)


def on_image(image: str) -> list[str]:
    """Options that resolve a lab lock on top of shared image ``image``: its platform (universal for an
    image locked per architecture), its locks as constraints, and none of their packages emitted (the
    lab layer adds only its own)."""
    locks = image_locks(image)
    names = set()
    for lock_file in locks:
        names |= set(re.findall(r"^([A-Za-z0-9_.-]+)==", lock_file.read_text(encoding="utf-8"), re.MULTILINE))
    platform = IMAGE_LOCKS[image][""] if "" in IMAGE_LOCKS[image] else ("--universal",)
    constraints = [arg for p in locks for arg in ("-c", str(p.relative_to(REPO_ROOT)))]
    skip = [arg for name in sorted(names) for arg in ("--no-emit-package", name)]
    return [*platform, "--generate-hashes", *constraints, *skip]


@task(positional=[], help={"lab": "only this lab's lock (default: all locks)"})
def lock(c, lab=None):
    """Regenerate the hash-locked requirements with uv (Python 3.11; CUDA image and labs: Linux x86_64;
    Ascend image and npu variants: x86_64 and aarch64).

    A lab's lock is resolved with its shared image's lock as constraints and leaves out what the
    image already installs, so the lab layer adds only its own packages.
    """
    if lab is None:
        for name, folder in SHARED_IMAGES.items():
            for suffix, platform in IMAGE_LOCKS[name].items():
                if TORCH_CPU_INDEX in platform and not reachable(TORCH_CPU_INDEX):
                    print(
                        f"skipped {folder.name}/requirements{suffix}.txt: {TORCH_CPU_INDEX} does not answer from here"
                    )
                    continue
                req, cons = folder / f"requirements{suffix}.txt", folder / f"constraints{suffix}.txt"
                uv_compile(c, folder / "requirements.in", req, *platform, "--generate-hashes")
                uv_compile(c, folder / "requirements.in", cons, *platform, "--no-annotate")
            if (folder / "uv.in").exists():  # uv itself: one lock (images/cuda/uv.txt) for every image
                uv_compile(c, folder / "uv.in", folder / "uv.txt", "--universal", "--generate-hashes")
        uv_compile(
            c, REPO_ROOT / "requirements-dev.in", REPO_ROOT / "requirements-dev.txt", "--universal", "--generate-hashes"
        )
    for spec in [lab_or_exit(lab)] if lab else list_labs():
        uv_compile(c, spec.dir / "requirements.in", spec.dir / "requirements.txt", *on_image(spec.image))
        for variant in spec.meta.get("variants", {}).values():
            lock_file = spec.dir / variant["requirements"]
            if "image" in variant:  # on another shared image (npu: ascend), resolved against it
                uv_compile(c, lock_file.with_suffix(".in"), lock_file, *on_image(variant["image"]))
            else:  # own torch (the course stacks): locked whole, no image constraint
                uv_compile(c, lock_file.with_suffix(".in"), lock_file, *LINUX, "--generate-hashes")


def doctor_npu(docker_runtimes: str) -> tuple[list, list[str]]:
    """``invoke doctor``'s Ascend lines: ``npu-smi info`` (cards, health), the driver version against the
    Ascend image's CANN, and every device node or driver file a container needs, one line each.

    Returns:
        ``(cards, problems)``: the cards npu-smi lists; problem tags for the exit status. A host with
        neither npu-smi nor /dev/davinci* gets one line and no problem (it is not an Ascend host).
    """
    from labkit import ascend

    cards, smi_driver, trouble = ascend.npu_smi()
    if not cards and not trouble and not ascend.card_nodes():
        print("npu             : none found (npu-smi, /dev/davinci*)")
        return [], []
    problems = []
    if trouble:
        print(f"npu             : {trouble}")
        problems.append("npu")
    for card in cards:
        health = "" if card.health == "OK" else f": health {card.health} (npu-smi info -t health -i {card.npu_id})"
        memory = f"{card.memory_gib:.1f} GiB HBM" if card.memory_gib else "HBM unknown"
        print(f"npu             : {card.npu_id}: Ascend {card.name}, {memory}{health}")
        problems += ["npu"] if health else []
    cann = ascend.image_cann(SHARED_IMAGES["ascend"] / "Dockerfile")
    driver = ascend.driver_version() or smi_driver
    old = ascend.driver_problem(driver, cann) if driver else None
    print(
        f"npu driver      : {driver or 'unknown (no /usr/local/Ascend/driver/version.info)'}; images/ascend is CANN "
        f"{cann}, documented with driver {ascend.CANN_DRIVER.get(cann or '', '?')}" + (f": {old}" if old else "")
    )
    problems += ["npu-driver"] if old or not driver else []
    for line in ascend.missing_pieces():
        print(f"npu mount       : {line}")
        problems.append("npu-mount")
    if "ascend" in docker_runtimes:
        print("npu runtime     : Ascend Docker Runtime registered; the labs pass the devices themselves")
    return cards, problems


@task(positional=[], help={"lab": "also check whether this lab's full profile fits the GPU (measured table)"})
def doctor(c, lab=None):
    """Check the host: runtimes (Docker, native), the GPU and driver, Ascend NPUs (npu-smi, the driver
    against the image's CANN, device nodes and driver mounts), and whether a lab's full profile fits.

    Exit status 1 when no runtime is usable, the GPU or NPU is unusable (old driver, lost NVML, a
    missing device node or driver file), or the lab's full profile does not fit the GPU.
    """
    from labkit import benchtable, hostcheck
    from labkit.native import PYTHON_VERSION, VENVS_DIR, uv_command

    problems = []
    runtimes = ""
    engine = engine_error()
    why = engine or buildkit_error()
    print(f"docker          : {engine or 'engine answers; ' + (why or 'BuildKit ok: images build')}")
    if not engine:
        runtimes = subprocess.run(
            [*docker_cli(), "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True, check=False
        ).stdout
        registered = "nvidia" in runtimes
        print(
            f"nvidia runtime  : {'registered' if registered else 'not registered (install nvidia-container-toolkit)'}"
        )
    found = subprocess.run([*uv_command(), "python", "find", PYTHON_VERSION], capture_output=True, text=True)
    python = found.stdout.strip() if found.returncode == 0 else None
    disk = hostcheck.free_gib(VENVS_DIR)
    print(
        f"native          : Python {PYTHON_VERSION} "
        + (f"at {python}" if python else "NOT found (apt-get install python3.11, or `uv python install 3.11`)")
        + f"; {disk:.0f} GiB free for .venvs and uv's cache"
        + ("" if disk >= 12 else " (low: the first environment with CUDA torch takes ~7 GiB, each lab ~1 GiB more)")
        + "; audio decodes with the soundfile wheel (no FFmpeg needed)"
    )
    if why and not python:
        problems.append("runtime")
    cuda = hostcheck.image_cuda(SHARED_IMAGES["cuda"] / "constraints.txt")  # the torch build's CUDA
    gpus, gpu_trouble = hostcheck.nvidia_smi()
    if gpu_trouble:
        print(f"gpu             : {gpu_trouble}")
        problems.append("gpu")
    for gpu in gpus:
        old = hostcheck.driver_problem(gpu.driver, cuda)
        print(
            f"gpu             : {gpu.name}, {gpu.memory_gib:.1f} GiB, driver {gpu.driver}" + (f": {old}" if old else "")
        )
        problems += ["driver"] if old else []
    npus, npu_problems = doctor_npu(runtimes if not engine else "")
    problems += npu_problems
    if not gpus and not gpu_trouble:
        also = "; NPU runs take a lab's npu variant (VARIANT=npu)" if npus else ": labs run their smoke profile"
        print(f"gpu             : none found (nvidia-smi){also}")
    if lab and npus and not gpus:
        spec = lab_or_exit(lab)
        has = "npu" in spec.meta.get("variants", {})
        print(
            f"{spec.name:<16}: "
            + (
                "npu variant: make lab-" + spec.name + " VARIANT=npu; its NPU memory is not measured yet"
                if has
                else "no npu variant: on this host it runs its smoke profile only"
            )
        )
    elif lab:
        spec = lab_or_exit(lab)
        memory = max((g.memory_gib for g in gpus), default=None)
        try:
            text, fits = benchtable.describe(spec, benchtable.load(spec), memory)
        except LabError as exc:
            raise fail(str(exc)) from None
        print(text)
        problems += [] if fits else ["memory"]
    if problems:
        raise Exit(code=1)


@task(
    positional=[],
    help={
        "lab": "only this lab (its unit tests, smoke run, broken-pipeline check, container path, and "
        "verification of its latest runs under outputs/)",
        "jobs": "parallel test workers (pytest-xdist; default: 2, or 1 on a one-core machine); a lab's tests "
        "stay on one worker",
    },
)
def test(c, lab=None, jobs=None):
    """The whole suite: lint, static checks, unit tests, smoke runs, broken-pipeline checks, containers.

    Ends with a table of test time per lab (also in outputs/test-times.json).
    """
    python = sys.executable
    # The tooling venv's executables (hadolint, docker-compose) for this task and the tests it runs.
    os.environ["PATH"] = f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    c.run(f"{python} -m ruff check .", echo=True)
    c.run(f"{python} -m ruff format --check .", echo=True)
    dockerfiles = [str(p.relative_to(REPO_ROOT)) for p in sorted(REPO_ROOT.glob("images/*/Dockerfile"))]
    dockerfiles += [str(p.relative_to(REPO_ROOT)) for p in sorted(LABS_DIR.glob("*/Dockerfile*"))]
    dockerfiles += [str(p.relative_to(REPO_ROOT)) for p in sorted(REPO_ROOT.glob("tests/*/Dockerfile"))]
    c.run(shlex.join(["hadolint", *dockerfiles]), echo=True)
    if not docker_error():  # build the shared images once, before parallel workers need them
        images(c, name="cuda")  # the Ascend image: built by the llama2-sft npu tests, on that lab's worker
    jobs = int(jobs) if jobs else min(2, os.cpu_count() or 1)
    times = output_root() / "test-times.json"
    times.parent.mkdir(parents=True, exist_ok=True)
    args = [python, "-m", "pytest", "tests", "-ra", "--durations=20", "--times-json", str(times)]
    if jobs > 1:  # tests/conftest.py schedules by lab; the cores are shared out, not oversubscribed
        args += ["-n", str(jobs)]
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    args += ["--lab", lab_or_exit(lab).name] if lab else []
    c.run(shlex.join(args), echo=True, pty=False)
