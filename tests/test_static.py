"""Static checks: hash-locked installs, pinned bases, non-root images, compose, README and CI agree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from labkit.config import LABS_DIR, REPO_ROOT, list_labs

IMAGES = sorted((REPO_ROOT / "images").glob("*/Dockerfile"))
LOCKS = [
    REPO_ROOT / "requirements-dev.txt",
    REPO_ROOT / "images" / "common" / "uv.txt",
    *sorted(REPO_ROOT.glob("images/*/requirements*.txt")),  # the Ascend image: one lock per architecture
    *sorted(LABS_DIR.glob("*/requirements*.txt")),  # variants' locks too
]


def lock_input(lock):
    """The ``.in`` a lock was compiled from: its own (``requirements-npu.in``), else the folder's
    ``requirements.in`` (per-architecture locks ``requirements-aarch64.txt``)."""
    own = lock.with_suffix(".in")
    return own if own.exists() else lock.parent / "requirements.in"


def lock_entries(path):
    """{name: (version, hash count)} of a uv/pip-compile lock with hashes."""
    entries, name = {}, None
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line):
            name = m.group(1).lower()
            entries[name] = [m.group(2), 0]
        elif "--hash=sha256:" in line and name:
            entries[name][1] += 1
        elif line and not line.startswith((" ", "#", "--index-url ", "--extra-index-url ")):
            pytest.fail(f"{path}: unpinned requirement line {line!r}")
    return entries


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_locks_pin_every_package_with_hashes_and_honour_the_inputs(lock):
    entries = lock_entries(lock)
    assert entries, f"{lock} is empty"
    assert all(count > 0 for _, count in entries.values()), f"{lock} has packages without hashes"
    for line in lock_input(lock).read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line):
            assert entries[m.group(1).lower()][0] == m.group(2), f"{lock} does not honour {line}"


def test_lab_locks_leave_the_shared_image_packages_out(lab):
    for variant in (None, *lab.variants):  # the default image and the variants on a shared image (npu)
        if variant and "image" not in lab.variants[variant]:
            continue  # a course stack: its own torch, locked whole
        entries = lock_entries(lab.requirements(variant))
        assert not {"torch", "torch-npu"} & set(entries), f"{lab.requirements(variant)} reinstalls the image's torch"
    flavor = lab.dir / "requirements-cuda12.txt"
    if flavor.is_file():
        assert "torch" not in lock_entries(flavor), f"{flavor} reinstalls the image's torch"


def test_the_cuda12_flavor_runs_the_same_libraries_on_a_cuda12_torch(lab):
    """Every lab on labs/Dockerfile has a CUDA 12 lock with the same versions as its own lock (only torch
    and its CUDA wheels differ, in the image); a lab with its own Dockerfile has none, and the run plan
    refuses the CUDA 12 image for it (tests/test_host.py)."""
    from labkit.host.nvidia import MIN_DRIVER, flavor_cuda

    flavor = lab.dir / "requirements-cuda12.txt"
    if lab.image != "cuda" or lab.dockerfile() != LABS_DIR / "Dockerfile":
        assert not flavor.exists(), f"{flavor}: labs/Dockerfile's LOCK is the only way it is installed"
        return
    assert flavor.is_file(), f"{lab.name} has no CUDA 12 lock: run `invoke lock --lab {lab.name}`"
    same = {n: v for n, (v, _) in lock_entries(lab.requirements()).items()}
    assert {n: v for n, (v, _) in lock_entries(flavor).items()} == same
    cuda = flavor_cuda()
    assert cuda == {"cuda": "13.0", "cuda12": "12.8"} and MIN_DRIVER[12] < MIN_DRIVER[13]


def test_the_cuda_images_differ_in_torch_and_say_how_they_reach_the_gpu():
    """images/cuda: torch on CUDA 13, cuda-compat-13-0 for forward compatibility; images/cuda12: the
    newest CUDA 12 torch, no compat libraries, a requirement the toolkit accepts from driver 525 on; both
    start their commands through cuda-env."""
    from labkit.host.nvidia import image_cuda

    cuda, cuda12 = (REPO_ROOT / "images" / name for name in ("cuda", "cuda12"))
    torch13 = re.search(r"^torch==(\S+)", (cuda / "requirements.in").read_text(), re.M).group(1)
    torch12 = re.search(r"^torch==(\S+)", (cuda12 / "requirements.in").read_text(), re.M).group(1)
    assert (image_cuda(cuda / "constraints.txt"), image_cuda(cuda12 / "constraints.txt")) == ("13.0", "12.8")
    assert tuple(map(int, torch12.split("."))) < tuple(map(int, torch13.split(".")))
    text13, text12 = (cuda / "Dockerfile").read_text(), (cuda12 / "Dockerfile").read_text()
    assert "cuda-compat-13-0" in text13 and "nvidia/cuda:13.0" in text13
    assert "nvidia/cuda:12.8" in text12 and 'NVIDIA_REQUIRE_CUDA="cuda>=12.0"' in text12
    assert "rm -rf /usr/local/cuda/compat" in text12 and "cuda-compat-13" not in text12
    for text, folder in ((text13, "cuda"), (text12, "cuda12")):
        assert f"COPY images/{folder}/requirements.txt " in text
        assert "COPY images/common/cuda-env /usr/local/bin/cuda-env" in text and 'ENTRYPOINT ["cuda-env"]' in text
    shared = (LABS_DIR / "Dockerfile").read_text()
    assert "ARG LOCK=requirements.txt" in shared and "COPY labs/${LAB}/${LOCK} " in shared


def test_native_constraints_match_the_image_lock():
    pairs = [
        (c, c.parent / c.name.replace("constraints", "requirements"))
        for c in REPO_ROOT.glob("images/*/constraints*.txt")
    ]
    assert len(pairs) >= 3  # the CUDA image's, its CUDA 12 flavor's and the Ascend image's (aarch64)
    for constraints, lock in pairs:
        locked = {n: v for n, (v, _) in lock_entries(lock).items()}
        text = constraints.read_text(encoding="utf-8")
        pinned = {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M)}
        assert pinned == locked, constraints


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda p: p.parent.name)
def test_shared_images_pin_their_default_base_by_digest(dockerfile):
    text = dockerfile.read_text()
    default = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M)
    assert default
    if not re.search(r"@sha256:[0-9a-f]{64}$", default.group(1)):
        # The one allowed exception, said in the Dockerfile and the README: the CANN base's digest could
        # not be read (no registry reachable); images/ascend/pin-base writes it where one is.
        assert dockerfile.parent.name == "ascend" and "digest: not recorded yet" in text
        assert (dockerfile.parent / "pin-base").is_file()
        pytest.skip(f"{default.group(1)}: digest not recorded (no registry reachable here; images/ascend/pin-base)")


def test_lab_dockerfiles_build_on_the_shared_image_deps_before_code_and_run_as_non_root(lab):
    for variant in (None, *lab.variants):  # the lab's image and each variant's
        text = lab.dockerfile(variant).read_text()
        assert re.search(rf"^ARG BASE_IMAGE=llm-labs/{lab.base_image(variant)}:dev$", text, re.M)
        if lab.base_image(variant) == "ascend":  # CANN's environment for the lab process (images/ascend/ascend-env)
            assert re.search(r'^ENTRYPOINT \["ascend-env", "python", ', text, re.M)
        else:  # the CUDA path the host side chose (images/common/cuda-env: forward compatibility or not)
            assert re.search(r'^ENTRYPOINT \["cuda-env", "python", ', text, re.M)
        lines = text.splitlines()
        install = next(i for i, line in enumerate(lines) if "pip-install-locked" in line or "pip install" in line)
        first_code = next(i for i, line in enumerate(lines) if line.startswith("COPY labkit"))
        assert install < first_code, "code is copied before the dependency layer: every edit would reinstall"
        assert "--require-hashes" in text or "pip-install-locked" in text, "installs must be hash-checked"
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and users[-1].split(":")[0] not in ("0", "root")
        assert not re.search(r"^(ENV|ARG)\s+\S*(TOKEN|API_KEY)", text, re.M), "secrets belong to run time"


def test_only_labs_that_need_more_keep_their_own_dockerfile():
    """One lab Dockerfile shape: labs/Dockerfile (ARG LAB); a lab's own only with a build stage."""
    own = sorted(p.parent.name for p in LABS_DIR.glob("*/Dockerfile"))
    assert own == ["quantization"] and " AS sdists" in (LABS_DIR / "quantization" / "Dockerfile").read_text()
    assert not list(LABS_DIR.glob("*/Dockerfile.npu"))  # every npu variant: labs/Dockerfile.npu (ARG LAB)


