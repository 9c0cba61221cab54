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
    assert split_overrides("only=[lora, ia3] r=8 lora={r: 8, lora_alpha: 16}") == [
        "only=[lora, ia3]",
        "r=8",
        "lora={r: 8, lora_alpha: 16}",
    ]
    with pytest.raises(LabError, match="No closing quotation"):
        split_overrides("data.path='/data/my reviews")


def test_docker_runtime_without_an_engine_says_how_to_get_one(monkeypatch):
    monkeypatch.setenv("DOCKER", "/nonexistent/docker")
    with pytest.raises(LabError, match="RUNTIME=docker: no docker CLI .*install Docker Engine.*RUNTIME=native"):
        choose_runtime("docker", docker.docker_error)
    assert choose_runtime("auto", docker.docker_error) == "native"


def test_a_full_profile_without_an_accelerator_is_refused_before_any_image_build(monkeypatch):
    monkeypatch.setattr(docker, "docker_error", lambda: None)
    monkeypatch.setattr(docker, "build_lab_image", lambda *a: pytest.fail("built an image for a run that cannot start"))
    plan = resolve("bert-yelp", "full", "docker", host=NO_ACCELERATOR)
    with pytest.raises(LabError, match="PROFILE=full needs a CUDA GPU or an Ascend NPU"):
        runs.build(plan)


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
    llama = get_lab("llama2-sft")  # the npu variants: the shared labs/Dockerfile.npu, the variant's lock
    assert llama.dockerfile("npu") == REPO_ROOT / "labs" / "Dockerfile.npu"
    assert docker.lab_build_args(llama, "npu") == {"LAB": "llama2-sft", "LOCK": "requirements-npu.txt"}


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


def test_doctor_names_the_cuda_path_an_old_driver_and_a_lost_nvml(tmp_path, monkeypatch, capsys):
    """An A10 on 535 is served (forward compatibility in containers, the CUDA 12 image natively: Docker is
    not usable here); an RTX 3090 on 470 is not, in one line naming the minimum driver."""
    monkeypatch.setenv("DOCKER", "/nonexistent/docker")
    fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA A10, 23028, 535.104.05, 8.6")
    tasks.doctor(Context())
    out = capsys.readouterr().out
    assert "NVIDIA A10, 22.5 GiB, driver 535.104.05, compute capability 8.6 (data-center)" in out
    assert "cuda path       : images/cuda12 (CUDA 12.8) natively (Docker not usable): driver 535.104.05" in out
    assert "a native run cannot use the image's forward compatibility libraries" in out
    fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA GeForce RTX 3090, 24576, 470.223.02, 8.6")
    with pytest.raises(Exit):
        tasks.doctor(Context())
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("cuda path"))
    assert "NONE" in line and "not a data-center GPU" in line and line.endswith("update the NVIDIA driver to >= 525")
    fake_nvidia_smi(tmp_path, monkeypatch, "Failed to initialize NVML: Unknown Error", code=255)
    with pytest.raises(Exit):
        tasks.doctor(Context())
    out = capsys.readouterr().out
    assert "lost its GPU" in out and "systemctl daemon-reload" in out and "create-dev-char-symlinks" in out


@pytest.mark.parametrize(("gpu", "says"), [(False, "not needed: no NVIDIA GPU here"), (True, "containers get no GPU")])
def test_doctor_asks_for_the_nvidia_toolkit_only_where_there_is_a_gpu(tmp_path, monkeypatch, capsys, gpu, says):
    monkeypatch.setattr(docker, "engine_error", lambda: None)
    monkeypatch.setattr(docker, "buildkit_error", lambda: None)
    monkeypatch.setattr(docker, "registered_runtimes", lambda: '{"runc": {}}')
    if gpu:
        fake_nvidia_smi(tmp_path, monkeypatch, "Tesla T4, 15360, 580.95.05, 7.5")
    else:
        monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi
    try:
        tasks.doctor(Context())
    except Exit:
        pass  # a GPU that containers cannot reach is a problem: exit status 1
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("nvidia runtime"))
    assert says in line


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
    cache = tmp_path / "out" / "rlhf" / "cache"
    cache.mkdir(parents=True)  # an earlier native run as root made the reply cache
    (cache / "ab12.json").write_text("{}")
    docker.container_writable(folder, top=tmp_path / "out")
    owners = [p.stat().st_uid for p in (tmp_path / "out", folder.parent, folder, cache, cache / "ab12.json")]
    assert owners == [0, docker.LAB_UID, docker.LAB_UID, docker.LAB_UID, docker.LAB_UID]


