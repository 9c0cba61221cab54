"""Device selection (CUDA, Ascend NPU, CPU) and accelerator facts for the manifest.

Ascend NPUs appear to PyTorch through the ``torch_npu`` plugin as the ``npu`` device
(see shared/reference/ascend-facts.md); CUDA GPUs through ``torch.cuda``.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import threading

import torch

from labkit.errors import LabError

CHOICES = ("auto", "accelerator", "cuda", "npu", "cpu")


def npu_problem() -> str | None:
    """Why PyTorch cannot use an Ascend NPU here, in one line; ``None`` when ``torch.npu`` sees one.

    In order: torch_npu not installed; CANN's runtime or the host driver's library not on the loader
    path (:func:`labkit.host.ascend.cann_problem`); ``import torch_npu`` failing; no card visible.
    """
    import importlib.util

    import labkit

    if labkit.lab.TORCH_NPU_UNLOADABLE:
        return labkit.lab.TORCH_NPU_UNLOADABLE
    if importlib.util.find_spec("torch_npu") is None:
        return (
            "torch_npu is not installed in this environment: NPU runs use a lab's npu variant "
            "(VARIANT=npu: the llm-labs/ascend image with torch_npu on CANN)"
        )
    from labkit.host.ascend import cann_problem

    if why := cann_problem():
        return why
    try:
        import torch_npu  # noqa: F401  (registers torch.npu)
    except (ImportError, OSError, RuntimeError) as exc:
        return f"import torch_npu failed ({type(exc).__name__}: {exc}); `invoke doctor` checks the host"
    if not torch.npu.is_available() or torch.npu.device_count() == 0:
        return (
            "torch_npu sees no NPU (torch.npu.is_available() is False): the container got no /dev/davinciN, or "
            "ASCEND_RT_VISIBLE_DEVICES holds host ids (inside a container the cards it got count from 0)"
        )
    return None


def npu_available() -> bool:
    """True if ``torch_npu`` loads and sees at least one Ascend NPU."""
    return npu_problem() is None


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
    want = {"accelerator": "a CUDA GPU or an Ascend NPU", "npu": "an Ascend NPU"}.get(requested, "a CUDA GPU")
    import importlib.util

    import labkit

    npu_stack = labkit.lab.TORCH_NPU_UNLOADABLE or importlib.util.find_spec("torch_npu")
    if requested == "npu" or (requested == "accelerator" and npu_stack):
        raise LabError(f"this profile needs {want}, but PyTorch sees none: {npu_problem()}")
    from labkit.host.nvidia import gpu_problem

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


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``, set by torchrun / the deepspeed launcher), 0 alone."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def placement(device: str, index: int | None = None) -> str:
    """The device string to put a process's model on: ``npu:N`` / ``cuda:N`` (N: ``index``, default the
    local rank) or ``cpu``. Always a string with the type: an integer index means a *CUDA* device to
    PyTorch and to Transformers' loader, and on an NPU host it fails with "Torch not compiled with
    CUDA enabled" (huggingface/transformers#38468).

    Raises:
        LabError: ``device`` is not ``cuda``, ``npu`` or ``cpu``.
    """
    if device == "cpu":
        return "cpu"
    if device not in ("cuda", "npu"):
        raise LabError(f"device {device!r}: placement needs cuda, npu or cpu")
    return f"{device}:{local_rank() if index is None else index}"


def model_device_map(device: str) -> dict | str:
    """``device_map`` for ``from_pretrained``: ``"auto"`` for one CUDA process (Accelerate spreads the
    layers over the GPUs), else everything on this process's device, ``{"": "npu:N"}`` on an NPU.
    ``"auto"`` is never used on an NPU: Accelerate's map holds integer ids there (transformers#38468)."""
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return "auto"
    return {"": placement(device)}


def check_device_map(device_map: dict | str, device: str) -> None:
    """Refuse a ``device_map`` that would send an NPU run down the CUDA path: ``"auto"`` or integer
    values (names the offending entry).

    Raises:
        LabError: on ``npu``, ``"auto"`` or an entry whose value is an ``int``.
    """
    if device != "npu":
        return
    if device_map == "auto":
        raise LabError(
            'device_map="auto" on an NPU maps layers to integer ids, which load onto CUDA '
            '(transformers#38468): give {"": "npu:N"} (labkit.lab.device.model_device_map)'
        )
    for module, value in (device_map or {}).items():
        if isinstance(value, int) and not isinstance(value, bool):
            raise LabError(
                f"device_map[{module!r}] = {value}: an integer device means CUDA to PyTorch; on an NPU "
                f"write 'npu:{value}' (labkit.lab.device.placement)"
            )


#: torch_npu's names for the first-generation Ascend 910 (fp16 only); Atlas A2 cards are ``Ascend910B1``-``B4``.
FIRST_GENERATION_910 = re.compile(r"Ascend910(A|B|ProA|ProB|PremiumA)?")


def bf16_problem(device: str) -> str | None:
    """One line when ``device`` has no native bf16, else ``None``: GPUs below compute capability 8.0
    (the course's T4), the first-generation Ascend 910 (fp16 only; vllm-project/vllm-ascend#9294,
    hiyouga/LlamaFactory#4339; torch_npu's ``is_bf16_supported`` where it has one). The CPU passes."""
    if device == "cuda" and torch.cuda.get_device_capability()[0] < 8:
        return f"{torch.cuda.get_device_name(0)} has no bf16 (compute capability below 8.0)"
    if device == "npu":
        name = str(torch.npu.get_device_name(0))
        supported = getattr(torch.npu, "is_bf16_supported", None)
        if not supported() if supported is not None else FIRST_GENERATION_910.fullmatch(name):
            return f"{name} has no bf16 (the first-generation Ascend 910 computes fp16 only)"
    return None


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
        import torch_npu

        from labkit.host.ascend import driver_version

        props = torch.npu.get_device_properties(0)
        info.update(
            name=torch.npu.get_device_name(0),
            count=torch.npu.device_count(),
            memory_gib=round(props.total_memory / 2**30, 2),
            driver=driver_version(),
            torch_npu=getattr(torch_npu, "__version__", None),
            ascend_toolkit_home=os.environ.get("ASCEND_TOOLKIT_HOME"),  # /usr/local/Ascend/cann-<version>
        )
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
