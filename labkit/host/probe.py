"""The one probe of the host's accelerators: NVIDIA GPUs (``nvidia-smi``) and Ascend NPUs (``npu-smi``).

Every question about "what does this host have" goes through :func:`probe`: the run plan
(:mod:`labkit.host.plan`: ``PROFILE=auto``, the npu variant, a full profile's accelerator check),
``invoke doctor``, ``invoke bench``, and a lab's own device selection when a full profile finds no
GPU (:func:`labkit.lab.device.select_device` asks :func:`labkit.host.nvidia.gpu_problem` why).
No torch: the tools' own output is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass

from labkit.host import ascend, nvidia


@dataclass(frozen=True)
class Accelerators:
    """What the host's tools report.

    Attributes:
        gpus: the GPUs ``nvidia-smi`` lists (name, memory in GiB, driver).
        gpu_problem: one line when nvidia-smi exists but fails (NVML lost, driver not loaded), else None.
        npus: the cards ``npu-smi info`` lists (id, chip, health, HBM).
        npu_driver: the Ascend driver version npu-smi prints, or None.
        npu_problem: one line when npu-smi exists but fails, else None.
    """

    gpus: tuple[nvidia.Gpu, ...] = ()
    gpu_problem: str | None = None
    npus: tuple[ascend.Npu, ...] = ()
    npu_driver: str | None = None
    npu_problem: str | None = None

    @property
    def kind(self) -> str | None:
        """``cuda`` when a GPU is listed, else ``npu`` when an NPU is, else None (a CPU-only host)."""
        if self.gpus:
            return "cuda"
        return "npu" if self.npus else None

    @property
    def memory_gib(self) -> float | None:
        """The largest accelerator's memory (GiB), or None when unknown."""
        sizes = [g.memory_gib for g in self.gpus] + [n.memory_gib for n in self.npus if n.memory_gib]
        return max(sizes, default=None)


def probe() -> Accelerators:
    """Run ``nvidia-smi`` and ``npu-smi info`` (each only where installed) and return what they list."""
    gpus, gpu_problem = nvidia.nvidia_smi()
    npus, npu_driver, npu_problem = ascend.npu_smi()
    return Accelerators(tuple(gpus), gpu_problem, tuple(npus), npu_driver, npu_problem)
