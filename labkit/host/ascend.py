"""Ascend NPU host facts without torch: device nodes, driver mounts, the driver and CANN versions.

Used by ``tasks.py`` (``docker run`` arguments for an NPU lab variant, ``invoke doctor``) and by
:mod:`labkit.lab.device` inside a lab (why ``torch_npu`` cannot load). Sources are in
``shared/reference/ascend-facts.md``; each constant names its own.

How a container gets an NPU without ``--privileged`` (Ascend/cann-container-image README): one
``--device /dev/davinciN`` per card, plus the three control nodes ``/dev/davinci_manager``,
``/dev/devmm_svm`` and ``/dev/hisi_hdc``, and read-only mounts of the host driver: its ``lib64``
(the user-space driver, ``libascend_hal.so``), ``version.info``, ``npu-smi``, ``/usr/local/dcmi``
and ``/etc/ascend_install.info``. Inside, ``ASCEND_RT_VISIBLE_DEVICES`` numbers the cards it got
from 0 (CANN envref_07_0028); host ids there fail with 207004 "no valid device" (gpustack#3352).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import LabError

#: Control nodes every NPU container needs besides its /dev/davinciN cards (Ascend/cann-container-image README).
CONTROL_NODES = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")

#: Host paths mounted read-only at the same place in the container (same source): the driver's
#: user-space libraries and version file, npu-smi and its DCMI library, the install record.
DRIVER_MOUNTS = (
    "/usr/local/Ascend/driver/lib64",
    "/usr/local/Ascend/driver/version.info",
    "/usr/local/dcmi",
    "/etc/ascend_install.info",
)

#: Where npu-smi lives on most hosts; some keep it in /usr/local/sbin (hiyouga/LlamaFactory#10418).
NPU_SMI_PATHS = ("/usr/local/bin/npu-smi", "/usr/local/sbin/npu-smi")
NPU_SMI_IN_CONTAINER = "/usr/local/bin/npu-smi"

#: CANN release -> the driver release documented with it (MindSpore Transformers installation guide,
#: mindspore.cn/mindformers/docs/en/r1.9.0/installation.html). An older driver than the pair fails on
#: the first operator (e.g. ``aclnnInplaceZero ... 561103``, vllm-ascend#4859; ``E30006``, #4284).
CANN_DRIVER = {
    "8.0.0": "24.1.0",
    "8.1.RC1": "25.0.RC1",
    "8.2.RC1": "25.2.0",
    "8.3.RC1": "25.3.RC1",
    "8.5.0": "25.5.0",
    "9.0.0": "26.0.RC1",
}

#: CANN's runtime libraries ``torch_npu`` links against, and the host driver's (mounted) library.
CANN_LIBRARIES = ("libascendcl.so", "libhccl.so")
DRIVER_LIBRARY = "libascend_hal.so"


@dataclass(frozen=True)
class Npu:
    """One card as ``npu-smi info`` lists it: id, chip name (``910B3``), health, HBM in MiB."""

    npu_id: int
    name: str
    health: str
    hbm_used_mib: int | None
    hbm_total_mib: int | None

    @property
    def memory_gib(self) -> float | None:
        return round(self.hbm_total_mib / 1024, 1) if self.hbm_total_mib else None


def version_key(version: str) -> tuple:
    """Sort key for Ascend release numbers: ``25.0.RC1`` < ``25.0.0`` < ``25.2.0`` < ``26.0.RC1``
    (a release candidate precedes its release); trailing build tags (``.b030``) are ignored."""
    parts = version.strip().lower().split(".")
    major = int(parts[0]) if parts and parts[0].isdigit() else 0
    minor = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    third = parts[2] if len(parts) > 2 else "0"
    if m := re.fullmatch(r"rc(\d+)", third):
        return (major, minor, 0, int(m.group(1)))
    return (major, minor, 1, int(third) if third.isdigit() else 0)


def image_cann(dockerfile: Path) -> str | None:
    """The CANN release of an image's default base (``9.0.0`` from ``quay.io/ascend/cann:9.0.0-910b-...``),
    upper-cased as Huawei writes it (``8.3.RC1``); ``None`` when the base is not a CANN image."""
    text = Path(dockerfile).read_text(encoding="utf-8")
    m = re.search(r"^ARG BASE_IMAGE=\S*/cann:([0-9]+\.[0-9]+\.[0-9a-zA-Z]+?)-", text, re.M)
    return m.group(1).upper() if m else None


def driver_version(version_info: Path = Path("/usr/local/Ascend/driver/version.info")) -> str | None:
    """``Version=`` from the driver's ``version.info`` (``26.0.rc1``), or ``None`` if unreadable."""
    try:
        text = Path(version_info).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r"^\s*Version\s*=\s*(\S+)", text, re.M)
    return m.group(1) if m else None


