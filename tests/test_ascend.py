"""Ascend NPUs without the hardware: the device recipe a container gets, npu-smi and driver checks,
the compose service against the documented recipe, the digest pinning, and (with a Docker engine and
QEMU for arm64) the Ascend image itself and the llama2-sft npu variant in it.

The image tests take the ``lab`` parameter (llama2-sft, the lab with an npu variant) so they run on
that lab's test worker, one after another: the Ascend image is built once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from invoke import Context, Exit

import tasks
from labkit.config import REPO_ROOT, get_lab, list_labs
from labkit.errors import LabError
from labkit.host import ascend, plan, runs
from labkit.host import docker as host_docker
from labkit.host.nvidia import Gpu
from labkit.host.probe import Accelerators

from helpers import run_lab

NPU_HOST = Accelerators(npus=(ascend.Npu(0, "910B3", "OK", 0, 65536),))

NPU_SMI = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 26.0.rc1                 Version: 26.0.rc1                                             |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B3               | OK            | 95.1        41                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          3400 / 65536         |
+===========================+===============+====================================================+
| 1     910B3               | Warning       | 93.0        40                0    / 0             |
| 0                         | 0000:C2:00.0  | 0           0    / 0          3391 / 65536         |
+===========================+===============+====================================================+
+---------------------------+---------------+----------------------------------------------------+
| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
+===========================+===============+====================================================+
| No running processes found in NPU 0                                                            |
+===========================+===============+====================================================+
"""


