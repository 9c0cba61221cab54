"""labkit.lab.timing: warm-up calls are not timed and the median resists one slow run."""

from __future__ import annotations

import time

import pytest

from labkit.lab.timing import median_seconds


def test_warmup_is_excluded_and_the_median_is_reported():
    delays = iter([0.3, 0.01, 0.2, 0.01])  # warm-up (start-up cost), then one slow timed run of three
    median, runs = median_seconds(lambda: time.sleep(next(delays)), "cpu", repeats=3, warmup=1)
    assert len(runs) == 3 and max(runs) >= 0.2
    assert 0.005 < median < 0.1


def test_bad_repeat_counts_are_refused():
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        median_seconds(lambda: None, "cpu", repeats=0)
