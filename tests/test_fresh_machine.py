"""The README's two commands on a fresh machine: Python 3.11, make, git and CA certificates only.

A container from ``tests/fresh-machine/Dockerfile`` (no FFmpeg, no compiler, no Docker; an ordinary
user) gets a copy of this checkout and runs ``make lab-whisper-lora`` (auto: smoke profile, native
runtime) and ``make lab-quantization PROFILE=smoke RUNTIME=native``: the tooling virtualenv, both
labs' environments (wheels only), both runs and their verification.

Needs a Docker engine and ``BASE_IMAGE`` (a Debian/Ubuntu image with python3.11 in apt; CI passes
the stand-in). ``EXTRA_CA_CERT`` (a TLS-intercepting proxy's bundle) and ``UV_FIND_LINKS`` (a local
wheel folder) are handed to the container as they are to image builds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from labkit.config import REPO_ROOT
from labkit.host import docker, runs

pytestmark = pytest.mark.skipif(bool(docker.docker_error()), reason=f"Docker not usable: {docker.docker_error()}")
IMAGE = docker.image_tag("fresh-machine")
COMMANDS = """
set -euo pipefail
if [ -s /etc/extra-ca.pem ]; then  # trust a TLS-intercepting proxy on top of the system bundle
  cat /etc/ssl/certs/ca-certificates.crt /etc/extra-ca.pem > /tmp/ca.pem
  export SSL_CERT_FILE=/tmp/ca.pem PIP_CERT=/tmp/ca.pem
fi
for tool in gcc cc ffmpeg docker; do
  if command -v "$tool" >/dev/null; then echo "fresh machine has $tool"; exit 9; fi
done
make lab-whisper-lora
make lab-quantization PROFILE=smoke RUNTIME=native
"""


def copy_checkout(dst: Path) -> None:
    """Tracked and untracked-but-not-ignored files, as a clone (plus local edits) would have them."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO_ROOT / name.decode()
        if src.is_file():
            (dst / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name.decode())


def test_readme_commands_pass_on_a_fresh_machine_without_ffmpeg_or_compiler(tmp_path):
    base = os.environ.get("BASE_IMAGE")
    if not base:
        pytest.skip("set BASE_IMAGE to a Debian/Ubuntu image with python3.11 in apt (CI: the stand-in)")
    docker.build_image(REPO_ROOT / "tests" / "fresh-machine" / "Dockerfile", IMAGE, base)
    checkout = tmp_path / "labs"
    copy_checkout(checkout)
    subprocess.run(["chown", "-R", "1000:1000", str(checkout)], check=False)  # the container's user
    cmd = [*docker.docker_cli(), "run", "--rm", "-v", f"{checkout}:/home/learner/labs", "-w", "/home/learner/labs"]
    if ca := os.environ.get("EXTRA_CA_CERT"):
        cmd += ["-v", f"{Path(ca).resolve()}:/etc/extra-ca.pem:ro"]
    if links := os.environ.get("UV_FIND_LINKS"):
        cmd += ["-v", f"{links}:{links}:ro", "-e", f"UV_FIND_LINKS={links}"]
    cmd += [IMAGE, "bash", "-c", COMMANDS]
    code, tail = runs.stream(cmd)
    assert code == 0, tail
    log = "\n".join(p.read_text() for p in (checkout / "outputs").rglob("manifest.json") if "latest" not in p.parts)
    assert '"status": "completed"' in log and '"runtime": "native"' in log
    assert len(list((checkout / "outputs" / "whisper-lora" / "smoke").glob("2*"))) == 1
    assert len(list((checkout / "outputs" / "quantization" / "smoke").glob("2*"))) == 1
    assert tail.rstrip().endswith("=> PASS")
