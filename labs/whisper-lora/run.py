"""Course chapter 7 lab: LoRA fine-tuning of Whisper for Mandarin speech recognition.

The full profile follows the course: ``openai/whisper-large-v2`` loaded in int8, a LoRA adapter
(r=4, lora_alpha=64, dropout 0.05 on q_proj/v_proj), Common Voice zh-CN sub-sampled to 640 training
and 320 evaluation clips, one epoch at batch 64 and learning rate 1e-3. The smoke profile runs the
same steps on a tiny Whisper and twelve bundled clips, on a CPU, in about a minute.

    python labs/whisper-lora/run.py --profile smoke [--set learning_rate=0] [--output-root outputs]

Outputs (in ``outputs/whisper-lora/<profile>/<UTC time>/``): ``adapter/`` (LoRA weights, config and
processor), ``metrics.json``, ``train_log.jsonl``, ``loss_curve.png``, ``predictions.jsonl``, ``manifest.json``.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this lab's modules
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # labkit, when run as a script
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import torch
from peft import PeftModel
from transformers import WhisperConfig, WhisperProcessor

from labkit.lab.audio import decode
from labkit.lab.device import peak_memory_bytes
from labkit.lab.llm.generation import logits_on
from labkit.lab.metrics import JsonlLogger, plot_loss, training_summary
from labkit.lab.runner import RunContext, main
from labkit.lab.tiny import build_tiny_whisper
from labkit.rundir import remove_if_empty

from data import (
    DataCollatorSpeechSeq2SeqWithPadding,
    check_label_lengths,
    data_fingerprint,
    load_splits,
    prepare_example,
)
from evaluate_asr import cer, transcribe
from train import add_lora, build_trainer, load_base_model


def run(ctx: RunContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir

    # 1. Data: Common Voice zh-CN (train+dev to train, test to evaluate), resampled to 16 kHz.
    dsd, dropped = load_splits(cfg["data"], ctx.repo_root)
    rate = cfg["data"]["sampling_rate"]

    # The smoke profile builds a tiny Whisper whose vocabulary covers the bundled transcripts.
    model_path = cfg["model"]["name_or_path"]
    if cfg["model"]["build_tiny"]:
        texts = list(dsd["train"]["sentence"]) + list(dsd["test"]["sentence"])
        model_path = str(build_tiny_whisper(out / "tiny-model", texts, seed=cfg["seed"]))

    processor = WhisperProcessor.from_pretrained(
        model_path, revision=cfg["model"]["revision"], language=cfg["language"], task=cfg["task"]
    )
    tokenized = dsd.map(
        prepare_example, fn_kwargs={"processor": processor, "sampling_rate": rate}, remove_columns=["audio", "sentence"]
    )
    source_rates = sorted({r for split in tokenized.values() for r in split["source_rate"]})
    durations = [d for split in tokenized.values() for d in split["duration_s"]]
    hours = sum(durations) / 3600
    over = sum(d > 30 for d in durations)  # Whisper sees 30 s windows: the feature extractor cuts the rest
    print(
        f"data: {len(dsd['train'])} train / {len(dsd['test'])} test clips, {hours:.2f} h, "
        f"{', '.join(map(str, source_rates))} Hz -> {rate} Hz"
        + (f"; WARNING: {over} clip(s) longer than 30 s are cut to their first 30 s for training" if over else ""),
        flush=True,
    )
    max_tokens = WhisperConfig.from_pretrained(model_path, revision=cfg["model"]["revision"]).max_target_positions
    too_long = {}
    for split in tokenized:
        tokenized[split], n = check_label_lengths(tokenized[split], max_tokens, cfg["data"]["bad_text"])
        too_long.update({split: n} if n else {})
    tokenized = tokenized.select_columns(["input_features", "labels"])

    # 2. Model: int8 Whisper + LoRA adapter.
    model = load_base_model(model_path, cfg["model"]["load_in_8bit"], ctx.device, cfg["model"]["revision"])
    model = add_lora(model, cfg["lora"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"trainable params: {trainable:,} || all params: {total:,}", flush=True)

    # 3. Train with Seq2SeqTrainer; measure the training-set loss before and after (eval mode).
    collator = DataCollatorSpeechSeq2SeqWithPadding(processor, model.config.decoder_start_token_id)
    trainer = build_trainer(
        model,
        cfg["training"],
        out / "checkpoints",
        tokenized["train"],
        tokenized["test"],
        collator,
        processor.feature_extractor,
        callbacks=[JsonlLogger(out / "train_log.jsonl")],
    )
    loss_before = trainer.evaluate(tokenized["train"], metric_key_prefix="train")["train_loss"]
    result = trainer.train()
    loss_after = trainer.evaluate(tokenized["train"], metric_key_prefix="train")["train_loss"]
    eval_loss = trainer.evaluate()["eval_loss"]
    train_peak = peak_memory_bytes(ctx.device)
    plot_loss(out / "train_log.jsonl", out / "loss_curve.png", f"{ctx.lab.name} ({ctx.profile})")

    # 4. Save the adapter (and the processor, so inference needs only this folder and the base id).
    adapter_dir = out / "adapter"
    model.save_pretrained(adapter_dir)
    processor.save_pretrained(adapter_dir)
    probe = collator([tokenized["test"][i] for i in range(min(2, len(tokenized["test"])))])
    trained_logits = logits_on(model, probe)
    remove_if_empty(out / "checkpoints")  # the Trainer's output_dir: empty with save_strategy "no"
    del trainer, model
    gc.collect()
    if ctx.device == "cuda":
        torch.cuda.empty_cache()

    # 5. Reload: base model + PeftModel.from_pretrained, check it reproduces the trained logits,
    #    then transcribe the test clips without (before) and with (after) the adapter.
    base = load_base_model(model_path, cfg["model"]["load_in_8bit"], ctx.device, cfg["model"]["revision"])
    reloaded = PeftModel.from_pretrained(base, adapter_dir)
    max_diff = float((logits_on(reloaded, probe) - trained_logits).abs().max())
    generate_kwargs = {"language": cfg["language"], "task": cfg["task"], **cfg["generation"]}
    audio = [decode(a, rate, name=p) for a, p in zip(dsd["test"]["audio"], dsd["test"]["path"])]
    with reloaded.disable_adapter():
        before = transcribe(reloaded, processor, audio, generate_kwargs, cfg["eval_batch_size"])
    after = transcribe(reloaded, processor, audio, generate_kwargs, cfg["eval_batch_size"])
    refs = list(dsd["test"]["sentence"])
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for path, ref, b, a in zip(dsd["test"]["path"], refs, before, after):
            f.write(json.dumps({"path": path, "reference": ref, "before": b, "after": a}, ensure_ascii=False) + "\n")

    saved = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    return {
        "data": {
            "train_examples": len(tokenized["train"]),
            "eval_examples": len(dsd["test"]),
            "source_sampling_rates": source_rates,
            "audio_hours": round(hours, 4),
            "clips_over_30s": over,
            "dropped_rows": {**dropped, **({"labels_too_long": too_long} if too_long else {})},
            "fingerprint": data_fingerprint(cfg["data"], ctx.repo_root),
            "sampling_rate": cfg["data"]["sampling_rate"],
            "input_features_shape": list(probe["input_features"].shape[1:]),
        },
        "lora": {"trainable_params": trainable, "all_params": total},
        "adapter": {
            "r": saved["r"],
            "lora_alpha": saved["lora_alpha"],
            "lora_dropout": saved["lora_dropout"],
            "target_modules": sorted(saved["target_modules"]),
        },
        "train": {
            **training_summary(loss_before, loss_after, result),
            "peak_memory_bytes": train_peak,
            "effective_batch": cfg["training"]["per_device_train_batch_size"]
            * cfg["training"]["gradient_accumulation_steps"],
        },
        "eval": {
            "eval_loss": eval_loss,
            "cer_before": cer(refs, before),
            "cer_after": cer(refs, after),
            "transcripts": sum(1 for t in after if t is not None),
        },
        "reload": {"max_abs_logit_diff": max_diff},
    }


if __name__ == "__main__":
    raise SystemExit(main("whisper-lora", run))
