"""What the tests share besides fixtures: running a lab as `make lab-<name>` does."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from labkit.config import Lab
from labkit.host import runs
from labkit.host.plan import resolve


def latest_run(output_root: Path, lab: str, profile: str) -> Path | None:
    """The run ``<output_root>/<lab>/<profile>/latest`` points at (the newest completed), or None."""
    link = Path(output_root) / lab / profile / "latest"
    return link.resolve() if link.exists() else None


def run_lab(lab: Lab, profile: str, runtime: str, overrides: list[str] | str, root: Path) -> tuple[int, str]:
    """Plan and run one profile of ``lab`` (``smoke``, ``full`` or a variant's, e.g. ``npu-smoke``) into
    ``root``, as ``invoke run`` does before verifying; returns (exit code, output tail).

    Raises:
        LabError: what the plan or the run refuses before the lab starts.
    """
    return runs.run(resolve(lab, profile, runtime, overrides), root)


def run_notebook(
    lab: Lab, root: Path, overrides: list[str] | None = None, profile: str = "smoke", notebook=None
) -> Path | None:
    """Execute ``labs/<lab>/notebook.ipynb`` headless (nbclient) in the lab's native environment with
    ``make notebook-<lab>``'s kernel, writing its run under ``root``; returns the executed notebook's
    path (beside the run folders) or raises nbclient's CellExecutionError naming the failing cell.
    ``notebook``: other cells (an nbformat node) instead."""
    import os
    import shlex
    import tempfile

    import nbformat
    from nbclient import NotebookClient

    from labkit.host.jupyter import kernel_python, write_kernelspec
    from labkit.notebook import kernel_name, notebook_path

    nb = notebook if notebook is not None else nbformat.read(notebook_path(lab), as_version=4)
    with tempfile.TemporaryDirectory() as private:
        env = {"PROFILE": profile, "SET": shlex.join(overrides or []), "OUTPUT_ROOT": str(root)}
        write_kernelspec(lab, kernel_python(lab), Path(private), env)
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = private
        try:
            client = NotebookClient(
                nb, kernel_name=kernel_name(lab), timeout=1800, resources={"metadata": {"path": str(lab.dir)}}
            )
            client.execute()
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old
    out = Path(root) / lab.name / "executed.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    return out


#: Headless Chromium (CI installs Debian's ``chromium``); None where none is installed.
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def chromium(profile: Path, *args: str, budget_ms: int | None = None) -> subprocess.CompletedProcess:
    """Headless Chromium with a throwaway profile (``profile``: a folder of its own), no network
    chatter, a 1280 x 1200 window; ``budget_ms``: virtual time a page's scripts get before
    ``--dump-dom``/``--screenshot`` (JupyterLab renders its file browser with JavaScript).

    Raises:
        AssertionError: Chromium failed or hung (120 s); the message leaves out the command line (a
            URL in it may hold a token).
    """
    flags = [
        "--headless",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1200",
    ]
    if budget_ms:
        flags.append(f"--virtual-time-budget={budget_ms}")
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses its sandbox as root (CI)
    assert CHROMIUM, "no Chromium"
    try:
        return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=True)
    except subprocess.CalledProcessError as exc:
        raise AssertionError(f"Chromium failed (exit {exc.returncode}): {exc.stderr[-2000:]}") from None
    except subprocess.TimeoutExpired:
        raise AssertionError("Chromium did not finish in 120 s") from None
