"""tasks.py's choices and the errors it gives before anything runs."""

from __future__ import annotations

import os

import pytest
from invoke import Context, Exit

import tasks


def test_docker_runtime_without_an_engine_says_how_to_get_one(monkeypatch):
    monkeypatch.setenv("DOCKER", "/nonexistent/docker")
    with pytest.raises(Exit, match="RUNTIME=docker: no docker CLI .*install Docker Engine.*RUNTIME=native"):
        tasks.resolve_runtime("docker")
    assert tasks.resolve_runtime("auto") == "native"


def test_unknown_runtime_and_lab_are_named(monkeypatch):
    with pytest.raises(Exit, match="RUNTIME='podman'"):
        tasks.resolve_runtime("podman")
    with pytest.raises(Exit, match="unknown lab .whisper.. Known labs: .*whisper-lora"):
        tasks.run(Context(), lab="whisper")


def test_auto_profile_is_smoke_without_an_accelerator(monkeypatch):
    monkeypatch.setattr(tasks, "host_accelerator", lambda: None)
    assert tasks.resolve_profile("auto") == "smoke"
    monkeypatch.setattr(tasks, "host_accelerator", lambda: "cuda")
    assert tasks.resolve_profile("auto") == "full"
    assert tasks.resolve_profile("smoke") == "smoke"


def test_missing_extra_ca_bundle_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("EXTRA_CA_CERT", str(tmp_path / "nope.pem"))
    with pytest.raises(Exit, match="EXTRA_CA_CERT=.*nope.pem is not a readable file"):
        tasks.build_image(Context(), tasks.SHARED_IMAGES["cuda"] / "Dockerfile", "x:y", None)


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
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.path.dirname(tasks.sys.executable)}")  # no nvidia-smi here
    tasks.doctor(Context(), lab="bert-yelp")
    out = capsys.readouterr().out
    assert "native          : Python 3.11 at" in out and "not measured on a GPU yet" in out
