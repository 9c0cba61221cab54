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
from labkit.metrics import plot_loss, read_jsonl


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
    910 (:func:`labkit.device.bf16_problem`). On CUDA the Trainer decides bf16 as before (torch
    emulates it below compute capability 8, the course's T4).

    Raises:
        LabError: naming the setting and the way out.
    """
    from labkit.device import bf16_problem

    check_quantization(quantization, device)
    if bf16 and device == "npu" and (why := bf16_problem(device)):
        raise LabError(f'training.bf16 is true but {why}: SET="bf16=false bnb_4bit_compute_dtype=float16"')


def load_causal_lm(path: str, quantization: dict, device: str, attn: str, revision: str | None = None, **kwargs):
    """``AutoModelForCausalLM`` as a profile's ``model.quantization`` says: 4-bit (or 8-bit) with
    ``BitsAndBytesConfig`` (``bnb_4bit_compute_dtype`` given by name, ``bfloat16``), the model's
    other weights in that dtype; with ``load_in_4bit`` and ``load_in_8bit`` false, the whole model in
    that dtype (bf16 LoRA). Placement: :func:`labkit.device.model_device_map` (``"auto"`` for one CUDA
    process, else ``{"": "npu:N"}`` / ``{"": "cpu"}``; never integer ids on an NPU).

    Raises:
        LabError: a quantization the device cannot run (:func:`check_quantization`).
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from labkit.device import check_device_map, model_device_map

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


def load_4bit(path: str, quantization: dict, device: str, attn: str, revision: str | None = None, **kwargs):
    """The GLM labs' loader: :func:`load_causal_lm` (their profiles load in 4-bit NF4)."""
    return load_causal_lm(path, quantization, device, attn, revision, **kwargs)


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


def quantization_counts(model) -> dict:
    """``{"linear4bit_modules": n, "linear_modules_not_quantized": m}``: every Linear of the decoder
    layers must be 4-bit (a config mistake can load a model with none quantized and no error);
    ``lm_head`` and the LoRA matrices are plain Linear by design and not counted."""
    import bitsandbytes as bnb

    four_bit = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    left = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear and "lora_" not in n]
    left = [n for n in left if not n.endswith(("lm_head", "output_layer"))]
    return {"linear4bit_modules": four_bit, "linear_modules_not_quantized": len(left)}


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


