"""Timing that survives start-up costs: warm-up calls, device synchronisation, the median of repeats.

The first call on a GPU pays CUDA context and kernel loading (on an H200, issue 9 of this project
reports a tiny model's first timed generation at 22.9 tokens/s and the next step's at 271), so every
speed a lab reports
comes from :func:`median_seconds`: ``warmup`` untimed calls, then ``repeats`` timed ones.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def synchronize(device: str) -> None:
    """Wait for queued accelerator work (``cuda``/``npu``); no-op on the CPU."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    elif device == "npu":
        import torch

        torch.npu.synchronize()


def median_seconds(
    fn: Callable[[], object], device: str, repeats: int = 3, warmup: int = 1
) -> tuple[float, list[float]]:
    """``(median, all)`` wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    Raises:
        ValueError: ``repeats`` < 1 or ``warmup`` < 0.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = timed_calls(fn, repeats, device)
    return statistics.median(times), times


def timed_calls(fn: Callable[[], object], n: int, device: str) -> list[float]:
    """Wall seconds of ``n`` calls of ``fn``, synchronizing the device after each."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times
