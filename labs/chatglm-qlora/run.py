"""Course chapter 9 lab: QLoRA fine-tuning of a GLM chat model on AdvertiseGen ("实战 QLoRA 微调 ChatGLM3-6B").

The course loads ``THUDM/chatglm3-6b`` (remote code) in 4-bit NF4 with double quantization, puts a
LoRA adapter (r=4, lora_alpha=32, dropout 0.05) on its attention projection, and trains 100 steps
(batch 16 x 4, learning rate 1e-3, linear schedule) on AdvertiseGen: garment attributes
(``content``, e.g. ``类型#裙*颜色#蓝色``) in, Chinese ad copy (``summary``) out, the prompt masked
from the loss. The maintained variant does the same on GLM-4-9B-chat in Transformers' own
``GlmForCausalLM`` (no remote code); the smoke profile on a tiny GLM and bundled rows, on a CPU.

    python labs/chatglm-qlora/run.py --profile smoke [--set learning_rate=0]
    python labs/chatglm-qlora/run.py --profile course-full    # ChatGLM3-6B, course libraries (own image)

Steps: 1. data; 2. prompts through the chat template and the exact loss mask; 3. the 4-bit model
(``BitsAndBytesConfig``), ``prepare_model_for_kbit_training`` and LoRA (``LoraConfig``,
``get_peft_model``); 4. ``Trainer``, losses before and after; 5. save, reload with ``PeftModel``, check
the logits; 6. answers on held-out attributes with the adapter disabled (the base model) and enabled,
the same prompts. The course variant loads and prompts ChatGLM3-6B through ``course.py`` (the same
four calls: tokenizer, tokenize, model, answer).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this lab's modules
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # labkit, when run as a script
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

from labkit.errors import LabError
from labkit.lab.data import hub_or_files_fingerprint
from labkit.lab.llm.chat import ChatTemplateModel
from labkit.lab.llm.checks import check_device_support, quantization_counts, quantized
from labkit.lab.llm.generation import compare_before_after, logits_on
from labkit.lab.llm.loading import attention
from labkit.lab.llm.training import release, save_adapter, train_between_evaluations
from labkit.lab.metrics import JsonlLogger, training_summary
from labkit.lab.runner import RunContext, main
from labkit.lab.tiny import build_tiny_glm

from adgen import load_adgen


def run(ctx: RunContext) -> dict:
    cfg = ctx.config

    # 1. Data: AdvertiseGen rows (content -> summary), text columns checked.
    dsd, dropped = load_adgen(cfg["data"], ctx.repo_root)

    data = {
        "train_examples": len(dsd["train"]),
        "eval_examples": len(dsd["validation"]),
        "dropped_rows": dropped,
        "fingerprint": hub_or_files_fingerprint(cfg["data"], ctx.repo_root, ("train", "validation")),
    }
    columns = ("content", "summary")

    # The course variant (ChatGLM3-6B's remote code, course libraries): its own tokenizer and model.
    chat = ChatTemplateModel()
    if cfg["model"]["trust_remote_code"]:
        from course import ChatGLM3Model, course_stack, tokenize_check

        chat, stack = ChatGLM3Model(), course_stack()
        if not cfg["run_training"]:  # course-smoke: what runs offline on a CPU, the rest said and skipped
            return {"data": data, "course_stack": stack, **course_smoke(cfg, dsd, columns, chat, tokenize_check)}
    out = ctx.run_dir

    # 2. Tokenizer and prompts: the chat template around the input, the answer and its end-of-text the
    #    only targets (prompt and answer tokenized separately: the mask falls exactly on the answer).
    model_path, revision = cfg["model"]["name_or_path"], cfg["model"]["revision"]
    if cfg["model"]["build_tiny"]:
        texts = [row[c] for split in dsd.values() for row in split for c in columns]
        model_path = str(build_tiny_glm(out / "tiny-model", texts, seed=cfg["seed"], **cfg["model"]["tiny"]))
    tokenizer = chat.tokenizer(model_path, revision)
    tokenized, lengths = {}, {}
    for split in dsd:
        tokenized[split], lengths[split] = chat.tokenize(
            dsd[split], columns, tokenizer, cfg["max_input_length"], cfg["max_output_length"], cfg["data"]["bad_text"]
        )

    # 3. The model in 4-bit NF4 + double quantization (BitsAndBytesConfig from model.quantization),
    #    prepared for k-bit training, with a LoRA adapter (bf16 LoRA where the profile loads no 4-bit).
    quantization = cfg["model"]["quantization"]
    check_device_support(quantization, cfg["training"]["bf16"], ctx.device)  # an NPU: bf16 LoRA only
    attn = attention(cfg["attn_implementation"], ctx.device)
    model = chat.model(model_path, quantization, ctx.device, attn, revision)
    if quantized(quantization):
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(**cfg["lora"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"data: {len(tokenized['train'])} train / {len(tokenized['validation'])} held-out rows; attention: {attn}")
    print(f"trainable params: {trainable:,} || all params: {total:,}", flush=True)
    counts = quantization_counts(model)  # every decoder Linear must be 4-bit (none left plain)

    # 4. Trainer (TrainingArguments from `training`); losses before and after, in eval mode.
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        seed=cfg["seed"],
        **cfg["training"],
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True),
        callbacks=[JsonlLogger(out / "train_log.jsonl")],
    )
    losses = train_between_evaluations(trainer, tokenized["train"], out, f"{ctx.lab.name} ({ctx.profile})")

    # 5. Save the adapter; reload it with PeftModel on a fresh base prepared as for training: same logits.
    adapter_dir, probe, trained_logits = save_adapter(model, tokenizer, out, tokenized["validation"][0]["input_ids"])
    del trainer, model
    release(ctx.device)
    base = chat.model(model_path, quantization, ctx.device, attn, revision)
    if quantized(quantization):
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    reloaded = PeftModel.from_pretrained(base, adapter_dir)
    max_diff = float((logits_on(reloaded, probe) - trained_logits).abs().max())

    # 6. Before/after, done right: the same prompts with the adapter disabled (exactly the base model)
    #    and enabled, both through the chat template.
    rows = dsd["validation"].select(range(min(cfg["generation"]["samples"], len(dsd["validation"]))))
    contents, n = rows[columns[0]], cfg["generation"]["max_new_tokens"]
    with reloaded.disable_adapter():
        before = chat.answer(reloaded, tokenizer, contents, n)
    after = chat.answer(reloaded, tokenizer, contents, n)
    records = [{"prompt": row[columns[0]], "reference": row[columns[1]]} for row in rows]
    generation = compare_before_after(before, after, records, out / "predictions.jsonl")

    data.update(train_examples=len(tokenized["train"]), eval_examples=len(tokenized["validation"]), lengths=lengths)
    return {
        "data": data,
        "attn_implementation": attn,
        "lora": {"trainable_params": trainable, "all_params": total},
        "quantization": counts,
        "train": training_summary(losses["train_before"], losses["train_after"], losses["result"]),
        "eval": {"loss_before": losses["eval_before"], "loss_after": losses["eval_after"]},
        "generation": generation,
        "reload": {"max_abs_logit_diff": max_diff},
    }


def course_smoke(cfg: dict, dsd, columns, chat, tokenize_check) -> dict:
    """The course variant's smoke: step 2 with the remote tokenizer when the cache holds it; steps
    3-6 need a CUDA GPU with these libraries (bitsandbytes 0.43) and the 6B model: course-full."""
    later = "needs a CUDA GPU (bitsandbytes 0.43 has no CPU backend) and the 6B model: PROFILE=course-full"
    not_run = {prefix: later for prefix in ("lora.", "quantization.", "train.", "eval.", "generation.", "reload.")}
    try:
        return {"tokenize": tokenize_check(chat, cfg, dsd, columns), "not_run": not_run}
    except LabError as exc:
        print(f"step 2 skipped: {exc}", flush=True)
        model = f"{cfg['model']['name_or_path']}@{cfg['model']['revision']}"
        return {"not_run": {"tokenize.": f"needs the Hub (remote code {model}, not in the cache)", **not_run}}


if __name__ == "__main__":
    raise SystemExit(main("chatglm-qlora", run))