def test_every_lab_has_a_compose_service_with_a_gpu_and_the_cache(lab):
    from labkit.host.docker import lab_build_args

    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    service = compose["services"][lab.name]
    assert lab.name in service["profiles"]
    assert service["build"]["dockerfile"] == str(lab.dockerfile().relative_to(REPO_ROOT))
    args = {k: str(v) for k, v in service["build"]["args"].items() if k != "BASE_IMAGE"}
    assert args == lab_build_args(lab)  # the same image as `invoke build`
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert any(v.startswith("hf-cache:") for v in service["volumes"])


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="no docker-compose binary (make venv installs it)")
def test_compose_file_is_valid_for_every_profile(lab):
    npu = [f"{lab.name}-npu"] if "npu" in lab.variants else []
    for profile in ("images", lab.name, *npu):
        result = subprocess.run(
            ["docker-compose", "-f", "compose.yaml", "--profile", profile, "config", "-q"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in readme.split("## ")[1], "the README's first section should give the test command"
    assert re.search(r"^\s*make test\b", ci, re.M)


def test_ci_times_name_every_lab_with_its_measured_seconds():
    """tests/ci-times.json orders the labs longest first (tests/conftest.py): a lab missing from it
    counts as the longest and runs first, so its measured time belongs there."""
    import json

    measured = json.loads((REPO_ROOT / "tests" / "ci-times.json").read_text(encoding="utf-8"))
    labs = {lab.name for lab in list_labs()}
    assert labs <= set(measured), f"add to tests/ci-times.json: {sorted(labs - set(measured))}"
    assert all(measured[lab]["seconds"] > 0 for lab in labs)


def test_makefile_has_the_lab_pattern_rule():
    assert re.search(r"^lab-%:", (REPO_ROOT / "Makefile").read_text(), re.M)


def test_make_help_names_every_lab_and_nothing_else():
    """`make help` (and `make smoke`) take the labs from labs/*/lab.yaml: labs/Dockerfile is not a lab."""
    from labkit.config import list_labs

    out = subprocess.run(["make", "-s", "help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("lab-<name>"))
    assert line.split("labs: ", 1)[1].split() == [lab.name for lab in list_labs()]


def wheel(folder, name: str, version: str, files: dict[str, str]):
    """A pure-Python wheel ``name-version-py3-none-any.whl`` in ``folder`` holding ``files``; returns its
    lock line (``name==version --hash=sha256:...``)."""
    import base64
    import hashlib
    import zipfile

    info = f"{name}-{version}.dist-info"
    entries = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    entries[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in entries.items():
            zf.writestr(member, text)
    return f"{name}=={version} --hash=sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}\n"


@pytest.mark.skipif(not shutil.which("uv"), reason="uv not on PATH (the tooling venv has it)")
def test_install_step_hands_over_only_what_it_added_and_refuses_to_remove(tmp_path):
    """images/common/pip-install-locked --delta (labs/Dockerfile.npu installs a lab's packages beside
    the Ascend image's env and copies only what they added onto the image): the new package's files and
    bytecode land in the delta, the env's own files do not; a lock that would replace a package of the
    env stops with one line, the delta left unwritten."""
    import sys

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    base = wheel(wheels, "basepkg", "1.0", {"basepkg/__init__.py": "X = 1\n"})
    lab = wheel(wheels, "labpkg", "2.0", {"labpkg/__init__.py": "import basepkg\nY = 2\n"})
    newer = wheel(wheels, "basepkg", "1.1", {"basepkg/__init__.py": "X = 2\n"})
    (tmp_path / "base.txt").write_text(base)
    (tmp_path / "lab.txt").write_text(base + lab)
    (tmp_path / "other.txt").write_text(newer + lab)
    env = tmp_path / "venv"
    subprocess.run(["uv", "venv", "-q", "--python", sys.executable, str(env)], check=True)
    run_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_", "VENV_ARCH"))},
        "VIRTUAL_ENV": str(env),
        "UV_FIND_LINKS": str(wheels),
        "UV_OFFLINE": "1",
        "UV_NO_CACHE": "1",
        "LOCKED_SDISTS": "0",
    }
    script = str(REPO_ROOT / "images" / "common" / "pip-install-locked")

    def install(*args):
        return subprocess.run([script, *map(str, args)], env=run_env, capture_output=True, text=True)

    assert install(tmp_path / "base.txt").returncode == 0
    site = next((env / "lib").glob("python3.*/site-packages"))
    assert (site / "basepkg" / "__pycache__").is_dir()  # compiled at install
    delta = tmp_path / "delta"
    result = install("--delta", delta, tmp_path / "lab.txt")
    assert result.returncode == 0, result.stderr
    pyc = next((delta / str(site).lstrip("/") / "labpkg" / "__pycache__").glob("*.pyc"))
    compile_time = int.from_bytes(pyc.read_bytes()[8:12], "little")  # the source mtime the .pyc was made for
    added = sorted(p.relative_to(delta / str(site).lstrip("/")).as_posix() for p in delta.rglob("*") if p.is_file())
    assert "labpkg/__init__.py" in added and any(a.startswith("labpkg/__pycache__/") for a in added)
    assert not [a for a in added if a.startswith("basepkg")], added  # the env's own files stay out
    moved = delta / str(site).lstrip("/") / "labpkg" / "__init__.py"
    assert int(moved.stat().st_mtime) == int(compile_time)  # kept: the bytecode stays valid (whole seconds)
    assert not (site / "labpkg").exists() and (site / "basepkg").is_dir()  # the env as it was: one copy in the layer
    result = install("--delta", tmp_path / "delta2", tmp_path / "other.txt")
    assert result.returncode == 1 and not (tmp_path / "delta2").exists()
    last = result.stderr.splitlines()[-1]  # after uv's own lines
    assert last.startswith("error: installing ") and "would replace what the env already holds (basepkg-1.0)" in last