def test_a_local_chat_endpoint_is_reached_through_the_hosts_network(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:8000/v1")
    assert docker.run_args([], {}, None)[-2:] == ["--network", "host"]
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.deepseek.com/v1")
    assert "--network" not in docker.run_args([], {}, None)


# --- The CUDA path of a GPU host (issue 28): recorded nvidia-smi outputs, the decision, the plan, the run ---
#: ``nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap`` lines of real GPU/driver pairs.
RECORDED = {
    "t4-535": "Tesla T4, 15360, 535.104.05, 7.5",
    "rtx4090-550": "NVIDIA GeForce RTX 4090, 24564, 550.54.14, 8.9",
    "h100-580": "NVIDIA H100 80GB HBM3, 81559, 580.95.05, 9.0",
    "h200-590": "NVIDIA H200, 143771, 590.44.01, 9.0",
    "l4-570": "NVIDIA L4, 23034, 570.133.20, 8.9",
    "a10-545": "NVIDIA A10, 23028, 545.23.08, 8.6",
    "a6000-535": "NVIDIA RTX A6000, 49140, 535.183.01, 8.6",
    "v100-535": "Tesla V100-SXM2-16GB, 16384, 535.104.05, 7.0",
    "rtx3090-470": "NVIDIA GeForce RTX 3090, 24576, 470.223.02, 8.6",
    "t4-470": "Tesla T4, 15360, 470.256.02, 7.5",
    "t4+rtx4090-550": "Tesla T4, 15360, 550.54.14, 7.5\nNVIDIA GeForce RTX 4090, 24564, 550.54.14, 8.9",
}


@pytest.mark.parametrize(
    ("host", "docker_run", "flavor", "compat", "says"),
    [
        ("t4-535", True, "cuda", True, "branch 535 on data-center GPUs: CUDA forward compatibility"),
        ("t4-535", False, "cuda12", False, "a native run cannot use the image's forward compatibility"),
        ("rtx4090-550", True, "cuda12", False, "not a data-center GPU, which CUDA forward compatibility needs"),
        ("h100-580", True, "cuda", False, "new enough for CUDA 13.0 (>= 580)"),
        ("h200-590", True, "cuda", False, "new enough for CUDA 13.0 (>= 580)"),
        ("l4-570", True, "cuda", True, "branch 570 on data-center GPUs"),
        ("a10-545", True, "cuda12", False, "branch 545 is not one CUDA forward compatibility supports"),
        ("a6000-535", True, "cuda12", False, "NVIDIA RTX A6000 (other)"),
        ("v100-535", True, None, False, "compute capability 7.0 is older than the labs' torch builds support"),
        ("rtx3090-470", True, None, False, "update the NVIDIA driver to >= 525"),
        ("t4-470", True, None, False, "branch 470 is not one CUDA forward compatibility supports"),
        ("t4+rtx4090-550", True, "cuda12", False, "NVIDIA GeForce RTX 4090, Tesla T4 (other)"),
    ],
)
def test_the_cuda_path_of_recorded_hosts(tmp_path, monkeypatch, host, docker_run, flavor, compat, says):
    """The decision table through the real parser: forward compatibility only on an older driver, with
    data-center GPUs only, on a supported branch, in a container; never on a driver new enough."""
    from labkit.host.nvidia import cuda_path, flavor_cuda, nvidia_smi

    fake_nvidia_smi(tmp_path, monkeypatch, RECORDED[host])
    gpus, problem = nvidia_smi()
    assert problem is None and len(gpus) == RECORDED[host].count("\n") + 1
    path = cuda_path(gpus, flavor_cuda(), docker=docker_run)
    assert (path.flavor, path.compat) == (flavor, compat) and says in path.why
    assert gpus[0].driver in path.why and "\n" not in path.why


def test_a_driver_whose_nvidia_smi_lacks_compute_cap_is_asked_again_without_it(tmp_path, monkeypatch):
    """nvidia-smi before R510 refuses the compute_cap field: the GPUs are still listed, capability unknown."""
    from labkit.host.nvidia import nvidia_smi

    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text(
        '#!/bin/sh\ncase "$1" in *compute_cap*) echo \'Field "compute_cap" is not a valid field to query.\'; '
        "exit 2;; esac\necho 'Tesla T4, 15360, 470.256.02'\n"
    )
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:{os.environ['PATH']}")
    assert nvidia_smi() == ([Gpu("Tesla T4", 15.0, "470.256.02", None)], None)


def host_of(name: str) -> Accelerators:
    gpus = []
    for line in RECORDED[name].splitlines():
        gpu_name, mib, driver, cap = (x.strip() for x in line.split(","))
        gpus.append(Gpu(gpu_name, round(int(mib) / 1024, 1), driver, cap))
    return Accelerators(gpus=tuple(gpus))


def test_the_plan_takes_the_cuda_path_and_says_it(monkeypatch, capsys):
    monkeypatch.setattr(docker, "docker_error", lambda: None)
    t4 = resolve("bert-yelp", "auto", "docker", host=host_of("t4-535"))
    assert (t4.kind, t4.flavor, t4.cuda_compat, t4.image_name) == ("full", "cuda", True, "bert-yelp")
    assert t4.cuda_env["LABS_CUDA_COMPAT"] == "1" and t4.cuda_env["LABS_CUDA_IMAGE"] == "cuda"
    assert "CUDA: driver 535.104.05, Tesla T4 (data-center)" in capsys.readouterr().out
    rtx = resolve("bert-yelp", "full", "docker", host=host_of("rtx4090-550"))
    assert (rtx.flavor, rtx.cuda_compat, rtx.image_name, rtx.lock.name) == (
        "cuda12",
        False,
        "bert-yelp-cuda12",
        "requirements-cuda12.txt",
    )
    assert docker.lab_build_args(rtx.lab, None, "cuda12") == {"LAB": "bert-yelp", "LOCK": "requirements-cuda12.txt"}
    assert "the CUDA 12.8 image (IMAGE=cuda12)" in capsys.readouterr().out
    new = resolve("bert-yelp", "full", "docker", host=host_of("h100-580"))
    assert (new.flavor, new.cuda_compat, new.cuda_env["LABS_CUDA_COMPAT"]) == ("cuda", False, "0")
    assert capsys.readouterr().out == ""  # nothing to say on a driver new enough
    smoke = resolve("bert-yelp", "smoke", "docker", host=host_of("rtx4090-550"))  # CPU: the default image
    assert (smoke.flavor, smoke.cuda_compat) == ("cuda", False)
    course = resolve("quantization", "full", "docker", variant="course", host=host_of("rtx4090-550"))
    assert (course.flavor, course.cuda_compat) == ("cuda", False)  # its own torch 2.2 on CUDA 12.1
    npu = resolve("llama2-sft", "smoke", "docker", variant="npu", host=NO_ACCELERATOR)
    assert (npu.flavor, npu.cuda_env) == (None, {})


def test_a_host_no_image_serves_is_refused_in_one_line_naming_the_minimum_driver(monkeypatch):
    monkeypatch.setattr(docker, "docker_error", lambda: None)
    with pytest.raises(
        LabError, match=r"^no image serves this GPU host: quantization runs on the CUDA 13.0 image only"
    ):
        resolve("quantization", "full", "docker", host=host_of("rtx4090-550"))
    with pytest.raises(LabError, match=r"update the NVIDIA driver to >= 580$"):
        resolve("quantization", "full", "docker", host=host_of("rtx4090-550"))
    with pytest.raises(LabError, match=r"update the NVIDIA driver to >= 525$"):
        resolve("bert-yelp", "auto", "docker", host=host_of("rtx3090-470"))
    assert resolve("quantization", "full", "docker", host=host_of("t4-535")).cuda_compat  # data-center: compat
    with pytest.raises(LabError, match=r"RUNTIME=docker can\): update the NVIDIA driver to >= 580$"):
        resolve("quantization", "full", "native", host=host_of("t4-535"))  # compat needs the image


def test_image_picks_a_flavor_explicitly_and_bad_choices_are_named(monkeypatch):
    monkeypatch.setattr(docker, "docker_error", lambda: None)
    plan = resolve("bert-yelp", "smoke", "native", host=NO_ACCELERATOR, image="cuda12")
    assert (plan.flavor, plan.image_name, plan.cuda_env["LABS_CUDA_IMAGE"]) == ("cuda12", "bert-yelp-cuda12", "cuda12")
    forced = resolve("bert-yelp", "full", "docker", host=host_of("t4-535"), image="cuda12")
    assert (forced.flavor, forced.cuda_compat) == ("cuda12", False) and "IMAGE=cuda12 asked for" in forced.cuda_why
    with pytest.raises(LabError, match="IMAGE='cuda11': use auto, cuda or cuda12"):
        resolve("bert-yelp", "smoke", "native", host=NO_ACCELERATOR, image="cuda11")
    with pytest.raises(LabError, match="IMAGE=cuda12: quantization has no lock for it"):
        resolve("quantization", "smoke", "native", host=NO_ACCELERATOR, image="cuda12")
    with pytest.raises(LabError, match="IMAGE=cuda12: VARIANT=course pins its own torch"):
        resolve("quantization", "smoke", "native", variant="course", host=NO_ACCELERATOR, image="cuda12")
    with pytest.raises(LabError, match="IMAGE=cuda12: llama2-sft's npu image builds on images/ascend"):
        resolve("llama2-sft", "smoke", "native", variant="npu", host=NO_ACCELERATOR, image="cuda12")


@pytest.mark.parametrize(
    ("host", "tag", "compat"), [("t4-535", "bert-yelp", "1"), ("rtx4090-550", "bert-yelp-cuda12", "0")]
)
def test_the_container_gets_its_flavors_image_and_the_compat_switch(tmp_path, monkeypatch, host, tag, compat):
    seen = {}
    monkeypatch.setattr(docker, "image_id", lambda t: seen.setdefault("tag", t) and "sha256:test")
    monkeypatch.setattr(runs, "stream", lambda cmd, env=None: seen.setdefault("cmd", cmd) and (0, ""))
    monkeypatch.setattr(docker, "docker_error", lambda: None)
    plan = resolve("bert-yelp", "full", "docker", host=host_of(host))
    assert runs.run(plan, tmp_path / "out") == (0, "")
    cmd = " ".join(seen["cmd"])
    assert seen["tag"] == f"llm-labs/{tag}:dev" and f" llm-labs/{tag}:dev --profile full" in cmd
    assert f"-e LABS_CUDA_COMPAT={compat} " in cmd and "--gpus all" in cmd


def test_cuda_env_puts_the_compat_libraries_first_only_when_asked(tmp_path):
    """images/common/cuda-env, the lab images' entrypoint: LABS_CUDA_COMPAT=1 puts the compat folder first;
    otherwise it is taken off LD_LIBRARY_PATH; asked for in an image without it: one line, exit 2."""
    compat = tmp_path / "compat"
    compat.mkdir()
    (compat / "libcuda.so.580.95.05").write_bytes(b"")
    (compat / "libcuda.so.1").symlink_to("libcuda.so.580.95.05")
    script = str(REPO_ROOT / "images" / "common" / "cuda-env")

    def env_of(**env):
        base = {"PATH": os.environ["PATH"], "LABS_CUDA_COMPAT_DIR": str(compat), **env}
        return subprocess.run(
            ["sh", script, "sh", "-c", "echo $LD_LIBRARY_PATH"], env=base, capture_output=True, text=True
        )

    on = env_of(LABS_CUDA_COMPAT="1", LD_LIBRARY_PATH="/usr/local/nvidia/lib64")
    assert on.stdout.strip() == f"{compat}:/usr/local/nvidia/lib64" and "libcuda.so.580.95.05" in on.stderr
    off = env_of(LABS_CUDA_COMPAT="0", LD_LIBRARY_PATH=f"/usr/local/nvidia/lib64:{compat}")
    assert off.stdout.strip() == "/usr/local/nvidia/lib64" and off.stderr == ""
    missing = env_of(LABS_CUDA_COMPAT="1", LABS_CUDA_COMPAT_DIR=str(tmp_path / "none"))
    assert (
        missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1 and "IMAGE=cuda12" in missing.stderr
    )


def test_the_manifest_records_the_cuda_path(monkeypatch):
    from labkit.rundir import cuda_path_record

    monkeypatch.delenv("LABS_CUDA_IMAGE", raising=False)
    assert cuda_path_record() is None
    monkeypatch.setenv("LABS_CUDA_IMAGE", "cuda")
    monkeypatch.setenv("LABS_CUDA_COMPAT", "1")
    monkeypatch.setenv("LABS_CUDA_WHY", "driver 535.104.05, Tesla T4 (data-center): ...")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/local/cuda/compat:/usr/local/nvidia/lib64")
    assert cuda_path_record() == {
        "image": "cuda",
        "forward_compat": True,
        "compat_libraries_first": True,
        "why": "driver 535.104.05, Tesla T4 (data-center): ...",
    }


@pytest.mark.skipif(
    os.environ.get("LABS_TEST_CUDA12") != "1" or bool(docker.docker_error()),
    reason="the CUDA 12 image's container smoke costs ~6 min cold (3 GB of CUDA 12 wheels): LABS_TEST_CUDA12=1 "
    "runs it (CUDA12_BASE_IMAGE=labs-standin-base:bookworm without a registry)",
)
def test_the_cuda12_flavor_smoke_runs_in_its_container(tmp_path):
    """IMAGE=cuda12: the shared image's CUDA 12 flavor and a lab image on it with its requirements-cuda12.txt;
    its smoke profile verifies and the manifest says which torch and which CUDA path it ran."""
    import json

    from labkit.verify import verify_run

    plan = resolve("transformers-quickstart", "smoke", "docker", host=NO_ACCELERATOR, image="cuda12")
    runs.build(plan)
    root = tmp_path / "out"  # mounted into the container: pytest's own folder is root's only (0700)
    root.mkdir(mode=0o755)
    code, _ = runs.run(plan, root)
    assert code == 0
    run_dir = (root / "transformers-quickstart" / "smoke" / "latest").resolve()
    assert all(c.passed for c in verify_run(run_dir, plan.lab.expected_path("smoke")))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["packages"]["torch"].startswith("2.10.0") and manifest["runtime"] == "docker"
    assert manifest["cuda_path"] == {
        "image": "cuda12",
        "forward_compat": False,
        "compat_libraries_first": False,
        "why": None,
    }


def test_doctor_with_docker_says_forward_compatibility_and_a_lab_without_a_cuda12_lock(tmp_path, monkeypatch, capsys):
    from labkit.host import doctor

    monkeypatch.setattr(docker, "engine_error", lambda: None)
    monkeypatch.setattr(docker, "buildkit_error", lambda: None)
    monkeypatch.setattr(docker, "registered_runtimes", lambda: '{"nvidia":{}}')
    assert doctor.check(None, host_of("t4-535")) == []
    out = capsys.readouterr().out
    assert "cuda path       : images/cuda (CUDA 13.0), CUDA forward compatibility ON in containers: " in out
    assert "cuda native     : images/cuda12 (CUDA 12.8) with RUNTIME=native: " in out
    assert doctor.check(get_lab("quantization"), host_of("rtx4090-550")) == ["driver"]
    out = capsys.readouterr().out
    assert "cuda path       : images/cuda12 (CUDA 12.8) in containers: driver 550.54.14" in out
    assert (
        "quantization    : has no CUDA 12 lock (its pins need images/cuda's torch): on this host it needs driver >= 580"
        in out
    )


def test_a_run_where_forward_compatibility_found_no_gpu_says_so(tmp_path, monkeypatch):
    from labkit.host.nvidia import gpu_problem

    fake_nvidia_smi(tmp_path, monkeypatch, RECORDED["a6000-535"])
    monkeypatch.setenv("LABS_CUDA_COMPAT", "1")
    assert "forward compatibility works on data-center GPUs only; run with IMAGE=cuda12" in gpu_problem("13.0")
    monkeypatch.setenv("LABS_CUDA_COMPAT", "0")
    assert gpu_problem("13.0").startswith("NVIDIA driver 535.183.01 is older than CUDA 13.0 needs (>= 580)")
    assert gpu_problem("12.8") is None  # the CUDA 12 image's torch on the same host: nothing wrong


def test_the_test_task_takes_one_lab_or_several(monkeypatch):
    """`make test LAB=bert-yelp,moe` (`invoke test --lab`): those labs' tests and the shared ones; an
    unknown name is one line naming it, before anything runs."""
    from invoke import Context, Exit

    import tasks

    ran = []
    monkeypatch.setattr(Context, "run", lambda self, cmd, **kw: ran.append(cmd))
    monkeypatch.setattr(docker, "docker_error", lambda: "no engine here")
    tasks.test(Context(), lab="bert-yelp, moe")
    assert ran[-1].split()[-2:] == ["--lab", "bert-yelp,moe"] and "pytest tests" in ran[-1]
    ran.clear()
    with pytest.raises(Exit, match="nope"):
        tasks.test(Context(), lab="bert-yelp,nope")
    assert not [cmd for cmd in ran if "pytest" in cmd]
