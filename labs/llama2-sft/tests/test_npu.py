"""The npu variant (course chapter 16) without an NPU: device selection and placement with ``torch.npu``
faked, the quantization the lab refuses on an NPU, the guard that keeps torch importable where
torch_npu cannot load, and the npu-smoke path (bf16 LoRA) end to end on the CPU."""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import labkit.lab
from labkit.config import get_lab, load_profile
from labkit.errors import LabError
from labkit.host import ascend
from labkit.lab import device
from labkit.lab.llm.checks import check_quantization, quantization_counts
from labkit.lab.llm.loading import load_causal_lm
from labkit.verify import verify_run

LAB = get_lab("llama2-sft")
NF4 = load_profile(LAB, "smoke")[0]["model"]["quantization"]
BF16 = load_profile(LAB, "npu-smoke")[0]["model"]["quantization"]


@pytest.fixture
def fake_npu(monkeypatch):
    """An Ascend host as torch sees it: ``torch_npu`` importable and ``torch.npu`` with two 910B3 cards
    (64 GiB each), CANN's libraries found, no CUDA."""
    npu = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        get_device_name=lambda i=0: "Ascend910B3",
        get_device_properties=lambda i=0: types.SimpleNamespace(total_memory=64 * 2**30),
        is_bf16_supported=lambda: True,
        max_memory_allocated=lambda: 123,
        reset_peak_memory_stats=lambda: None,
    )
    module = types.ModuleType("torch_npu")
    module.__spec__ = importlib.machinery.ModuleSpec("torch_npu", None)
    module.__version__ = "2.10.0"
    monkeypatch.setitem(sys.modules, "torch_npu", module)
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ascend, "cann_problem", lambda: None)
    monkeypatch.setattr(ascend, "driver_version", lambda *a: "26.0.rc1")
    monkeypatch.setattr(labkit.lab, "TORCH_NPU_UNLOADABLE", None)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return npu


def test_the_npu_is_selected_and_described(fake_npu):
    assert device.select_device("npu") == "npu"
    assert device.select_device("accelerator") == "npu" and device.select_device("auto") == "npu"
    info = device.accelerator_info("npu")
    assert info["name"] == "Ascend910B3" and info["count"] == 2 and info["memory_gib"] == 64.0
    assert info["driver"] == "26.0.rc1" and info["torch_npu"] == "2.10.0"
    assert device.peak_memory_bytes("npu") == 123


def test_placement_is_always_an_npu_string_never_an_integer(fake_npu, monkeypatch):
    """transformers#38468: an integer device index means CUDA to PyTorch, so on an NPU host a device_map
    with ints (what device_map="auto" produces) fails with "Torch not compiled with CUDA enabled"."""
    assert device.placement("npu") == "npu:0" and device.model_device_map("npu") == {"": "npu:0"}
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert device.placement("npu") == "npu:1" and device.model_device_map("npu") == {"": "npu:1"}
    assert device.placement("cpu") == "cpu" and device.placement("npu", 0) == "npu:0"
    with pytest.raises(LabError, match=r"device_map\['model.layers.0'\] = 0: an integer device means CUDA"):
        device.check_device_map({"model.embed_tokens": "npu:0", "model.layers.0": 0}, "npu")
    with pytest.raises(LabError, match='device_map="auto" on an NPU maps layers to integer ids'):
        device.check_device_map("auto", "npu")
    device.check_device_map({"": "npu:0"}, "npu")
    device.check_device_map("auto", "cuda")  # CUDA: Accelerate's integer ids are CUDA devices, as meant
    with pytest.raises(LabError, match="placement needs cuda, npu or cpu"):
        device.placement("xpu")


