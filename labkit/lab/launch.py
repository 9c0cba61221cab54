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
  the two-container test and Slurm's ``srun`` use. ``--max-restarts N`` (``max_restarts``): when a
  rank dies, torchrun's elastic agent stops the others and starts them all again (on every node,
  through a new rendezvous round), up to N times; the script resumes from its own checkpoints.

The checks here fail before any process starts, with one line naming what to change: more
processes than devices, an unreadable or malformed hostfile (parsed by DeepSpeed's own parser; a
byte-order mark, ``slots=0`` or an odd character in a host name refused), a host that does not
answer on its ssh port within ``timeout_s``, restarts asked of the deepspeed launcher. A launch
that fails names its log and shows the exception each rank ended with (:func:`failure_lines`).
One-node launches take a free port, so two runs on one machine never meet; the processes of every
launch share a cache of compiled bytecode (:func:`bytecode_cache`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
        max_restarts: torchrun ``--max-restarts``: how many times the ranks are started again after
            one of them fails (0: the launch fails with it). torchrun only.
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
    max_restarts: int = 0

    @classmethod
    def from_config(cls, cfg: dict, nproc_per_node: int) -> LaunchSpec:
        """Build from a profile's ``launch`` block; ``nproc_per_node`` comes from the job."""
        spec = cls(**{**cfg, "nproc_per_node": nproc_per_node})
        if spec.launcher not in LAUNCHERS:
            raise LabError(f"launch.launcher {spec.launcher!r} is not one of {', '.join(LAUNCHERS)}")
        if spec.nnodes < 1 or not 0 <= spec.node_rank < spec.nnodes:
            raise LabError(f"launch.node_rank {spec.node_rank} must be in 0..{spec.nnodes - 1} (launch.nnodes)")
        if spec.max_restarts < 0:
            raise LabError(f"launch.max_restarts={spec.max_restarts}: give 0 (no restart) or more")
        if spec.max_restarts and spec.launcher != "torchrun":
            raise LabError(
                f"launch.max_restarts={spec.max_restarts} needs launch.launcher=torchrun: torchrun's elastic agent "
                'restarts failed ranks, the deepspeed launcher does not (SET="launcher=torchrun max_restarts=N")'
            )
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


#: A host name or address in a hostfile: letters, digits, ``.``, ``-``, ``_`` and ``:`` (IPv6).
HOST_NAME = re.compile(r"[A-Za-z0-9._:-]+")


def read_hostfile(path: str | Path) -> dict[str, int]:
    """``{host: slots}`` from a DeepSpeed hostfile, parsed by DeepSpeed's own parser.

    What that parser lets through and its launcher would then trip over is refused too: a byte-order
    mark (the first host would be ``\\ufeffnode0``), ``slots=0``, a host name with any other
    character than :data:`HOST_NAME`'s (a no-break space, a zero-width space pasted from a page).

    Raises:
        LabError: the file is missing, or a line is not ``host slots=N`` (names the file and the line).
    """
    from deepspeed.launcher.runner import _parse_hostfile

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LabError(f"hostfile {path}: {exc.strerror}; write one `host slots=N` line per node") from None
    except UnicodeDecodeError as exc:
        raise LabError(
            f"hostfile {path}: not UTF-8 text ({exc.reason}); write one `host slots=N` line per node"
        ) from None
    if text.startswith("\ufeff"):
        raise LabError(
            f"hostfile {path} starts with a byte-order mark (saved as 'UTF-8 with BOM'): DeepSpeed's launcher "
            "would read the first host as '\\ufeff' + its name; save it as plain UTF-8"
        )
    lines = text.splitlines()
    try:
        hosts = dict(_parse_hostfile(lines))
    except ValueError as exc:
        bad = next((i for i, line in enumerate(lines, 1) if line.strip() and line.strip() in str(exc)), None)
        where = f" line {bad}" if bad else ""
        raise LabError(f"hostfile {path}{where}: {exc} (each line: `host slots=N`)") from None
    for number, line in enumerate(lines, 1):
        entry = re.match(r"^(\S+)\s+slots=(\d+)", line.strip())  # DeepSpeed's pattern
        host = entry.group(1) if entry and not line.strip().startswith("#") else None
        if host is None:
            continue  # a comment or an empty line
        if not HOST_NAME.fullmatch(host):
            odd = next(c for c in host if not HOST_NAME.fullmatch(c))
            raise LabError(
                f"hostfile {path} line {number}: host {host!r} has the character {odd!r} (U+{ord(odd):04X}); a host "
                "is a name or address of letters, digits, '.', '-', '_' and ':'"
            )
        if hosts[host] < 1:
            raise LabError(
                f"hostfile {path} line {number}: {host} has slots={hosts[host]}: every host needs slots=1 or more "
                "(one per GPU); leave a host out, or narrow with launch.include, to use none of it"
            )
    return hosts


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


def command(spec: LaunchSpec, script: Path, args: list[str], job: int = 0, port: int | None = None) -> list[str]:
    """The launcher's command line for ``script args`` (as ``python -m``, so the lab's interpreter runs it).

    ``job`` offsets the port (``master_port + job``), so consecutive launches of a multi-node run
    never wait on a port in TIME_WAIT; ``port`` overrides it (:func:`launch` gives one-node launches
    a free one).
    """
    port = spec.master_port + job if port is None else port
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
    cmd += ["--max-restarts", str(spec.max_restarts)] if spec.max_restarts else []
    if spec.nnodes > 1:
        cmd += ["--nnodes", str(spec.nnodes), "--node_rank", str(spec.node_rank), "--rdzv_backend", "c10d"]
        cmd += ["--rdzv_endpoint", f"{spec.master_addr}:{port}", "--rdzv_conf", f"join_timeout={spec.timeout_s}"]
    elif spec.max_restarts:  # a new rendezvous round per restart (the static one has none): see launch()
        cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}"]
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


