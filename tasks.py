"""Tasks (invoke): the labs' command line. `invoke --list` shows them; the work is in labkit.host.

    invoke run --lab whisper-lora [--profile auto|smoke|full] [--runtime auto|docker|native] [--set "k=v k2=v2"]
    invoke verify --lab whisper-lora [--profile smoke] [--run DIR]
    invoke notebook --lab whisper-lora [--profile ...] [--runtime ...] [--set ...] [--port 8888]
    invoke test [--lab whisper-lora]
    invoke doctor [--lab whisper-lora]

Environment: DOCKER, BASE_IMAGE, ASCEND_BASE_IMAGE, ASCEND_BUILD_BASE_IMAGE, ASCEND_PLATFORM,
EXTRA_CA_CERT, OUTPUT_ROOT, CV_DIR, HF_TOKEN, HF_ENDPOINT (README: Settings).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

from invoke import Exit, task

from labkit.config import LABS_DIR, REPO_ROOT, get_lab, list_labs
from labkit.errors import LabError
from labkit.host import docker, locks, runs
from labkit.host import doctor as host_doctor
from labkit.host.plan import resolve
from labkit.host.probe import probe
from labkit.verify import format_table, verdict, verify_run


@contextmanager
def one_line_errors():
    """A :class:`LabError` (the user's to fix) becomes ``error: <line>`` and exit status 2, no traceback."""
    try:
        yield
    except LabError as exc:
        raise Exit(f"error: {exc}", code=2) from None


@task(
    positional=[],
    help={
        "name": "shared image to build (cuda, cuda12, ascend)",
        "base_image": "overrides BASE_IMAGE / CUDA12_BASE_IMAGE / ASCEND_BASE_IMAGE",
    },
)
def images(c, name="cuda", base_image=None):
    """Build a shared base image (images/<name>/Dockerfile) as llm-labs/<name>:dev."""
    with one_line_errors():
        docker.build_shared_image(name, base_image)


@task(
    positional=[],
    help={"lab": "lab name", "variant": "a variant's image (course, npu)", "image": "CUDA image flavor: cuda12"},
)
def build(c, lab, variant="", image=""):
    """Build a lab's image (and its shared base image first: the variant's, e.g. ascend for npu)."""
    with one_line_errors():
        spec = get_lab(lab)
        if image and image not in ("cuda", *locks.FLAVOR_LOCKS):
            raise LabError(f"IMAGE={image!r}: use cuda or {' or '.join(locks.FLAVOR_LOCKS)}")
        if image and not spec.requirements(variant or None, image).is_file():
            raise LabError(f"IMAGE={image}: {spec.name} has no lock for it ({spec.requirements(None, image).name})")
        docker.build_lab_image(spec, variant or None, image or None)


@task(
    positional=[],
    help={
        "lab": "lab name (invoke list)",
        "profile": "auto (full with a GPU or NPU, else smoke), smoke or full",
        "runtime": "auto (docker if an engine answers), docker or native",
        "set": "profile overrides, split like a shell line: \"learning_rate=0 data.path='/my data'\"",
        "variant": "a lab variant (course, npu): its own image and profiles",
        "nproc": "processes per node, one per card (the profile's nproc_per_node)",
        "image": "CUDA image flavor: auto (from the host's driver and GPU: invoke doctor), cuda or cuda12",
    },
)
def run(c, lab, profile="auto", runtime="auto", set="", variant="", nproc="", image="auto"):  # noqa: A002
    """Run a lab (building its image when the runtime is docker) and verify the run."""
    with one_line_errors():
        plan = resolve(lab, profile, runtime, set, variant, nproc or None, image=image or "auto")
        runs.build(plan)
        code, _ = runs.run(plan)
    if code != 0:
        raise Exit(code=code)
    verify(c, lab=plan.lab.name, profile=plan.profile)


@task(
    positional=[],
    help={
        "lab": "lab name (invoke list)",
        "profile": "auto (full with a GPU or NPU, else smoke), smoke or full: start_run's default in the notebook",
        "runtime": "auto (docker if an engine answers), docker or native",
        "set": 'profile overrides for start_run, split like a shell line: "learning_rate=0"',
        "variant": "a lab variant (course, npu): its image and environment, as invoke run",
        "image": "CUDA image flavor: auto (from the host's driver and GPU), cuda or cuda12, as invoke run",
        "port": "the port on 127.0.0.1 (default NOTEBOOK_PORT, else 8888)",
    },
)
def notebook(c, lab, profile="auto", runtime="auto", set="", variant="", image="auto", port=""):  # noqa: A002
    """Start JupyterLab on 127.0.0.1 with the lab's notebook and environment as its kernel (Ctrl-C stops it).

    In the lab's container when a Docker engine answers (devices, Hugging Face cache and outputs as
    `make lab` passes them), natively otherwise. The token is printed once and written nowhere.
    """
    from labkit.host import jupyter

    with one_line_errors():
        plan = resolve(lab, profile, runtime, set, variant, image=image or "auto")
        plan.check_accelerator()
        number = jupyter.port_setting(port or None, plan.lab.name)
        if plan.runtime == "docker":
            proc = jupyter.serve_docker(plan, number)
        else:
            proc = jupyter.serve_native(plan, number)
    raise Exit(code=jupyter.wait(proc))


@task(positional=[], help={"lab": "only this lab's notebook (default: every lab's)"})
def notebooks(c, lab=None):
    """Regenerate labs/<lab>/notebook.ipynb from run.py (the tests fail when one is out of date)."""
    from labkit.notebook import write_notebooks

    with one_line_errors():
        changed = write_notebooks(get_lab(lab) if lab else None)
    print("\n".join(f"wrote {p.relative_to(REPO_ROOT)}" for p in changed) or "every notebook is up to date")


@task(
    positional=[],
    help={
        "lab": "lab name",
        "profile": "profile whose newest completed run to check (default: every profile found)",
        "run": "a run directory to check instead",
    },
)
def verify(c, lab=None, profile=None, run=None):
    """Check runs against the lab's expected outputs; prints check / expected / got / result."""
    with one_line_errors():
        if run and not lab:
            try:
                lab = json.loads((Path(run) / "manifest.json").read_text(encoding="utf-8"))["lab"]
            except (OSError, ValueError, KeyError):
                raise LabError(f"{run} has no readable manifest.json naming its lab: give --lab") from None
        if not lab:
            raise LabError("which lab? give --lab NAME (invoke list shows them) or --run DIR")
        spec = get_lab(lab)
        if run:
            targets = [(profile or Path(run).resolve().parent.name, Path(run))]
        else:
            targets = runs.verify_targets(spec, runs.output_root(), profile)
        failed = False
        for name, run_dir in targets:
            checks = verify_run(run_dir, spec.expected_path(name))
            ok = all(ch.passed for ch in checks)
            failed |= not ok
            print(f"\n{spec.name} / {name}: {run_dir}\n{format_table(checks)}")
            print(verdict(checks, spec.expected_path(name)))
    if failed:
        raise Exit(code=1)


@task(
    positional=[],
    help={
        "lab": "lab name",
        "batch_sizes": "comma-separated per-device batch sizes to sweep, e.g. 1,4,8,16,64 (default: the profile's)",
        "steps": "timed steps per batch size (after --warmup untimed ones)",
        "warmup": "untimed steps first (CUDA start-up, kernel loading)",
        "arch": "full (the full profile's architecture, random weights) or tiny (the CPU self-test)",
        "device": "accelerator (default), cuda or cpu",
        "runtime": "auto (docker if an engine answers), docker or native",
    },
)
def bench(c, lab, batch_sizes="", steps=5, warmup=1, arch="full", device="accelerator", runtime="auto"):
    """Benchmark a lab's full-profile step on random weights: peak memory, samples/s, tokens/s, MFU.

    Writes outputs/<lab>/bench/<UTC time>/bench.json and bench.md; commit a GPU's rows to
    labs/<lab>/bench.yaml (GPU, driver, versions, date, command) and `invoke doctor` uses them.
    On a CPU: --arch tiny --device cpu (make bench-<lab> ARCH=tiny DEVICE=cpu).
    """
    from labkit.host.plan import choose_runtime

    args = ["--arch", arch, "--device", device, "--steps", str(steps), "--warmup", str(warmup)]
    args += ["--batch-sizes", batch_sizes] if batch_sizes else []
    with one_line_errors():
        spec = get_lab(lab)
        code, out = runs.bench(spec, choose_runtime(runtime, docker.docker_error), args, device, probe().kind)
    if code != 0:
        raise Exit(code=code)
    print(f"wrote {out}/bench.json and bench.md")


@task(positional=[], help={"out": "where to write the page (default: <outputs>/report.html)"})
def report(c, out=None):
    """One static HTML page of every lab's newest completed runs: checks, plots, metrics, manifest."""
    from labkit.report import write_report

    with one_line_errors():
        path, cards = write_report(runs.output_root(), Path(out) if out else None)
    for card in cards:
        verdict = "no completed run" if card.passed is None else ("PASS" if card.passed else "FAIL")
        print(f"{card.lab:<24} {card.profile:<14} {verdict}")
    print(f"wrote {path} ({len(cards)} lab profile(s)); open it in a browser")


@task(name="list")
def list_(c):
    """List the labs with their course chapter and profiles."""
    rows = [("lab", "chapter", "profiles", "title")]
    rows += [(s.name, str(s.chapter), " ".join(s.profiles), s.title) for s in list_labs()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])