def fake_host(root: Path, cards=(0, 1, 2, 3), missing=()) -> Path:
    """A host tree under ``root`` with the device nodes (plain files) and driver files of an Ascend host."""
    for path in [f"/dev/davinci{c}" for c in cards] + list(ascend.CONTROL_NODES) + ["/usr/local/bin/npu-smi"]:
        if path not in missing:
            (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (root / path.lstrip("/")).write_text("")
    for path in ascend.DRIVER_MOUNTS:
        if path not in missing:
            target = root / path.lstrip("/")
            if path.endswith(("lib64", "dcmi")):
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("Version=26.0.rc1\n")
    return root


def fake_tool(tmp_path, monkeypatch, name: str, output: str, code: int = 0) -> None:
    tool = tmp_path / "bin" / name
    tool.parent.mkdir(exist_ok=True)
    tool.write_text(f"#!/bin/sh\ncat <<'OUT'\n{output}\nOUT\nexit {code}\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:{os.environ['PATH']}")


def test_a_container_gets_the_chosen_cards_renumbered_from_zero_without_privileged(tmp_path):
    host = fake_host(tmp_path)
    if os.geteuid() == 0:
        os.chown(host / "dev" / "davinci2", 0, 1234)  # the host's HwHiAiUser group
    gid = (host / "dev" / "davinci2").stat().st_gid
    args = ascend.docker_args("2,3", root=host)
    devices = [args[i + 1] for i, a in enumerate(args) if a == "--device"]
    assert devices == ["/dev/davinci2", "/dev/davinci3", *ascend.CONTROL_NODES]
    mounts = [args[i + 1] for i, a in enumerate(args) if a == "-v"]
    assert [m for m in mounts if not m.endswith(":/usr/local/bin/npu-smi:ro")] == [
        f"{p}:{p}:ro" for p in ascend.DRIVER_MOUNTS
    ]
    assert "ASCEND_RT_VISIBLE_DEVICES=0,1" in args  # host ids 2,3 inside would fail with 207004
    assert "--privileged" not in args and not any("davinci0" in a for a in args)
    assert (args[args.index("--group-add") + 1] == str(gid)) if gid else "--group-add" not in args
    assert "ASCEND_RT_VISIBLE_DEVICES=0,1,2,3" in ascend.docker_args("0-3", root=host)  # the runtime's range form
    one = ascend.docker_args(None, root=host, count=1)  # by default a run takes as many cards as ranks
    assert [one[i + 1] for i, a in enumerate(one) if a == "--device"][0] == "/dev/davinci0"
    assert "ASCEND_RT_VISIBLE_DEVICES=0" in one and "/dev/davinci1" not in one
    assert "ASCEND_RT_VISIBLE_DEVICES=0,1,2,3" in ascend.docker_args(None, root=host)
    with pytest.raises(LabError, match="8 NPU.s. wanted, this host has 4"):
        ascend.docker_args(None, root=host, count=8)


def test_every_missing_piece_of_the_recipe_is_named(tmp_path):
    host = fake_host(tmp_path, missing=("/dev/devmm_svm", "/usr/local/Ascend/driver/lib64"))
    with pytest.raises(LabError) as info:
        ascend.docker_args(None, root=host)
    text = str(info.value)
    assert "/dev/devmm_svm missing" in text and "/usr/local/Ascend/driver/lib64 missing" in text
    assert "libascend_hal.so" in text and "invoke doctor" in text and len(ascend.missing_pieces(host)) == 2
    with pytest.raises(LabError, match=r"ASCEND_VISIBLE_DEVICES=7: no /dev/davinci7 on this host \(cards here: 0, 1"):
        ascend.docker_args("7", root=fake_host(tmp_path / "b"))
    with pytest.raises(LabError, match="no /dev/davinciN device node"):
        ascend.docker_args(None, root=fake_host(tmp_path / "c", cards=()))


def test_npu_smi_cards_memory_and_driver_are_read(tmp_path, monkeypatch):
    cards = ascend.parse_npu_smi(NPU_SMI)
    assert [(c.npu_id, c.name, c.health, c.hbm_total_mib) for c in cards] == [
        (0, "910B3", "OK", 65536),
        (1, "910B3", "Warning", 65536),
    ]
    assert cards[0].memory_gib == 64.0
    fake_tool(tmp_path, monkeypatch, "npu-smi", NPU_SMI)
    found, driver, problem = ascend.npu_smi()
    assert len(found) == 2 and driver == "26.0.rc1" and problem is None
    fake_tool(tmp_path, monkeypatch, "npu-smi", "dcmi module initialize failed. ret is -8005", code=1)
    assert "another container holds the device" in ascend.npu_smi()[2]


def test_driver_releases_are_ordered_and_an_old_driver_is_named():
    assert ascend.version_key("25.0.RC1") < ascend.version_key("25.0.0") < ascend.version_key("25.5.0")
    assert ascend.version_key("25.5.0") < ascend.version_key("26.0.rc1") < ascend.version_key("26.0.0")
    assert ascend.version_key("26.0.rc1.b030") == ascend.version_key("26.0.RC1")  # build tags ignored
    assert ascend.driver_problem("26.0.rc1", "9.0.0") is None and ascend.driver_problem("26.0.0", "9.0.0") is None
    old = ascend.driver_problem("25.5.0", "9.0.0")
    assert "driver 25.5.0 is older than CANN 9.0.0 is documented with (26.0.RC1)" in old and "561103" in old
    assert ascend.driver_problem("1.0", "no-such-cann") is None


def test_the_ascend_image_names_its_cann_and_the_driver_it_needs(tmp_path):
    cann = ascend.image_cann(REPO_ROOT / "images" / "ascend" / "Dockerfile")
    assert cann == "9.0.0" and ascend.CANN_DRIVER[cann] == "26.0.RC1"
    info = tmp_path / "version.info"
    info.write_text("Version=26.0.rc1\nascendhal_version=7.35.23\n")
    assert ascend.driver_version(info) == "26.0.rc1" and ascend.driver_version(tmp_path / "none") is None
    pins = (REPO_ROOT / "images" / "ascend" / "requirements.in").read_text()
    assert "torch==2.10.0\n" in pins and "torch-npu==2.10.0\n" in pins  # the 9.0.0 row of the matrix


def test_doctor_on_an_ascend_host_names_the_cards_an_old_driver_and_missing_mounts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER", "/nonexistent/docker")
    fake_tool(tmp_path, monkeypatch, "npu-smi", NPU_SMI)
    monkeypatch.setattr(ascend, "driver_version", lambda *a: "25.5.0")
    monkeypatch.setattr(
        ascend, "missing_pieces", lambda *a, **k: ["/dev/hisi_hdc missing: every NPU container needs it"]
    )
    with pytest.raises(Exit):
        tasks.doctor(Context())
    out = capsys.readouterr().out
    assert "npu             : 0: Ascend 910B3, 64.0 GiB HBM" in out
    assert "1: Ascend 910B3, 64.0 GiB HBM: health Warning" in out
    assert (
        "npu driver      : 25.5.0; images/ascend is CANN 9.0.0, documented with driver 26.0.RC1: Ascend driver" in out
    )
    assert "npu mount       : /dev/hisi_hdc missing" in out


def test_doctor_without_npus_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER", "/nonexistent/docker")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.path.dirname(sys.executable)}")
    monkeypatch.setattr(ascend, "card_nodes", lambda *a: [])
    tasks.doctor(Context())
    assert "npu             : none found (npu-smi, /dev/davinci*)" in capsys.readouterr().out


