"""Course chapters 13-14 lab: instruction tuning LLaMA-2-7B on Dolly-15k with TRL (QLoRA, SFTTrainer).

The full profile follows the course: ``Llama-2-7b-hf`` in 4-bit NF4 with double quantization and bf16
compute, a LoRA adapter (r=16, lora_alpha=16, dropout 0.1 on q_proj/v_proj), ``SFTTrainer`` on
databricks-dolly-15k in the course's inverted Alpaca-style task for 100 steps at batch 3 and
learning rate 2e-4 (constant), then the adapter is saved, reloaded and compared with the base model
on held-out rows. The smoke profile runs the same steps on a tiny Llama 2 and bundled rows, on a CPU.

    python labs/llama2-sft/run.py --profile smoke [--set learning_rate=0] [--set task=standard]

Outputs (``outputs/llama2-sft/<profile>/<UTC time>/``): ``adapter/``, ``metrics.json``,
``train_log.jsonl``, ``loss_curve.png``, ``predictions.jsonl`` (held-out rows: prompt, reference,
before, after, whether each stopped with ``</s>``), ``tensorboard/``, ``manifest.json``.
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
from datasets import Dataset, DatasetDict, load_dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer

from labkit.errors import LabError
from labkit.lab.data import check_texts, hub_or_files_fingerprint, load_hub_or_files, subsample
from labkit.lab.llm.checks import check_device_support, check_packing, quantization_counts, quantized
from labkit.lab.llm.generation import generate, logits_on
from labkit.lab.llm.loading import attention, load_causal_lm, prepare_for_training
from labkit.lab.llm.training import save_adapter, train_between_evaluations, trained_tokens
from labkit.lab.metrics import JsonlLogger, training_summary
from labkit.lab.runner import RunContext, main
from labkit.lab.tiny import build_tiny_llama

from sft import check_categories, completion_of, encode, prompt_text

COLUMNS = ("instruction", "context", "response", "category")
TEXT_COLUMNS = ("instruction", "response")  # context is empty for most categories in Dolly


def load_dolly(cfg: dict, repo_root: Path) -> tuple[DatasetDict, dict]:
    """``DatasetDict(train, test)`` of Dolly rows and ``{split: {reason: rows dropped}}``.

    ``source: hub`` loads databricks-dolly-15k's one split and holds out ``eval_samples`` rows with
    ``train_test_split(seed=shuffle_seed)``; ``source: files`` reads a train and a test file.

    Raises:
        LabError: a missing file or column, an empty instruction or response, or a category that is
            not Dolly's (under ``bad_text: fail``; each names the file, line and column).
    """
    policy = cfg.get("bad_text", "fail")
    dropped: dict = {}
    if cfg["source"] == "hub":
        rows = load_dataset(cfg["hub_dataset"], split="train", revision=cfg["hub_revision"])
        where = f"{cfg['hub_dataset']} split train"
        rows, counts = check_texts(rows, TEXT_COLUMNS, policy, where)
        rows, bad_category = check_categories(rows, policy, where, first_line=None)
        dropped["train"] = {**counts, **({"category": bad_category} if bad_category else {})}
        dsd = rows.train_test_split(test_size=cfg["eval_samples"], seed=cfg["shuffle_seed"])
        dsd = DatasetDict(train=dsd["train"], test=dsd["test"])
    else:
        dsd, dropped = load_hub_or_files(cfg, repo_root, ("train", "test"), COLUMNS, TEXT_COLUMNS)
        for split in dsd:
            dsd[split], n = check_categories(dsd[split], policy, str(repo_root / cfg["files"][split]))
            if n:
                dropped.setdefault(split, {})["category"] = n
    sizes = {"train": cfg["train_samples"], "test": None if cfg["source"] == "hub" else cfg["eval_samples"]}
    return subsample(dsd, sizes, cfg["shuffle_seed"]), {k: v for k, v in dropped.items() if v}


def tokenized(rows: Dataset, task: str, tokenizer, max_length: int, policy: str) -> tuple[Dataset, dict]:
    """Rows as ``input_ids`` and ``labels`` (-100 on the prompt), with counts of inputs cut to fit
    ``max_length`` and of rows whose completion alone does not fit (dropped, or an error under ``fail``)."""
    ids, labels, cut, too_long = [], [], 0, []
    for i, row in enumerate(rows):
        enc = encode(row, task, tokenizer, max_length)
        if enc is None:
            too_long.append(i)
            continue
        cut += enc.input_cut
        ids.append(enc.input_ids)
        labels.append([t if m else -100 for t, m in zip(enc.input_ids, enc.completion_mask)])
    if too_long and policy == "fail":
        raise LabError(
            f"row {too_long[0]}: its completion ({completion_of(rows[too_long[0]], task)[:60]!r}...) does not fit "
            f"max_length={max_length} even with an empty input; {len(too_long)} row(s) like it. Raise max_length, "
            "or set data.bad_text=drop to drop them (counted)."
        )
    return Dataset.from_dict({"input_ids": ids, "labels": labels}), {
        "inputs_cut": cut,
        "dropped_too_long": len(too_long),
    }


def load_base(path: str, cfg: dict, device: str, attn: str, revision: str | None = None):
    """The base model in 4-bit (``model.quantization``: BitsAndBytesConfig settings), the course's way;
    in bf16 when ``load_in_4bit`` is false (the npu variant's bf16 LoRA)."""
    model = load_causal_lm(path, cfg["quantization"], device, attn, revision)
    model.config.pretraining_tp = 1  # as the course: no tensor-parallel slicing of the MLP
    return model


def run(ctx: RunContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir
    task, train_cfg = cfg["task"], cfg["training"]

    # 0. What this device can run, refused in one line before any download: quantization (an NPU has
    #    no bitsandbytes backend in the PyPI wheels: bf16 LoRA there) and bf16 (not on a T4 or a 910A).
    check_device_support(cfg["model"]["quantization"], train_cfg["bf16"], ctx.device)

    # 1. Data: Dolly rows, checked; prompt/completion text in the course's template.
    dsd, dropped = load_dolly(cfg["data"], ctx.repo_root)

    # 2. Tokenizer (pad = <unk>, not </s>) and the exact loss mask; the 4-bit (or bf16) model with LoRA.
    model_path = cfg["model"]["name_or_path"]
    if cfg["model"]["build_tiny"]:  # the same seed on every rank: the same model, each rank its own copy
        texts = [prompt_text(r, task) + completion_of(r, task) for split in dsd.values() for r in split]
        where = out / "tiny-model" if ctx.is_main else out / "ranks" / f"rank{ctx.rank}" / "tiny-model"
        model_path = str(build_tiny_llama(where, texts, seed=cfg["seed"], **cfg["model"]["tiny"]))
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=cfg["model"]["revision"])
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = "right"
    data, lengths = {}, {}
    for split in dsd:
        data[split], lengths[split] = tokenized(
            dsd[split], task, tokenizer, train_cfg["max_length"], cfg["data"]["bad_text"]
        )
    attn = attention(cfg["attn_implementation"], ctx.device)
    check_packing(train_cfg["packing"], attn)
    print(f"data: {len(data['train'])} train / {len(data['test'])} held-out rows; attention: {attn}", flush=True)
    model = load_base(model_path, cfg["model"], ctx.device, attn, cfg["model"]["revision"])
    model = prepare_for_training(model, cfg["model"]["quantization"])
    model = get_peft_model(model, LoraConfig(**cfg["lora"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"trainable params: {trainable:,} || all params: {total:,}", flush=True)
    counts = quantization_counts(model)  # every decoder Linear 4-bit (lm_head stays bf16, as in the course), or none

    # 3. SFTTrainer; losses before and after, in eval mode, on the training rows and the held-out ones.
    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        seed=cfg["seed"],
        **train_cfg,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=tokenizer,
        callbacks=[JsonlLogger(out / "train_log.jsonl")],
    )
    losses = train_between_evaluations(trainer, data["train"], out, f"{ctx.lab.name} ({ctx.profile})")
    result = losses["result"]
    if not ctx.is_main:  # several processes (NPROC): saving, reloading and generating are rank 0's
        return {}

    # 4. Save the adapter (and tokenizer), reload it on a fresh base, check it reproduces the logits.
    adapter_dir, probe, trained_logits = save_adapter(model, tokenizer, out, data["test"][0]["input_ids"])
    del trainer, model
    gc.collect()
    if ctx.device in ("cuda", "npu"):
        getattr(torch, ctx.device).empty_cache()
    # The base as training saw it (prepare_model_for_kbit_training keeps norms and embeddings in fp32)
    # and the adapter in bf16, as TRL trains a quantized model's adapter (QLoRA paper, sec. 3); a bf16
    # base (npu variant) as loaded, its adapter in fp32 as get_peft_model made it.
    base = load_base(model_path, cfg["model"], ctx.device, attn, cfg["model"]["revision"])
    is_quantized = quantized(cfg["model"]["quantization"])
    if is_quantized:
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    reloaded = PeftModel.from_pretrained(base, adapter_dir, autocast_adapter_dtype=not is_quantized)
    max_diff = float((logits_on(reloaded, probe) - trained_logits).abs().max())

    # 5. Generate on held-out rows without the adapter (before) and with it (after), same prompts.
    rows = [dsd["test"][i] for i in range(min(cfg["generation"]["samples"], len(dsd["test"])))]
    prompts = [prompt_text(r, task) for r in rows]
    with reloaded.disable_adapter():
        before = generate(reloaded, tokenizer, prompts, cfg["generation"]["max_new_tokens"])
    after = generate(reloaded, tokenizer, prompts, cfg["generation"]["max_new_tokens"])
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for row, prompt, b, a in zip(rows, prompts, before, after):
            record = {"category": row["category"], "prompt": prompt, "reference": completion_of(row, task)}
            f.write(json.dumps({**record, "before": b, "after": a}, ensure_ascii=False) + "\n")

    return {
        "task": task,
        "attn_implementation": attn,
        "packing": train_cfg["packing"],
        "data": {
            "train_examples": len(data["train"]),
            "eval_examples": len(data["test"]),
            "categories": sorted(set(dsd["train"]["category"])),
            "lengths": lengths,
            "dropped_rows": dropped,
            "fingerprint": hub_or_files_fingerprint(cfg["data"], ctx.repo_root, ("train", "test")),
        },
        "lora": {"trainable_params": trainable, "all_params": total},
        "quantization": counts,
        "train": {
            **training_summary(losses["train_before"], losses["train_after"], result),
            # TRL logs the tokens trained on (prompt and completion, no padding) as num_tokens.
            "tokens_per_second": round(trained_tokens(out / "train_log.jsonl") / result.metrics["train_runtime"], 1),
        },
        "eval": {"loss_before": losses["eval_before"], "loss_after": losses["eval_after"]},
        "generation": {
            "samples": len(after),
            "stopped_with_eos_before": sum(g["stopped"] for g in before) / len(before),
            "stopped_with_eos_after": sum(g["stopped"] for g in after) / len(after),
        },
        "reload": {"max_abs_logit_diff": max_diff},
    }


if __name__ == "__main__":
    raise SystemExit(main("llama2-sft", run))