#: Lines the launchers themselves write (not a rank's output): DeepSpeed's logger, torch's glog-style
#: lines (``E1206 16:40:01.123 ...``), and the ``[rank0]:`` prefix torch adds to a rank's traceback.
LAUNCHER_LINE = re.compile(r"^(\[\d{4}-\d\d-\d\d |[EWIF]\d{4} \d\d:\d\d:\d\d)")
#: Exceptions a launcher raises about its ranks rather than a rank's own error.
LAUNCHER_ERRORS = ("ChildFailedError", "CalledProcessError", "KeyboardInterrupt")


def failure_lines(text: str, limit: int = 12) -> list[str]:
    """What a failed launch's log says went wrong, for the run's one message.

    The exception each Python traceback in the log ended with (its type and message, message lines
    included, such as the list under Transformers' "Please correct the following DeepSpeed config
    values"), every rank's the same once, and ``error: ...`` lines (``SystemExit``); the launcher's
    own summary (a rank's exit code or signal) when no rank raised; else the log's last lines.
    """
    lines = [re.sub(r"^\[(default)?rank\d+\]: ?", "", line) for line in text.splitlines()]
    rank_errors, launcher_errors = [], []
    for i, line in enumerate(lines):
        if line.startswith("error:") and line not in rank_errors:
            rank_errors.append(line)
        if not line.startswith("Traceback (most recent call last):"):
            continue
        j = i + 1
        while j < len(lines) and (lines[j][:1] in (" ", "\t") or not lines[j].strip()):
            j += 1  # the frames
        block = []
        while j < len(lines) and len(block) < 8:
            line = lines[j]
            if not line.strip() or LAUNCHER_LINE.match(line) or line.startswith(("Traceback", "During handling")):
                break
            if line.startswith("The above exception"):
                break
            block.append(line.rstrip())
            j += 1
        target = launcher_errors if block and any(e in block[0] for e in LAUNCHER_ERRORS) else rank_errors
        if block and block[0] not in target:
            target.extend(b for b in block if b not in target)
    if not rank_errors:
        summary = [
            line.strip()
            for line in lines
            if re.search(r"exitcode|exits with return code|Signal \d+|error_file|RendezvousTimeoutError", line)
        ]
        rank_errors = summary or launcher_errors
    return (rank_errors or [line for line in lines if line.strip()])[-limit:]


