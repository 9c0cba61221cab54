"""The host side: everything ``invoke`` / ``make`` does before and around a lab's run, without torch.

:mod:`~labkit.host.plan` (what to run: lab, profile, variant, runtime, accelerator, cards, overrides,
resolved once), :mod:`~labkit.host.probe` (the host's accelerator), :mod:`~labkit.host.nvidia` and
:mod:`~labkit.host.ascend` (driver and device facts), :mod:`~labkit.host.docker` (engine, BuildKit,
image builds, ``docker run`` arguments), :mod:`~labkit.host.native` (virtualenvs with uv),
:mod:`~labkit.host.locks` (``invoke lock``), :mod:`~labkit.host.doctor` and
:mod:`~labkit.host.benchtable` (measured bench rows). ``tests/test_host.py`` checks that importing
every module here leaves torch unimported.
"""
