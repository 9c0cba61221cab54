"""The run plan: what ``make lab-<name>`` / ``invoke run`` will run, resolved once from the command line.

:func:`resolve` turns the command line (lab, ``PROFILE``, ``VARIANT``, ``RUNTIME``, ``NPROC``, ``SET``)
and the host (:func:`labkit.host.probe.probe`, :func:`labkit.host.docker.docker_error`) into a
:class:`RunPlan`; building, running and verifying all read that one object. The profile is read and
the overrides applied here, once, so a mistyped key fails before any build.

Policy, in one place:

- ``PROFILE=auto``: ``full`` on a host with a GPU or an NPU, else ``smoke`` (said in a banner).
- On an Ascend host a full run takes the lab's ``npu`` variant (its image has torch_npu); a lab
  without one runs its smoke profile under ``auto`` and is refused under ``PROFILE=full``.
- ``RUNTIME=auto``: Docker when an engine answers and builds with BuildKit, else native (said).
- ``NPROC=N``: the profile's ``nproc_per_node`` (processes per node); a lab without that setting
  runs one process and refuses ``NPROC``.
- ``SET`` is split like a shell line: ``SET="data.path='/data/my reviews'"`` keeps the space.
- ``IMAGE=auto`` (the CUDA image flavor, labs on the shared CUDA image): a GPU run takes the CUDA 13
  image on a driver new enough for it, the same image with CUDA forward compatibility on an older
  driver with data-center GPUs, else the CUDA 12 image where the lab has a lock for it
  (:func:`labkit.host.nvidia.cuda_path`, said in a banner); a host none serves is refused in one line
  naming the minimum driver. ``IMAGE=cuda`` / ``IMAGE=cuda12`` pick one.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field

from labkit.config import KINDS, Lab, apply_overrides, get_lab, list_labs, load_profile, profile_name
from labkit.errors import LabError
from labkit.host import nvidia
from labkit.host.probe import Accelerators, probe

PROFILES = ("auto", *KINDS)
IMAGES = ("auto", *nvidia.FLAVORS)
RUNTIMES = ("auto", "docker", "native")
NO_ACCELERATOR_BANNER = (
    "No GPU or NPU found on this host: running the SMOKE profile "
    "(tiny model, CPU; the bundled data unless you set yours)."
)


@dataclass(frozen=True)
class RunPlan:
    """One run of one lab, decided before anything is built.

    Attributes:
        lab: the lab's metadata.
        kind: ``smoke`` or ``full``.
        variant: ``None`` (the lab's own image), or a ``lab.yaml`` variant (``course``, ``npu``).
        runtime: ``docker`` or ``native``.
        accelerator: the host's (``cuda``, ``npu``) or None; probed once.
        overrides: ``key=value`` strings, as the user gave them (``NPROC`` added as ``nproc_per_node``).
        config: the profile with the overrides applied (parsed once, here).
        applied: the overrides as ``{dotted key: value}``.
        flavor: the CUDA image flavor the lab's image builds on (``cuda``, ``cuda12``); None for a lab
            or variant on another shared image (``ascend``).
        cuda_compat: CUDA forward compatibility on in the container (``LABS_CUDA_COMPAT=1``).
        cuda_why: the one line that says why (driver, GPU class, flavor); empty without a GPU.
    """

    lab: Lab
    kind: str
    variant: str | None
    runtime: str
    accelerator: str | None
    overrides: tuple[str, ...] = ()
    config: dict = field(default_factory=dict, compare=False, repr=False)
    applied: dict = field(default_factory=dict, compare=False, repr=False)
    flavor: str | None = "cuda"
    cuda_compat: bool = False
    cuda_why: str = ""

    @property
    def image_name(self) -> str:
        """The lab image's (and native environment's) name: ``<lab>[-<variant>]``, ``-cuda12`` added on
        the CUDA 12 flavor."""
        return self.lab.image_name(self.variant, self.flavor)

    @property
    def lock(self):
        """The lab's hash-locked requirements for this plan's variant and flavor."""
        return self.lab.requirements(self.variant, self.flavor)

    @property
    def cuda_env(self) -> dict[str, str]:
        """What the run is told about its CUDA path (recorded in its manifest; ``cuda-env`` in the image
        puts the forward compatibility libraries first when ``LABS_CUDA_COMPAT=1``)."""
        if not self.flavor:
            return {}
        return {
            nvidia.FLAVOR_ENV: self.flavor,
            nvidia.COMPAT_ENV: "1" if self.cuda_compat else "0",
            **({nvidia.WHY_ENV: self.cuda_why} if self.cuda_why else {}),
        }

    @property
    def profile(self) -> str:
        """The profile's file name: ``smoke``, ``full``, ``course-smoke``, ``npu-full``."""
        return profile_name(self.kind, self.variant)

    @property
    def offline(self) -> bool:
        """Smoke runs are offline (``HF_HUB_OFFLINE=1``): the tiny model and the data are local."""
        return self.kind == "smoke"

    @property
    def nproc(self) -> int:
        """Processes per node, each on its own card (``nproc_per_node``; 1 for labs without it)."""
        return int(self.config.get("nproc_per_node") or 1)

    @property
    def device(self) -> str:
        """The profile's ``device`` setting (``cpu``, ``accelerator``, ``cuda``, ``npu``, ``auto``)."""
        return str(self.config.get("device", "auto"))

    @property
    def needs_accelerator(self) -> bool:
        return self.device in ("accelerator", "cuda", "npu")

    @property
    def container_accelerator(self) -> str | None:
        """What a container running this plan gets: ``npu`` (Ascend device nodes and driver mounts) for
        an image on the Ascend base, ``cuda`` (``--gpus all``) for the others, nothing for a CPU profile."""
        if self.device == "cpu":
            return None
        return "npu" if self.lab.base_image(self.variant) == "ascend" else "cuda"

    def check_accelerator(self) -> None:
        """Raise :class:`LabError` when the profile needs an accelerator and the host has none."""
        if self.needs_accelerator and not self.accelerator:
            raise LabError(
                f"PROFILE={self.profile} needs a CUDA GPU or an Ascend NPU, and this host has none (nvidia-smi and "
                "npu-smi find nothing). Use PROFILE=smoke here, or run on a GPU host (`invoke doctor` checks it)."
            )