def test_bf16_is_refused_on_the_first_generation_910_only(fake_npu, monkeypatch):
    assert device.bf16_problem("npu") is None
    monkeypatch.setattr(fake_npu, "get_device_name", lambda i=0: "Ascend910A")
    monkeypatch.setattr(fake_npu, "is_bf16_supported", lambda: False)
    assert "Ascend910A has no bf16" in device.bf16_problem("npu")
    del fake_npu.is_bf16_supported  # an older torch_npu without the query: decided by the name
    assert "has no bf16" in device.bf16_problem("npu")
    monkeypatch.setattr(fake_npu, "get_device_name", lambda i=0: "Ascend910B4")
    assert device.bf16_problem("npu") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"load_in_4bit": False, "load_in_8bit": True}, "load_in_8bit on an Ascend NPU: bitsandbytes has no 8-bit"),
        ({"bnb_4bit_quant_type": "fp4"}, "bnb_4bit_quant_type=fp4 on an Ascend NPU: .* NF4-only"),
        ({}, r"load_in_4bit on an Ascend NPU: bitsandbytes 0\.50\.2 has no Ascend backend"),
    ],
)
def test_unsupported_quantization_on_an_npu_is_refused_in_one_line(change, message):
    with pytest.raises(LabError, match=message) as info:
        check_quantization({**NF4, **change}, "npu")
    assert "SET=load_in_4bit=false" in str(info.value) and "\n" not in str(info.value)
    check_quantization({**NF4, **change}, "cpu")  # elsewhere bitsandbytes decides
    check_quantization(BF16, "npu")  # bf16 LoRA: nothing to refuse


def test_refusal_comes_before_any_weight_loads(fake_npu, tmp_path):
    with pytest.raises(LabError, match="no Ascend backend"):
        load_causal_lm(str(tmp_path / "no-model-here"), NF4, "npu", "sdpa")


def test_bf16_lora_loads_the_whole_model_in_bf16_without_bitsandbytes_layers(tmp_path):
    from labkit.lab.tiny import build_tiny_llama

    path = build_tiny_llama(tmp_path / "tiny", ["Aldmoor and the Stone Brook."] * 4, seed=0)
    model = load_causal_lm(str(path), BF16, "cpu", "sdpa")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert quantization_counts(model) == {"linear4bit_modules": 0, "linear_modules_not_quantized": 14}
    assert quantization_counts(load_causal_lm(str(path), NF4, "cpu", "sdpa"))["linear4bit_modules"] == 14


def test_without_torch_npu_the_npu_request_says_which_variant_to_run(monkeypatch):
    monkeypatch.setattr(labkit.lab, "TORCH_NPU_UNLOADABLE", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        LabError, match="needs an Ascend NPU, but PyTorch sees none: torch_npu is not installed.*VARIANT=npu"
    ):
        device.select_device("npu")


FAKE_TORCH_NPU = """
raise ImportError(
    "libhccl.so: cannot open shared object file: No such file or directory. Please check that the cann "
    "package is installed."
)
"""


def fake_torch_npu_install(site: Path) -> None:
    """A torch_npu that fails as the real one does without CANN, registered as a torch device plugin
    (the ``torch.backends`` entry point torch auto-loads at ``import torch``)."""
    (site / "torch_npu").mkdir(parents=True)
    (site / "torch_npu" / "__init__.py").write_text(FAKE_TORCH_NPU + "\ndef _autoload():\n    pass\n")
    info = site / "torch_npu-2.10.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch_npu\nVersion: 2.10.0\n")
    (info / "entry_points.txt").write_text("[torch.backends]\ntorch_npu = torch_npu:_autoload\n")


