"""labkit.lab.runner's console policy: the lab's own lines on the console, library chatter in run.log."""

from __future__ import annotations

import os
import subprocess
import sys

from labkit.config import REPO_ROOT

SCRIPT = """
import logging, sys, warnings
from pathlib import Path
from labkit.lab.runner import quiet_console
torch_logger = logging.getLogger("torch")  # as torch sets it up on import: its own stderr handler
torch_logger.addHandler(logging.StreamHandler())
torch_logger.propagate = False
quiet_console(Path(sys.argv[1]))
print("[lab] 3. training: loss 1.61 -> 0.31")
warnings.warn("`foo` is deprecated", FutureWarning)
logging.getLogger("transformers.modeling_utils").warning("LOAD REPORT: classifier.weight MISSING")
logging.getLogger("torch.utils._pytree").warning("<enum 'KernelPreference'> is an Enum subclass")
print("error: something the user must see", file=sys.stderr)
"""


def test_the_console_shows_the_labs_lines_and_run_log_keeps_everything(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout == "[lab] 3. training: loss 1.61 -> 0.31\n"
    assert out.stderr == "error: something the user must see\n"  # no FutureWarning, no load report
    log = (tmp_path / "run.log").read_text()
    for line in (
        "loss 1.61 -> 0.31",
        "FutureWarning: `foo` is deprecated",
        "LOAD REPORT",
        "KernelPreference",
        "the user must see",
    ):
        assert line in log


def test_transformers_progress_bars_are_off_in_a_lab_without_datasets(tmp_path):
    """peft-methods has Transformers but not Datasets: its "Loading weights" bars stay off all the same."""
    fake = tmp_path / "site" / "transformers" / "utils"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("from . import utils\n")
    (fake / "__init__.py").write_text("from . import logging\n")
    (fake / "logging.py").write_text(
        "ACTIVE = True\ndef disable_progress_bar():\n    global ACTIVE\n    ACTIVE = False\n"
    )
    script = (
        "import sys; from pathlib import Path; from labkit.lab.runner import quiet_console\n"
        "quiet_console(Path(sys.argv[1])); import transformers\n"
        "print('bars on' if transformers.utils.logging.ACTIVE else 'bars off', file=sys.__stdout__)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO_ROOT}"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "bars off"
