"""invoke report: one self-contained HTML page of the newest completed runs, opened in a real browser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from invoke import Context

import tasks
from labkit.report import collect, flatten, write_report
from labkit.rundir import newest_completed_run

from helpers import CHROMIUM, chromium

# A 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def fake_run(root: Path, lab: str, profile: str, stamp: str, status: str, metrics: dict, files=()) -> Path:
    run = root / lab / profile / stamp
    run.mkdir(parents=True)
    manifest = {
        "lab": lab,
        "profile": profile,
        "status": status,
        "seed": 42,
        "runtime": "native",
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "accelerator": {"device": "cpu", "name": "Test CPU", "count": 2},
        "packages": {"torch": "2.13.0", "transformers": "5.24.0", "ruff": "x"},
        "start_utc": "2026-11-30T00:00:00+00:00",
        "wall_time_s": 12.5,
        "peak_memory_bytes": 2**30,
        "overrides": {"training.learning_rate": 0.0} if status == "completed" else {},
        **({"error": "LabError: data file x.jsonl not found"} if status == "failed" else {}),
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "metrics.json").write_text(json.dumps(metrics))
    for name in files:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(PNG if name.endswith(".png") else b"x")
    return run


@pytest.fixture
def outputs(tmp_path):
    """bert-yelp smoke: a good run, then a newer failed one; whisper-lora smoke: a run that fails checks."""
    from labkit.config import get_lab
    from labkit.verify import load_expected

    expected = load_expected(get_lab("bert-yelp").expected_path("smoke"))
    good = {}
    for name, spec in expected["metrics"].items():  # a metrics.json meeting every bound
        value = spec.get("equals", spec.get("min", spec.get("max")))
        node = good
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    good.setdefault("data", {})["fingerprint"] = expected["data"]["fingerprint"]  # the bundled data
    files = [f.replace("*", "0") for f in expected["files"] if f not in ("manifest.json", "metrics.json")]
    fake_run(tmp_path, "bert-yelp", "smoke", "20261130T000000Z", "completed", good, files)
    fake_run(tmp_path, "bert-yelp", "smoke", "20261130T010000Z", "failed", {})
    fake_run(tmp_path, "whisper-lora", "smoke", "20261130T000000Z", "completed", {"train": {"loss_drop_ratio": 0.0}})
    (tmp_path / "not-a-lab" / "smoke").mkdir(parents=True)  # ignored
    (tmp_path / "bert-yelp" / "bench" / "20261130T000000Z").mkdir(parents=True)  # invoke bench's, not a profile
    return tmp_path


def test_newest_completed_run_skips_a_newer_failure(outputs):
    run, failure = newest_completed_run(outputs, "bert-yelp", "smoke")
    assert run.name == "20261130T000000Z" and failure.name == "20261130T010000Z"
    assert newest_completed_run(outputs, "bert-yelp", "full") == (None, None)


def test_report_shows_checks_plots_metrics_and_manifest(outputs):
    path, cards = write_report(outputs)
    html = path.read_text(encoding="utf-8")
    assert path == outputs / "report.html"
    assert [(c.lab, c.profile, c.passed) for c in cards] == [
        ("bert-yelp", "smoke", True),
        ("whisper-lora", "smoke", False),
    ]
    assert "data:image/png;base64," in html and "loss_curve.png" in html  # self-contained plot
    assert "A newer run did not complete" in html and "data file x.jsonl not found" in html
    assert "0123456789ab" in html and "Test CPU" in html and "5.24.0" in html and "ruff" not in html
    assert "training.learning_rate=0.0" in html
    whisper = next(c for c in cards if c.lab == "whisper-lora")
    failed = {c.name for c in whisper.checks if not c.passed}
    assert "train.loss_drop_ratio" in failed and "file adapter/adapter_config.json" in failed
    assert html.count('class="FAIL"') >= len(failed)


def test_report_escapes_what_runs_wrote(tmp_path):
    fake_run(tmp_path, "bert-yelp", "smoke", "20261130T000000Z", "completed", {"note": "<script>alert(1)</script>"})
    html = write_report(tmp_path)[0].read_text(encoding="utf-8")
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_flatten_keeps_scalars_and_short_lists():
    assert flatten({"a": {"b": 1.23456789, "c": [1, 2]}, "d": list(range(20)), "e": "x"}) == [
        ("a.b", "1.23457"),
        ("a.c", "[1, 2]"),
        ("e", "x"),
    ]


def test_report_task_and_empty_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUTPUT_ROOT", str(tmp_path))
    tasks.report(Context())
    assert "wrote" in capsys.readouterr().out
    assert "No runs yet" in (tmp_path / "report.html").read_text()
    assert collect(tmp_path / "missing") == []


@pytest.mark.skipif(not CHROMIUM, reason="no Chromium (CI installs Debian's chromium)")
def test_report_renders_in_a_headless_browser(outputs, tmp_path):
    path, _ = write_report(outputs)
    dom = chromium(tmp_path / "profile", "--dump-dom", path.as_uri()).stdout
    assert "bert-yelp / smoke" in dom and "whisper-lora / smoke" in dom
    assert '<span class="badge PASS">PASS</span>' in dom and '<span class="badge FAIL">FAIL</span>' in dom
    shot = tmp_path / "report.png"
    chromium(tmp_path / "profile", f"--screenshot={shot}", path.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000  # a rendered page, not blank