NPU_LABS = [lab.name for lab in list_labs() if "npu" in lab.variants]


def test_the_chapter_9_and_14_labs_have_npu_variants_on_the_ascend_image():
    assert NPU_LABS == ["chatglm-qlora", "llama2-sft"]
    for name in NPU_LABS:
        lab = get_lab(name)
        assert lab.base_image("npu") == "ascend" and {"npu-smoke", "npu-full"} <= set(lab.profiles)


@pytest.mark.parametrize("name", NPU_LABS)
def test_compose_npu_service_is_the_documented_recipe(name):
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    service = compose["services"][f"{name}-npu"]
    assert service["devices"] == ["${ASCEND_DEVICE:-/dev/davinci0}", *ascend.CONTROL_NODES]
    volumes = service["volumes"]
    for path in ascend.DRIVER_MOUNTS:
        assert f"{path}:{path}:ro" in volumes
    assert f"${{NPU_SMI:-/usr/local/bin/npu-smi}}:{ascend.NPU_SMI_IN_CONTAINER}:ro" in volumes
    assert "ASCEND_RT_VISIBLE_DEVICES=0" in service["environment"] and service["group_add"]
    assert not service.get("privileged") and "deploy" not in service  # no NVIDIA reservation
    assert (
        service["build"]["dockerfile"]
        == "labs/Dockerfile.npu"
        == str(get_lab(name).dockerfile("npu").relative_to(REPO_ROOT))
    )
    args = {k: v for k, v in service["build"]["args"].items() if k not in ("BASE_IMAGE", "BUILD_IMAGE")}
    assert args == host_docker.lab_build_args(get_lab(name), "npu") == {"LAB": name, "LOCK": "requirements-npu.txt"}
    assert service["build"]["args"]["BUILD_IMAGE"] == host_docker.image_tag("ascend-build")
    assert service["profiles"] == [f"{name}-npu"]  # not the CUDA service's profile: CUDA hosts never build it
    assert compose["services"]["ascend"]["build"]["dockerfile"] == "images/ascend/Dockerfile"
    build = compose["services"]["ascend-build"]
    assert build["build"]["target"] == "build" and build["image"] == host_docker.image_tag("ascend-build")


def test_an_npu_profile_in_a_container_gets_the_npu_recipe_a_cpu_one_nothing():
    def planned(profile):
        return plan.resolve("llama2-sft", profile, "native", host=NPU_HOST)

    assert planned("npu-full").container_accelerator == "npu"
    assert planned("npu-smoke").container_accelerator is None
    assert plan.resolve("llama2-sft", "full", "native", host=Accelerators()).container_accelerator == "cuda"


def test_docker_run_for_npu_passes_devices_and_no_gpus(tmp_path, monkeypatch, capsys):
    host = fake_host(tmp_path)
    real = ascend.docker_args
    monkeypatch.setattr(ascend, "docker_args", lambda visible=None, count=None: real(visible, root=host, count=count))
    cmd = host_docker.run_args([], {}, accelerator="npu", cards=2)
    assert "--gpus" not in cmd and "--privileged" not in cmd
    assert cmd.count("--device") == 2 + len(ascend.CONTROL_NODES)
    assert "NPU: host card(s) 0, 1, npu:0-1 inside" in capsys.readouterr().out
    assert host_docker.run_args([], {}, accelerator="cuda")[-2:] == ["--gpus", "all"]


