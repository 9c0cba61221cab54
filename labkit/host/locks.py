"""Hash-locked requirements, written with uv (``invoke lock``).

Every lock is resolved for CPython 3.11. The CUDA image and the labs: Linux x86_64. The Ascend image
and the npu variants: one lock per architecture (aarch64; x86_64 where PyTorch's CPU index answers).
The CUDA 12 flavor of the shared image (``images/cuda12``, torch built for CUDA 12 for hosts with an
older driver) has its own lock, and every lab that resolves on it its ``requirements-cuda12.txt`` from
the same ``requirements.in`` (a lab whose pins need the newer torch gets none: :data:`FLAVOR_LOCKS`).
A lab's lock is resolved with its shared image's lock as constraints and leaves out what the image
installs, so the lab layer adds only its own packages. A variant with its own torch (the course
stacks) is locked whole.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from labkit.config import REPO_ROOT, Lab, list_labs
from labkit.errors import LabError
from labkit.host.docker import SHARED_IMAGES

LINUX = ("--python-platform", "x86_64-manylinux_2_28")
#: PyTorch's CPU wheels. torch_npu's x86_64 wheels require ``torch==X+cpu``, which only this index has
#: (PyPI's x86_64 torch is the CUDA build); on aarch64 PyPI's torch is the CPU build (Ascend/pytorch README).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: The shared images' locks: ``{image: {lock file suffix: uv options}}``. The CUDA image: Linux x86_64.
#: The Ascend image: one lock per architecture (``requirements-<uname -m>.txt``), aarch64 first: Atlas
#: 800T A2 hosts are Kunpeng (aarch64), and x86_64 needs the CPU index above.
IMAGE_LOCKS = {
    "cuda": {"": LINUX},
    "cuda12": {"": LINUX},
    "ascend": {
        "-aarch64": ("--python-platform", "aarch64-manylinux_2_28"),
        "-x86_64": (*LINUX, "--index", TORCH_CPU_INDEX, "--index-strategy", "unsafe-best-match", "--emit-index-url"),
    },
}


#: CUDA image flavors a lab's own image is also locked for, as ``requirements-<flavor>.txt``
#: (:meth:`labkit.config.Lab.requirements`; the npu variants' ``requirements-npu.txt`` is the same idea for
#: the Ascend image, but with profiles of its own).
FLAVOR_LOCKS = ("cuda12",)


def image_locks(image: str) -> list[Path]:
    """The hash-locked requirements files of shared image ``image`` that exist (one per platform)."""
    return [p for suffix in IMAGE_LOCKS[image] if (p := SHARED_IMAGES[image] / f"requirements{suffix}.txt").is_file()]


def reachable(url: str, timeout_s: float = 10.0) -> bool:
    """Whether ``url`` answers at all (any HTTP status) within ``timeout_s``."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=timeout_s).close()  # a fixed https URL
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
    return True


def uv_compile(src: Path, out: Path, *options: str) -> None:
    """``uv pip compile`` for Python 3.11, with repo-relative paths (uv records the command in the file).

    Raises:
        LabError: uv failed (its message is printed above).
    """
    rel = [str(Path(p).resolve().relative_to(REPO_ROOT)) for p in (src, out)]
    cmd = [sys.executable, "-m", "uv", "pip", "compile", "--quiet", "--python-version", "3.11", rel[0], "-o", rel[1]]
    print("+ " + shlex.join([*cmd, *options]), flush=True)
    if subprocess.run([*cmd, *options], cwd=REPO_ROOT, check=False).returncode != 0:
        raise LabError(f"locking {rel[0]} failed; see uv's message above")


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


def lock_all(lab: Lab | None = None) -> None:
    """Regenerate every lock (the shared images', the tooling's, every lab's), or only ``lab``'s.

    Raises:
        LabError: uv failed on one (the ones before it are written).
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
                uv_compile(folder / "requirements.in", req, *platform, "--generate-hashes")
                uv_compile(folder / "requirements.in", cons, *platform, "--no-annotate")
        common = REPO_ROOT / "images" / "common"  # uv itself, installed by every image's install step
        uv_compile(common / "uv.in", common / "uv.txt", "--universal", "--generate-hashes")
        uv_compile(
            REPO_ROOT / "requirements-dev.in", REPO_ROOT / "requirements-dev.txt", "--universal", "--generate-hashes"
        )
        notebook = REPO_ROOT / "images" / "notebook"  # make notebook-<lab>: the kernel and the server
        for name in ("kernel", "server"):
            uv_compile(notebook / f"{name}.in", notebook / f"{name}.txt", *LINUX, "--generate-hashes")
    for spec in [lab] if lab else list_labs():
        uv_compile(spec.dir / "requirements.in", spec.dir / "requirements.txt", *on_image(spec.image))
        lock_flavors(spec)
        for variant in spec.variants.values():
            lock_file = spec.dir / variant["requirements"]
            if "image" in variant:  # on another shared image (npu: ascend), resolved against it
                uv_compile(lock_file.with_suffix(".in"), lock_file, *on_image(variant["image"]))
            else:  # own torch (the course stacks): locked whole, no image constraint
                uv_compile(lock_file.with_suffix(".in"), lock_file, *LINUX, "--generate-hashes")


def lock_flavors(lab: Lab) -> list[str]:
    """Lock ``lab``'s ``requirements.in`` on each CUDA image flavor (``requirements-cuda12.txt``) with the
    lab's own lock as constraints too, so both flavors run the same library versions and differ in torch
    and its CUDA libraries only; a lab
    with its own Dockerfile (a source build stage) is left out, and so is one whose pins do not resolve on
    the flavor's torch (said in one line, and any stale lock removed: the run plan then refuses the
    flavor naming the driver the lab needs).

    Returns:
        The flavors locked.
    """
    done = []
    if lab.image != "cuda" or lab.dockerfile() != lab.dir.parent / "Dockerfile":
        return done
    same = ("-c", str((lab.dir / "requirements.txt").relative_to(REPO_ROOT)))  # the same library versions
    for flavor in FLAVOR_LOCKS:
        lock_file = lab.requirements(None, flavor)
        try:
            uv_compile(lab.dir / "requirements.in", lock_file, *on_image(flavor), *same)
            done.append(flavor)
        except LabError:
            lock_file.unlink(missing_ok=True)
            print(f"{lab.name}: no {flavor} lock: its pins do not resolve on images/{flavor}'s torch (see uv above)")
    return done
