"""tasks.py's choices and the errors it gives before anything runs."""

from __future__ import annotations

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
