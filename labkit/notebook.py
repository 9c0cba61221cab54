"""Every lab as a notebook, generated from its ``run.py`` (one source: the script stays the lab).

A lab's ``run.py`` defines ``run(ctx) -> metrics`` whose body is the course chapter's numbered steps,
each opened by a comment ``# N. ...`` at the body's indentation. :func:`split_run` cuts that body at
those comments with the standard library's :mod:`ast` (no text heuristics beyond the comment marker),
and :func:`build_notebook` writes the notebook with ``nbformat``:

1. the module docstring as the introduction (markdown);
2. run.py's own imports, and ``from run import`` its module-level helpers (the same functions);
3. ``ctx = start_run("<lab>")`` (:mod:`labkit.lab.notebook`: the runner's own set-up) and what
   ``run()`` does before its first step;
4. one cell per numbered step, the body's code dedented (comments kept); the final ``return x``
   becomes ``metrics = x`` and an early ``return x`` (one that ends the run on some condition, e.g.
   ``if not ctx.is_main: return {}``) becomes ``raise EndRun(x)``, which finishes the run there;
   a step with nested structure stays whole in its one cell;
5. ``finish_run(ctx, metrics)``: ``metrics.json``, the manifest completed, ``latest``, the checks.

The notebooks are checked in as ``labs/<lab>/notebook.ipynb`` (``invoke notebooks`` rewrites them;
``tests/test_notebook.py`` fails when one differs from what its ``run.py`` generates), so a fix to
``run.py`` lands in both. :func:`split_run` is stdlib only: the kernel's step-order guard uses it too.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from labkit.config import Lab, list_labs
from labkit.errors import LabError

#: A step's opening comment at the body's indentation: ``# 3. Model: ...`` (``# 1c-d.`` sub-steps
#: inside helpers are not steps of ``run``).
STEP_COMMENT = re.compile(r"^(\s*)# (\d+)\. ")
NOTEBOOK_NAME = "notebook.ipynb"
#: The kernel's name for a lab (``labkit.host.jupyter`` installs it; the notebook's metadata names it).
KERNEL_PREFIX = "llm-labs-"


@dataclass
class Step:
    """One cell's code: ``number`` None for what ``run`` does before its first numbered step."""

    number: int | None
    title: str
    code: str


@dataclass
class SplitRun:
    """``run.py`` cut for a notebook: its docstrings, imports, helpers and the steps of ``run``."""

    doc: str
    run_doc: str
    imports: list[str]
    helpers: list[str]
    steps: list[Step]


def _returns(node: ast.AST) -> list[ast.Return]:
    """``return`` statements of ``run`` itself under ``node`` (not of functions or classes inside it)."""
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        if isinstance(child, ast.Return):
            found.append(child)
        found += _returns(child)
    return found


def _first_line(node: ast.stmt) -> int:
    """The first source line of a statement, its decorators included."""
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def _replace(lines: list[str], node: ast.Return, prefix: str, suffix: str) -> None:
    """Rewrite ``return <value>`` at ``node`` in ``lines`` (0-based list of source lines) in place as
    ``<prefix><value><suffix>``; a bare ``return`` as ``<prefix>None<suffix>``."""
    first, col = node.lineno - 1, node.col_offset
    if node.value is None:
        line = lines[first]
        lines[first] = line[:col] + prefix + "None" + suffix + line[node.end_col_offset :]
        return
    last, end = node.end_lineno - 1, node.end_col_offset
    lines[last] = lines[last][:end] + suffix + lines[last][end:]
    value_col = node.value.col_offset if node.value.lineno == node.lineno else col + len("return ")
    lines[first] = lines[first][:col] + prefix + lines[first][value_col:]


