"""Run directories: never overwritten, `latest` pointer, unwritable outputs caught early."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labkit.errors import LabError
from labkit.rundir import base_manifest, check_writable, finish_manifest, new_run_dir, run_order

from helpers import latest_run


def run(root, status: str):
    run_dir = new_run_dir(root, "lab", "smoke")
    finish_manifest(run_dir, base_manifest("lab", "smoke", 1, {}, {}), status)
    return run_dir


def test_runs_never_overwrite_and_latest_follows_completed_runs(tmp_path):
    first = run(tmp_path, "completed")
    (first / "metrics.json").write_text("{}")
    second = run(tmp_path, "completed")  # same second: gets a suffix
    assert first != second and first.is_dir() and (first / "metrics.json").exists()
    assert latest_run(tmp_path, "lab", "smoke") == second.resolve()
    assert os.readlink(tmp_path / "lab" / "smoke" / "latest") == second.name  # relative: survives moves


def test_a_failed_or_running_run_never_becomes_latest(tmp_path):
    """Issue 21 item 9: after a failed run (a mistyped path), `latest` still names the newest completed run."""
    done = run(tmp_path, "completed")
    failed = run(tmp_path, "failed")
    running = new_run_dir(tmp_path, "lab", "smoke")
    assert failed.is_dir() and running.is_dir()
    assert latest_run(tmp_path, "lab", "smoke") == done.resolve()


def test_latest_run_is_none_before_any_run(tmp_path):
    assert latest_run(tmp_path, "lab", "full") is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_outputs_is_a_clear_error_as_user(tmp_path):
    tmp_path.chmod(0o500)
    with pytest.raises(LabError, match="not writable"):
        check_writable(tmp_path / "x")


def test_outputs_path_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(LabError, match=f"outputs directory {tmp_path / 'file' / 'lab'} is not writable"):
        check_writable(tmp_path / "file" / "lab")


def test_latest_stays_on_the_newest_run_when_an_older_one_finishes_later(tmp_path):
    older = new_run_dir(tmp_path, "lab", "smoke")
    newer = run(tmp_path, "completed")
    finish_manifest(older, base_manifest("lab", "smoke", 1, {}, {}), "completed")
    assert latest_run(tmp_path, "lab", "smoke") == newer.resolve()
    names = ["20261206T101010Z-10", "20261206T101010Z", "20261206T101010Z-2", "20261206T101011Z"]
    assert sorted(names, key=lambda n: run_order(Path(n))) == [names[1], names[2], names[0], names[3]]
