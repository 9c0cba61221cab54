"""Device selection (CUDA, Ascend NPU, CPU) and accelerator facts for the manifest.

Ascend NPUs appear to PyTorch through the ``torch_npu`` plugin as the ``npu`` device
(see shared/reference/ascend-facts.md); CUDA GPUs through ``torch.cuda``.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import threading

import torch

from labkit.errors import LabError

CHOICES = ("auto", "accelerator", "cuda", "npu", "cpu")


def npu_available() -> bool:
    """True if ``torch_npu`` imports and sees at least one Ascend NPU."""
    try:
        import torch_npu  # noqa: F401  (registers torch.npu)
    except ImportError:
        return False
    return bool(torch.npu.is_available())


def detect_accelerator() -> str | None:
    """``"cuda"``, ``"npu"`` or ``None``: the accelerator PyTorch can use here."""
    if torch.cuda.is_available():
        return "cuda"
    if npu_available():
        return "npu"
    return None


def select_device(requested: str) -> str:
    """Resolve a profile's ``device`` setting to ``"cuda"``, ``"npu"`` or ``"cpu"``.

    ``auto`` takes an accelerator when there is one, else the CPU; ``accelerator`` insists on one
    (the full profiles); ``cuda``/``npu``/``cpu`` ask for that device.

    Raises:
        LabError: unknown setting, or the requested accelerator is missing (names it, and says to
            use the smoke profile or fix the container's device access).
    """
    if requested not in CHOICES:
        raise LabError(f"device {requested!r} is not one of {', '.join(CHOICES)}")
    found = detect_accelerator()
    if requested == "auto":
        return found or "cpu"
    if requested == "cpu" or requested == found or (requested == "accelerator" and found):
        return found if requested == "accelerator" else requested
    want = "a CUDA GPU or an Ascend NPU" if requested == "accelerator" else f"a {requested.upper()} device"
    from labkit.hostcheck import gpu_problem

    cause = gpu_problem(torch.version.cuda)
    raise LabError(
        f"this profile needs {want}, but PyTorch sees none (torch {torch.__version__}, "
        f"torch.cuda.is_available()={torch.cuda.is_available()}). "
        + (
            f"Cause: {cause}"
            if cause
            else "On a GPU host run the lab in its container with GPU access (RUNTIME=docker; `invoke doctor` "
            "checks the host); on a laptop use PROFILE=smoke."
        )
    )


def accelerator_info(device: str) -> dict:
    """Name, memory (GiB), driver and runtime versions of ``device`` for the manifest."""
    info: dict = {"device": device, "torch_cuda": torch.version.cuda}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            name=props.name,
            count=torch.cuda.device_count(),
            memory_gib=round(props.total_memory / 2**30, 2),
            driver=_nvidia_driver(),
        )
    elif device == "npu":
        info.update(name=torch.npu.get_device_name(0), count=torch.npu.device_count())
    else:
        info.update(name=_cpu_name(), count=os.cpu_count())
    return info


def reset_peak_memory(device: str) -> None:
    """Start a new peak-memory window on an accelerator (no-op on CPU: RSS peaks cannot reset)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    elif device == "npu":
        torch.npu.reset_peak_memory_stats()


def peak_memory_bytes(device: str) -> int:
    """Peak memory in bytes: ``max_memory_allocated`` on an accelerator, peak RSS of this process on CPU."""
    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    if device == "npu":
        return int(torch.npu.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def current_rss_bytes() -> int:
    """This process's resident set size now, in bytes (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class PeakMemory:
    """Peak memory (bytes) over one ``with`` block, for per-step figures.

    On CUDA/NPU: ``max_memory_allocated`` after ``reset_peak_memory_stats`` (the course's measure).
    On CPU, where the RSS peak cannot be reset, a thread samples the resident set size every
    ``interval_s`` seconds; a spike shorter than that can be missed.

        with PeakMemory(device) as peak:
            model.generate(...)
        peak.bytes
    """

    def __init__(self, device: str, interval_s: float = 0.01):
        self.device, self.interval_s, self.bytes = device, interval_s, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.bytes = max(self.bytes, current_rss_bytes())

    def __enter__(self) -> PeakMemory:
        reset_peak_memory(self.device)
        if self.device == "cpu":
            self.bytes = current_rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.bytes = max(self.bytes, current_rss_bytes())
        else:
            self.bytes = peak_memory_bytes(self.device)


def _nvidia_driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"
