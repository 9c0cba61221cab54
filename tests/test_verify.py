"""The verification engine (labkit.verify): bounds, files, malformed expected files."""

from __future__ import annotations

import json

import pytest

from labkit.errors import LabError
from labkit.verify import check_metric, format_table, load_expected, verdict, verify_run


def write_run(tmp_path, metrics, status="completed"):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"status": status}))
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    return run


def write_expected(tmp_path, text):
    path = tmp_path / "expected.yaml"
    path.write_text(text)
    return path


EXPECTED = """
files: [adapter/adapter_config.json]
metrics:
  train.loss_drop_ratio: {min: 0.05, source: measured}
  eval.cer: {max: 2.0, source: measured}
  lora.r: {equals: 4, source: course}
  reload.diff: {equals: 0.0, tolerance: 1.0e-5, source: measured}
  lora.targets: {equals: [q_proj, v_proj], source: course}
"""
GOOD = {
    "train": {"loss_drop_ratio": 0.3},
    "eval": {"cer": 1.1},
    "lora": {"r": 4, "targets": ["q_proj", "v_proj"]},
    "reload": {"diff": 3e-6},
}


def test_good_run_passes_every_check(tmp_path):
    checks = verify_run(write_run(tmp_path, GOOD), write_expected(tmp_path, EXPECTED))
    assert [c.passed for c in checks] == [True] * 7
    assert [c.name for c in checks][:2] == ["manifest status", "file adapter/adapter_config.json"]


@pytest.mark.parametrize(
    ("path", "value", "failing"),
    [
        (("train", "loss_drop_ratio"), 0.0, "train.loss_drop_ratio"),  # learning rate 0: loss does not fall
        (("train", "loss_drop_ratio"), float("nan"), "train.loss_drop_ratio"),  # every label masked: NaN loss
        (("eval", "cer"), 2.5, "eval.cer"),
        (("lora", "r"), 8, "lora.r"),
        (("reload", "diff"), 1e-3, "reload.diff"),
        (("lora", "targets"), ["q_proj"], "lora.targets"),
    ],
)
def test_one_bad_value_fails_exactly_that_check(tmp_path, path, value, failing):
    metrics = json.loads(json.dumps(GOOD))
    metrics[path[0]][path[1]] = value
    checks = verify_run(write_run(tmp_path, metrics), write_expected(tmp_path, EXPECTED))
    assert [c.name for c in checks if not c.passed] == [failing]


def test_missing_metric_file_and_failed_status_fail(tmp_path):
    run = write_run(tmp_path, {"train": {}}, status="failed")
    (run / "adapter" / "adapter_config.json").unlink()
    checks = verify_run(run, write_expected(tmp_path, EXPECTED))
    assert not any(c.passed for c in checks)
    assert checks[0].got == "failed"


def test_table_has_a_row_per_check(tmp_path):
    checks = verify_run(write_run(tmp_path, GOOD), write_expected(tmp_path, EXPECTED))
    table = format_table(checks)
    assert table.splitlines()[0].split() == ["check", "expected", "got", "result"]
    assert len(table.splitlines()) == 2 + len(checks)
    assert "lora.r  " in table and "== 4" in table


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics: {a: {min: 1}}", "has no source"),
        ("metrics: {a: {source: x}}", "has no bound"),
        ("metrics: {a: {min: one, source: x}}", "min must be a number"),
        ("metrics: {a: {between: 1, source: x}}", "unknown keys"),
        ("metrics: {a: {tolerance: 0.1, min: 0, source: x}}", "tolerance needs a numeric equals"),
        ("files: adapter", "'files' must be a list"),
        ("checks: []", "expected a mapping"),
        ("metrics: {a: [1, 2", "not valid YAML"),
    ],
)
def test_malformed_expected_file_names_the_file_and_problem(tmp_path, text, message):
    path = write_expected(tmp_path, text)
    with pytest.raises(LabError, match=message) as info:
        load_expected(path)
    assert str(path) in str(info.value)


def test_bounds_are_inclusive_and_typed():
    assert check_metric("m", {"min": 1, "max": 2, "source": "s"}, 1).passed
    assert check_metric("m", {"min": 1, "max": 2, "source": "s"}, 2).passed
    assert not check_metric("m", {"min": 1, "source": "s"}, "1").passed
    assert not check_metric("m", {"max": 1, "source": "s"}, True).passed


def test_every_lab_expected_file_is_valid_and_cites_sources(lab):
    for profile in lab.profiles:
        expected = load_expected(lab.expected_path(profile))
        assert expected["files"] and expected["metrics"], f"{lab.name}/{profile} checks nothing"


DATA_EXPECTED = """
data: {fingerprint: "sha256:bundled", about: "the bundled clips"}
files: [adapter/adapter_config.json, "tensorboard/events.out.tfevents.*"]
metrics:
  data.train_examples: {equals: 9, depends_on_data: true, source: bundled clips}
  train.loss_drop_ratio: {min: 0.05, source: measured}
"""