def chat_prompt(tokenizer, content: str) -> str:
    """The tokenizer's chat-template prompt for one user turn holding ``content``, ready for the reply.

    Raises:
        LabError: the tokenizer has no chat template (names the tokenizer and what to do).
    """
    if not tokenizer.chat_template:
        raise LabError(
            f"the tokenizer of {tokenizer.name_or_path} has no chat template: the prompts are written with it. "
            "Use a chat model's tokenizer (GLM-4-9B-chat's has one) or set tokenizer.chat_template."
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def tokenize_chat(rows, columns: tuple[str, str], tokenizer, max_input: int, max_output: int, policy: str):
    """Rows as ``input_ids`` / ``attention_mask`` / ``labels`` for a one-turn chat: the prompt is the
    chat template around ``columns[0]`` (masked with -100), the answer ``columns[1]`` and the
    end-of-text token are the targets (:func:`encode`).

    Lengths as the course's ``max_input_length`` / ``max_output_length``: an answer longer than
    ``max_output`` tokens is cut (counted), a prompt longer than ``max_input`` has its text cut at a
    token boundary (counted), a prompt with no room even for an empty text is an error under
    ``policy == "fail"`` or a counted drop.

    Returns:
        ``(datasets.Dataset, {"answers_cut": n, "prompts_cut": n, "dropped_no_room": n})``.

    Raises:
        LabError: a row whose prompt leaves no room, under ``fail`` (names the row).
    """
    from datasets import Dataset

    prompt_col, answer_col = columns
    ids, masks, labels = [], [], []
    counts = {"answers_cut": 0, "prompts_cut": 0, "dropped_no_room": 0}
    for i, row in enumerate(rows):
        answer = tokenizer(row[answer_col], add_special_tokens=False)["input_ids"]
        counts["answers_cut"] += len(answer) > max_output
        answer = answer[:max_output]
        budget = max_input + len(answer) + 1  # the prompt limit, the (cut) answer and its end-of-text
        enc = encode(
            lambda t: chat_prompt(tokenizer, t), row[prompt_col], tokenizer.decode(answer), tokenizer, budget, False
        )
        if enc is None:
            if policy == "fail":
                raise LabError(
                    f"row {i}: the chat prompt alone exceeds max_input_length={max_input}: raise it, or set "
                    "data.bad_text=drop to drop such rows (counted)."
                )
            counts["dropped_no_room"] += 1
            continue
        counts["prompts_cut"] += enc.input_cut
        ids.append(enc.input_ids)
        masks.append([1] * len(enc.input_ids))
        labels.append([t if m else -100 for t, m in zip(enc.input_ids, enc.completion_mask)])
    return Dataset.from_dict({"input_ids": ids, "attention_mask": masks, "labels": labels}), counts


class ChatTemplateRecipe:
    """How the maintained GLM labs load and prompt their model: a native Transformers model with a
    chat template (GLM-4-9B-chat ``-hf``). :func:`chat_qlora` calls these four methods; the course
    variant of ``labs/chatglm-qlora`` (ChatGLM3-6B's remote code) gives its own."""

    def tokenizer(self, path: str, revision: str | None):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, revision=revision)

    def tokenize(self, rows, columns, tokenizer, max_input: int, max_output: int, policy: str):
        """``(Dataset of input_ids / attention_mask / labels, counts)``: :func:`tokenize_chat`."""
        return tokenize_chat(rows, columns, tokenizer, max_input, max_output, policy)

    def model(self, path: str, quantization: dict, device: str, attn: str, revision: str | None):
        """The model in 4-bit (:func:`load_4bit`)."""
        return load_4bit(path, quantization, device, attn, revision)

    def answer(self, model, tokenizer, contents: list[str], max_new_tokens: int) -> list[dict]:
        """Greedy answers to ``contents`` as one user turn each, through the chat template."""
        prompts = [chat_prompt(tokenizer, c) for c in contents]
        return generate(model, tokenizer, prompts, max_new_tokens, prompt_special_tokens=False)


def train_between_evaluations(trainer, train_data, out: Path, title: str) -> dict:
    """``trainer.train()`` between two evaluations (eval mode: dropout off) of the training set and the
    held-out set (every rank takes part when several train), then ``loss_curve.png`` from
    ``out/train_log.jsonl`` (rank 0).

    Returns:
        ``{"train_before", "eval_before", "train_after", "eval_after"}`` (mean token cross-entropy,
        nats) and ``"result"`` (``trainer.train()``'s ``TrainOutput``).
    """
    losses = {"train_before": trainer.evaluate(train_data, metric_key_prefix="train")["train_loss"]}
    losses["eval_before"] = trainer.evaluate()["eval_loss"]
    losses["result"] = trainer.train()
    losses["train_after"] = trainer.evaluate(train_data, metric_key_prefix="train")["train_loss"]
    losses["eval_after"] = trainer.evaluate()["eval_loss"]
    if trainer.is_world_process_zero():  # one writer when several processes train (the log is rank 0's)
        plot_loss(out / "train_log.jsonl", out / "loss_curve.png", title)
    return losses


def save_adapter(model, tokenizer, out: Path, probe_ids: list[int]) -> tuple[Path, dict, torch.Tensor]:
    """Save the adapter and tokenizer to ``out/adapter`` and the trained model's logits on one probe
    row (``probe_ids``), for the reload check; drops an empty ``out/checkpoints``.

    Returns:
        ``(adapter folder, probe batch {"input_ids": (1, len) long}, logits (1, len, vocab) float32)``.
    """
    from labkit.rundir import remove_if_empty

    adapter_dir = out / "adapter"
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    probe = {"input_ids": torch.tensor([probe_ids])}
    trained_logits = logits_on(model, probe)
    remove_if_empty(out / "checkpoints")
    return adapter_dir, probe, trained_logits