def driver_problem(driver: str, cann: str | None) -> str | None:
    """One line when ``driver`` is older than the release documented with CANN ``cann``, else ``None``."""
    need = CANN_DRIVER.get((cann or "").upper())
    if not need or version_key(driver) >= version_key(need):
        return None
    return (
        f"Ascend driver {driver} is older than CANN {cann} is documented with ({need}): the first NPU operator "
        f"then fails (e.g. 'aclnnInplaceZero ... 561103' or 'E30006 Failed to verify the OPP'). Update the host "
        f"driver and firmware to >= {need}, or build images/ascend on an older CANN base (ascend-facts: the matrix)."
    )


def find_npu_smi() -> str | None:
    """The host's npu-smi: on PATH, else one of :data:`NPU_SMI_PATHS`."""
    return shutil.which("npu-smi") or next((p for p in NPU_SMI_PATHS if os.access(p, os.X_OK)), None)


def parse_npu_smi(text: str) -> list[Npu]:
    """Cards from ``npu-smi info``'s table: a name row (``| 0  910B3 | OK | ...``) then a chip row whose
    last ``used / total`` pair is the HBM in MiB. Process rows and headers are skipped."""
    cards: list[Npu] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\|\s*(\d+)\s+([0-9A-Za-z][\w-]*)\s*\|\s*(\w+)\s*\|", line)
        if not m or m.group(3).isdigit():  # a chip row ("| 0 | 0000:C1:00.0 |") or a process row
            continue
        used = total = None
        if i + 1 < len(lines) and (pairs := re.findall(r"(\d+)\s*/\s*(\d+)", lines[i + 1])):
            used, total = int(pairs[-1][0]), int(pairs[-1][1])
        cards.append(Npu(int(m.group(1)), m.group(2), m.group(3), used, total))
    return cards


def npu_smi() -> tuple[list[Npu], str | None, str | None]:
    """``(cards, driver version, problem)`` from ``npu-smi info``: no cards and no problem when there
    is no npu-smi; a one-line problem when it exists but fails (driver not loaded, device held)."""
    tool = find_npu_smi()
    if not tool:
        return [], None, None
    try:  # a driver stuck on a held device can leave npu-smi hanging: a problem, not a hang
        out = subprocess.run([tool, "info"], capture_output=True, text=True, check=False, timeout=60)
    except subprocess.TimeoutExpired:
        return [], None, f"`{tool} info` gave no answer in 60 s: the NPU driver is stuck; see `dmesg`"
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        last = text.splitlines()[-1] if text else f"exit {out.returncode}"
        hint = ""
        if "-8005" in text or "-8020" in text:
            hint = (
                " (dcmi -8005/-8020: another container holds the device, or privileges are missing; vllm-ascend#2698)"
            )
        return [], None, f"npu-smi info failed: {last}{hint}. Is the Ascend driver loaded (`lsmod | grep drv_davinci`)?"
    m = re.search(r"npu-smi\s+\S+\s+Version:\s*(\S+)", text)
    return parse_npu_smi(text), (m.group(1) if m else None), None


def card_nodes(dev: Path = Path("/dev")) -> list[int]:
    """Host NPU card ids from ``/dev/davinciN``, sorted."""
    return sorted(int(p.name[7:]) for p in Path(dev).glob("davinci[0-9]*") if p.name[7:].isdigit())


def chosen_cards(visible: str | None, dev: Path = Path("/dev"), count: int | None = None) -> list[int]:
    """The host cards a container gets: ``ASCEND_VISIBLE_DEVICES`` (physical ids as the Ascend Docker
    Runtime reads them: ``0,1`` or ``0-3``), else the first ``count`` cards (every card when ``count``
    is None): a one-card run takes one card, leaving the others to other containers.

    Raises:
        LabError: an id that is not a card of this host, or fewer cards than ``count`` (names them).
    """
    present = card_nodes(dev)
    if not visible or not visible.strip():
        if count is not None and count > len(present):
            raise LabError(f"{count} NPU(s) wanted, this host has {len(present)} (/dev/davinci*)")
        return present[:count] if count is not None else present
    try:
        wanted = []
        for part in filter(None, visible.replace(" ", "").split(",")):
            low, _, high = part.partition("-")
            wanted += list(range(int(low), int(high or low) + 1))
    except ValueError:
        raise LabError(f"ASCEND_VISIBLE_DEVICES={visible!r}: use physical NPU ids, e.g. 0,1 or 0-3") from None
    absent = [w for w in wanted if w not in present]
    if absent:
        raise LabError(
            f"ASCEND_VISIBLE_DEVICES={visible}: no /dev/davinci{absent[0]} on this host (cards here: "
            f"{', '.join(map(str, present)) or 'none'})"
        )
    return sorted(set(wanted))