@pytest.mark.parametrize(("fingerprint", "skipped"), [("sha256:bundled", False), ("sha256:yours", True), (None, False)])
def test_data_dependent_checks_are_skipped_on_other_data_only(tmp_path, fingerprint, skipped):
    metrics = {"data": {"train_examples": 40}, "train": {"loss_drop_ratio": 0.2}}
    if fingerprint:
        metrics["data"]["fingerprint"] = fingerprint
    run = write_run(tmp_path, metrics)
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1.host.1.0").write_bytes(b"x")
    checks = {c.name: c for c in verify_run(run, write_expected(tmp_path, DATA_EXPECTED))}
    count = checks["data.train_examples"]
    assert count.skipped is skipped and count.passed is skipped  # 40 != 9 fails on the bundled data
    assert ("SKIP" if skipped else "FAIL") == count.result
    assert checks["train.loss_drop_ratio"].passed and not checks["train.loss_drop_ratio"].skipped
    assert checks["file tensorboard/events.out.tfevents.*"].passed
    assert "SKIP" in format_table(list(checks.values())) or not skipped
    recorded = checks["data.fingerprint"]
    assert recorded.passed is (fingerprint is not None)  # a run that records no fingerprint fails, never skips
    said = verdict(list(checks.values()), tmp_path / "expected.yaml")  # invoke verify's and a notebook's last lines
    if skipped:
        assert said == (
            "1 check(s) skipped: the run used other data than these values were set on (they were set on the "
            "bundled clips); the other checks still apply.\n=> PASS (1 skipped)"
        )
    else:
        assert said == "=> FAIL"


def test_not_run_prefixes_stop_at_a_boundary():
    from labkit.verify import left_out

    not_run = {"steps.awq.": "not selected", "": "everything?", "steps_run": "subset"}
    assert left_out("steps.awq.bits", not_run) == "not selected"
    assert left_out("steps.awq2.bits", not_run) is None and left_out("steps_run_total", not_run) is None
    assert left_out("steps_run", not_run) == "subset" and left_out("train.loss", not_run) is None


def test_a_glob_file_pattern_needs_one_non_empty_match(tmp_path):
    run = write_run(
        tmp_path, {"data": {"fingerprint": "sha256:bundled", "train_examples": 9}, "train": {"loss_drop_ratio": 0.2}}
    )
    checks = {c.name: c for c in verify_run(run, write_expected(tmp_path, DATA_EXPECTED))}
    assert not checks["file tensorboard/events.out.tfevents.*"].passed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: {about: x}\nmetrics: {}", "'data' must be a mapping with a 'fingerprint'"),
        (
            "metrics:\n  a: {min: 1, depends_on_data: true, source: s}",
            "depends_on_data, but the file has no data.fingerprint",
        ),
    ],
)
def test_malformed_data_sections_are_named(tmp_path, text, message):
    with pytest.raises(LabError, match=message):
        load_expected(write_expected(tmp_path, text))


def test_checks_a_run_left_out_on_purpose_are_skipped_with_the_reason(tmp_path):
    metrics = {**GOOD, "not_run": {"eval.": "not selected (only=[fp16])", "adapter/": "not selected (only=[fp16])"}}
    del metrics["eval"]
    run = write_run(tmp_path, metrics)
    checks = {c.name: c for c in verify_run(run, write_expected(tmp_path, EXPECTED))}
    assert checks["eval.cer"].skipped and checks["eval.cer"].got == "skipped: not selected (only=[fp16])"
    assert checks["file adapter/adapter_config.json"].skipped
    assert not checks["lora.r"].skipped and checks["lora.r"].passed


SETTINGS_EXPECTED = """
data: {fingerprint: "sha256:bundled", about: "the bundled rows"}
settings_that_keep_values: [launch., only]
files: []
metrics:
  train.loss_after: {equals: 1.0419, tolerance: 0.001, depends_on_data: true, source: seed 42}
  data.train_examples: {equals: 160, depends_on_data: true, source: bundled rows}
  routing.load_cv: {max: 0.35, depends_on_data: true, source: measured on the bundled rows}
  lora.r: {equals: 4, source: the profile}
"""


@pytest.mark.parametrize(
    ("overrides", "skipped"),
    [
        ({}, False),
        ({"seed": 1}, True),  # another seed: the seed-42 pins cannot hold (a learner's first experiment)
        ({"seed": 42}, False),  # the profile's own value changes nothing
        ({"training.num_train_epochs": 5, "seed": 7}, True),
        ({"launch.nnodes": 2, "only": ["lora"]}, False),  # declared to keep the values (a prefix, a path)
        ({"data.shuffle_seed": 1}, True),  # a data setting the fingerprint does not cover
    ],
)
def test_pinned_values_are_skipped_when_the_run_changed_a_setting_that_moves_them(tmp_path, overrides, skipped):
    """Data-bound pins (equals) hold for the profile as shipped: a run that changed its seed (or another
    setting that moves them) SKIPs them, naming the settings; data-bound bounds and every other check
    still apply. A value equal to the profile's, data settings and declared settings change nothing."""
    lab = tmp_path / "lab"
    (lab / "profiles").mkdir(parents=True)
    (lab / "expected").mkdir()
    (lab / "profiles" / "smoke.yaml").write_text(
        "seed: 42\nonly: null\nlaunch: {nnodes: 1}\ntraining: {num_train_epochs: 2}\n"
    )
    expected = lab / "expected" / "smoke.yaml"
    expected.write_text(SETTINGS_EXPECTED)
    metrics = {"data": {"fingerprint": "sha256:bundled", "train_examples": 160}, "train": {"loss_after": 1.3}}
    metrics |= {"routing": {"load_cv": 0.5}, "lora": {"r": 5}}
    run = write_run(tmp_path, metrics)
    (run / "manifest.json").write_text(json.dumps({"status": "completed", "overrides": overrides}))
    checks = {c.name: c for c in verify_run(run, expected)}
    assert checks["train.loss_after"].skipped is skipped and checks["train.loss_after"].passed is skipped
    assert checks["data.train_examples"].skipped is skipped and checks["data.train_examples"].passed
    assert checks["routing.load_cv"].result == "FAIL" and checks["lora.r"].result == "FAIL"  # still apply
    if skipped:
        changed = ", ".join(sorted(overrides))
        assert verdict(list(checks.values()), expected).splitlines()[0] == (
            "2 check(s) skipped: these values were set with the profile's settings, and the run changed: "
            f"{changed}; the other checks still apply."
        )