def test_torch_stays_importable_where_torch_npu_cannot_load_and_the_npu_request_says_why(tmp_path):
    """The Ascend image without CANN (CI's stand-in) or without the driver mounted: without labkit's
    guard `import torch` itself fails (the plugin auto-load) and Transformers' NPU check re-raises the
    ImportError; with it torch, Transformers and PEFT import, the CPU works, and asking for the NPU
    names the missing libraries."""
    fake_torch_npu_install(tmp_path / "site")
    env = {"PYTHONPATH": f"{tmp_path / 'site'}:{LAB.dir.parents[1]}", "LD_LIBRARY_PATH": "", "PATH": "/usr/bin:/bin"}
    bare = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert bare.returncode != 0 and "Failed to load the backend extension: torch_npu" in bare.stderr
    guarded = """
import labkit.lab, torch, transformers, peft
from transformers.utils import is_torch_npu_available
from labkit.lab.device import select_device
from labkit.errors import LabError
assert not is_torch_npu_available() and torch.ones(2).sum().item() == 2.0 and select_device("auto") == "cpu"
try:
    select_device("npu")
except LabError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", guarded], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch_npu needs CANN's runtime (libascendcl.so, libhccl.so not on LD_LIBRARY_PATH)" in out.stdout
    assert "source /usr/local/Ascend/ascend-toolkit/set_env.sh" in out.stdout


def test_the_driver_library_alone_missing_is_named(tmp_path, monkeypatch):
    for lib in ascend.CANN_LIBRARIES:
        (tmp_path / lib).write_bytes(b"")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    assert ascend.missing_libraries() == ["libascend_hal.so"]
    assert "needs the host's Ascend driver (libascend_hal.so" in ascend.cann_problem()
    (tmp_path / "libascend_hal.so").write_bytes(b"")
    assert ascend.cann_problem() is None


def run_npu_smoke(root: Path, *overrides: str) -> Path:
    cmd = [sys.executable, str(LAB.dir / "run.py"), "--profile", "npu-smoke", "--output-root", str(root)]
    cmd += [arg for o in overrides for arg in ("--set", o)]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return (root / "llama2-sft" / "npu-smoke" / "latest").resolve()


def test_npu_smoke_path_verifies_and_a_broken_run_fails(tmp_path):
    """The npu profiles' path (bf16 weights, plain LoRA) on this CPU: it passes expected/npu-smoke.yaml,
    and the lab's broken override (learning rate 0) fails it where it should. The same profile runs
    in the arm64 llm-labs/llama2-sft-npu image in tests/test_ascend.py."""
    good = verify_run(run_npu_smoke(tmp_path), LAB.expected_path("npu-smoke"))
    assert all(c.passed for c in good) and not any(c.skipped for c in good), [c for c in good if not c.passed]
    metrics = json.loads((tmp_path / "llama2-sft/npu-smoke/latest/metrics.json").read_text())
    assert metrics["quantization"]["linear4bit_modules"] == 0 and metrics["reload"]["max_abs_logit_diff"] == 0.0
    broken = verify_run(run_npu_smoke(tmp_path, *LAB.broken_override.split()), LAB.expected_path("npu-smoke"))
    failed = {c.name for c in broken if not c.passed}
    assert set(LAB.broken_fails) <= failed and "manifest status" not in failed


def test_two_processes_train_as_one_run_the_multi_card_path(tmp_path):
    """nproc_per_node=2 (make lab-llama2-sft NPROC=2): the runner makes one run directory and starts
    two ranks with torchrun (gloo on the CPU; HCCL across NPUs, NCCL across GPUs), which train one
    model together: each step consumes 2 x 8 rows, so 64 steps are 4 epochs of the 256 rows (2 alone).
    Rank 0 alone saves, reloads and generates; the run verifies like a single-process one."""
    run_dir = run_npu_smoke(tmp_path, "nproc_per_node=2")
    checks = verify_run(run_dir, LAB.expected_path("npu-smoke"))
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    ranks = [json.loads((run_dir / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["device"]) for r in ranks] == [(0, 2, "cpu"), (1, 2, "cpu")]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["launch"].startswith("torchrun --nproc_per_node 2 ") and len(manifest["ranks"]) == 2
    last = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if '"loss"' in line][-1]
    assert last["step"] == 64 and last["epoch"] == pytest.approx(4.0)
    assert not (run_dir / "ranks" / "rank1" / "adapter").exists() and (run_dir / "adapter").is_dir()


def test_a_failing_rank_fails_the_run_naming_its_error_and_too_many_ranks_are_refused_first(tmp_path):
    """A rank that stops (bad input it alone reads: the data file) fails the whole run: exit 2, the
    manifest says failed with the rank's error, the log is named. More ranks than devices are refused
    before any run directory is made."""
    cmd = [sys.executable, str(LAB.dir / "run.py"), "--profile", "npu-smoke", "--output-root", str(tmp_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    bad = cmd + ["--set", "nproc_per_node=2", "--set", f"data.files.train={tmp_path / 'missing.jsonl'}"]
    result = subprocess.run(bad, capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "exited with 1; log: " in result.stderr
    assert "missing.jsonl" in result.stderr  # the rank's own one-line error, in the log's tail
    manifest = json.loads(next(tmp_path.rglob("manifest.json")).read_text())
    assert manifest["status"] == "failed" and "missing.jsonl" in manifest["error"]
    too_many = subprocess.run(cmd + ["--set", f"nproc_per_node={os.cpu_count() + 1}"], capture_output=True, text=True)
    assert too_many.returncode == 2 and "this node has" in too_many.stderr
    assert len(list(tmp_path.rglob("manifest.json"))) == 1  # the refused run made no directory