def missing_pieces(root: Path = Path("/"), cards: list[int] | None = None) -> list[str]:
    """One line per piece of the NPU recipe this host lacks (device nodes, driver files, npu-smi)."""
    root = Path(root)
    lines = []
    if not card_nodes(root / "dev"):
        lines.append("no /dev/davinciN device node: the Ascend driver is not installed or not loaded")
    for node in CONTROL_NODES:
        if not (root / node.lstrip("/")).exists():
            lines.append(f"{node} missing: every NPU container needs it (driver install incomplete?)")
    for path in DRIVER_MOUNTS:
        if not (root / path.lstrip("/")).exists():
            why = "the user-space driver (libascend_hal.so)" if path.endswith("lib64") else "read by CANN/npu-smi"
            lines.append(f"{path} missing: {why}; reinstall the Ascend driver package")
    if root == Path("/") and not find_npu_smi():
        lines.append(f"npu-smi not found (looked on PATH and in {', '.join(NPU_SMI_PATHS)})")
    return lines


def docker_args(visible: str | None = None, root: Path = Path("/"), count: int | None = None) -> list[str]:
    """``docker run`` arguments that give a container the chosen NPUs without ``--privileged``: the
    cards of ``ASCEND_VISIBLE_DEVICES`` (``visible``), else the first ``count`` (:func:`chosen_cards`).

    ``--device`` for each chosen ``/dev/davinciN`` and the control nodes, read-only mounts of
    :data:`DRIVER_MOUNTS` and npu-smi, ``--group-add`` the group owning the device nodes (the host's
    HwHiAiUser, mode 0660), and ``ASCEND_RT_VISIBLE_DEVICES=0..k-1``: inside the container the cards
    it got are numbered from 0.

    Raises:
        LabError: this host lacks a piece (lists every missing one) or ``visible`` names no card here.
    """
    root = Path(root)
    cards = chosen_cards(visible, root / "dev", count)
    missing = missing_pieces(root)
    if missing or not cards:
        raise LabError(
            "this host cannot give a container its NPUs:\n  "
            + "\n  ".join(missing or ["no card chosen"])
            + "\n`invoke doctor` checks the host; PROFILE=smoke runs on the CPU"
        )
    args = []
    for node in [f"/dev/davinci{c}" for c in cards] + list(CONTROL_NODES):
        args += ["--device", node]
    for path in DRIVER_MOUNTS:
        args += ["-v", f"{path}:{path}:ro"]
    smi = find_npu_smi() if root == Path("/") else str(root / "usr/local/bin/npu-smi")
    args += ["-v", f"{smi}:{NPU_SMI_IN_CONTAINER}:ro"]
    gid = (root / "dev" / f"davinci{cards[0]}").stat().st_gid
    if gid:
        args += ["--group-add", str(gid)]
    args += ["-e", "ASCEND_RT_VISIBLE_DEVICES=" + ",".join(str(i) for i in range(len(cards)))]
    return args


def library_dirs() -> list[str]:
    """Directories the dynamic loader searches first: ``LD_LIBRARY_PATH`` (where CANN's set_env.sh and
    the CANN images put the toolkit and the driver)."""
    return [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]


def missing_libraries() -> list[str]:
    """Which of CANN's runtime libraries and the driver's library the dynamic loader cannot find: in no
    ``LD_LIBRARY_PATH`` directory and not in its cache (``ctypes.util.find_library``: ld.so.conf, as a
    host-wide driver install registers itself)."""
    import ctypes.util

    dirs = library_dirs()
    wanted = (*CANN_LIBRARIES, DRIVER_LIBRARY)
    here = [lib for lib in wanted if not any(os.path.exists(os.path.join(d, lib)) for d in dirs)]
    return [lib for lib in here if not ctypes.util.find_library(lib.removeprefix("lib").removesuffix(".so"))]


def cann_problem() -> str | None:
    """Why ``torch_npu`` cannot load here, in one line, or ``None`` when CANN and the driver are found."""
    missing = missing_libraries()
    if not missing:
        return None
    cann = [lib for lib in missing if lib != DRIVER_LIBRARY]
    if cann:
        return (
            f"torch_npu needs CANN's runtime ({', '.join(cann)} not on LD_LIBRARY_PATH): run in the Ascend image "
            "(llm-labs/ascend on a CANN base, whose entrypoint sources set_env.sh), or natively `source "
            "/usr/local/Ascend/ascend-toolkit/set_env.sh` first (the ImportError 'libhccl.so' of vllm-ascend#262)"
        )
    return (
        f"torch_npu needs the host's Ascend driver ({DRIVER_LIBRARY} not on LD_LIBRARY_PATH): mount "
        "/usr/local/Ascend/driver/lib64 read-only (`invoke run` does on a host with the driver; "
        "`invoke doctor` names what is missing)"
    )


def _report() -> int:
    """``python -m labkit.host.ascend``: what this machine offers an NPU lab, one line per fact."""
    cards, driver, problem = npu_smi()
    print(f"npu-smi : {problem or (f'{len(cards)} card(s), driver {driver}' if cards else 'not found')}")
    for line in missing_pieces():
        print(f"missing : {line}")
    print(f"CANN    : {cann_problem() or 'runtime and driver libraries found'}")
    return 0 if cards and not problem else 1


if __name__ == "__main__":
    raise SystemExit(_report())