def test_a_full_run_on_an_ascend_host_takes_the_npu_variant(capsys):
    gpu_host = Accelerators(gpus=(Gpu("L4", 22.5, "580.1"),))
    assert plan.choose_variant(get_lab("llama2-sft"), "full", "full", "", NPU_HOST) == ("full", "npu")
    assert "running llama2-sft's npu variant" in capsys.readouterr().out
    assert plan.choose_variant(get_lab("llama2-sft"), "smoke", "smoke", "", NPU_HOST) == ("smoke", None)
    with pytest.raises(
        LabError, match="bert-yelp runs on NPUs only through an npu variant.*labs with one: chatglm-qlora, llama2-sft"
    ):
        plan.choose_variant(get_lab("bert-yelp"), "full", "full", "", NPU_HOST)
    assert plan.choose_variant(get_lab("bert-yelp"), "auto", "full", "", NPU_HOST) == ("smoke", None)
    assert "has no npu variant: running its SMOKE profile" in capsys.readouterr().out
    assert plan.choose_variant(get_lab("bert-yelp"), "full", "full", "", gpu_host) == ("full", None)


def test_auto_on_an_ascend_host_runs_the_smoke_profile_of_a_lab_without_an_npu_variant(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(plan, "probe", lambda: NPU_HOST)
    monkeypatch.setattr(runs, "run", lambda p, root=None: seen.setdefault("profile", p.profile) and (9, ""))
    with pytest.raises(Exit):
        tasks.run(Context(), lab="bert-yelp", runtime="native")
    assert seen["profile"] == "smoke" and "has no npu variant: running its SMOKE profile" in capsys.readouterr().out
    seen.clear()
    with pytest.raises(Exit):
        tasks.run(Context(), lab="llama2-sft", runtime="native")
    assert seen["profile"] == "npu-full"


def test_bench_on_an_npu_says_it_is_not_written_yet():
    with pytest.raises(Exit, match="^error: invoke bench measures.*an NPU bench is not written yet"):
        tasks.bench(Context(), lab="llama2-sft", device="npu")


def test_a_variant_builds_on_its_own_shared_image_for_its_platform(monkeypatch):
    calls = []
    monkeypatch.setattr(host_docker, "ascend_image_error", lambda: None)
    monkeypatch.setattr(host_docker, "docker_error", lambda: None)
    monkeypatch.setattr(
        host_docker,
        "build_image",
        lambda dockerfile, tag, base, platform=None, build_args=None, target=None: calls.append(
            (dockerfile.relative_to(REPO_ROOT).as_posix(), tag, base, platform, build_args, target)
        ),
    )
    monkeypatch.setenv("ASCEND_PLATFORM", "linux/arm64")
    monkeypatch.setenv("ASCEND_BASE_IMAGE", "labs-standin-base:bookworm-arm64")
    monkeypatch.setenv("ASCEND_BUILD_BASE_IMAGE", "labs-standin-base:bookworm")
    monkeypatch.setattr(host_docker.os, "uname", lambda: os.uname_result(("Linux", "h", "6", "1", "x86_64")))
    tasks.build(Context(), lab="llama2-sft", variant="npu")
    build_base = {"BUILD_BASE_IMAGE": "labs-standin-base:bookworm"}
    assert calls == [
        (
            "images/ascend/Dockerfile",
            "llm-labs/ascend:dev",
            "labs-standin-base:bookworm-arm64",
            "linux/arm64",
            build_base,
            None,
        ),
        # its env stage for this machine (x86_64), the env still for arm64: where the npu images install theirs
        (
            "images/ascend/Dockerfile",
            "llm-labs/ascend-build:dev",
            "labs-standin-base:bookworm-arm64",
            "linux/amd64",
            {**build_base, "VENV_ARCH": "arm64"},
            "build",
        ),
        (
            "labs/Dockerfile.npu",
            "llm-labs/llama2-sft-npu:dev",
            "llm-labs/ascend:dev",
            "linux/arm64",
            {"LAB": "llama2-sft", "LOCK": "requirements-npu.txt", "BUILD_IMAGE": "llm-labs/ascend-build:dev"},
            None,
        ),
    ]
    calls.clear()  # on an arm64 host (no ASCEND_PLATFORM) everything is for the engine's own platform
    monkeypatch.delenv("ASCEND_PLATFORM")
    monkeypatch.delenv("ASCEND_BUILD_BASE_IMAGE")
    tasks.build(Context(), lab="llama2-sft", variant="npu")
    assert [c[1:] for c in calls[:2]] == [
        ("llm-labs/ascend:dev", "labs-standin-base:bookworm-arm64", None, {"BUILD_BASE_IMAGE": None}, None),
        ("llm-labs/ascend-build:dev", "labs-standin-base:bookworm-arm64", None, {"BUILD_BASE_IMAGE": None}, "build"),
    ]
    calls.clear()
    tasks.build(Context(), lab="llama2-sft")
    assert [c[1] for c in calls] == ["llm-labs/cuda:dev", "llm-labs/llama2-sft:dev"] and calls[1][3] is None


def test_an_emulated_platform_runs_on_a_cpu_model_without_sve(monkeypatch):
    """linux/arm64 containers on an x86_64 host run under QEMU as a Neoverse N1 (ARMv8.2-A, no SVE, like
    Kunpeng 920), not QEMU's default `max` whose SVE paths made the npu-smoke 3x slower; a QEMU_CPU the
    user set wins; a native platform gets no QEMU setting."""
    monkeypatch.delenv("QEMU_CPU", raising=False)
    monkeypatch.setenv("ASCEND_PLATFORM", "linux/arm64")
    monkeypatch.setattr(host_docker.os, "uname", lambda: os.uname_result(("Linux", "h", "6", "1", "x86_64")))
    assert host_docker.platform_args("ascend") == ["--platform", "linux/arm64", "-e", "QEMU_CPU=neoverse-n1"]
    monkeypatch.setenv("QEMU_CPU", "cortex-a76")
    assert host_docker.platform_args("ascend")[-1] == "QEMU_CPU=cortex-a76"
    monkeypatch.setattr(host_docker.os, "uname", lambda: os.uname_result(("Linux", "h", "6", "1", "aarch64")))
    assert host_docker.platform_args("ascend") == ["--platform", "linux/arm64"]
    monkeypatch.delenv("ASCEND_PLATFORM")
    assert host_docker.platform_args("ascend") == []


def test_pin_base_records_the_registry_digest(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text((REPO_ROOT / "images" / "ascend" / "Dockerfile").read_text())
    digest = "sha256:" + "ab" * 32
    docker = tmp_path / "docker"
    docker.write_text(f'#!/bin/sh\ncase "$1" in pull) exit 0;; image) echo "quay.io/ascend/cann@{digest}";; esac\n')
    docker.chmod(0o755)
    script = REPO_ROOT / "images" / "ascend" / "pin-base"
    subprocess.run([str(script), str(dockerfile)], env={**os.environ, "DOCKER": str(docker)}, check=True)
    text = dockerfile.read_text()
    assert f"ARG BASE_IMAGE=quay.io/ascend/cann:9.0.0-910b-ubuntu22.04-py3.11@{digest}\n" in text
    assert "digest: not recorded yet" not in text and "digest: recorded by images/ascend/pin-base" in text
    docker.write_text("#!/bin/sh\nexit 1\n")  # registry unreachable: nothing changes
    before = dockerfile.read_text()
    result = subprocess.run(
        [str(script), str(dockerfile)], env={**os.environ, "DOCKER": str(docker)}, capture_output=True, text=True
    )
    assert result.returncode == 1 and "cannot pull" in result.stderr and dockerfile.read_text() == before


# --- the image itself (Docker engine; on x86_64 QEMU for linux/arm64) ---------------------------------


def image_unbuildable() -> str | None:
    """Why the Ascend image cannot be built here, or None: its lock for the target architecture and
    QEMU (labkit.host.docker.ascend_image_error), and a base: ASCEND_BASE_IMAGE (CI's arm64 stand-in) or an arm64
    host that can pull the CANN image."""
    if why := host_docker.ascend_image_error():
        return why
    if not (os.environ.get("ASCEND_BASE_IMAGE") or os.uname().machine == "aarch64"):
        return "set ASCEND_BASE_IMAGE (CI: the arm64 stand-in) or run on an arm64 host that pulls the CANN base"
    return None


UNBUILDABLE = image_unbuildable()  # probed once at collection (it asks the Docker engine)
needs_image = pytest.mark.skipif(bool(UNBUILDABLE), reason=f"no Ascend image here: {UNBUILDABLE}")


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [*host_docker.docker_cli(), *args]
    if args[0] == "run":
        cmd[len(host_docker.docker_cli()) + 1 : len(host_docker.docker_cli()) + 1] = host_docker.platform_args("ascend")
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


@needs_image
@pytest.mark.labs("llama2-sft")
def test_ascend_image_layout_user_and_cann_environment(lab, tmp_path):
    tasks.images(Context(), name="ascend")
    image = host_docker.image_tag("ascend")
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config["User"] == "1000:1000" and config["Entrypoint"] == ["ascend-env"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["HF_HOME"] == "/cache/huggingface" and env["BASH_ENV"] == "/etc/ascend-env.sh"
    assert "/cache/huggingface" in config["Volumes"]
    arch = docker("image", "inspect", "--format", "{{.Architecture}}", image).stdout.strip()
    assert arch == {"linux/arm64": "arm64"}.get(host_docker.image_platform("ascend") or "", arch)
    # the user is in the driver's HwHiAiUser group; torch and torch_npu at the matrix row's versions
    probe = (
        "id -un; id -gn; python -c 'from importlib.metadata import version as v; "
        'print(v("torch"), v("torch-npu"))\'; test -x /usr/local/bin/pip-install-locked && echo locked'
    )
    out = docker("run", "--rm", "--entrypoint", "bash", image, "-c", probe).stdout.split("\n")
    assert out[:4] == ["lab", "HwHiAiUser", "2.10.0 2.10.0", "locked"]
    # the env was installed on this machine's platform (images/ascend/Dockerfile, stage `build`): its
    # bytecode is valid for the image's Python (imports read it, nothing recompiles), its uv is the image's
    imports = "python -v -c 'import numpy' 2>&1"
    probe = f"{imports} | grep -c ' matches '; {imports} | grep -c 'stale\\|could not create'; uv --version"
    out = docker("run", "--rm", "--entrypoint", "bash", image, "-c", probe, check=False).stdout.split("\n")
    machine = {"arm64": "aarch64", "amd64": "x86_64"}[arch]
    assert int(out[0]) > 50 and out[1] == "0" and out[2].endswith(f"({machine}-unknown-linux-gnu)"), out
    build = host_docker.image_tag("ascend-build")  # that stage for this machine: where the npu images install
    build_arch = docker("image", "inspect", "--format", "{{.Architecture}}", build).stdout.strip()
    assert build_arch == host_docker.DOCKER_ARCH[os.uname().machine]
    cat = [*host_docker.docker_cli(), "run", "--rm", build, "cat", "/usr/local/share/llm-labs/venv-arch"]
    assert subprocess.run(cat, capture_output=True, text=True, check=True).stdout.strip() == arch
    # CANN's set_env.sh reaches every process: the entrypoint (python here) and non-interactive bash
    fake = tmp_path / "set_env.sh"
    fake.write_text("export LABS_FAKE_CANN=sourced\nexport LD_LIBRARY_PATH=/fake/cann/lib64:$LD_LIBRARY_PATH\n")
    mount = ["-v", f"{fake}:/usr/local/Ascend/ascend-toolkit/set_env.sh:ro"]
    via_entrypoint = docker(
        "run", "--rm", *mount, image, "python", "-c", "import os; print(os.environ['LABS_FAKE_CANN'])"
    )
    assert via_entrypoint.stdout.strip() == "sourced"
    assert "libascendcl.so libhccl.so libascend_hal.so not on LD_LIBRARY_PATH" in via_entrypoint.stderr
    via_bash = docker("run", "--rm", *mount, "--entrypoint", "bash", image, "-c", "echo $LABS_FAKE_CANN")
    assert via_bash.stdout.strip() == "sourced"
    # with CANN's and the driver's libraries on the path, torch's plugin auto-load stays on
    libs = tmp_path / "lib64"
    libs.mkdir()
    for lib in (*ascend.CANN_LIBRARIES, ascend.DRIVER_LIBRARY):
        (libs / lib).write_text("")
    probe = "import os; print(os.environ.get('TORCH_DEVICE_BACKEND_AUTOLOAD', 'on'))"
    found = docker("run", "--rm", *mount, "-v", f"{libs}:/fake/cann/lib64:ro", image, "python", "-c", probe)
    assert found.stdout.strip() == "on" and "not on LD_LIBRARY_PATH" not in found.stderr
    assert docker("run", "--rm", image, "python", "-c", probe).stdout.strip() == "0"  # no CANN: off, said
    # without CANN torch still imports (ascend-env: auto-load off); torch_npu fails as upstream does
    plain = docker("run", "--rm", image, "python", "-c", "import torch; import torch_npu", check=False)
    assert plain.returncode != 0 and "libhccl.so: cannot open shared object file" in plain.stderr


@needs_image
@pytest.mark.labs("llama2-sft")
def test_npu_variant_smoke_verifies_in_its_image(lab, tmp_path):
    """The npu variant's image (arm64 under QEMU in CI: 5-10 minutes) runs npu-smoke and verifies:
    torch 2.10 + torch_npu 2.10 installed, no CANN, the CPU trains the bf16 LoRA path."""
    host_docker.build_lab_image(lab, "npu")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    code, _ = run_lab(lab, "npu-smoke", "docker", [], outputs)
    assert code == 0
    run_dir = (outputs / lab.name / "npu-smoke" / "latest").resolve()
    from labkit.verify import format_table, verify_run

    checks = verify_run(run_dir, lab.expected_path("npu-smoke"))
    print(format_table(checks))
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["runtime"] == "docker" and manifest["image_id"].startswith("sha256:")
    packages = manifest["packages"]
    assert (packages.get("torch-npu") or packages.get("torch_npu")) == "2.10.0"


@needs_image
@pytest.mark.labs(*NPU_LABS)
def test_npu_variant_image_without_cann_says_why_there_is_no_npu(lab, tmp_path):
    """Each npu variant's image on a machine without CANN (the stand-in base): asked for the NPU, the
    lab stops in one line naming the missing libraries, before any output is written."""
    tag = host_docker.build_lab_image(lab, "npu")
    # the lab's packages, installed beside the Ascend env and copied on (labs/Dockerfile.npu): their
    # bytecode is valid in the image (imports read it, nothing recompiles)
    imports = "python -v -c 'import tqdm' 2>&1"
    probe = f"{imports} | grep -c 'tqdm/__pycache__/.* matches '; {imports} | grep -c 'stale\\|could not create'"
    out = docker("run", "--rm", "--entrypoint", "bash", tag, "-c", probe, check=False).stdout.split()
    assert int(out[0]) > 5 and out[1] == "0", out
    tmp_path.chmod(0o777)
    cmd = host_docker.run_args([(str(tmp_path), "/opt/labs/outputs")], {"HF_HUB_OFFLINE": "1"}, accelerator=None)
    cmd += host_docker.platform_args("ascend")
    cmd += [
        host_docker.image_tag(f"{lab.name}-npu"),
        "--profile",
        "npu-smoke",
        "--set",
        "device=npu",
        "--set",
        "use_cpu=false",
    ]
    code, tail = runs.stream(cmd)
    assert code == 2
    assert "error: this profile needs an Ascend NPU, but PyTorch sees none: torch_npu needs CANN's runtime" in tail
    assert not list(tmp_path.rglob("manifest.json"))