def chat_qlora(ctx, dsd, columns: tuple[str, str], lengths_cfg: tuple[int, int], recipe=None) -> dict:
    """Steps 2-6 of the GLM chat labs (course chapters 9-10), on ``dsd`` (``train``, ``validation``).

    2. prompts through the chat template, answers as the only targets (:func:`tokenize_chat`);
    3. the model in 4-bit NF4 + double quant (``model.quantization``), ``prepare_model_for_kbit_training``,
       LoRA (``lora``: PEFT's ``LoraConfig`` names); with ``load_in_4bit: false`` the model in bf16 and
       plain LoRA (the npu variants; an NPU refuses 4-bit, :func:`check_device_support`);
    4. ``Trainer`` (``training``: ``TrainingArguments`` names); losses before and after, eval mode;
    5. the adapter saved, reloaded on a fresh base prepared as for training, logits compared;
    6. held-out prompts answered with the adapter disabled (exactly the base model) and enabled,
       through the same chat template (``predictions.jsonl``).

    ``ctx`` is the lab's ``RunContext`` (its config holds the sections above, ``seed``, ``model``,
    ``attn_implementation``, ``generation`` and ``data.bad_text``); ``recipe`` loads and prompts the
    model (default :class:`ChatTemplateRecipe`). Returns the metrics of steps 2-6.
    """
    import gc
    import json

    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from labkit.metrics import JsonlLogger, training_summary

    cfg, out = ctx.config, ctx.run_dir
    recipe = recipe or ChatTemplateRecipe()
    quantization = cfg["model"]["quantization"]
    check_device_support(quantization, cfg["training"]["bf16"], ctx.device)  # an NPU: bf16 LoRA only
    # 2. Tokenizer and chat template; prompt and answer tokenized separately, the prompt masked.
    model_path = cfg["model"]["name_or_path"]
    if cfg["model"]["build_tiny"]:
        from labkit.tiny import build_tiny_glm

        texts = [r[c] for split in dsd.values() for r in split for c in columns]
        model_path = str(build_tiny_glm(out / "tiny-model", texts, seed=cfg["seed"], **cfg["model"]["tiny"]))
    tokenizer = recipe.tokenizer(model_path, cfg["model"]["revision"])
    data, lengths = {}, {}
    for split in dsd:
        data[split], lengths[split] = recipe.tokenize(
            dsd[split], columns, tokenizer, *lengths_cfg, cfg["data"]["bad_text"]
        )

    # 3. The model in 4-bit, prepared for k-bit training, with LoRA.
    attn = attention(cfg["attn_implementation"], ctx.device)
    model = recipe.model(model_path, quantization, ctx.device, attn, cfg["model"]["revision"])
    model = prepare_for_training(model, quantization)
    model = get_peft_model(model, LoraConfig(**cfg["lora"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"data: {len(data['train'])} train / {len(data['validation'])} held-out rows; attention: {attn}")
    print(f"trainable params: {trainable:,} || all params: {total:,}", flush=True)
    counts = quantization_counts(model)

    # 4. Trainer; losses before and after, in eval mode, on the training rows and the held-out ones.
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        seed=cfg["seed"],
        **cfg["training"],
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True),
        callbacks=[JsonlLogger(out / "train_log.jsonl")],
    )
    losses = train_between_evaluations(trainer, data["train"], out, f"{ctx.lab.name} ({ctx.profile})")

    # 5. Save the adapter and tokenizer; reload on a fresh base prepared as for training; same logits.
    adapter_dir, probe, trained_logits = save_adapter(model, tokenizer, out, data["validation"][0]["input_ids"])
    del trainer, model
    gc.collect()
    if ctx.device in ("cuda", "npu"):
        getattr(torch, ctx.device).empty_cache()
    base = recipe.model(model_path, quantization, ctx.device, attn, cfg["model"]["revision"])
    if quantized(quantization):  # as training saw it; a bf16 base (npu variant) stays as loaded
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    reloaded = PeftModel.from_pretrained(base, adapter_dir)
    max_diff = float((logits_on(reloaded, probe) - trained_logits).abs().max())

    # 6. Before/after, done right: the same chat-template prompts with the adapter disabled (exactly
    #    the base model; the course's "before" ran after PeftModel.from_pretrained had injected LoRA
    #    into the base in place, and its "after" skipped the chat template) and enabled.
    rows = [dsd["validation"][i] for i in range(min(cfg["generation"]["samples"], len(dsd["validation"])))]
    contents = [r[columns[0]] for r in rows]
    n = cfg["generation"]["max_new_tokens"]
    with reloaded.disable_adapter():
        before = recipe.answer(reloaded, tokenizer, contents, n)
    after = recipe.answer(reloaded, tokenizer, contents, n)
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for row, b, a in zip(rows, before, after):
            record = {"prompt": row[columns[0]], "reference": row[columns[1]], "before": b, "after": a}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {
        "attn_implementation": attn,
        "lengths": lengths,
        "train_examples": len(data["train"]),
        "eval_examples": len(data["validation"]),
        "lora": {"trainable_params": trainable, "all_params": total},
        "quantization": counts,
        "train": training_summary(losses["train_before"], losses["train_after"], losses["result"]),
        "eval": {"loss_before": losses["eval_before"], "loss_after": losses["eval_after"]},
        "generation": {
            "samples": len(after),
            "changed_by_tuning": sum(b["text"] != a["text"] for b, a in zip(before, after)) / len(after),
            "stopped_with_eos_before": sum(g["stopped"] for g in before) / len(before),
            "stopped_with_eos_after": sum(g["stopped"] for g in after) / len(after),
        },
        "reload": {"max_abs_logit_diff": max_diff},
    }


