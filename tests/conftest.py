"""Shared fixtures: which labs the suite covers (``--lab``), parallel grouping, and the per-lab time table.

With pytest-xdist (``invoke test`` passes ``-n``), every test of one lab goes to the same worker
(a scheduler keyed on the lab parameter), in file order: the lab's environment is built once and
its smoke run precedes its broken-pipeline run. At the end a table gives each lab's test time
(setup + call + teardown, summed over its tests), so CI growth per lab is visible;
``--times-json FILE`` also writes it as JSON, with each lab's time per test (``by_test``).
"""

from __future__ import annotations

import functools
import json
import re
from collections import defaultdict
from pathlib import Path

from labkit.config import list_labs

SHARED = "(shared: static, tasks, fresh machine)"
_times: dict[str, float] = defaultdict(float)
_counts: dict[str, int] = defaultdict(int)
_by_test: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))


def pytest_addoption(parser):
    parser.addoption("--lab", default=None, help="only test this lab (or these, comma-separated)")
    parser.addoption("--times-json", default=None, help="write the per-lab time table here (JSON)")


def pytest_generate_tests(metafunc):
    if "lab" in metafunc.fixturenames:
        only = metafunc.config.getoption("--lab")  # a lab, or several comma-separated
        names = set(only.split(",")) if only else None
        mark = metafunc.definition.get_closest_marker("labs")  # @pytest.mark.labs("whisper-lora"): just these
        labs = [
            lab for lab in list_labs() if (names is None or lab.name in names) and (not mark or lab.name in mark.args)
        ]
        metafunc.parametrize("lab", labs, ids=[lab.name for lab in labs])


#: Test time per lab in the last measured CI run: `invoke test` writes outputs/test-times.json in the
#: same format (``{lab: {"tests": n, "seconds": s}}``); copy it here when the figures move. The labs
#: run longest first, so two workers finish together.
CI_TIMES = Path(__file__).with_name("ci-times.json")


def pytest_collection_modifyitems(config, items):
    """Longest labs first (:data:`CI_TIMES`; a new lab counts as the longest), each lab's tests in
    their file order, the shared tests last to fill the gaps; ``invoke test`` passes
    ``--no-loadscope-reorder`` so pytest-xdist hands the labs out in this order."""
    measured = json.loads(CI_TIMES.read_text(encoding="utf-8")) if CI_TIMES.is_file() else {}
    seconds = {lab: row["seconds"] for lab, row in measured.items() if lab in known_labs()}
    longest = max(seconds.values(), default=0.0) + 60.0

    def weight(item) -> float:
        lab = lab_of(item.nodeid)
        return -1.0 if lab == SHARED else seconds.get(lab, longest)

    items[:] = sorted(items, key=weight, reverse=True)  # stable: file order within a lab


class _ScheduleByLab:
    """Registered when pytest-xdist is active: every test of one lab (``...[<lab>]``) on one worker."""

    @staticmethod
    def pytest_xdist_make_scheduler(config, log):
        from xdist.scheduler import LoadScopeScheduling

        class ByLab(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                lab = lab_of(nodeid)
                return lab if lab != SHARED else nodeid

        return ByLab(config, log)


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_ScheduleByLab())


@functools.cache
def known_labs() -> frozenset[str]:
    return frozenset(lab.name for lab in list_labs())


def lab_of(nodeid: str) -> str:
    """The lab a test id belongs to (``...[whisper-lora]``), else the shared bucket."""
    known = known_labs()
    match = re.search(r"\[([^\]]+)\]$", nodeid)
    return match.group(1) if match and match.group(1) in known else SHARED


def pytest_runtest_logreport(report):
    _times[lab_of(report.nodeid)] += report.duration
    if (lab := lab_of(report.nodeid)) != SHARED:  # set-up + call + tear-down of each of a lab's tests
        _by_test[lab][report.nodeid.split("::")[-1].removesuffix(f"[{lab}]")] += report.duration
    if report.when == "call":
        _counts[lab_of(report.nodeid)] += 1


def pytest_terminal_summary(terminalreporter, config):
    if not _times:
        return
    rows = sorted(_times.items(), key=lambda kv: -kv[1])
    terminalreporter.section("time per lab (test time summed; parallel workers overlap)")
    for name, seconds in rows:
        terminalreporter.write_line(f"{name:<40} {_counts[name]:>4} tests {seconds / 60:7.1f} min")
    terminalreporter.write_line(f"{'total':<40} {sum(_counts.values()):>4} tests {sum(_times.values()) / 60:7.1f} min")
    if path := config.getoption("--times-json"):
        table = {name: {"tests": _counts[name], "seconds": round(s, 1)} for name, s in rows}
        for name, tests in _by_test.items():  # where a lab's time goes, slowest first
            table[name]["by_test"] = {t: round(s, 1) for t, s in sorted(tests.items(), key=lambda kv: -kv[1])}
        Path(path).write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
