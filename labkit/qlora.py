"""QLoRA pieces the LLM fine-tuning labs share: 4-bit loading, attention choice, the exact loss mask,
generation before/after, and the checks around them.

Used by ``labs/llama2-sft`` (TRL's SFTTrainer) and the GLM labs. Imported by lab code only (it needs
torch, transformers, bitsandbytes).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from labkit.errors import LabError
from labkit.metrics import read_jsonl


def attention(requested: str, device: str) -> str:
    """``flash_attention_2`` when ``auto`` finds the flash-attn package and a GPU with compute capability
    >= 8 (FlashAttention 2's requirement), else ``sdpa``; an explicit setting is kept."""
    if requested != "auto":
        return requested
    if device == "cuda" and torch.cuda.get_device_capability()[0] >= 8 and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


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


def load_4bit(path: str, quantization: dict, device: str, attn: str, revision: str | None = None, **kwargs):
    """``AutoModelForCausalLM`` in 4-bit: ``quantization`` holds ``BitsAndBytesConfig`` settings with
    ``bnb_4bit_compute_dtype`` by name (``bfloat16``); the model's other weights load in that dtype.
    On CUDA Accelerate places the layers (``device_map="auto"``), elsewhere everything goes to ``device``.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = dict(quantization)
    q["bnb_4bit_compute_dtype"] = getattr(torch, q["bnb_4bit_compute_dtype"])
    model = AutoModelForCausalLM.from_pretrained(
        path,
        revision=revision,
        quantization_config=BitsAndBytesConfig(**q),
        attn_implementation=attn,
        device_map={"": device} if device != "cuda" else "auto",
        dtype=q["bnb_4bit_compute_dtype"],
        **kwargs,
    )
    model.config.use_cache = False
    if device == "cpu":
        keep_4bit_trainable_on_cpu(model)
    return model


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


def quantization_counts(model) -> dict:
    """``{"linear4bit_modules": n, "linear_modules_not_quantized": m}``: every Linear of the decoder
    layers must be 4-bit (a config mistake can load a model with none quantized and no error);
    ``lm_head`` and the LoRA matrices are plain Linear by design and not counted."""
    import bitsandbytes as bnb

    quantized = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    left = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear and "lora_" not in n]
    left = [n for n in left if not n.endswith(("lm_head", "output_layer"))]
    return {"linear4bit_modules": quantized, "linear_modules_not_quantized": len(left)}


@dataclass
class Encoded:
    """A prompt + completion as token ids, the completion's mask, and whether the input was cut."""

    input_ids: list[int]
    completion_mask: list[int]
    input_cut: bool


def encode(
    render: Callable[[str], str],
    text: str,
    completion: str,
    tokenizer,
    max_length: int,
    prompt_special_tokens: bool = True,
) -> Encoded | None:
    """Token ids of ``render(text)`` + ``completion`` + EOS and the mask of the completion tokens.

    The prompt and the completion are tokenized **separately** and joined, so the mask falls exactly
    on the completion and its EOS: tokenizing the joined text and searching for a template instead
    misplaces it when the tokenizer merges across the boundary (SentencePiece after a newline).
    ``prompt_special_tokens`` adds the tokenizer's own (Llama's ``<s>``); a chat template that writes
    its special tokens itself wants ``False``. If prompt and completion do not fit ``max_length``,
    ``text`` (the prompt's variable part) is cut at a token boundary; the completion never is.

    Returns:
        The encoding, or ``None`` when even an empty ``text`` leaves no room for the completion.
    """
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    def prompt_ids(t: str) -> list[int]:
        return tokenizer(render(t), add_special_tokens=prompt_special_tokens)["input_ids"]

    prompt = prompt_ids(text)
    cut = False
    if len(prompt) + len(completion_ids) > max_length:
        room = max_length - len(completion_ids) - len(prompt_ids(""))
        if room < 0:
            return None
        pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
        while True:  # decoding and re-tokenizing can shift a token or two: shrink until it fits
            prompt = prompt_ids(tokenizer.decode(pieces[:room]))
            if len(prompt) + len(completion_ids) <= max_length or room == 0:
                break
            room -= 1
        if len(prompt) + len(completion_ids) > max_length:
            return None
        cut = True
    return Encoded(prompt + completion_ids, [0] * len(prompt) + [1] * len(completion_ids), cut)


def trained_tokens(train_log: Path) -> int:
    """The last ``num_tokens`` TRL logged: tokens fed to training so far (padding excluded)."""
    counts = [row["num_tokens"] for row in read_jsonl(train_log) if "num_tokens" in row and "loss" in row]
    return int(counts[-1]) if counts else 0


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, prompt_special_tokens: bool = True
) -> list[dict]:
    """Greedy continuations of ``prompts``: ``{"text", "stopped"}`` (EOS before ``max_new_tokens``)."""
    model.eval()
    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=prompt_special_tokens).to(device)
        seq = model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, use_cache=True
        )[0, ids["input_ids"].shape[1] :]
        stopped = any(int(t) in eos for t in seq)
        out.append({"text": tokenizer.decode(seq, skip_special_tokens=True).strip(), "stopped": stopped})
    return out


@torch.no_grad()
def logits_on(model, batch: dict) -> torch.Tensor:
    """Logits ``(batch, seq, vocab)`` in eval mode, as float32 on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
