"""Verification of a run directory against a lab's expected outputs.

An expected file (``labs/<lab>/expected/<profile>.yaml``) lists files the run must leave and bounds
on values in its ``metrics.json``::

    files: [manifest.json, metrics.json, adapter/adapter_config.json, tensorboard/events.out.tfevents.*]
    metrics:
      train.loss_drop_ratio: {min: 0.05, source: "measured: 5 smoke runs, 0.31-0.33; margin x6"}
      lora.r: {equals: 4, source: "course chapter 7 LoraConfig"}
      reload.max_abs_logit_diff: {max: 1.0e-4, source: "..."}
      eval.cer_after: {equals: 0.32, tolerance: 0.05, source: "..."}

A file entry may be a glob pattern; one non-empty match satisfies it. Checks: ``min`` and ``max``
(inclusive), ``equals`` (exact, or within ``tolerance`` for numbers).
Every metric check names its ``source``: the paper, course notebook or measured runs its number comes
from. The run's ``manifest.json`` must also say ``status: completed``.

Checks that only hold for the data the expectations were set on (the bundled smoke data, the
course's dataset) say ``depends_on_data: true``, and the file names that data::

    data:
      fingerprint: "sha256:..."        # labkit.verify.fingerprint of the bundled files (or hub:<id>@<rev>)
      about: "the 12 bundled clips"
    metrics:
      data.train_examples: {equals: 9, depends_on_data: true, source: "..."}

A run on other data (its ``metrics.json`` ``data.fingerprint`` differs) keeps every other check
(files, loss falls, reload matches ...) and reports those as SKIP, with the reason. So does a run on
the same data with a setting of the profile changed (another ``seed``, more epochs, a data setting
the fingerprint does not cover: its ``manifest.json`` ``overrides``) for its
data-bound *pinned* values (``equals``: counts, losses to a tolerance), which were measured with the
profile's settings; data-bound bounds (``min``/``max``) still apply to it. Settings that by design
leave the pinned values unchanged (how a run is launched, which of its parts run) are listed in the
file::

    settings_that_keep_values: [launch., nproc_per_node, only]   # a dotted path, or a prefix ending in "."

So are checks a run says it left out on purpose: ``metrics.json`` ``not_run`` maps a metric-name
prefix to the reason (the quantization lab's ``only=[...]`` subset of steps).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.config import read_yaml
from labkit.errors import LabError

BOUND_KEYS = {"min", "max", "equals", "tolerance"}
OTHER_DATA = "skipped: the run used other data than these values were set on"
#: Followed by ": <the settings>" (:func:`changed_settings`).
OTHER_SETTINGS = "skipped: these values were set with the profile's settings, and the run changed"


@dataclass(frozen=True)
class Check:
    """One row of the verification table."""

    name: str
    expected: str
    got: str
    passed: bool
    skipped: bool = False

    @property
    def result(self) -> str:
        """``PASS``, ``FAIL`` or ``SKIP`` (a data-dependent check on other data)."""
        return "SKIP" if self.skipped else ("PASS" if self.passed else "FAIL")


def load_expected(path: Path) -> dict:
    """Read and validate an expected-outputs file.

    Raises:
        LabError: naming the file and the malformed entry (unknown key, no bound, non-numeric
            bound, missing ``source``).
    """
    data = read_yaml(path)
    known = {"description", "files", "metrics", "data", "settings_that_keep_values"}
    if not isinstance(data, dict) or not set(data) <= known:
        raise LabError(
            f"{path}: expected a mapping with keys files, metrics (and description, data, settings_that_keep_values)"
        )
    keep = data.get("settings_that_keep_values") or []
    if not isinstance(keep, list) or not all(isinstance(k, str) and k for k in keep):
        raise LabError(
            f"{path}: 'settings_that_keep_values' must be a list of setting paths (or prefixes ending in '.')"
        )
    about = data.get("data") or {}
    if not isinstance(about, dict) or (about and not isinstance(about.get("fingerprint"), str)):
        raise LabError(f"{path}: 'data' must be a mapping with a 'fingerprint' string (and 'about')")
    files = data.get("files") or []
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise LabError(f"{path}: 'files' must be a list of paths relative to the run directory")
    metrics = data.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise LabError(f"{path}: 'metrics' must map metric names to bounds")
    for name, spec in metrics.items():
        where = f"{path}: metric {name!r}"
        if not isinstance(spec, dict):
            raise LabError(f"{where} must be a mapping like {{min: 0.1, source: ...}}")
        unknown = set(spec) - BOUND_KEYS - {"source", "depends_on_data"}
        if unknown:
            raise LabError(
                f"{where} has unknown keys {sorted(unknown)}; use min, max, equals, tolerance, source, depends_on_data"
            )
        if spec.get("depends_on_data") and not about:
            raise LabError(f"{where} depends_on_data, but the file has no data.fingerprint to compare with")
        if not set(spec) & {"min", "max", "equals"}:
            raise LabError(f"{where} has no bound: give min, max or equals")
        if not spec.get("source"):
            raise LabError(f"{where} has no source: say where its number comes from")
        for key in ("min", "max", "tolerance"):
            if key in spec and not _is_number(spec[key]):
                raise LabError(f"{where}: {key} must be a number, got {spec[key]!r}")
        if "tolerance" in spec and not _is_number(spec.get("equals")):
            raise LabError(f"{where}: tolerance needs a numeric equals")
    return {"files": files, "metrics": metrics, "data": about, "settings_that_keep_values": keep}


def fingerprint(parts: dict[str, Path | str]) -> str:
    """``sha256:<hex>`` naming a run's data: for each part (sorted by name) a local file's content,
    or a string such as ``hub:<dataset>@<revision>`` for remote data.

    Labs put it in ``metrics.json`` as ``data.fingerprint``; expected files that hold data-dependent
    values carry the fingerprint of the data they were set on (``labkit.verify``), so a run on your
    own data skips those checks instead of failing them. Names are split names or paths inside the
    data folder (never absolute paths): the same files copied elsewhere give the same fingerprint.
    """
    digest = hashlib.sha256()
    for name in sorted(parts):
        value = parts[name]
        content = Path(value).read_bytes() if isinstance(value, Path) else str(value).encode()
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return "sha256:" + digest.hexdigest()


def lookup(metrics: dict, dotted: str) -> Any:
    """``metrics["a"]["b"]`` for ``"a.b"``; raises ``KeyError`` if any part is missing."""
    node: Any = metrics
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def check_metric(name: str, spec: dict, value: Any) -> Check:
    """Compare one metric value with its bounds."""
    parts, ok = [], True
    if "equals" in spec:
        want, tol = spec["equals"], spec.get("tolerance")
        if tol is not None:
            parts.append(f"{want} ± {tol}")
            ok &= _is_number(value) and abs(value - want) <= tol
        else:
            parts.append(f"== {want}")
            ok &= value == want
    if "min" in spec:
        parts.append(f">= {spec['min']}")
        ok &= _is_number(value) and value >= spec["min"]
    if "max" in spec:
        parts.append(f"<= {spec['max']}")
        ok &= _is_number(value) and value <= spec["max"]
    return Check(name, ", ".join(parts), _fmt(value), bool(ok))


def verify_run(run_dir: Path, expected_path: Path) -> list[Check]:
    """All checks of ``expected_path`` against ``run_dir``, in file order.

    Raises:
        LabError: malformed expected file, or ``run_dir`` does not exist.
    """
    expected = load_expected(expected_path)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LabError(f"run directory {run_dir} does not exist")
    checks = [_manifest_check(run_dir)]
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = None
    not_run = metrics.get("not_run") or {} if isinstance(metrics, dict) else {}
    for rel in expected["files"]:  # a glob pattern (tensorboard/events.out.tfevents.*) needs one match
        if why := left_out(rel, not_run):
            checks.append(Check(f"file {rel}", "exists, non-empty", f"skipped: {why}", True, skipped=True))
            continue
        paths = sorted(run_dir.glob(rel)) if any(ch in rel for ch in "*?[") else [run_dir / rel]
        present = any(p.is_file() and p.stat().st_size > 0 for p in paths)
        checks.append(Check(f"file {rel}", "exists, non-empty", "yes" if present else "missing", present))
    same = same_data(expected, metrics)
    if same is not None:
        recorded = same != "missing"
        checks.append(Check("data.fingerprint", "recorded by the run", "yes" if recorded else "missing", recorded))
    changed = changed_settings(run_dir, expected_path, expected["settings_that_keep_values"])
    for name, spec in expected["metrics"].items():
        reason = None
        if spec.get("depends_on_data") and same is False:
            reason = OTHER_DATA
        elif spec.get("depends_on_data") and "equals" in spec and changed:  # a pinned value; bounds still apply
            reason = f"{OTHER_SETTINGS}: {', '.join(changed)}"
        reason = reason or (f"skipped: {why}" if (why := left_out(name, not_run)) else None)
        if reason:
            checks.append(Check(name, check_metric(name, spec, None).expected, reason, True, skipped=True))
            continue
        try:
            value = lookup(metrics, name) if metrics is not None else None
        except KeyError:
            value = None
        if value is None:
            checks.append(Check(name, check_metric(name, spec, None).expected, "missing", False))
        else:
            checks.append(check_metric(name, spec, value))
    return checks


def changed_settings(run_dir: Path, expected_path: Path, keep: list[str]) -> list[str]:
    """The settings a run changed (``manifest.json`` ``overrides``) that can move the data-bound values
    of ``expected_path``: ``data.*`` ones too (a lab's fingerprint covers its files and sampling, not
    every data setting: a shuffle seed, a prompt marker), not those in ``keep`` (a
    dotted path, or a prefix ending in ``.``), and not those set to the profile's own value
    (``labs/<lab>/profiles/<profile>.yaml`` beside the ``expected/`` folder). Empty when the run has no
    manifest or changed nothing."""
    try:
        manifest = json.loads((Path(run_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    overrides = manifest.get("overrides") or {} if isinstance(manifest, dict) else {}
    profile_path = Path(expected_path).parent.parent / "profiles" / Path(expected_path).name
    try:
        profile = read_yaml(profile_path) if profile_path.is_file() else None
    except LabError:
        profile = None
    changed = []
    for path, value in overrides.items():
        if any(covers(k, path) for k in keep):
            continue
        try:
            if profile is not None and lookup(profile, path) == value:
                continue
        except KeyError:
            pass
        changed.append(path)
    return sorted(changed)


def same_data(expected: dict, metrics: dict | None) -> bool | str | None:
    """Whether the run used the data the expectations were set on: ``None`` if the expected file
    names no data, ``"missing"`` if the run recorded no ``data.fingerprint`` (its data-dependent
    checks are then checked, not skipped, and a failing row says so), else ``True``/``False``."""
    if not expected.get("data"):
        return None
    try:
        return lookup(metrics or {}, "data.fingerprint") == expected["data"]["fingerprint"]
    except KeyError:
        return "missing"


def left_out(name: str, not_run: dict) -> str | None:
    """The reason ``metrics.json`` ``not_run`` gives for leaving out ``name`` (a metric or file), if any.

    A key matches the name exactly or as a prefix ending at a ``.`` or ``/`` boundary
    (``steps.awq.`` covers ``steps.awq.bits``, not ``steps.awq2.bits``); empty keys match nothing.
    """
    for key, why in not_run.items():
        if covers(key, name):
            return str(why)
    return None


def covers(key: str, name: str) -> bool:
    """Whether ``key`` names ``name`` exactly or is a prefix of it ending at a ``.`` or ``/`` boundary
    (``steps.awq.`` covers ``steps.awq.bits``, not ``steps.awq2.bits``); an empty key covers nothing."""
    return bool(key) and (name == key or (key.endswith((".", "/")) and name.startswith(key)))


def verdict(checks: list[Check], expected_path: Path) -> str:
    """The lines after the table (``invoke verify``, ``make lab``, a notebook's last cell): each reason
    checks were skipped, with its count (data-bound ones: what data the values were set on), then
    ``=> PASS`` / ``=> FAIL`` and how many were skipped."""
    lines = []
    skipped = [c.got for c in checks if c.skipped]
    for reason in sorted(set(skipped)):
        about = ""
        if reason == OTHER_DATA:
            about = f" (they were set on {load_expected(expected_path).get('data', {}).get('about', '?')})"
        lines.append(
            f"{skipped.count(reason)} check(s) skipped: {reason.removeprefix('skipped: ')}{about}; "
            "the other checks still apply."
        )
    ok = all(c.passed for c in checks)
    lines.append(f"=> {'PASS' if ok else 'FAIL'}" + (f" ({len(skipped)} skipped)" if skipped else ""))
    return "\n".join(lines)


def format_table(checks: list[Check]) -> str:
    """The check / expected / got / result table printed by ``invoke test`` and ``invoke verify``."""
    rows = [("check", "expected", "got", "result")] + [(c.name, c.expected, c.got, c.result) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _manifest_check(run_dir: Path) -> Check:
    try:
        status = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError):
        status = "missing"
    return Check("manifest status", "completed", str(status), status == "completed")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
