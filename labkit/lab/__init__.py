"""What runs inside a lab's run (torch, Transformers, the datasets): the entry point every lab's
script shares (:mod:`~labkit.lab.runner`), devices (:mod:`~labkit.lab.device`), data
(:mod:`~labkit.lab.data`, :mod:`~labkit.lab.audio`), metric logging (:mod:`~labkit.lab.metrics`),
tiny models for the smoke profiles (:mod:`~labkit.lab.tiny`), launching ranks
(:mod:`~labkit.lab.launch`), benchmarks (:mod:`~labkit.lab.bench`, :mod:`~labkit.lab.timing`) and
the LLM helpers (:mod:`labkit.lab.llm`).

A lab's entry script imports this package before any library: it keeps torch importable where
torch_npu is installed but cannot load, and drops a bitsandbytes start-up warning that says nothing
offline.
"""

import importlib.util
import logging
import os
import sys


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


# bitsandbytes >= 0.49, on CPUs with AVX512-BF16, tries an optional 4-bit CPU kernel from the Hub
# (`kernels` package, kernels-community/quantization-bitsandbytes) when it is imported, and warns
# when it cannot; it then uses its own CPU kernel. Labs run offline without `kernels`, so the
# warning says nothing useful: entry scripts import labkit first, before any library loads it.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    _DropMessage("Failed to load CPU gemm_4bit_forward from kernels-community")
)


#: Why torch_npu is installed but cannot load in this process (set by the guard below), else None.
TORCH_NPU_UNLOADABLE: str | None = None


def _torch_npu_guard() -> None:
    """Keep torch and the Hugging Face libraries importable where torch_npu is installed but cannot load.

    torch >= 2.5 imports every installed device plugin at ``import torch`` (the ``torch.backends`` entry
    points) and raises if one fails, and Transformers' / Accelerate's NPU checks import torch_npu
    whenever it is installed; torch_npu fails without CANN's runtime or the host driver (the Ascend
    image on a machine without an NPU, CI's stand-in base). Then this process treats torch_npu as not
    installed: auto-loading off (``TORCH_DEVICE_BACKEND_AUTOLOAD=0``, torch's own switch) and
    ``sys.modules["torch_npu"] = None`` (Python's way to make an import fail, so ``find_spec`` says
    absent). CPU work runs; asking for the NPU gives the reason (:func:`labkit.lab.device.npu_problem`).
    """
    global TORCH_NPU_UNLOADABLE
    if "torch_npu" in sys.modules or importlib.util.find_spec("torch_npu") is None:
        return
    from labkit.host.ascend import cann_problem

    if why := cann_problem():
        TORCH_NPU_UNLOADABLE = why
        os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
        sys.modules["torch_npu"] = None


_torch_npu_guard()
