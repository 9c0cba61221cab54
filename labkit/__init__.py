"""labkit: the machinery every lab shares, in two sides.

- :mod:`labkit.host`: what runs on the host, importable without torch: the run plan, the
  accelerator probe (NVIDIA, Ascend), Docker and BuildKit, native environments, locks, ``doctor``.
  ``tasks.py`` is its command line.
- :mod:`labkit.lab`: what runs inside a lab's run (torch, Transformers): the entry point, devices,
  data, metrics, tiny models, launching ranks, benchmarks, LLM helpers.

Both sides share the torch-free modules here: :mod:`labkit.errors` (:class:`LabError`),
:mod:`labkit.config` (labs, profiles, overrides), :mod:`labkit.rundir` (run directories,
manifests), :mod:`labkit.verify` (expected outputs) and :mod:`labkit.report` (the runs report).
"""