def split_overrides(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``SET`` as ``key=value`` items, split like a shell line (quotes keep spaces; so do the brackets of
    a list or mapping, ``only=[lora, ia3]``); a value that starts
    with ``~/`` becomes the path in the home directory, as a shell does for ``key=~/file`` (inside
    ``SET="..."`` the shell leaves it, and in a container ``~`` would be another user's home).

    Raises:
        LabError: unbalanced quotes (names the text).
    """
    if isinstance(text, str):
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise LabError(f"SET={text!r}: {exc} (quote a value with spaces: SET=\"key='a value'\")") from None
        items = []
        for word in words:  # a list or mapping written with spaces, [a, b] or {r: 8}: one value
            if items and _open_brackets(items[-1]):
                items[-1] += " " + word
            else:
                items.append(word)
    else:
        items = list(text)
    return [_home(item) for item in items]


def _open_brackets(item: str) -> bool:
    return item.count("[") > item.count("]") or item.count("{") > item.count("}")


def _home(item: str) -> str:
    key, sep, value = item.partition("=")
    if sep and (value == "~" or value.startswith("~/")):
        return f"{key}={os.path.expanduser(value)}"
    return item


def choose_kind(requested: str, host: Accelerators) -> str:
    """``PROFILE``: ``auto`` becomes ``full`` with an accelerator, else ``smoke`` (with the banner)."""
    if requested not in PROFILES:
        raise LabError(f"PROFILE={requested!r}: use auto, smoke or full (VARIANT=... picks a variant's)")
    if requested != "auto":
        return requested
    if host.kind:
        return "full"
    print(NO_ACCELERATOR_BANNER)
    return "smoke"


def choose_variant(
    lab: Lab, requested_kind: str, kind: str, variant: str, host: Accelerators
) -> tuple[str, str | None]:
    """``(kind, variant)``: the variant asked for (checked), or on an Ascend host the ``npu`` variant
    for a full run (said in one line); ``PROFILE=auto`` of a lab without one falls back to smoke.

    Raises:
        LabError: an unknown variant (lists the lab's); ``PROFILE=full`` on an Ascend host for a lab
            without an ``npu`` variant (names the labs with one).
    """
    if variant:
        if variant not in lab.variants:
            raise LabError(f"lab {lab.name} has no variant {variant!r} (variants: {', '.join(lab.variants) or 'none'})")
        return kind, variant
    if kind != "full" or host.kind != "npu":
        return kind, None
    if "npu" in lab.variants:
        print(f"This host has Ascend NPUs: running {lab.name}'s npu variant (VARIANT=npu, the llm-labs/ascend image).")
        return kind, "npu"
    if requested_kind == "auto":
        print(f"This host's accelerator is an Ascend NPU and {lab.name} has no npu variant: running its SMOKE profile.")
        return "smoke", None
    have = [other.name for other in list_labs() if "npu" in other.variants]
    raise LabError(
        f"this host's accelerator is an Ascend NPU, and {lab.name} runs on NPUs only through an npu variant, "
        f"which it does not have (labs with one: {', '.join(have) or 'none'}). PROFILE=smoke runs it on the CPU."
    )


def choose_runtime(requested: str, docker_problem) -> str:
    """``RUNTIME``: ``auto`` is Docker when ``docker_problem()`` is None, else native (said).

    Raises:
        LabError: an unknown runtime; ``docker`` when Docker is not usable (says why).
    """
    if requested not in RUNTIMES:
        raise LabError(f"RUNTIME={requested!r}: use auto, docker or native")
    if requested == "native":
        return "native"
    why = docker_problem()
    if requested == "auto":
        if why:
            print(f"Docker is not usable here ({why}): running natively in a virtualenv.")
            return "native"
        return "docker"
    if why:
        raise LabError(f"RUNTIME=docker: {why}")
    return "docker"


def own_torch(lab: Lab, variant: str | None) -> bool:
    """Whether ``variant``'s lock pins its own torch (the course stacks, locked whole)."""
    import re

    text = lab.requirements(variant).read_text(encoding="utf-8")
    return bool(re.search(r"^torch==", text, re.MULTILINE))


def choose_flavor(
    lab: Lab, variant: str | None, config: dict, runtime: str, host: Accelerators, image: str = "auto"
) -> tuple[str | None, bool, str]:
    """``(flavor, forward compatibility on, why)`` of a lab on the shared CUDA image (``IMAGE``).

    A CPU profile or a host without GPUs takes ``IMAGE`` as asked (``auto``: ``cuda``); a GPU run takes
    :func:`labkit.host.nvidia.cuda_path`'s answer, offered only the flavors the lab is locked for.
    Prints the one-line banner when the run takes forward compatibility or the CUDA 12 image.

    Raises:
        LabError: an unknown ``IMAGE``; ``IMAGE`` for a lab on another image, or a variant with its own
            torch; ``IMAGE=cuda12`` for a lab without its lock; a GPU host no flavor serves (names the
            minimum driver).
    """
    if image not in IMAGES:
        raise LabError(f"IMAGE={image!r}: use auto, {' or '.join(nvidia.FLAVORS)}")
    if lab.base_image(variant) != "cuda":
        if image != "auto":
            raise LabError(
                f"IMAGE={image}: {lab.name}'s {variant or 'own'} image builds on images/{lab.base_image(variant)}"
            )
        return None, False, ""
    if variant and own_torch(lab, variant):
        if image not in ("auto", "cuda"):
            raise LabError(f"IMAGE={image}: VARIANT={variant} pins its own torch ({lab.requirements(variant).name})")
        return "cuda", False, ""
    locked = [f for f in nvidia.FLAVORS if f == "cuda" or (not variant and lab.requirements(None, f).is_file())]
    if image != "auto" and image not in locked:
        raise LabError(
            f"IMAGE={image}: {lab.name}{f' VARIANT={variant}' if variant else ''} has no lock for it "
            f"(its pins need images/cuda's torch; `invoke lock --lab {lab.name}` says why)"
        )
    if not host.gpus or config.get("device") == "cpu":
        return ("cuda" if image == "auto" else image), False, ""
    cuda = {f: v for f, v in nvidia.flavor_cuda().items() if f in locked}
    path = nvidia.cuda_path(host.gpus, cuda, docker=runtime == "docker", need=None if image == "auto" else image)
    if path.flavor is None:
        only = (
            f"{lab.name}{f' VARIANT={variant}' if variant else ''} runs on the CUDA {cuda['cuda']} image only "
            "(its pins need that torch); "
            if "cuda12" not in cuda
            else ""
        )
        raise LabError(f"no image serves this GPU host: {only}{path.why}")
    if path.compat or path.flavor != "cuda" or image != "auto":
        print(f"CUDA: {path.why}.")
    return path.flavor, path.compat, path.why


def resolve(
    lab: str | Lab,
    profile: str = "auto",
    runtime: str = "auto",
    overrides: str | list[str] | tuple[str, ...] = "",
    variant: str = "",
    nproc: int | str | None = None,
    host: Accelerators | None = None,
    image: str = "auto",
) -> RunPlan:
    """The plan for one run; the host is probed once (``host`` given: not probed, as in tests).

    ``profile`` may also name a profile file (``course-smoke``): it is looked up in the lab's table.

    Raises:
        LabError: unknown lab, profile, variant, runtime or override key; an override of the wrong
            type; ``NPROC`` for a lab that runs one process; Docker asked for and not usable; an
            ``IMAGE`` the lab has no lock for, or a GPU host no image serves (:func:`choose_flavor`).
    """
    from labkit.host.docker import docker_error

    spec = lab if isinstance(lab, Lab) else get_lab(lab)
    host = host if host is not None else probe()
    items = split_overrides(overrides)
    if profile not in PROFILES:  # a profile file's name, e.g. course-smoke
        profile, named_variant = spec.profile_of(profile)
        if variant and named_variant != variant:
            raise LabError(f"PROFILE={profile_name(profile, named_variant)} is not a profile of VARIANT={variant}")
        variant = named_variant or variant
    kind = choose_kind(profile, host)
    kind, chosen = choose_variant(spec, profile, kind, variant or "", host)
    config, applied = load_profile(spec, profile_name(kind, chosen), items)
    if nproc not in (None, ""):
        if "nproc_per_node" not in config:
            raise LabError(f"NPROC={nproc}: {spec.name} runs one process (its profiles have no nproc_per_node)")
        if not str(nproc).isdigit() or int(nproc) < 1:
            raise LabError(f"NPROC={nproc!r}: give a number of processes per node, 1 or more")
        items.append(f"nproc_per_node={int(nproc)}")
        config, more = apply_overrides(config, items[-1:], source=str(spec.profile_path(profile_name(kind, chosen))))
        applied = {**applied, **more}
    rt = choose_runtime(runtime, docker_error)
    flavor, compat, why = choose_flavor(spec, chosen, config, rt, host, image or "auto")
    return RunPlan(spec, kind, chosen, rt, host.kind, tuple(items), config, applied, flavor, compat, why)
