"""Course chapter 9 lab: QLoRA fine-tuning of a GLM chat model on AdvertiseGen ("实战 QLoRA 微调 ChatGLM3-6B").

The course loads ``THUDM/chatglm3-6b`` (remote code) in 4-bit NF4 with double quantization, puts a
LoRA adapter (r=4, lora_alpha=32, dropout 0.05) on its attention projection, and trains 100 steps
(batch 16 x 4, learning rate 1e-3, linear schedule) on AdvertiseGen: garment attributes
(``content``, e.g. ``类型#裙*颜色#蓝色``) in, Chinese ad copy (``summary``) out, the prompt masked
from the loss. The maintained variant does the same on GLM-4-9B-chat in Transformers' own
``GlmForCausalLM`` (no remote code); the smoke profile on a tiny GLM and bundled rows, on a CPU.

    python labs/chatglm-qlora/run.py --profile smoke [--set learning_rate=0]

Steps: 1. data; 2. prompts through the chat template and the exact loss mask; 3. the 4-bit model
and LoRA; 4. Trainer, losses before and after; 5. save, reload, check the logits; 6. answers on
held-out attributes with the adapter disabled (the base model) and enabled, the same prompts.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this lab's modules
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # labkit, when run as a script
import labkit  # noqa: F401  (first: it quiets a bitsandbytes start-up message)

# isort: split

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

from labkit.data import hub_or_json_fingerprint
from labkit.metrics import JsonlLogger, plot_loss, training_summary
from labkit.qlora import attention, generate, load_4bit, logits_on, quantization_counts
from labkit.rundir import remove_if_empty
from labkit.runner import RunContext, main
from labkit.tiny import build_tiny_glm

from adgen import chat_prompt, load_adgen, tokenize_rows


def run(ctx: RunContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir

    # 1. Data: AdvertiseGen rows (content -> summary), text columns checked.
    dsd, dropped = load_adgen(cfg["data"], ctx.repo_root)

    # 2. Tokenizer and chat template; prompt and summary tokenized separately, prompt masked.
    model_path = cfg["model"]["name_or_path"]
    if cfg["model"]["build_tiny"]:
        texts = [t for split in dsd.values() for r in split for t in (r["content"], r["summary"])]
        model_path = str(build_tiny_glm(out / "tiny-model", texts, seed=cfg["seed"], **cfg["model"]["tiny"]))
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=cfg["model"]["revision"])
    data, lengths = {}, {}
    for split in dsd:
        data[split], lengths[split] = tokenize_rows(
            dsd[split], tokenizer, cfg["max_input_length"], cfg["max_output_length"], cfg["data"]["bad_text"]
        )

    # 3. The model in 4-bit NF4 + double quant, prepared for k-bit training, with LoRA.
    attn = attention(cfg["attn_implementation"], ctx.device)
    model = load_4bit(model_path, cfg["model"]["quantization"], ctx.device, attn, cfg["model"]["revision"])
    model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(**cfg["lora"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"data: {len(data['train'])} train / {len(data['validation'])} held-out rows; attention: {attn}")
    print(f"trainable params: {trainable:,} || all params: {total:,}", flush=True)
    quantized = quantization_counts(model)

    # 4. Trainer; losses before and after, in eval mode, on the training rows and the held-out ones.
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        seed=cfg["seed"],
        **cfg["training"],
    )
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=collator,
        callbacks=[JsonlLogger(out / "train_log.jsonl")],
    )
    train_before = trainer.evaluate(data["train"], metric_key_prefix="train")["train_loss"]
    eval_before = trainer.evaluate()["eval_loss"]
    result = trainer.train()
    train_after = trainer.evaluate(data["train"], metric_key_prefix="train")["train_loss"]
    eval_after = trainer.evaluate()["eval_loss"]
    plot_loss(out / "train_log.jsonl", out / "loss_curve.png", f"{ctx.lab.name} ({ctx.profile})")

    # 5. Save the adapter and tokenizer; reload on a fresh base prepared as for training; same logits.
    adapter_dir = out / "adapter"
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    probe = {"input_ids": torch.tensor([data["validation"][0]["input_ids"]])}
    trained_logits = logits_on(model, probe)
    remove_if_empty(out / "checkpoints")
    del trainer, model
    gc.collect()
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
    base = load_4bit(model_path, cfg["model"]["quantization"], ctx.device, attn, cfg["model"]["revision"])
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    reloaded = PeftModel.from_pretrained(base, adapter_dir)
    max_diff = float((logits_on(reloaded, probe) - trained_logits).abs().max())

    # 6. Before/after, done right: the same chat-template prompts, adapter disabled (exactly the base
    #    model; the course's "before" ran after PeftModel.from_pretrained had already injected LoRA
    #    into the base in place, and its "after" skipped the chat template) and enabled.
    rows = [dsd["validation"][i] for i in range(min(cfg["generation"]["samples"], len(dsd["validation"])))]
    prompts = [chat_prompt(tokenizer, r["content"]) for r in rows]
    n = cfg["generation"]["max_new_tokens"]
    with reloaded.disable_adapter():
        before = generate(reloaded, tokenizer, prompts, n, prompt_special_tokens=False)
    after = generate(reloaded, tokenizer, prompts, n, prompt_special_tokens=False)
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for row, b, a in zip(rows, before, after):
            record = {"content": row["content"], "reference": row["summary"], "before": b, "after": a}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    return {
        "attn_implementation": attn,
        "data": {
            "train_examples": len(data["train"]),
            "eval_examples": len(data["validation"]),
            "lengths": lengths,
            "dropped_rows": dropped,
            "fingerprint": hub_or_json_fingerprint(cfg["data"], ctx.repo_root, ("train", "validation")),
        },
        "lora": {"trainable_params": trainable, "all_params": total},
        "quantization": quantized,
        "train": training_summary(train_before, train_after, result),
        "eval": {"loss_before": eval_before, "loss_after": eval_after},
        "generation": {
            "samples": len(after),
            "changed_by_tuning": sum(b["text"] != a["text"] for b, a in zip(before, after)) / len(after),
            "stopped_with_eos_before": sum(g["stopped"] for g in before) / len(before),
            "stopped_with_eos_after": sum(g["stopped"] for g in after) / len(after),
        },
        "reload": {"max_abs_logit_diff": max_diff},
    }


if __name__ == "__main__":
    raise SystemExit(main("chatglm-qlora", run))
