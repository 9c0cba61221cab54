"""Inside a lab's notebook kernel: a run started and finished as the script's runner does it.

The generated notebook (:mod:`labkit.notebook`) calls :func:`lab_on_path`, :func:`start_run`, then
the steps of the lab's ``run.py``, then :func:`finish_run`. Both ends are the runner's own
(:func:`labkit.lab.runner.start_run` / :func:`~labkit.lab.runner.finish_run`), so a notebook run is a
run: run directory, manifest, seeds and determinism, ``run.log``, ``metrics.json``, ``latest``.

In IPython (JupyterLab's kernel, nbclient) this module also:

- refuses a step cell run before the steps it follows (``# N.`` opening the cell): one line naming
  the step it needs;
- writes a failing cell into the run's manifest (``status: failed``, ``error``, ``notebook.step``)
  and the step each cell starts (``notebook.step``), so a kernel that dies mid-run leaves the step it
  was in; a later successful cell sets ``status`` back to ``running``;
- shows a :class:`~labkit.errors.LabError` as one line, without a traceback.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from labkit.config import REPO_ROOT, Lab, get_lab, load_profile
from labkit.errors import LabError


class EndRun(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """``run()`` returns early here (e.g. ``if not ctx.is_main: return {}``): the run ends with
    these metrics; the later cells do not apply."""

    def __init__(self, metrics):
        super().__init__("the run ends here, as run.py's run() returns here")
        self.metrics = metrics


class StepOrderError(LabError):
    """A step cell run before a step it follows."""


#: The notebook's state: the started run, the lab's step numbers and titles, the steps done.
_state: dict = {"started": None, "steps": {}, "done": set(), "pending": None, "streams": None}
STEP_CELL = re.compile(r"^# (\d+)\. ")


def lab_on_path(lab_name: str) -> Lab:
    """Put the lab's folder (its own modules, ``run.py``) and the repository first on ``sys.path``, as
    ``run.py`` does for itself; returns the lab."""
    lab = get_lab(lab_name)
    for i, folder in enumerate((lab.dir, REPO_ROOT)):
        if str(folder) not in sys.path:
            sys.path.insert(i, str(folder))
    return lab


def start_run(lab_name: str, profile: str | None = None, overrides: list[str] | None = None):
    """Start a run of ``lab_name`` as ``make lab-<lab>`` does; returns its :class:`RunContext`.

    Args:
        profile: ``smoke``, ``full`` or a variant's profile; default ``PROFILE`` from the environment
            (``make notebook-<lab> PROFILE=full`` sets it), else ``smoke``.
        overrides: ``key=value`` settings; default ``SET`` from the environment (split like a shell line).

    Raises:
        LabError: an unknown profile or setting, no accelerator for a full profile, a profile that
            runs several processes (a notebook is one: ``make lab-<lab> NPROC=N``), outputs not writable.
    """
    from labkit.lab import runner

    lab = lab_on_path(lab_name)
    profile = profile or os.environ.get("PROFILE") or "smoke"
    overrides = list(overrides) if overrides is not None else shlex.split(os.environ.get("SET", ""))
    config, _ = load_profile(lab, profile, overrides)
    nproc = runner.nproc_per_node(lab, config)
    if nproc > 1:
        raise LabError(
            f"nproc_per_node={nproc}: a notebook runs one process; run several with `make lab-{lab.name} "
            f"NPROC={nproc}`, or SET=nproc_per_node=1 here"
        )
    _restore_streams()
    root = Path(os.environ.get("OUTPUT_ROOT", REPO_ROOT / "outputs"))
    _state["streams"] = (sys.stdout, sys.stderr)
    started = runner.start_run(lab, profile, overrides, root)
    from labkit.notebook import split_run

    steps = {s.number: s.title for s in split_run(lab.dir / lab.entrypoint).steps if s.number is not None}
    _state.update(started=started, steps=steps, done=set(), pending=None)
    from labkit.notebook import notebook_path
    from labkit.rundir import write_json

    # A notebook's run says so (the step each cell starts is added by enter_step).
    started.manifest["notebook"] = {"path": str(notebook_path(lab).relative_to(REPO_ROOT)), "step": "start_run"}
    write_json(started.ctx.run_dir / "manifest.json", {k: v for k, v in started.manifest.items() if k != "_t0"})
    _install_hooks()
    return started.ctx


def finish_run(ctx, metrics: dict) -> None:
    """Finish the run: ``metrics.json``, the manifest completed, ``latest``; prints the checks of
    ``expected/<profile>.yaml`` (what ``invoke verify`` prints).

    Raises:
        StepOrderError: the run was not started here, or a step has not run.
    """
    started = _current(ctx)
    missing = [n for n in _state["steps"] if n not in _state["done"]]
    if missing:
        raise StepOrderError(_needs("the finish", missing[0]))
    from labkit.lab import runner

    runner.finish_run(started, metrics)
    _verdict(started)


def _verdict(started):
    from labkit.verify import format_table, verdict, verify_run

    ctx = started.ctx
    _state["started"] = None
    _restore_streams()
    checks = verify_run(ctx.run_dir, ctx.lab.expected_path(ctx.profile))
    print(f"\n{ctx.lab.name} / {ctx.profile}: {ctx.run_dir}\n{format_table(checks)}")
    print(verdict(checks, ctx.lab.expected_path(ctx.profile)))


def _current(ctx):
    started = _state["started"]
    if started is None or started.ctx is not ctx:
        raise StepOrderError("no run started in this kernel: run the first cells (start_run) first")
    return started


def _needs(what: str, number: int) -> str:
    return (
        f"{what} needs step {number} ({_state['steps'][number]}) first: run the cells above in order "
        "(Run > Run All Above Selected Cell)"
    )


def enter_step(number: int) -> None:
    """Called first in step cell ``number`` (the kernel's input transformer adds the call)."""
    from labkit.rundir import write_json

    started = _state["started"]
    if started is None:
        raise StepOrderError(f"step {number} needs the run started first: run the cells above it (start_run)")
    missing = [n for n in _state["steps"] if n < number and n not in _state["done"]]
    if missing:
        raise StepOrderError(_needs(f"step {number}", missing[0]))
    if number not in _state["steps"]:
        return  # a cell of the learner's own
    _state["pending"] = number
    started.manifest["notebook"]["step"] = f"{number}. {_state['steps'].get(number, '')}".strip()
    started.manifest["status"] = "running"
    started.manifest.pop("error", None)
    write_json(started.ctx.run_dir / "manifest.json", {k: v for k, v in started.manifest.items() if k != "_t0"})


def _mark_step_cell(lines: list[str]) -> list[str]:
    """IPython input transformer: a cell opening with ``# N. `` calls :func:`enter_step` first (on
    the same line, so line numbers in tracebacks stay the cell's)."""
    if lines and (m := STEP_CELL.match(lines[0])):
        lines = [f"__import__('labkit.lab.notebook').lab.notebook.enter_step({m.group(1)});  {lines[0]}", *lines[1:]]
    return lines


def _after_cell(result) -> None:
    """IPython ``post_run_cell``: a step done, or the cell's error in the run's manifest."""
    from labkit.rundir import write_json

    pending, _state["pending"] = _state["pending"], None
    started = _state["started"]
    error = result.error_in_exec or result.error_before_exec
    if started is None:
        return
    if error is None:
        if pending is not None:
            _state["done"] = {n for n in _state["done"] if n < pending} | {pending}
        return
    if isinstance(error, StepOrderError):
        return
    if isinstance(error, EndRun):
        return
    started.manifest.update(status="failed", error=f"{type(error).__name__}: {error}".strip())
    write_json(started.ctx.run_dir / "manifest.json", {k: v for k, v in started.manifest.items() if k != "_t0"})


def _show_error(shell, etype, value, tb, tb_offset=None):
    """IPython custom exception handler: a LabError as one line; EndRun finishes the run."""
    if isinstance(value, EndRun):
        started = _state["started"]
        if started is not None:
            from labkit.lab import runner

            runner.finish_run(started, value.metrics)
            print(f"{value}: the later cells do not apply to this run.")
            _verdict(started)
        return None
    print(f"error: {value}", file=sys.stderr, flush=True)
    return None


def _install_hooks() -> None:
    try:
        shell = get_ipython()  # noqa: F821 (IPython's builtin)
    except NameError:
        return  # plain Python: no cells
    if _mark_step_cell not in shell.input_transformers_post:
        shell.input_transformers_post.append(_mark_step_cell)
        shell.events.register("post_run_cell", _after_cell)
        shell.set_custom_exc((LabError, EndRun), _show_error)


def _restore_streams() -> None:
    """The console as it was before a run (the runner copies it to that run's ``run.log``)."""
    if _state["streams"]:
        sys.stdout, sys.stderr = _state["streams"]
        _state["streams"] = None
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "name", "").endswith("run.log"):
            root.removeHandler(handler)
            handler.stream.close()


_install_hooks()  # on import (the notebook's first cell): a step cell run before start_run is refused too