def split_run(path: Path) -> SplitRun:
    """Cut ``path`` (a lab's ``run.py``) into the notebook's parts.

    Raises:
        LabError: the file defines no ``run`` function (names the file).
    """
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    lines = source.splitlines()
    func = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"), None)
    if func is None:
        raise LabError(f"{path}: no `def run(ctx)`: a lab's run.py defines the chapter's steps in run(ctx)")

    imports, helpers = [], []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            imports.append(ast.get_source_segment(source, node))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name != "run":
            helpers.append(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            helpers += [t.id for t in targets if isinstance(t, ast.Name)]

    body = list(func.body)
    run_doc = ""
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        run_doc = textwrap.dedent(str(body[0].value.value)).strip()
        body = body[1:]
    # Rewrite the returns on a copy of the lines (positions are the parse's): the last statement's
    # return gives the metrics; any other ends the run where it stands.
    edited = list(lines)
    final = body[-1] if body and isinstance(body[-1], ast.Return) else None
    for node in sorted(_returns(func), key=lambda n: (n.lineno, n.col_offset), reverse=True):
        if node is final:
            _replace(edited, node, "metrics = ", "")
        else:
            _replace(edited, node, "raise EndRun(", ")")

    indent = body[0].col_offset if body else 4
    # Step boundaries: comment lines at the body's indentation that open a numbered step, and that
    # stand between statements (not inside one).
    inside = set()
    for node in body:
        inside.update(range(_first_line(node) + 1, (node.end_lineno or node.lineno) + 1))
    marks = []
    for number, line in enumerate(lines[func.body[0].lineno - 1 : func.end_lineno], start=func.body[0].lineno):
        m = STEP_COMMENT.match(line)
        if m and len(m.group(1)) == indent and number not in inside:
            marks.append((number, int(m.group(2)), line[m.end() :].strip()))

    # The prologue starts after the docstring (or at the body's first line, decorators included).
    start = func.body[0].end_lineno + 1 if run_doc else _first_line(func.body[0])
    bounds = [(start, None, "")] + [(ln, num, title) for ln, num, title in marks]
    steps = []
    for i, (first, number, title) in enumerate(bounds):
        last = bounds[i + 1][0] - 1 if i + 1 < len(bounds) else func.end_lineno
        code = textwrap.dedent("\n".join(edited[first - 1 : last])).strip("\n")
        if code.strip() or number is not None:
            steps.append(Step(number, title, code))
    doc = ast.get_docstring(tree) or ""
    return SplitRun(doc, run_doc, imports, helpers, steps)


def kernel_name(lab: Lab) -> str:
    return KERNEL_PREFIX + lab.name


INTRO = """\
**This notebook is generated from [`run.py`](run.py)** (`invoke notebooks`): the same numbered steps
calling the same functions, so a fix to the lab lands in both. Run the cells in order (a cell refuses
to run before the step it needs). The first cells start a run exactly as `make lab-{lab}` does: a run
directory under `outputs/{lab}/<profile>/` with its manifest, `run.log`, metrics and plots, checked at
the end against `expected/<profile>.yaml` (`invoke verify --lab {lab}` checks it too).

Profile and settings: `start_run("{lab}")` takes the profile from `PROFILE` (`make notebook-{lab}
PROFILE=full`; default smoke) and overrides from `SET`; or give them here, e.g.
`start_run("{lab}", profile="smoke", overrides=["learning_rate=0"])`. A notebook runs one process: a
profile with `nproc_per_node` above 1 is refused (`make lab-{lab} NPROC=N` runs several).{launch}"""

LAUNCHES_ITSELF = (
    " This lab starts its own ranks (its launch step runs the launcher from this kernel, as the script does)."
)


def build_notebook(lab: Lab):
    """The lab's notebook (an ``nbformat`` v4 node) from its ``run.py``."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    split = split_run(lab.dir / lab.entrypoint)
    cells = [new_markdown_cell(f"# {lab.name}: {lab.title}\n\n{split.doc}".strip())]
    cells.append(
        new_markdown_cell(INTRO.format(lab=lab.name, launch=LAUNCHES_ITSELF if lab.meta.get("launches_itself") else ""))
    )
    run_module = Path(lab.entrypoint).stem
    setup = [
        f'from labkit.lab.notebook import EndRun, finish_run, lab_on_path, start_run\n\nlab_on_path("{lab.name}")',
        "\n".join(split.imports),
    ]
    if split.helpers:
        names = ", ".join(split.helpers)
        setup.append(f"from {run_module} import {names}" if len(names) < 80 else _wrapped_import(run_module, split))
    cells.append(new_code_cell("\n\n".join(setup)))
    prologue = split.steps[0] if split.steps and split.steps[0].number is None else None
    start = f'ctx = start_run("{lab.name}")'
    cells.append(new_markdown_cell("## Start the run\n\n" + (split.run_doc or "The run's settings: `ctx.config`.")))
    cells.append(new_code_cell(start + ("\n" + prologue.code if prologue else "")))
    for step in split.steps:
        if step.number is not None:  # a heading (JupyterLab's table of contents), then the step's code
            cells.append(new_markdown_cell(f"### Step {step.number}\n\n{_comment_block(step.code)}"))
            cells.append(new_code_cell(step.code))
    cells.append(new_markdown_cell("## Finish: metrics, manifest, verification"))
    cells.append(new_code_cell("finish_run(ctx, metrics)"))
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: a regenerated notebook is byte-identical
    nb = new_notebook(cells=cells)
    display = f"{lab.name} (llm-labs)"
    nb.metadata["kernelspec"] = {"name": kernel_name(lab), "display_name": display, "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    return nb


def _comment_block(code: str) -> str:
    """The step's opening comment as prose: its ``#`` lines up to the first line of code, joined."""
    words = []
    for line in code.splitlines():
        if not line.startswith("#"):
            break
        words.append(re.sub(r"^#\s*(\d+\.\s+)?", "", line).strip())
    return " ".join(w for w in words if w)


def _wrapped_import(module: str, split: SplitRun) -> str:
    return f"from {module} import (\n" + "".join(f"    {name},\n" for name in split.helpers) + ")"


def notebook_text(lab: Lab) -> str:
    import nbformat

    return nbformat.writes(build_notebook(lab)) + "\n"


def notebook_path(lab: Lab) -> Path:
    return lab.dir / NOTEBOOK_NAME


def write_notebooks(lab: Lab | None = None) -> list[Path]:
    """(Re)write ``labs/<lab>/notebook.ipynb`` of ``lab`` (every lab by default); returns the paths changed."""
    changed = []
    for spec in [lab] if lab else list_labs():
        path, text = notebook_path(spec), notebook_text(spec)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed
