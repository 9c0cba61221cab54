"""labkit: the machinery every lab shares.

Profiles and config loading (:mod:`labkit.config`), device selection (:mod:`labkit.device`),
run directories and manifests (:mod:`labkit.rundir`), metric logging (:mod:`labkit.metrics`),
verification against expected outputs (:mod:`labkit.verify`) and tiny-model builders for the
smoke profile (:mod:`labkit.tiny`). Lab code imports from here and stays short.
"""

import logging

from labkit.errors import LabError

__all__ = ["LabError"]


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
