"""Multi-process and multi-node launch with the real launchers: ``deepspeed`` and ``torchrun``.

A lab whose training runs in several processes (one per GPU, or per CPU slot in the smoke
profiles) keeps its orchestration in ``run.py`` (one process: data, model, checks) and its
training in a per-rank script, started by :func:`launch` through either launcher:

* ``deepspeed`` (``deepspeed.launcher.runner``, what the ``deepspeed`` command runs): ``--num_gpus``
  on one node, ``--hostfile`` (``host slots=N`` lines; every host reached by ssh through pdsh) and
  ``--include`` across nodes. On a CPU it starts ``--num_gpus`` processes with the gloo backend
  (DeepSpeed's CPU accelerator).
* ``torchrun`` (``torch.distributed.run``): ``--nproc_per_node``; across nodes the same command on
  every node with ``--nnodes`` and c10d rendezvous at ``--rdzv_endpoint`` (no ssh), which is what
  the two-container test and Slurm's ``srun`` use.

The checks here fail before any process starts, with one line naming what to change: more
processes than devices, an unreadable or malformed hostfile (parsed by DeepSpeed's own parser), a
host that does not answer on its ssh port within ``timeout_s``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import LabError

LAUNCHERS = ("deepspeed", "torchrun")


@dataclass
class LaunchSpec:
    """Where and how many processes (the profile's ``launch`` block).

    Attributes:
        launcher: ``deepspeed`` or ``torchrun``.
        nproc_per_node: processes per node (one per GPU; CPU: at most the cores); with a hostfile
            the hostfile's ``slots`` decide instead (``--include`` narrows them).
        nnodes: nodes (torchrun: this command runs on every node; deepspeed: the hostfile's).
        node_rank: this node's rank (torchrun with ``nnodes > 1``; 0 elsewhere).
        master_addr: the rank-0 node's address (torchrun's rendezvous endpoint).
        master_port: its port; job ``i`` of a run uses ``master_port + i``.
        hostfile: DeepSpeed hostfile (``host slots=N`` per line), or ``None`` for this node only.
        include: DeepSpeed ``--include`` (e.g. ``node1:0,1@node2:0``), or ``None``.
        timeout_s: seconds a launch may take before it is stopped (and the rendezvous' join timeout).
    """

    launcher: str = "deepspeed"
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    hostfile: str | None = None
    include: str | None = None
    timeout_s: int = 600

    @classmethod
    def from_config(cls, cfg: dict, nproc_per_node: int) -> LaunchSpec:
        """Build from a profile's ``launch`` block; ``nproc_per_node`` comes from the job."""
        spec = cls(**{**cfg, "nproc_per_node": nproc_per_node})
        if spec.launcher not in LAUNCHERS:
            raise LabError(f"launch.launcher {spec.launcher!r} is not one of {', '.join(LAUNCHERS)}")
        if spec.nnodes < 1 or not 0 <= spec.node_rank < spec.nnodes:
            raise LabError(f"launch.node_rank {spec.node_rank} must be in 0..{spec.nnodes - 1} (launch.nnodes)")
        if spec.nnodes > 1 and spec.launcher == "deepspeed" and not spec.hostfile:
            raise LabError(
                "launch.nnodes > 1 with the deepspeed launcher needs launch.hostfile (host slots=N lines, hosts "
                "reachable by ssh); or use launch.launcher=torchrun and run the same command on every node"
            )
        return spec

    @property
    def world_size(self) -> int:
        """Ranks in all: the hostfile's slots with the deepspeed launcher, else processes x nodes."""
        if self.hostfile and self.launcher == "deepspeed":
            return sum(read_hostfile(self.hostfile).values())
        return self.nproc_per_node * self.nnodes


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's pick), for a one-node rendezvous that must not
    meet another run's (two labs, or two tests, launching at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def devices_here(device: str) -> int:
    """How many processes this node can give a device each: GPUs / NPUs, or CPU cores on a CPU."""
    import torch

    if device == "cuda":
        return torch.cuda.device_count()
    if device == "npu":
        return torch.npu.device_count()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_nproc(nproc: int, device: str) -> None:
    """Raises LabError when ``nproc`` processes would share devices (names the count found)."""
    have = devices_here(device)
    if nproc < 1 or nproc > have:
        unit = {"cuda": "CUDA GPU(s)", "npu": "Ascend NPU(s)"}.get(device, "CPU core(s)")
        raise LabError(
            f"nproc_per_node={nproc} but this node has {have} {unit} (device={device}): use at most {have}, "
            "e.g. NPROC=1, or restrict visible devices with CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES"
        )


def read_hostfile(path: str | Path) -> dict[str, int]:
    """``{host: slots}`` from a DeepSpeed hostfile, parsed by DeepSpeed's own parser.

    Raises:
        LabError: the file is missing, or a line is not ``host slots=N`` (names the file and the line).
    """
    from deepspeed.launcher.runner import _parse_hostfile

    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LabError(f"hostfile {path}: {exc.strerror}; write one `host slots=N` line per node") from None
    try:
        return dict(_parse_hostfile(lines))
    except ValueError as exc:
        bad = next((i for i, line in enumerate(lines, 1) if line.strip() and line.strip() in str(exc)), None)
        where = f" line {bad}" if bad else ""
        raise LabError(f"hostfile {path}{where}: {exc} (each line: `host slots=N`)") from None


def check_hosts_reachable(hosts: list[str], port: int = 22, timeout_s: float = 5.0) -> None:
    """Raises LabError naming the first host that does not resolve, or does not greet as an ssh server
    (``SSH-`` banner) on ``port`` within ``timeout_s``.

    The deepspeed launcher starts remote ranks over ssh (pdsh); an unreachable host would otherwise
    hang the launch until ssh gives up.
    """
    for host in hosts:
        if host in ("localhost", "127.0.0.1", socket.gethostname()):
            continue
        try:
            with socket.create_connection((host, port), timeout=timeout_s) as conn:
                banner = conn.recv(4)  # an ssh server speaks first: "SSH-2.0-..."
            if not banner.startswith(b"SSH-"):
                raise OSError(f"port {port} answers, but not as an ssh server")
        except OSError as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise LabError(
                f"host {host!r} (hostfile) does not answer on port {port} ({why}, waited {timeout_s:g} s): the "
                "deepspeed launcher reaches every host by ssh. Check the name, the network and sshd there, or "
                "use launch.launcher=torchrun and start the same command on every node"
            ) from None


def command(spec: LaunchSpec, script: Path, args: list[str], job: int = 0) -> list[str]:
    """The launcher's command line for ``script args`` (as ``python -m``, so the lab's interpreter runs it).

    ``job`` offsets the port, so consecutive launches in one run never wait on a port in TIME_WAIT.
    """
    port = spec.master_port + job
    if spec.launcher == "deepspeed":
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--master_port", str(port)]
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        if spec.hostfile:
            cmd += ["--hostfile", str(spec.hostfile)]
            cmd += ["--include", spec.include] if spec.include else []
        elif visible:  # --num_gpus would drop CUDA_VISIBLE_DEVICES and take GPUs 0..N-1 of the node
            ids = visible.split(",")[: spec.nproc_per_node]
            cmd += ["--include", f"localhost:{','.join(ids)}"]
        else:
            cmd += ["--num_gpus", str(spec.nproc_per_node)]
        return [*cmd, str(script), *args]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(spec.nproc_per_node)]
    if spec.nnodes > 1:
        cmd += ["--nnodes", str(spec.nnodes), "--node_rank", str(spec.node_rank), "--rdzv_backend", "c10d"]
        cmd += ["--rdzv_endpoint", f"{spec.master_addr}:{port}", "--rdzv_conf", f"join_timeout={spec.timeout_s}"]
    else:
        cmd += ["--master_addr", "127.0.0.1", "--master_port", str(port)]
    return [*cmd, str(script), *args]


def shown(cmd: list[str]) -> str:
    """``cmd`` as a user would type it (``deepspeed ...`` / ``torchrun ...``)."""
    text = shlex.join(cmd)
    for module, name in (("deepspeed.launcher.runner", "deepspeed"), ("torch.distributed.run", "torchrun")):
        text = text.replace(f"{shlex.quote(sys.executable)} -m {module}", name)
    return text


def stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stop a launch: SIGTERM to its process group (the launchers then stop the ranks they started,
    torchrun's in their own sessions and the deepspeed runner's remote ones included), SIGKILL to
    the group after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def launch(spec: LaunchSpec, script: Path, args: list[str], log: Path, job: int = 0, env: dict | None = None) -> str:
    """Run ``script`` on every rank through the launcher; its output goes to ``log``.

    Returns:
        The command as a user would type it.

    Raises:
        LabError: the launch failed or ran past ``spec.timeout_s`` (names the log and shows its tail).
    """
    if spec.hostfile:
        if not shutil.which("pdsh"):
            raise LabError(
                "the deepspeed launcher with a hostfile starts remote ranks through pdsh and ssh, and this machine "
                "has no pdsh: install pdsh and an ssh client (RUNTIME=native on the hosts), or use "
                "launch.launcher=torchrun and run the same command on every node"
            )
        check_hosts_reachable(list(read_hostfile(spec.hostfile)), timeout_s=min(10.0, spec.timeout_s))
    cmd = command(spec, script, args, job)
    print(f"+ {shown(cmd)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=spec.timeout_s)
        except subprocess.TimeoutExpired:
            stop(proc)
            code = None
        except BaseException:  # Ctrl-C or any error here: no rank may keep running (and holding a GPU)
            stop(proc)
            raise
    if code != 0:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        errors = [line for line in lines if "Error" in line or "error:" in line]
        tail = "\n".join((errors or lines)[-8:])
        what = f"ran past {spec.timeout_s} s and was stopped" if code is None else f"exited with {code}"
        raise LabError(f"{shown(cmd)} {what}; log: {log}\n{tail}")
    return shown(cmd)
