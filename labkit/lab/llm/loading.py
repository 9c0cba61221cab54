"""Loading a causal LM for LoRA / QLoRA as a profile says: 4-bit or 8-bit (bitsandbytes) or bf16,
the attention implementation, ``prepare_model_for_kbit_training``, and the CPU workaround that keeps
4-bit layers trainable. Used by llama2-sft and the GLM labs (and their benches).
"""

from __future__ import annotations

import importlib.util

import torch

from labkit.lab.llm.checks import check_quantization, quantized


def attention(requested: str, device: str) -> str:
    """``flash_attention_2`` when ``auto`` finds the flash-attn package and a GPU with compute capability
    >= 8 (FlashAttention 2's requirement), else ``sdpa``; an explicit setting is kept."""
    if requested != "auto":
        return requested
    if device == "cuda" and torch.cuda.get_device_capability()[0] >= 8 and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


def load_causal_lm(path: str, quantization: dict, device: str, attn: str, revision: str | None = None, **kwargs):
    """``AutoModelForCausalLM`` as a profile's ``model.quantization`` says: 4-bit (or 8-bit) with
    ``BitsAndBytesConfig`` (``bnb_4bit_compute_dtype`` given by name, ``bfloat16``), the model's
    other weights in that dtype; with ``load_in_4bit`` and ``load_in_8bit`` false, the whole model in
    that dtype (bf16 LoRA). Placement: :func:`labkit.lab.device.model_device_map` (``"auto"`` for one CUDA
    process, else ``{"": "npu:N"}`` / ``{"": "cpu"}``; never integer ids on an NPU).

    Raises:
        LabError: a quantization the device cannot run (:func:`check_quantization`).
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from labkit.lab.device import check_device_map, model_device_map

    check_quantization(quantization, device)
    q = dict(quantization)
    q["bnb_4bit_compute_dtype"] = getattr(torch, q["bnb_4bit_compute_dtype"])
    device_map = model_device_map(device)
    check_device_map(device_map, device)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        revision=revision,
        quantization_config=BitsAndBytesConfig(**q) if quantized(quantization) else None,
        attn_implementation=attn,
        device_map=device_map,
        dtype=q["bnb_4bit_compute_dtype"],
        **kwargs,
    )
    model.config.use_cache = False
    if device == "cpu" and quantized(quantization):
        keep_4bit_trainable_on_cpu(model)
    return model


def prepare_for_training(model, quantization: dict):
    """A loaded model made ready for LoRA: ``prepare_model_for_kbit_training`` (frozen, norms and
    embeddings in fp32, gradient checkpointing without re-entrancy) when it is quantized; a bf16
    model is left as loaded (the Trainer turns gradient checkpointing on; LoRA freezes the base)."""
    if not quantized(quantization):
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})


def keep_4bit_trainable_on_cpu(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference; returns the layers changed.

    bitsandbytes 0.50, on a CPU with AVX512-BF16, repacks a ``Linear4bit``'s weights into an
    inference-only layout the first time the layer runs in eval mode without gradients (an
    evaluation before training does) and keeps them so: afterwards no gradient flows back through
    the layer, and LoRA adapters behind it (q_proj/v_proj behind o_proj) stop learning, with no
    error (grad_norm 0). ``labs/llama2-sft/tests/test_lab.py`` reproduces it. GPUs are not affected.
    """
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)