def bytecode_cache(env: dict) -> dict:
    """``env`` with ``PYTHONPYCACHEPREFIX``: every process a launch starts (launcher and ranks) imports
    torch, DeepSpeed and Transformers, some 3,300 modules; where their compiled bytecode cannot be
    kept beside the sources (an image's root-owned virtualenv, ``PYTHONDONTWRITEBYTECODE=1``), each
    process compiled them all again: 11 s of CPU per process instead of 4 s (measured on 2 cores).
    The first process writes the bytecode to a cache folder outside the repository
    (``~/.cache/llm-labs/pycache``, else the temporary folder), the others read it; Python checks each
    file against its source. A prefix you set is kept."""
    if env.get("PYTHONPYCACHEPREFIX"):
        return env
    home = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    for cache in (Path(home) / "llm-labs" / "pycache", Path(tempfile.gettempdir()) / f"llm-labs-pycache-{os.getuid()}"):
        try:
            cache.mkdir(parents=True, exist_ok=True, mode=0o700)
            info = cache.stat()
            if info.st_uid != os.getuid() or info.st_mode & 0o022:  # another user's, or writable by others
                continue  # (it would run their .pyc files)
            with tempfile.NamedTemporaryFile(dir=cache):
                pass
        except OSError:
            continue
        out = {**env, "PYTHONPYCACHEPREFIX": str(cache)}
        out.pop("PYTHONDONTWRITEBYTECODE", None)  # it keeps .pyc files out of source folders: these are not
        return out
    return env


def launch(spec: LaunchSpec, script: Path, args: list[str], log: Path, job: int = 0, env: dict | None = None) -> str:
    """Run ``script`` on every rank through the launcher; its output goes to ``log``.

    A one-node launch (no hostfile) takes a free port; across nodes every node uses ``master_port + job``.

    Returns:
        The command as a user would type it.

    Raises:
        LabError: the launch failed or ran past ``spec.timeout_s`` (names the log and shows what the
            ranks ended with: :func:`failure_lines`).
    """
    if spec.hostfile:
        if not shutil.which("pdsh"):
            raise LabError(
                "the deepspeed launcher with a hostfile starts remote ranks through pdsh and ssh, and this machine "
                "has no pdsh: install pdsh and an ssh client (RUNTIME=native on the hosts), or use "
                "launch.launcher=torchrun and run the same command on every node"
            )
        check_hosts_reachable(list(read_hostfile(spec.hostfile)), timeout_s=min(10.0, spec.timeout_s))
    one_node = spec.nnodes == 1 and not spec.hostfile
    cmd = command(spec, script, args, job, port=free_port() if one_node else None)
    env = bytecode_cache(dict(os.environ if env is None else env))
    if spec.max_restarts:
        # By default torchrun's ranks share the rendezvous' store with every restart round, and a restarted
        # rank reads the dead round's addresses (gloo: "connectFullMesh failed ... Connection refused");
        # unshared, each round's rank 0 starts a store of its own (torch.distributed.elastic.rendezvous).
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    print(f"+ {shown(cmd)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as out:
        out.write(f"+ {shown(cmd)}\n")
        out.flush()
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
        tail = "\n".join(failure_lines(log.read_text(encoding="utf-8", errors="replace")))
        what = f"ran past {spec.timeout_s} s and was stopped" if code is None else f"exited with {code}"
        raise LabError(f"{shown(cmd)} {what}; log: {log}\n{tail}")
    return shown(cmd)