@task(positional=[], help={"lab": "only this lab's locks (default: every lock)"})
def lock(c, lab=None):
    """Regenerate the hash-locked requirements with uv (Python 3.11; Linux x86_64, Ascend also aarch64)."""
    with one_line_errors():
        locks.lock_all(get_lab(lab) if lab else None)


@task(positional=[], help={"lab": "also check whether this lab's full profile fits the GPU (measured table)"})
def doctor(c, lab=None):
    """Check the host: Docker, native runs, the GPU and driver, Ascend NPUs, and a lab's fit.

    Exit status 1 when no runtime is usable, the GPU or NPU is unusable, or the lab does not fit.
    """
    with one_line_errors():
        problems = host_doctor.check(get_lab(lab) if lab else None)
    if problems:
        raise Exit(code=1)


@task(
    positional=[],
    help={
        "lab": "only this lab, or these comma-separated (their unit tests, smoke runs, broken-pipeline "
        "checks, container paths, and verification of their latest runs under outputs/)",
        "jobs": "parallel test workers (pytest-xdist; default 2, or 1 on a one-core machine)",
    },
)
def test(c, lab=None, jobs=None):
    """The whole suite: lint, static checks, unit tests, smoke runs, broken-pipeline checks, containers.

    Ends with a table of test time per lab (also in outputs/test-times.json).
    """
    python = sys.executable
    # The tooling venv's executables (hadolint, docker-compose) for this task and the tests it runs.
    os.environ["PATH"] = f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    c.run(f"{python} -m ruff check .", echo=True)
    c.run(f"{python} -m ruff format --check .", echo=True)
    dockerfiles = sorted(REPO_ROOT.glob("images/*/Dockerfile")) + sorted(LABS_DIR.glob("Dockerfile*"))
    dockerfiles += sorted(LABS_DIR.glob("*/Dockerfile*")) + sorted(REPO_ROOT.glob("tests/*/Dockerfile"))
    c.run(shlex.join(["hadolint", *(str(p.relative_to(REPO_ROOT)) for p in dockerfiles)]), echo=True)
    if not docker.docker_error():  # the shared CUDA image once, before parallel workers need it
        images(c, name="cuda")  # the Ascend image: built by the npu tests, on their lab's worker
    jobs = int(jobs) if jobs else min(2, os.cpu_count() or 1)
    times = runs.output_root() / "test-times.json"
    times.parent.mkdir(parents=True, exist_ok=True)
    args = [python, "-m", "pytest", "tests", "-ra", "--durations=20", "--times-json", str(times)]
    if jobs > 1:  # tests/conftest.py schedules by lab; the cores are shared out, not oversubscribed
        args += ["-n", str(jobs), "--no-loadscope-reorder"]  # longest labs first: tests/conftest.py
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    if lab:  # one lab or several, comma-separated (what the tests of those labs and the shared ones cover)
        with one_line_errors():
            args += ["--lab", ",".join(get_lab(name.strip()).name for name in lab.split(","))]
    c.run(shlex.join(args), echo=True, pty=False)
