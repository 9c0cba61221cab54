"""The labs' notebooks: generated from run.py (checked in, never stale), cut at the numbered steps with
early returns handled, and JupyterLab started on 127.0.0.1 with a token it demands and never writes.

Every lab's notebook is also executed headless on the smoke profile: tests/test_labs.py's plain smoke
run is the notebook's (no extra run), and the container's script run must equal it.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from labkit.config import REPO_ROOT, get_lab
from labkit.errors import LabError
from labkit.host import docker, jupyter
from labkit.notebook import notebook_path, notebook_text, split_run

from helpers import CHROMIUM, chromium


def test_checked_in_notebook_is_the_one_run_py_generates(lab):
    path = notebook_path(lab)
    assert path.is_file(), f"{path} missing: run `invoke notebooks`"
    assert path.read_text(encoding="utf-8") == notebook_text(lab), f"{path} is stale: run `invoke notebooks`"


SAMPLE = '''"""A lab."""

import os

LIMIT = 3


def helper(x):
    return x + 1


def run(ctx):
    """What it does."""
    cfg = ctx.config

    # 1. Data: load it.
    data = [helper(i) for i in range(LIMIT)]

    def inner():
        return 5  # not run()'s return

    # 2. Train, maybe stop early.
    if not ctx.is_main:
        return {}
    for x in data:
        if x > 10:
            return {"early": x}
    # not a step marker: a plain comment
    #   # 3. indented: part of step 2

    # 3. Report.
    return {
        "n": len(data),
    }
'''


def test_run_is_cut_at_its_numbered_steps_with_returns_rewritten(tmp_path):
    path = tmp_path / "run.py"
    path.write_text(SAMPLE)
    split = split_run(path)
    assert split.doc == "A lab." and split.run_doc == "What it does."
    assert split.imports == ["import os"] and split.helpers == ["LIMIT", "helper"]
    assert [s.number for s in split.steps] == [None, 1, 2, 3]
    assert split.steps[0].code == "cfg = ctx.config"
    assert split.steps[1].title == "Data: load it." and "return 5" in split.steps[1].code
    step2 = split.steps[2].code
    assert "raise EndRun({})" in step2 and 'raise EndRun({"early": x})' in step2 and "return" not in step2
    assert split.steps[3].code == '# 3. Report.\nmetrics = {\n    "n": len(data),\n}'
    for step in split.steps:
        compile(step.code, "cell", "exec")  # every cell is valid Python on its own


def test_a_run_py_without_run_is_refused(tmp_path):
    path = tmp_path / "run.py"
    path.write_text("x = 1\n")
    with pytest.raises(LabError, match="no `def run"):
        split_run(path)


def test_port_in_use_is_named_with_its_setting():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(
            LabError,
            match=f"port {port} on 127.0.0.1 is in use \\(NOTEBOOK_PORT={port}\\): pick a free one, e.g. "
            f"`make notebook-moe NOTEBOOK_PORT={port + 1}`",
        ):
            jupyter.port_setting(port, "moe")
    with pytest.raises(LabError, match="NOTEBOOK_PORT=http: give a port number"):
        jupyter.port_setting("http")


def _pairs(args: list[str]) -> list[tuple[str, str]]:
    """``docker run`` arguments as ``(flag, value)`` pairs (``run``, ``--rm``: value ``""``)."""
    out, i = [], 0
    while i < len(args):
        flag = args[i]
        takes = flag.startswith("-") and "=" not in flag and i + 1 < len(args) and not args[i + 1].startswith("-")
        out.append((flag, args[i + 1] if takes else ""))
        i += 2 if takes else 1
    return out


@pytest.mark.parametrize(
    ("lab_name", "host", "variant", "profile", "image", "expect"),
    [
        ("bert-yelp", "t4-535", "", "full", "llm-labs/bert-yelp-notebook:dev", ["LABS_CUDA_COMPAT=1", "all"]),
        ("bert-yelp", "rtx4090-550", "", "full", "llm-labs/bert-yelp-cuda12-notebook:dev", ["LABS_CUDA_IMAGE=cuda12"]),
        (
            "llama2-sft",
            "ascend",
            "npu",
            "full",
            "llm-labs/llama2-sft-npu-notebook:dev",
            ["/dev/davinci0", "linux/arm64"],
        ),
        ("whisper-lora", "none", "", "smoke", "llm-labs/whisper-lora-notebook:dev", ["data.path=/data/common_voice"]),
    ],
)
def test_the_notebook_container_gets_what_make_lab_gives_the_same_plan(
    tmp_path, monkeypatch, lab_name, host, variant, profile, image, expect
):
    """`make notebook-<lab>` in a container: the image of the plan's variant and CUDA flavor (+ the
    notebook layer), and exactly the `docker run` arguments `make lab` gives the same plan (accelerator,
    cards, CUDA path, platform, own-data mounts, CV_DIR; one function assembles both,
    labkit.host.runs.container_args) plus only the notebook's own: its file, name, port, token,
    OUTPUT_ROOT, PROFILE and SET; not HF_HUB_OFFLINE (the kernel may start another profile)."""
    from types import SimpleNamespace

    import test_ascend
    import test_host

    from labkit.host import runs
    from labkit.host.plan import resolve

    if host == "ascend":
        fake = test_ascend.fake_host(tmp_path)
        real = test_ascend.ascend.docker_args
        monkeypatch.setattr(
            test_ascend.ascend, "docker_args", lambda visible=None, count=None: real(visible, root=fake, count=count)
        )
        monkeypatch.setenv("ASCEND_PLATFORM", "linux/arm64")
        accelerators = test_ascend.NPU_HOST
    else:
        accelerators = test_host.host_of(host) if host != "none" else test_host.NO_ACCELERATOR
    (tmp_path / "zh-CN").mkdir()
    monkeypatch.setenv("CV_DIR", str(tmp_path / "zh-CN"))  # applies to whisper-lora only
    own = tmp_path / "my rows.jsonl"
    own.write_text("{}\n")
    monkeypatch.setenv("OUTPUT_ROOT", str(tmp_path / "out"))
    monkeypatch.setattr(docker, "image_id", lambda tag: "sha256:test")
    monkeypatch.setattr(docker, "build_lab_image", lambda lab, variant=None, flavor=None: "llm-labs/base:dev")
    built, started, seen = {}, {}, {}
    monkeypatch.setattr(docker, "build_image", lambda dockerfile, tag, base, platform, args=None: built.update(tag=tag))
    popen = lambda cmd, **kw: started.setdefault("cmd", cmd) and SimpleNamespace()  # noqa: E731
    monkeypatch.setattr(jupyter, "subprocess", SimpleNamespace(Popen=popen))
    monkeypatch.setattr(docker, "docker_error", lambda: None)
    monkeypatch.setattr(runs, "stream", lambda cmd, env=None: seen.setdefault("cmd", cmd) and (0, ""))
    settings = [f"data.files.train={own}"] if lab_name != "whisper-lora" else []
    plan = resolve(lab_name, profile, "docker", settings, variant=variant, host=accelerators)
    jupyter.serve_docker(plan, 8890, token="t")
    assert runs.run(plan, tmp_path / "out") == (0, "")
    assert built["tag"] == image
    script = _pairs(seen["cmd"][: seen["cmd"].index(docker.image_tag(plan.image_name))])
    notebook = _pairs(started["cmd"][: started["cmd"].index(image)])
    own_only = [
        p
        for p in notebook
        if p[0] in ("--name", "-p")
        or (p[0] == "--mount" and "notebook.ipynb" in p[1])
        or (p[0] == "-e" and p[1].split("=")[0] in ("PROFILE", "SET", "JUPYTER_TOKEN", "OUTPUT_ROOT"))
    ]
    assert ("-p", "127.0.0.1:8890:8888") in own_only and len(own_only) == 7, own_only
    assert [p for p in notebook if p not in own_only] == [p for p in script if p != ("-e", "HF_HUB_OFFLINE=1")]
    words = " ".join(started["cmd"])
    for value in expect:
        assert value in words, value
    if settings:
        assert ("--mount", f"type=bind,source={own},target={own},readonly") in notebook


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, ConnectionError):  # not listening (yet)
        return 0, b""


def serve_and_check(lab, runtime: str, browser_profile: Path) -> None:
    """`make notebook-<lab> RUNTIME=<runtime> NOTEBOOK_PORT=<free port>` as the README gives it: the URL
    with its token printed once; JupyterLab answers on 127.0.0.1 with the token only and lists the
    lab's notebook and kernel (its API, and the page headless Chromium renders from the printed URL);
    Ctrl-C stops it; the token in no file written meanwhile."""
    import os
    import re
    import signal
    import subprocess
    import threading

    port = free_port()
    started = time.time()
    cmd = ["make", f"notebook-{lab.name}", f"RUNTIME={runtime}", "PROFILE=smoke", f"NOTEBOOK_PORT={port}"]
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    console: list[str] = []
    reader = threading.Thread(target=lambda: console.extend(proc.stdout), daemon=True)
    reader.start()
    token = None
    try:
        for _ in range(1200):
            found = re.search(rf"http://127\.0\.0\.1:{port}/lab/tree/notebook\.ipynb\?token=(\S+)", "".join(console))
            if found or proc.poll() is not None:
                break
            time.sleep(0.5)
        assert found, "".join(console)[-3000:]
        token = found.group(1)
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            if get(f"{base}/api/status?token={token}")[0] == 200 or proc.poll() is not None:
                break
            time.sleep(0.5)
        assert get(f"{base}/api/status?token={token}")[0] == 200
        assert get(f"{base}/api/status")[0] == 403 and get(f"{base}/api/status?token=wrong")[0] == 403
        code, body = get(f"{base}/api/contents?token={token}")
        assert code == 200 and "notebook.ipynb" in [item["name"] for item in json.loads(body)["content"]]
        code, body = get(f"{base}/api/kernelspecs?token={token}")
        assert code == 200 and f"llm-labs-{lab.name}" in json.loads(body)["kernelspecs"]
        if CHROMIUM:  # CI installs it: the page a learner opens from the printed URL
            # The page embeds the token (JupyterLab's page config): only values taken from it are asserted,
            # so a failure prints no token; the browser profiles (their history holds the URL) are removed.
            try:
                page = chromium(browser_profile / "learner", "--dump-dom", found.group(0), budget_ms=30_000).stdout
                listed = re.findall(r'class="jp-DirListing-itemText"[^>]*><span>([^<]+)</span>', page)
                cells = page.count('class="lm-Widget jp-Cell jp-CodeCell')
                kernel = re.findall(r"jp-Toolbar-kernelName[^>]*><span[^>]*>([^<]+)</span>", page)
                del page
                anonymous = chromium(browser_profile / "stranger", "--dump-dom", f"{base}/lab", budget_ms=10_000).stdout
                login = ('class="jp-DirListing-itemText"' not in anonymous, 'name="password"' in anonymous)
                del anonymous
            finally:
                shutil.rmtree(browser_profile, ignore_errors=True)
            assert "notebook.ipynb" in listed and "lab.yaml" in listed, listed  # the file browser: the lab's folder
            assert cells >= 3, f"the notebook opened, its cells rendered: {cells} code cells"
            assert kernel == [f"{lab.name} (llm-labs)"], kernel  # the lab's kernel is the notebook's kernel
            assert login == (True, True), "a browser without the token (no login cookie) gets the login page"
        host_ip = socket.gethostbyname(socket.gethostname())
        if not host_ip.startswith("127."):  # loopback only: not on the machine's other addresses
            with socket.socket() as other:
                other.settimeout(2)
                assert other.connect_ex((host_ip, port)) != 0
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        reader.join(timeout=10)
    assert "".join(console).count(token) == 1, "the token is printed once"
    time.sleep(1)
    assert get(f"http://127.0.0.1:{port}/api/status?token={token}")[0] == 0, "Ctrl-C stops the server"
    assert not list(Path(tempfile.gettempdir()).glob("llm-labs-jupyter-*")), "its private folder is removed"
    for folder in (REPO_ROOT / "outputs", lab.dir, jupyter.SERVER_ENV, REPO_ROOT / ".venvs" / lab.name):
        for path in folder.rglob("*") if folder.is_dir() else []:
            if path.is_file() and path.stat().st_mtime >= started - 1 and path.stat().st_size < 50_000_000:
                assert token.encode() not in path.read_bytes(), f"the token leaked into {path}"


def test_jupyterlab_answers_on_loopback_with_its_token_only_and_writes_it_nowhere(tmp_path):
    """`make notebook-<lab>` natively: the server in .venvs/jupyterlab, the kernel in .venvs/<lab>."""
    serve_and_check(get_lab("bert-yelp"), "native", tmp_path)


@pytest.mark.skipif(bool(docker.docker_error()), reason="no usable Docker engine")
def test_jupyterlab_in_the_labs_container_answers_on_loopback_with_its_token_only(tmp_path):
    """`make notebook-<lab>` with Docker: llm-labs/<lab>-notebook:dev (the lab's image + kernel + JupyterLab)."""
    serve_and_check(get_lab("bert-yelp"), "docker", tmp_path)


def test_a_step_run_before_the_one_it_needs_is_refused_in_one_line_and_recorded(tmp_path):
    """Run the first cells, then step 2 before step 1: one line naming step 1; then a failing cell:
    its error in the run's manifest (status failed, the step it was in)."""
    import nbformat
    from nbclient.exceptions import CellExecutionError

    from helpers import run_notebook

    lab = get_lab("bert-yelp")
    nb = nbformat.read(notebook_path(lab), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    step2 = next(c for c in code if c.source.startswith("# 2."))
    nb.cells = [code[0], code[1], step2]
    with pytest.raises(CellExecutionError, match=r"step 2 needs step 1 \(Data: .*\) first"):
        run_notebook(lab, tmp_path, notebook=nb)
    step1 = next(c for c in code if c.source.startswith("# 1."))
    broken = nbformat.v4.new_code_cell("# 2. broken\nraise ValueError('a bad cell')")
    nb.cells = [code[0], code[1], step1, broken]
    with pytest.raises(CellExecutionError, match="a bad cell"):
        run_notebook(lab, tmp_path / "second", notebook=nb)
    (run_dir,) = [d for d in (tmp_path / "second" / lab.name / "smoke").iterdir() if not d.is_symlink()]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] == "ValueError: a bad cell"
    assert manifest["notebook"]["step"].startswith("2. ")


def test_a_kernel_that_dies_mid_run_leaves_the_step_it_was_in(tmp_path):
    """The kernel process exits in step 2 (as an out-of-memory kill would): nbclient reports the dead
    kernel; the run's manifest says the step it was in and not completed, and ``latest`` is not it."""
    import nbformat
    from nbclient.exceptions import DeadKernelError

    from helpers import run_notebook

    lab = get_lab("bert-yelp")
    nb = nbformat.read(notebook_path(lab), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    step1 = next(c for c in code if c.source.startswith("# 1."))
    dies = nbformat.v4.new_code_cell("# 2. the kernel dies\nimport os\nos._exit(137)")
    nb.cells = [code[0], code[1], step1, dies]
    with pytest.raises(DeadKernelError):
        run_notebook(lab, tmp_path, notebook=nb)
    runs = tmp_path / lab.name / "smoke"
    (run_dir,) = [d for d in runs.iterdir() if not d.is_symlink()]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["notebook"]["step"].startswith("2. Model: ")
    assert not (runs / "latest").exists(), "latest is the newest completed run"


def test_a_broken_notebook_run_fails_verification(tmp_path):
    """The lab's broken override given to the notebook (SET, as `make notebook-<lab> SET=...` does):
    the run completes, its last cell prints FAIL, and verification fails the checks lab.yaml names."""
    import shlex

    import nbformat

    from labkit.verify import verify_run

    from helpers import latest_run, run_notebook

    lab = get_lab("bert-yelp")
    executed = run_notebook(lab, tmp_path, overrides=shlex.split(lab.broken_override))
    last = nbformat.read(executed, as_version=4).cells[-1]
    assert "=> FAIL" in "".join(o.get("text", "") for o in last.outputs)
    run_dir = latest_run(tmp_path, lab.name, "smoke")
    failed = {c.name for c in verify_run(run_dir, lab.expected_path("smoke")) if not c.passed}
    assert "manifest status" not in failed and set(lab.broken_fails) <= failed, failed
    assert json.loads((run_dir / "manifest.json").read_text())["overrides"] == {"training.learning_rate": 0.0}
