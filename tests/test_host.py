"""labkit.host: the run plan's choices, Docker, doctor, and the errors given before anything runs;
`tasks.py` as the thin command line over them; importing the host side leaves torch unimported."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
from invoke import Context, Exit

import tasks
from labkit.config import REPO_ROOT, get_lab
from labkit.errors import LabError
from labkit.host import docker, runs
from labkit.host.nvidia import Gpu
from labkit.host.plan import choose_kind, choose_runtime, resolve, split_overrides
from labkit.host.probe import Accelerators

NO_ACCELERATOR = Accelerators()
ONE_GPU = Accelerators(gpus=(Gpu("NVIDIA L4", 22.5, "580.95.05"),))


def test_the_host_side_imports_without_torch():
    """Every module of labkit.host (and the shared torch-free modules) imported in a fresh process: no torch."""
    modules = [f"labkit.host.{p.stem}" for p in sorted((REPO_ROOT / "labkit" / "host").glob("*.py"))]
    modules += ["labkit.config", "labkit.rundir", "labkit.verify", "labkit.report", "tasks"]
    code = f"import sys, {', '.join(modules)}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]" and len(modules) >= 12


def test_tasks_py_is_a_thin_command_line():
    source = (REPO_ROOT / "tasks.py").read_text(encoding="utf-8")
    assert len(source.splitlines()) <= 300
    assert "subprocess" not in source and "import torch" not in source


def test_a_plan_is_resolved_once_with_the_variant_as_a_field():
    plan = resolve("quantization", "smoke", "native", "learning_rate=0", variant="course", host=NO_ACCELERATOR)
    assert (plan.kind, plan.variant, plan.profile, plan.runtime) == ("smoke", "course", "course-smoke", "native")
    assert plan.offline and plan.accelerator is None and plan.applied == {"pretrain.learning_rate": 0.0}
    named = resolve("quantization", "course-smoke", "native", host=NO_ACCELERATOR)  # a profile file's name
    assert (named.kind, named.variant) == ("smoke", "course")
    full = resolve("bert-yelp", "auto", "native", host=ONE_GPU)
    assert (full.kind, full.variant, full.accelerator, full.offline) == ("full", None, "cuda", False)
    with pytest.raises(LabError, match="lab bert-yelp has no variant 'course' .variants: none."):
        resolve("bert-yelp", "smoke", "native", variant="course", host=NO_ACCELERATOR)
    with pytest.raises(LabError, match="PROFILE='tiny': use auto, smoke or full"):
        choose_kind("tiny", NO_ACCELERATOR)


def test_nproc_is_the_one_processes_per_node_setting():
    plan = resolve("llama2-sft", "smoke", "native", nproc=2, host=NO_ACCELERATOR)
    assert plan.nproc == 2 and plan.config["nproc_per_node"] == 2 and "nproc_per_node=2" in plan.overrides
    zero = resolve("deepspeed-zero", "smoke", "native", nproc="1", host=NO_ACCELERATOR)
    assert zero.config["nproc_per_node"] == 1 and isinstance(zero.config["also_single_process"], bool)
    with pytest.raises(LabError, match="NPROC=2: bert-yelp runs one process"):
        resolve("bert-yelp", "smoke", "native", nproc=2, host=NO_ACCELERATOR)
    with pytest.raises(LabError, match="NPROC='two'"):
        resolve("llama2-sft", "smoke", "native", nproc="two", host=NO_ACCELERATOR)


def test_set_is_split_like_a_shell_line():
    assert split_overrides("data.files.train='/data/my reviews/train.jsonl' learning_rate=0") == [
        "data.files.train=/data/my reviews/train.jsonl",
        "learning_rate=0",
    ]
    plan = resolve("bert-yelp", "smoke", "native", "data.files.train='/data/my reviews/t.jsonl'", host=NO_ACCELERATOR)
    assert plan.config["data"]["files"]["train"] == "/data/my reviews/t.jsonl"
    with pytest.raises(LabError, match="No closing quotation"):
        split_overrides("data.path='/data/my reviews")


def test_docker_runtime_without_an_engine_says_how_to_get_one(monkeypatch):
    monkeypatch.setenv("DOCKER", "/nonexistent/docker")
    with pytest.raises(LabError, match="RUNTIME=docker: no docker CLI .*install Docker Engine.*RUNTIME=native"):
        choose_runtime("docker", docker.docker_error)
    assert choose_runtime("auto", docker.docker_error) == "native"


def test_an_engine_that_never_answers_counts_as_not_answering(tmp_path, monkeypatch):
    hung = tmp_path / "docker"
    hung.write_text("#!/bin/sh\nexec sleep 30\n")  # a socket that accepts and never answers
    hung.chmod(0o755)
    monkeypatch.setenv("DOCKER", str(hung))
    monkeypatch.setattr(docker, "PROBE_TIMEOUT_S", 1)
    assert "gave no answer in 1 s" in docker.engine_error()
    assert choose_runtime("auto", docker.docker_error) == "native"


def test_unknown_runtime_and_lab_are_named_in_one_line(monkeypatch):
    with pytest.raises(LabError, match="RUNTIME='podman'"):
        choose_runtime("podman", docker.docker_error)
    with pytest.raises(Exit, match="^error: unknown lab .whisper.. Known labs: .*whisper-lora"):
        tasks.run(Context(), lab="whisper")


def test_auto_profile_is_smoke_without_an_accelerator(capsys):
    assert choose_kind("auto", NO_ACCELERATOR) == "smoke" and "running the SMOKE profile" in capsys.readouterr().out
    assert choose_kind("auto", ONE_GPU) == "full"
    assert choose_kind("smoke", ONE_GPU) == "smoke"


def test_missing_extra_ca_bundle_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("EXTRA_CA_CERT", str(tmp_path / "nope.pem"))
    with pytest.raises(LabError, match="EXTRA_CA_CERT=.*nope.pem is not a readable file"):
        docker.build_image(docker.SHARED_IMAGES["cuda"] / "Dockerfile", "x:y", None)


def test_lab_images_come_from_the_shared_dockerfile_unless_a_lab_keeps_its_own():
    bert, zero, quant = get_lab("bert-yelp"), get_lab("deepspeed-zero"), get_lab("quantization")
    assert bert.dockerfile() == REPO_ROOT / "labs" / "Dockerfile" and docker.lab_build_args(bert) == {
        "LAB": "bert-yelp"
    }
    assert docker.lab_build_args(zero) == {"LAB": "deepspeed-zero", "LOCKED_SDISTS": "1"}
    assert quant.dockerfile() == quant.dir / "Dockerfile" and docker.lab_build_args(quant) == {}
    assert quant.dockerfile("course") == quant.dir / "Dockerfile.course"
    other = dataclasses.replace(bert, entrypoint="train.py")  # a lab whose script is not run.py
    assert docker.lab_build_args(other) == {"LAB": "bert-yelp", "ENTRYPOINT": "train.py"}
    assert "ARG ENTRYPOINT=run.py" in (REPO_ROOT / "labs" / "Dockerfile").read_text()


def test_bench_without_a_gpu_says_how_to_run_the_cpu_self_test_and_leaves_nothing(tmp_path):
    with pytest.raises(LabError, match="this host has none.*--arch tiny --device cpu.*ARCH=tiny DEVICE=cpu"):
        runs.bench(get_lab("bert-yelp"), "native", [], "accelerator", None, tmp_path)
    assert not any(tmp_path.iterdir())


def test_verify_without_runs_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv("OUTPUT_ROOT", str(tmp_path))
    with pytest.raises(Exit, match="no runs of whisper-lora .*make lab-whisper-lora"):
        tasks.verify(Context(), lab="whisper-lora")


def fake_nvidia_smi(tmp_path, monkeypatch, output: str, code: int = 0):
    """An ``nvidia-smi`` on PATH that prints ``output`` and exits ``code``."""
    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir(exist_ok=True)
    tool.write_text(f"#!/bin/sh\ncat <<'OUT'\n{output}\nOUT\nexit {code}\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:{os.environ['PATH']}")


@pytest.mark.parametrize(
    ("memory_mib", "fits", "says"),
    [(16384, True, "fits; largest per_device_train_batch_size that fits: 6"), (8192, False, "does NOT fit")],
)
def test_doctor_says_whether_the_full_profile_fits_and_the_largest_batch(
    tmp_path, monkeypatch, capsys, memory_mib, fits, says
):
    fake_nvidia_smi(tmp_path, monkeypatch, f"Tesla T4, {memory_mib}, 580.95.05")
    monkeypatch.setenv("DOCKER", "/nonexistent/docker")
    if fits:
        tasks.doctor(Context(), lab="whisper-lora")
    else:
        with pytest.raises(Exit):
            tasks.doctor(Context(), lab="whisper-lora")
    out = capsys.readouterr().out
    assert "needs 9.49 GiB" in out and "64 -> 125.65 GiB, 16 -> 32.72 GiB" in out and says in out


def test_doctor_names_an_old_driver_and_a_lost_nvml(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER", "/nonexistent/docker")
    fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA A10, 23028, 535.104.05")
    with pytest.raises(Exit):
        tasks.doctor(Context())
    assert "driver 535.104.05 is older than CUDA 13.0 needs (>= 580)" in capsys.readouterr().out
    fake_nvidia_smi(tmp_path, monkeypatch, "Failed to initialize NVML: Unknown Error", code=255)
    with pytest.raises(Exit):
        tasks.doctor(Context())
    out = capsys.readouterr().out
    assert "lost its GPU" in out and "systemctl daemon-reload" in out and "create-dev-char-symlinks" in out


def test_doctor_without_docker_is_fine_when_native_works(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER", "/nonexistent/docker")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.path.dirname(sys.executable)}")  # no nvidia-smi here
    tasks.doctor(Context(), lab="bert-yelp")
    out = capsys.readouterr().out
    assert "native          : Python 3.11 at" in out and "not measured on a GPU yet" in out


def test_your_own_files_are_mounted_read_only_into_the_container(tmp_path):
    own = tmp_path / "my reviews.csv"
    own.write_text("text,label\nfine,5 stars\n")
    overrides = f"data.files.train='{own}' data.files.test=labs/bert-yelp/data/smoke/test.jsonl learning_rate=0"
    plan = resolve("bert-yelp", "smoke", "native", overrides, host=NO_ACCELERATOR)
    assert runs.host_path_mounts(plan) == [(str(own), f"{own}:ro")]  # the lab's own files are in its image
    shared = resolve(
        "bert-yelp", "smoke", "native", "data.files.train=images/cuda/requirements.in", host=NO_ACCELERATOR
    )
    assert runs.host_path_mounts(shared) == [
        (str(REPO_ROOT / "images/cuda/requirements.in"), "/opt/labs/images/cuda/requirements.in:ro")
    ]


def test_cv_dir_reaches_the_container_and_the_lab_reads_it(tmp_path, monkeypatch):
    """CV_DIR with RUNTIME=docker: the folder is mounted and data.path points the run at it (before,
    a smoke run in the container trained on the bundled clips without saying so)."""
    seen = {}
    (tmp_path / "zh-CN").mkdir()
    monkeypatch.setenv("CV_DIR", str(tmp_path / "zh-CN"))
    monkeypatch.setattr(docker, "image_id", lambda tag: "sha256:test")
    monkeypatch.setattr(runs, "stream", lambda cmd, env=None: seen.setdefault("cmd", cmd) and (0, ""))
    monkeypatch.setattr(docker, "docker_error", lambda: None)
    plan = resolve("whisper-lora", "smoke", "docker", host=NO_ACCELERATOR)
    assert runs.run(plan, tmp_path / "out") == (0, "")
    cmd = " ".join(seen["cmd"])
    assert f"--mount type=bind,source={tmp_path / 'zh-CN'},target=/data/common_voice,readonly" in cmd
    assert "--set data.path=/data/common_voice" in cmd


def test_a_cv_dir_that_is_not_there_is_one_line_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CV_DIR", str(tmp_path / "zh-CN"))
    plan = resolve("whisper-lora", "smoke", "native", host=NO_ACCELERATOR)
    with pytest.raises(LabError, match=r"CV_DIR=.*zh-CN: no such folder; point it at a Common Voice locale folder"):
        runs.run(plan, tmp_path / "out")


def test_a_home_path_in_set_is_the_users_home_natively_and_in_the_container(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "my.csv").write_text("text,label\nfine,5 stars\n")
    plan = resolve(
        "bert-yelp", "smoke", "native", "data.files.train=~/my.csv data.files.test=~notme/x.jsonl", host=NO_ACCELERATOR
    )
    assert list(plan.overrides) == [f"data.files.train={tmp_path}/my.csv", "data.files.test=~notme/x.jsonl"]
    assert runs.host_path_mounts(plan) == [(f"{tmp_path}/my.csv", f"{tmp_path}/my.csv:ro")]


def test_paths_with_colons_and_commas_mount_as_they_are(tmp_path):
    """``-v a:b:ro`` splits at every colon; ``--mount`` takes a CSV record."""
    odd = tmp_path / "run 12:30, take 2"
    odd.mkdir()
    (odd / "train.csv").write_text("text,label\n")
    value = docker.bind_mount(str(odd), "/data/in:ro")
    assert value == f'type=bind,"source={odd}",target=/data/in,readonly'
    image = os.environ.get("BASE_IMAGE", "")
    if docker.engine_error() or not image or not docker.image_id(image):
        pytest.skip("no Docker engine or no BASE_IMAGE built here: CI (.ci/run) has both")
    cmd = [*docker.docker_cli(), "run", "--rm", "--mount", value, image, "cat", "/data/in/train.csv"]
    assert subprocess.run(cmd, capture_output=True, text=True, check=True).stdout == "text,label\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="hands folders to uid 1000 only as root")
def test_a_containers_folders_are_handed_to_its_user_up_to_the_output_root(tmp_path):
    """The chat-API labs write beside the run folder (<root>/<lab>/cache): as root, <root>/<lab> must
    belong to the container's user too, the output root itself stays as it was."""
    folder = tmp_path / "out" / "rlhf" / "smoke"
    (tmp_path / "out").mkdir()
    docker.container_writable(folder, top=tmp_path / "out")
    owners = [p.stat().st_uid for p in (tmp_path / "out", folder.parent, folder)]
    assert owners == [0, docker.LAB_UID, docker.LAB_UID]


def test_a_local_chat_endpoint_is_reached_through_the_hosts_network(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:8000/v1")
    assert docker.run_args([], {}, None)[-2:] == ["--network", "host"]
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.deepseek.com/v1")
    assert "--network" not in docker.run_args([], {}, None)
