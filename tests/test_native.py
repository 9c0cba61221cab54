"""labkit.host.native: how native environments are defined, rebuilt and explained when they cannot be."""

from __future__ import annotations

from dataclasses import replace

import pytest

from labkit.config import REPO_ROOT, get_lab
from labkit.errors import LabError
from labkit.host import native

LOCK = """\
# header
gptqmodel==7.6.0 \\
    --hash=sha256:aaa
    # via -r in
pypcre==0.6.4 \\
    --hash=sha256:bbb \\
    --hash=sha256:ccc
    # via
    #   defuser
torchao==0.18.0 \\
    --hash=sha256:ddd
"""


def test_without_packages_drops_the_entry_and_its_hashes_only():
    out = native.without_packages(LOCK, {"pypcre"})
    assert "pypcre" not in out and "bbb" not in out and "ccc" not in out
    assert "gptqmodel==7.6.0 \\\n    --hash=sha256:aaa" in out and "torchao==0.18.0 \\\n    --hash=sha256:ddd" in out


def test_quantization_replaces_pypcre_natively_but_not_in_its_course_variant():
    lab = get_lab("quantization")
    found = native.replacements(lab, None)
    assert set(found) == {"pypcre"} and (found["pypcre"] / "pcre" / "__init__.py").is_file()
    assert native.replacements(lab, "course") == {}
    assert native.replacements(get_lab("whisper-lora"), None) == {}


def test_replacement_without_a_reason_is_refused():
    lab = get_lab("quantization")
    meta = {**lab.meta, "native": {"replace": {"pypcre": {"path": "native/pypcre-stdlib"}}}}
    with pytest.raises(LabError, match="native.replace.pypcre needs `path` and `why`"):
        native.replacements(replace(lab, meta=meta), None)


def test_stamp_follows_the_lock_and_the_replacement_sources(tmp_path, monkeypatch):
    lab = get_lab("quantization")
    before = native.env_stamp(lab, None)
    assert before == native.env_stamp(lab, None)
    assert before != native.env_stamp(lab, "course")  # its own lock, own environment
    assert native.env_dir(lab, "course").name == "quantization-course"
    source = native.replacements(lab, None)["pypcre"] / "pcre" / "__init__.py"
    real_read = type(source).read_bytes
    monkeypatch.setattr(type(source), "read_bytes", lambda p: real_read(p) + (b"#" if p == source else b""))
    assert native.env_stamp(lab, None) != before


def test_no_python_311_is_explained(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "VENVS_DIR", tmp_path)
    monkeypatch.setattr(native, "uv_command", lambda: ["false"])  # `uv python find 3.11` finds nothing
    with pytest.raises(LabError, match=r"native runs need Python 3.11 .*apt-get install python3.11.*RUNTIME=docker"):
        native.ensure_env(get_lab("whisper-lora"))


def test_the_cuda12_flavor_has_its_own_environment_from_its_own_files():
    """RUNTIME=native on a host that takes the CUDA 12 image: .venvs/<lab>-cuda12 from images/cuda12's torch
    and the lab's requirements-cuda12.txt; the default flavor's environment is untouched."""
    lab = get_lab("bert-yelp")
    assert native.env_dir(lab, None, "cuda12").name == "bert-yelp-cuda12"
    assert native.env_dir(lab, None, "cuda") == native.env_dir(lab) == native.VENVS_DIR / "bert-yelp"
    names = [str(p.relative_to(REPO_ROOT)) for p in native.env_inputs(lab, None, "cuda12")]
    assert names[:3] == [
        "images/cuda12/constraints.txt",
        "images/cuda12/requirements.in",
        "labs/bert-yelp/requirements-cuda12.txt",
    ]
    assert native.env_stamp(lab, None, "cuda12") != native.env_stamp(lab, None)
    assert native.env_dir(get_lab("llama2-sft"), "npu", None).name == "llama2-sft-npu"  # not a CUDA image
