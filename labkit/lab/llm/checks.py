"""What a device or a setting cannot run, refused in one line before any weight loads; and the
check that a quantized model really is quantized.
"""

from __future__ import annotations

import importlib.util

import torch

from labkit.errors import LabError


def check_packing(packing: bool, attn: str) -> None:
    """Packing needs attention that keeps packed examples apart.

    TRL packs (best-fit decreasing) without padding: examples share one row, ``position_ids`` restart
    at each, and no attention mask is passed. FlashAttention reads the boundaries from the position
    ids; ``sdpa`` and ``eager`` do not, so each packed example would attend to the ones before it
    (``labs/llama2-sft/tests/test_lab.py`` measures it).

    Raises:
        LabError: ``packing: true`` without FlashAttention.
    """
    if packing and not attn.startswith("flash_attention"):
        raise LabError(
            f"packing: true with attn_implementation={attn}: packed examples would attend to each other "
            "(only FlashAttention reads their boundaries from position_ids). Use packing=false, or "
            "attn_implementation=flash_attention_2 (the flash-attn package and a GPU with compute capability >= 8)."
        )


def quantized(quantization: dict) -> bool:
    """Whether a profile's ``model.quantization`` (``BitsAndBytesConfig`` settings) quantizes at all:
    ``load_in_4bit`` or ``load_in_8bit``; with both false the model loads in ``bnb_4bit_compute_dtype``
    and the adapter is plain LoRA (the npu variants' bf16 LoRA)."""
    return bool(quantization.get("load_in_4bit") or quantization.get("load_in_8bit"))


def check_quantization(quantization: dict, device: str) -> None:
    """Refuse, in one line, a quantization the device cannot run, before any weight loads.

    On an Ascend NPU bitsandbytes quantizes only through its Ascend backend, which is NF4-only
    (``quantize_4bit`` checks ``quant_type == "nf4"``; bitsandbytes#1422, #1442) and which the PyPI
    wheels do not ship (no ``bitsandbytes.backends.npu``; porting it to the main line is #1695);
    LLM.int8 has no NPU kernel at all (the first matmul stops with NotImplementedError).

    Raises:
        LabError: 8-bit on an NPU; 4-bit other than NF4 on an NPU; NF4 on an NPU with a bitsandbytes
            that has no Ascend backend. Each says to use bf16 LoRA (``quantization.load_in_4bit=false``).
    """
    if device != "npu" or not quantized(quantization):
        return
    way_out = "use bf16 LoRA instead: SET=load_in_4bit=false (the npu profiles' setting)"
    if quantization.get("load_in_8bit"):
        raise LabError(f"load_in_8bit on an Ascend NPU: bitsandbytes has no 8-bit (LLM.int8) NPU kernel; {way_out}")
    kind = quantization.get("bnb_4bit_quant_type", "fp4")
    if kind != "nf4":
        raise LabError(
            f"bnb_4bit_quant_type={kind} on an Ascend NPU: bitsandbytes' Ascend backend is NF4-only; {way_out}"
        )
    if importlib.util.find_spec("bitsandbytes.backends.npu") is None:
        from importlib.metadata import version

        raise LabError(
            f"load_in_4bit on an Ascend NPU: bitsandbytes {version('bitsandbytes')} has no Ascend backend (PyPI "
            f"wheels are CUDA/CPU; NF4 on NPU needs a source build with it, bitsandbytes#1695); {way_out}"
        )


def check_device_support(quantization: dict, bf16: bool, device: str) -> None:
    """Step 0 of the LLM labs: what ``device`` cannot run, refused in one line before any download:
    the quantization (:func:`check_quantization`) and, on an NPU, bf16 training on a first-generation
    910 (:func:`labkit.lab.device.bf16_problem`). On CUDA the Trainer decides bf16 as before (torch
    emulates it below compute capability 8, the course's T4).

    Raises:
        LabError: naming the setting and the way out.
    """
    from labkit.lab.device import bf16_problem

    check_quantization(quantization, device)
    if bf16 and device == "npu" and (why := bf16_problem(device)):
        raise LabError(f'training.bf16 is true but {why}: SET="bf16=false bnb_4bit_compute_dtype=float16"')


def quantization_counts(model) -> dict:
    """``{"linear4bit_modules": n, "linear_modules_not_quantized": m}``: every Linear of the decoder
    layers must be 4-bit (a config mistake can load a model with none quantized and no error);
    ``lm_head`` and the LoRA matrices are plain Linear by design and not counted."""
    import bitsandbytes as bnb

    four_bit = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    left = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear and "lora_" not in n]
    left = [n for n in left if not n.endswith(("lm_head", "output_layer"))]
    return {"linear4bit_modules": four_bit, "linear_modules_not_quantized": len(left)}
