"""``make notebook-<lab>``: JupyterLab with the lab's environment as its kernel, on 127.0.0.1.

Natively: the server from its own hash-locked environment (``.venvs/jupyterlab``,
``images/notebook/server.txt``), the kernel in the one ``make lab RUNTIME=native`` runs the same
plan in (``.venvs/<lab>[-<variant>][-cuda12]`` plus
``images/notebook/kernel.txt``'s packages that the lab's lock does not pin, hash-checked, then
``uv pip check``), a kernelspec per lab in a private folder (``JUPYTER_PATH``).

The token: made here (:func:`secrets.token_urlsafe`), printed once to the console in the URL, handed to
the server in ``JUPYTER_TOKEN`` (never on a command line, where ``ps`` shows it; Jupyter Server shows a
token it was given as ``...`` in its own log). Jupyter Server always writes its runtime files
(``jpserver-<pid>.json``, mode 0600, and its browser-open page, both holding the token): natively to
a private temporary folder (0700) removed when the server stops, in a container to the container's
own ``/tmp``, gone with it (``--rm``).

In a container: the image ``make lab`` would run (variant, CUDA flavor) plus labs/Dockerfile.notebook,
started with the same ``docker run`` arguments (:func:`labkit.host.runs.container_args`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from labkit.config import REPO_ROOT, Lab
from labkit.errors import LabError
from labkit.host.native import VENVS_DIR, _uv, ensure_env, uv_command
from labkit.notebook import kernel_name, notebook_path

NOTEBOOK_LOCKS = REPO_ROOT / "images" / "notebook"
SERVER_ENV = VENVS_DIR / "jupyterlab"
#: The port setting (``make notebook-<lab> NOTEBOOK_PORT=8890``, ``invoke notebook --port``).
PORT_ENV = "NOTEBOOK_PORT"
DEFAULT_PORT = 8888


def pinned(lock_text: str) -> set[str]:
    """Package names (normalized) a uv lock pins."""
    return {re.sub(r"[-_.]+", "-", m).lower() for m in re.findall(r"^([A-Za-z0-9_.\-]+)==", lock_text, re.MULTILINE)}


def kernel_lock_for(lab_lock: str, image_constraints: str = "") -> str:
    """``images/notebook/kernel.txt`` without the packages the lab's lock or its image already pin
    (the lab's versions stay; ``uv pip check`` then checks ipykernel accepts them)."""
    from labkit.host.native import without_packages

    return without_packages(
        (NOTEBOOK_LOCKS / "kernel.txt").read_text(encoding="utf-8"), pinned(lab_lock + image_constraints)
    )


def kernel_python(lab: Lab, variant: str | None = None, flavor: str | None = None) -> Path:
    """The native environment ``make lab`` runs ``lab`` in (``variant``, CUDA image ``flavor``:
    :func:`labkit.host.native.ensure_env`) with ipykernel added (once per lock change); its Python.

    Raises:
        LabError: the environment cannot be made (uv's message above).
    """
    from labkit.host.native import env_dir, image_constraints

    python = ensure_env(lab, variant, flavor)
    target = env_dir(lab, variant, flavor)
    lock = lab.requirements(variant, flavor).read_text(encoding="utf-8")
    constraints = image_constraints(lab.shared_image(variant, flavor)).read_text(encoding="utf-8")
    text = kernel_lock_for(lock, constraints)
    stamp = hashlib.sha256(text.encode() + (target / ".lock-hash").read_bytes()).hexdigest()
    stamp_file = target / ".kernel-hash"
    if stamp_file.is_file() and stamp_file.read_text(encoding="utf-8") == stamp:
        return python
    with open(VENVS_DIR / f".{target.name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if not (stamp_file.is_file() and stamp_file.read_text(encoding="utf-8") == stamp):
            (target / "requirements-kernel.txt").write_text(text, encoding="utf-8")
            on = ["--python", str(python)]
            args = [
                "pip",
                "install",
                *on,
                "--require-hashes",
                "--no-deps",
                "-r",
                str(target / "requirements-kernel.txt"),
            ]
            _uv(args, "installing the notebook kernel (images/notebook/kernel.txt)")
            _uv(["pip", "check", *on], "checking the environment with the kernel")
            stamp_file.write_text(stamp, encoding="utf-8")
    return python


def server_dir() -> Path:
    """``.venvs/jupyterlab`` (JupyterLab from ``images/notebook/server.txt``, hash-checked), made once per lock change.

    Raises:
        LabError: uv fails (its message above).
    """
    lock = NOTEBOOK_LOCKS / "server.txt"
    stamp = hashlib.sha256(lock.read_bytes()).hexdigest()
    stamp_file = SERVER_ENV / ".lock-hash"
    if stamp_file.is_file() and stamp_file.read_text(encoding="utf-8") == stamp:
        return SERVER_ENV
    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    with open(VENVS_DIR / ".jupyterlab.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if not (stamp_file.is_file() and stamp_file.read_text(encoding="utf-8") == stamp):
            found = subprocess.run([*uv_command(), "python", "find", "3.11"], capture_output=True, text=True)
            if found.returncode:
                raise LabError("JupyterLab's environment needs Python 3.11 (its lock is resolved for it)")
            _uv(
                ["venv", "--quiet", "--clear", "--python", found.stdout.strip(), str(SERVER_ENV)],
                "creating .venvs/jupyterlab",
            )
            py = ["--python", str(SERVER_ENV / "bin" / "python")]
            _uv(["pip", "install", *py, "--require-hashes", "--no-deps", "-r", str(lock)], "installing JupyterLab")
            _uv(["pip", "check", *py], "checking JupyterLab's environment")
            stamp_file.write_text(stamp, encoding="utf-8")
    return SERVER_ENV


def write_kernelspec(lab: Lab, python: str, folder: Path, env: dict | None = None) -> Path:
    """``<folder>/kernels/<kernel>/kernel.json``: the lab's Python running ipykernel, the repository on
    ``PYTHONPATH``; returns the kernel's folder. ``folder`` goes on ``JUPYTER_PATH``."""
    kernel = Path(folder) / "kernels" / kernel_name(lab)
    kernel.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"{lab.name} (llm-labs)",
        "language": "python",
        "env": {"PYTHONPATH": str(REPO_ROOT), **(env or {})},
    }
    (kernel / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return kernel


def port_setting(port: int | str | None, lab: str = "<lab>") -> int:
    """The port (argument, else ``NOTEBOOK_PORT``, else 8888), free on 127.0.0.1; ``lab`` names the lab
    in the advice.

    Raises:
        LabError: not a port number, or in use (names it and the setting).
    """
    raw = port if port not in (None, "") else os.environ.get(PORT_ENV, DEFAULT_PORT)
    try:
        number = int(raw)
        if not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise LabError(f"{PORT_ENV}={raw}: give a port number (1-65535)") from None
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", number))
        except OSError:
            raise LabError(
                f"port {number} on 127.0.0.1 is in use ({PORT_ENV}={number}): pick a free one, e.g. "
                f"`make notebook-{lab} {PORT_ENV}={number + 1}`"
            ) from None
    return number


def server_command(port: int, root: Path, ip: str = "127.0.0.1", jupyter: str | None = None) -> list[str]:
    """``jupyter lab`` on ``ip``:``port`` serving ``root``, no browser, the token from ``JUPYTER_TOKEN``."""
    return [
        jupyter or str(server_dir() / "bin" / "jupyter"),
        "lab",
        f"--ServerApp.ip={ip}",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.allow_remote_access=False",
    ]


def serve_native(plan, port: int, token: str | None = None) -> subprocess.Popen:
    """Start JupyterLab natively on 127.0.0.1:``port`` with the kernel ``make lab`` would run ``plan``
    in (its variant's and CUDA flavor's environment, its CUDA path, ``CV_DIR``); prints the URL once.

    The server runs until stopped (Ctrl-C: :func:`wait`); returns its process (its private folder is
    ``proc.private_dir``, removed by :func:`stop`).

    Raises:
        LabError: the environment cannot be made; ``CV_DIR`` is not a folder.
    """
    import shlex

    from labkit.host.runs import native_overrides, output_root, run_env

    lab, profile = plan.lab, plan.profile
    overrides = native_overrides(plan)
    python = kernel_python(lab, plan.variant, plan.flavor)
    private = Path(tempfile.mkdtemp(prefix="llm-labs-jupyter-"))  # 0700: kernelspec, runtime files
    write_kernelspec(lab, python, private)
    token = token or secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "JUPYTER_TOKEN": token,
        "JUPYTER_PATH": str(private),
        "JUPYTER_RUNTIME_DIR": str(private / "runtime"),
        "JUPYTER_CONFIG_DIR": str(private / "config"),
        "JUPYTER_DATA_DIR": str(private / "data"),
        "PROFILE": profile,
        "SET": shlex.join(overrides),
        "OUTPUT_ROOT": str(output_root()),  # absolute: the kernel runs in the lab's folder
        **run_env(plan, offline=False),
    }
    cmd = server_command(port, lab.dir)
    if os.geteuid() == 0:  # Jupyter refuses root unless told; natively the user is who runs make
        cmd.append("--ServerApp.allow_root=True")
    proc = subprocess.Popen(cmd, env=env, cwd=lab.dir, start_new_session=True)
    proc.private_dir = private
    print(
        f"JupyterLab for {lab.name} ({profile}): http://127.0.0.1:{port}/lab/tree/{notebook_path(lab).name}?token={token}"
    )
    print("(the token is shown once here and written nowhere; on a remote host: ssh -L PORT:127.0.0.1:PORT host)")
    return proc


def stop(proc: subprocess.Popen) -> None:
    """Stop the server (and its kernels) and remove its private folder."""
    if getattr(proc, "container", None):  # the docker client's signal may not reach the container
        from labkit.host.docker import docker_cli

        subprocess.run([*docker_cli(), "stop", proc.container], capture_output=True, check=False)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    shutil.rmtree(getattr(proc, "private_dir", ""), ignore_errors=True)


def wait(proc: subprocess.Popen) -> int:
    """Wait for the server; Ctrl-C stops it."""
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)


def notebook_image(plan) -> str:
    """Build ``llm-labs/<image>-notebook:dev`` (labs/Dockerfile.notebook) on the image ``make lab`` runs
    ``plan`` in (its variant's, its CUDA flavor's); returns its tag."""
    from labkit.host import docker

    lab = plan.lab
    base = docker.build_lab_image(lab, plan.variant, plan.flavor)
    tag = docker.image_tag(f"{lab.image_name(plan.variant, plan.flavor)}-notebook")
    platform = docker.image_platform(lab.base_image(plan.variant))
    docker.build_image(
        REPO_ROOT / "labs" / "Dockerfile.notebook", tag, None, platform, {"LAB_IMAGE": base, "LAB": lab.name}
    )
    return tag


def serve_docker(plan, port: int, token: str | None = None) -> subprocess.Popen:
    """Start JupyterLab in the lab's notebook image, published on 127.0.0.1:``port`` only, with what
    ``make lab`` gives the same plan (:func:`labkit.host.runs.container_args`: accelerator and cards,
    Hugging Face cache volume, outputs, the files the overrides name, ``CV_DIR``, the CUDA path through
    the image's ``cuda-env``/``ascend-env``), the lab's notebook mounted (saves land in the checkout)."""
    import shlex

    from labkit.host import docker, runs

    lab = plan.lab
    runs.common_data_mount(plan)  # a CV_DIR that is not there: said before any image is built
    tag = notebook_image(plan)
    inside = f"/opt/labs/labs/{lab.name}"
    notebook = [(str(notebook_path(lab)), f"{inside}/{notebook_path(lab).name}")]
    env = {
        "LAB_IMAGE_ID": docker.image_id(tag) or "",
        **runs.run_env(plan, offline=False),
        "OUTPUT_ROOT": runs.CONTAINER_OUTPUTS,
    }
    cmd, overrides = runs.container_args(plan, runs.output_root(), env, notebook)
    cmd += ["-e", f"PROFILE={plan.profile}", "-e", f"SET={shlex.join(overrides)}"]
    name = f"llm-labs-notebook-{lab.name}-{port}"
    cmd += ["--name", name, "-e", "JUPYTER_TOKEN", "-p", f"127.0.0.1:{port}:8888", tag]
    # In the container the server listens on its own interface; the host publishes it on 127.0.0.1 only.
    cmd += server_command(8888, Path(inside), ip="0.0.0.0", jupyter="/opt/jupyter/bin/jupyter")[2:]
    cmd += ["--FileContentsManager.use_atomic_writing=False"]  # the notebook is a mounted file
    cmd += [f"--ServerApp.custom_display_url=http://127.0.0.1:{port}/"]  # its own log: the port published here
    token = token or secrets.token_urlsafe(32)
    print("+ " + shlex.join(cmd), flush=True)
    proc = subprocess.Popen(cmd, env={**os.environ, "JUPYTER_TOKEN": token}, start_new_session=True)
    proc.container = name
    print(
        f"JupyterLab for {lab.name} ({plan.profile}, in {tag}): http://127.0.0.1:{port}/lab/tree/{notebook_path(lab).name}?token={token}"
    )
    print("(the token is shown once here and written nowhere; on a remote host: ssh -L PORT:127.0.0.1:PORT host)")
    return proc


def main(argv: list[str]) -> int:
    """Inside the notebook image's build: ``kernel-lock`` prints kernel.txt without the installed
    packages; ``kernelspec LAB FOLDER`` writes the lab's kernelspec for this Python."""
    import sys
    from importlib import metadata

    if argv[:1] == ["kernel-lock"]:
        installed = "".join(f"{d.metadata['Name']}==\n" for d in metadata.distributions() if d.metadata["Name"])
        sys.stdout.write(kernel_lock_for(installed))
        return 0
    if argv[:1] == ["kernelspec"] and len(argv) == 3:
        from labkit.config import get_lab

        write_kernelspec(get_lab(argv[1]), sys.executable, Path(argv[2]))
        return 0
    print("usage: python -m labkit.host.jupyter kernel-lock | kernelspec LAB FOLDER", file=sys.stderr)
    return 2


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
