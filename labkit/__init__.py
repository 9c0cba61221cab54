"""labkit: the machinery every lab shares.

Profiles and config loading (:mod:`labkit.config`), device selection (:mod:`labkit.device`),
run directories and manifests (:mod:`labkit.rundir`), metric logging (:mod:`labkit.metrics`),
verification against expected outputs (:mod:`labkit.verify`) and tiny-model builders for the
smoke profile (:mod:`labkit.tiny`). Lab code imports from here and stays short.
"""

from labkit.errors import LabError

__all__ = ["LabError"]
