"""Native runtimes: one virtualenv per lab image (``.venvs/<lab>[-<variant>]``), built with uv.

Host tooling only (no torch): ``tasks.py`` calls :func:`ensure_env` before a native run. On a host
whose driver is older than the CUDA image's torch needs, the run plan asks for the ``cuda12`` flavor:
``.venvs/<lab>-cuda12`` from ``images/cuda12``'s torch and the lab's ``requirements-cuda12.txt``.

How an environment is made, from wheels alone (no compiler, no system libraries):

1. ``uv venv --python 3.11`` (the locks are resolved for CPython 3.11 on Linux x86_64).
2. The shared image's Python layer (``images/<image>/requirements.in``: torch, and for the Ascend
   image torch_npu and CANN's Python dependencies) with the image lock as constraints, *without*
   hash checking: the host's index decides the torch build (PyPI's CUDA wheel, or a CPU wheel a
   machine offers through ``UV_FIND_LINKS``), and the builds hash differently. A variant whose lock
   pins its own torch (the quantization lab's course stack) skips this step.
3. The lab's lock, hash-checked (``--require-hashes --no-deps``: the lock is complete), minus the
   packages ``lab.yaml`` ``native.replace`` swaps for a local project (with the reason there).
4. ``uv pip check``.

Every environment shares uv's cache (``UV_CACHE_DIR``, default ``~/.cache/uv``), so a package
downloads once and later environments link it from the cache: a second lab's environment takes
seconds. An environment is rebuilt from scratch (``--clear``) whenever its inputs change, which makes
it an exact copy of the locks, as ``uv pip sync`` would.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from labkit.config import REPO_ROOT, Lab
from labkit.errors import LabError

IMAGES_DIR = REPO_ROOT / "images"
VENVS_DIR = REPO_ROOT / ".venvs"
PYTHON_VERSION = "3.11"


def uv_command() -> list[str]:
    """uv from the tooling virtualenv (``requirements-dev.txt`` pins it)."""
    return [sys.executable, "-m", "uv"]


def torch_pin(image: str) -> str:
    """``torch==X`` from ``images/<image>/requirements.in``.

    Raises:
        LabError: the file pins no torch.
    """
    path = IMAGES_DIR / image / "requirements.in"
    match = re.search(r"^torch==\S+", path.read_text(encoding="utf-8"), re.MULTILINE)
    if not match:
        raise LabError(f"{path} pins no torch version")
    return match.group(0)


def image_constraints(image: str) -> Path:
    """The constraints (the lock without hashes) of shared image ``image`` for this machine:
    ``constraints-<uname -m>.txt`` for an image locked per architecture (the Ascend one), else
    ``constraints.txt``.

    Raises:
        LabError: the image has no lock for this architecture (names the ones it has).
    """
    folder = IMAGES_DIR / image
    for name in (f"constraints-{os.uname().machine}.txt", "constraints.txt"):
        if (folder / name).is_file():
            return folder / name
    have = ", ".join(sorted(p.name for p in folder.glob("constraints*.txt"))) or "none"
    raise LabError(
        f"images/{image} has no lock for {os.uname().machine} (it has: {have}): regenerate with `invoke lock` "
        "(the x86_64 Ascend lock needs https://download.pytorch.org/whl/cpu), or run on an aarch64 host; "
        "RUNTIME=docker with ASCEND_PLATFORM=linux/arm64 runs the aarch64 image under QEMU (CPU only)"
    )


def replacements(lab: Lab, variant: str | None) -> dict[str, Path]:
    """``lab.yaml`` ``native.replace``: locked package -> local project installed in its place.

    Only for the lab's default image (a variant brings its own lock). Each entry is
    ``{package: {path: <folder relative to the lab>, why: <reason>}}``.

    Raises:
        LabError: an entry without ``path``/``why`` or a folder that does not exist.
    """
    if variant:
        return {}
    found = {}
    for package, entry in (lab.meta.get("native", {}).get("replace") or {}).items():
        if not isinstance(entry, dict) or not entry.get("path") or not entry.get("why"):
            raise LabError(f"{lab.dir / 'lab.yaml'}: native.replace.{package} needs `path` and `why`")
        folder = lab.dir / entry["path"]
        if not (folder / "pyproject.toml").is_file():
            raise LabError(f"{lab.dir / 'lab.yaml'}: native.replace.{package}: {folder} holds no pyproject.toml")
        found[package.lower()] = folder
    return found


def without_packages(lock_text: str, names: set[str]) -> str:
    """``lock_text`` (a uv/pip-compile lock) without the entries (and hash lines) of ``names``."""
    out, skipping = [], False
    for line in lock_text.splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)==", line):
            skipping = m.group(1).lower() in names
        elif line and not line.startswith((" ", "#")):
            skipping = False
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def env_inputs(lab: Lab, variant: str | None, flavor: str | None = None) -> list[Path]:
    """Files whose content defines the environment: the image constraints, the lab lock, replacements."""
    shared = lab.shared_image(variant, flavor)
    files = [image_constraints(shared), IMAGES_DIR / shared / "requirements.in"]
    files.append(lab.requirements(variant, flavor))
    for folder in replacements(lab, variant).values():
        files += sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return files + [Path(__file__)]


def env_stamp(lab: Lab, variant: str | None, flavor: str | None = None) -> str:
    """SHA-256 over :func:`env_inputs` (paths and contents) and where packages come from
    (``UV_FIND_LINKS``, ``UV_DEFAULT_INDEX``, ``UV_INDEX_URL``): a changed input means a rebuild, so
    switching between a CPU and a CUDA torch rebuilds too."""
    digest = hashlib.sha256()
    for path in env_inputs(lab, variant, flavor):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    for key in ("UV_FIND_LINKS", "UV_DEFAULT_INDEX", "UV_INDEX_URL"):
        digest.update(f"{key}={os.environ.get(key, '')}".encode())
    return digest.hexdigest()


def env_dir(lab: Lab, variant: str | None = None, flavor: str | None = None) -> Path:
    return VENVS_DIR / lab.image_name(variant, flavor)


def _uv(args: list[str], what: str) -> None:
    cmd = [*uv_command(), *args]
    print("+ uv " + shlex.join(args), flush=True)
    result = subprocess.run(cmd, cwd=REPO_ROOT, check=False)
    if result.returncode != 0:
        raise LabError(f"{what} failed (uv exit {result.returncode}); see uv's message above")


def ensure_env(lab: Lab, variant: str | None = None, flavor: str | None = None) -> Path:
    """The Python of ``variant``'s native environment (the lab's own for None; ``flavor`` ``cuda12``: on
    the CUDA 12 image's torch), (re)built if its inputs changed.

    Raises:
        LabError: uv finds no Python 3.11, or an install step fails (uv's own message is printed above).
    """
    target = env_dir(lab, variant, flavor)
    python = target / "bin" / "python"
    stamp = env_stamp(lab, variant, flavor)
    stamp_file = target / ".lock-hash"

    def current() -> bool:
        return python.exists() and stamp_file.is_file() and stamp_file.read_text(encoding="utf-8") == stamp

    if current():
        return python
    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    with open(VENVS_DIR / f".{target.name}.lock", "w") as lock:  # one builder at a time (parallel runs/tests)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current():  # another process built it while we waited
            return python
        _build(lab, variant, target, python, flavor)
        stamp_file.write_text(stamp, encoding="utf-8")
    return python


def _build(lab: Lab, variant: str | None, target: Path, python: Path, flavor: str | None = None) -> None:
    print(f"Creating the native environment {target} (once per lock change; uv's cache is shared)...", flush=True)
    probe = subprocess.run(
        [*uv_command(), "python", "find", PYTHON_VERSION], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise LabError(
            f"native runs need Python {PYTHON_VERSION} (the locks are resolved for it) and uv finds none: "
            f"install it (Debian/Ubuntu: apt-get install python{PYTHON_VERSION}; or `uv python install "
            f"{PYTHON_VERSION}`), or use RUNTIME=docker"
        )
    _uv(["venv", "--quiet", "--clear", "--python", probe.stdout.strip(), str(target)], "creating the virtualenv")
    lock = lab.requirements(variant, flavor)
    # Each install compiles its packages' bytecode (uv's --compile-bytecode): every lab process imports
    # torch and Transformers, and a start then takes 2.7 s instead of 6.0 s (torch + transformers +
    # datasets on the 2-core CI machine), also where Python may not write bytecode itself
    # (PYTHONDONTWRITEBYTECODE, a read-only environment).
    on_python = ["--python", str(python)]
    compile_ = ["--compile-bytecode"]
    if not re.search(r"^torch==", lock.read_text(encoding="utf-8"), re.MULTILINE):
        image = IMAGES_DIR / lab.shared_image(variant, flavor)
        torch_pin(image.name)  # the image layer must pin torch
        layer = ["-c", str(image_constraints(image.name)), "-r", str(image / "requirements.in")]
        _uv(["pip", "install", *on_python, *compile_, *layer], f"installing the {image.name} image's layer (torch)")
    replace = replacements(lab, variant)
    if replace:
        trimmed = target / "requirements-native.txt"
        trimmed.write_text(without_packages(lock.read_text(encoding="utf-8"), set(replace)), encoding="utf-8")
        lock = trimmed
    lock_install = ["pip", "install", *on_python, *compile_, "--require-hashes", "--no-deps", "-r", str(lock)]
    _uv(lock_install, f"installing {lock.name}")
    for folder in replace.values():
        _uv(["pip", "install", *on_python, *compile_, "--no-deps", str(folder)], f"installing {folder.name}")
    _uv(["pip", "check", *on_python], "checking the environment's dependencies")