GLM_BENCH_ARCHS = {
    "full": {},  # Transformers' GlmConfig() defaults are GLM-4-9B's config.json
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=1000,
        pad_token_id=0,
        eos_token_id=[1],
    ),
}


def glm_bench(lab: str, tokens: int, arch: str, device: str):
    """A :class:`labkit.bench.Bench` of the GLM chat labs' training step (``invoke bench``).

    GLM-4-9B's architecture (``arch="full"``: hidden 4096, 40 layers, 32 query / 2 key-value heads,
    MLP 13,696, vocabulary 151,552; ``"tiny"`` for the CPU self-test) with random weights, saved in
    bf16 (19 GB of disk at full size) and loaded as the lab ``lab`` loads it: its full profile's
    4-bit settings and LoRA, ``Trainer`` at its ``training`` settings (bf16 on CUDA, gradient
    checkpointing), on random rows of ``tokens`` tokens. MFU counts ``6 x non-embedding
    parameters`` FLOPs per trained token (Kaplan et al. 2020, sec. 2.1).
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import GlmConfig, GlmForCausalLM, Trainer, TrainingArguments

    from labkit.bench import Bench, RandomTokens, bench_training, non_embedding_params, scratch_dir, train_steps
    from labkit.config import get_lab, load_profile

    cfg = load_profile(get_lab(lab), "full")[0]
    folder = scratch_dir()
    torch.manual_seed(0)
    config = GlmConfig(**GLM_BENCH_ARCHS[arch])
    model = GlmForCausalLM(config)
    params = non_embedding_params(model)
    model.to(torch.bfloat16).save_pretrained(folder)
    del model

    def step(batch: int, n: int, variant: str = "") -> tuple[list[float], dict]:
        model = load_4bit(folder, cfg["model"]["quantization"], device, "sdpa")
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(model, LoraConfig(**cfg["lora"]))
        training = bench_training(cfg["training"], batch, n, device)
        training["bf16"] = device == "cuda"
        args = TrainingArguments(
            output_dir=scratch_dir(), gradient_checkpointing_kwargs={"use_reentrant": False}, **training
        )
        shape = ((tokens,), torch.long, config.vocab_size)
        rows = RandomTokens(batch * n, {"input_ids": shape, "labels": shape})
        return train_steps(Trainer(model=model, args=args, train_dataset=rows), device)

    return Bench(
        what=f"GLM-4-9B architecture ({arch}), random weights, NF4 + double quant, LoRA r={cfg['lora']['r']} on "
        f"q/k/v, Trainer, rows of {tokens} tokens",
        setting="per_device_train_batch_size",
        default_batch=cfg["training"]["per_device_train_batch_size"],
        tokens_per_sample=tokens,
        flops_per_token=6.0 * params,
        flops_note=f"6 x {params:,} non-embedding parameters per trained token (Kaplan et al. 2020, sec. 2.1)",
        step=step,
    )
