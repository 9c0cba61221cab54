"""Course chapter 8 lab: GPTQ, AWQ and bitsandbytes quantization of OPT, measured against fp16.

Steps (the profile's ``steps``, in order): the fp16 baseline; GPTQ calibrated on wikitext-2 and on
your own data; AWQ; bitsandbytes 8-bit, 4-bit FP4, NF4, NF4 + double quantization and the QLoRA
setting. Each quantized model is saved, reloaded from disk and measured: weight footprint,
perplexity on held-out wikitext-2, quantization time, peak memory while quantizing and generating,
generation speed. Results: ``comparison.csv``/``.md``/``.png`` and ``metrics.json``. The console shows
one line per step (footprint, perplexity, time, speed); what the libraries print while they load,
train and quantize (GPTQModel's banner, tables and progress; Optimum's bars) goes to ``run.log``.

The full profile quantizes ``facebook/opt-2.7b`` on a GPU. The smoke profile builds a tiny OPT,
trains it for a few seconds on bundled wikitext-style text (so that perplexity means something) and
runs every step the installed libraries can run on a CPU; the others report ``skipped: needs CUDA``.

    python labs/quantization/run.py --profile smoke [--set gptq.bits=2]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

if (os.cpu_count() or 1) < 4:  # GPTQModel 7.6 gives its CPU pool 1 worker on 2 cores, then asks for 2
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
# No progress bars (the console shows the lab's steps and numbers): tqdm >= 4.66 takes TQDM_* settings
# from the environment when it is imported; Optimum's GPTQ loop draws two nested bars with it.
os.environ.setdefault("TQDM_DISABLE", "1")

from labkit.errors import LabError
from labkit.lab.device import PeakMemory
from labkit.lab.runner import RunContext, main

from measure import footprint_bytes, generate, perplexity
from methods import (
    bnb_config,
    check_on_one_device,
    cuda_skip,
    free,
    load_model,
    output_to,
    quantize_awq,
    quantize_gptq,
    weights_format,
)
from report import plot, write_tables
from texts import calibration_windows, describe, load_texts, sources_fingerprint, token_ids

METHODS = ("none", "gptq", "awq", "bnb")
SAVED_CONFIG_KEYS = ("quant_method", "bits", "group_size", "desc_act", "zero_point", "version", "sym")


def pretrain_tiny(ctx: RunContext, path: str, tokenizer, texts: list[str]) -> dict:
    """Smoke only: train the tiny OPT at ``path`` briefly (``pretrain`` settings, Trainer) on ``texts``,
    so that perplexity means something; saves it in place and returns the first and last logged loss."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from labkit.lab.metrics import JsonlLogger, read_jsonl

    cfg, out = ctx.config["pretrain"], ctx.run_dir
    ids, block = token_ids(texts, tokenizer), cfg["block_size"]
    blocks = Dataset.from_dict({"input_ids": [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]})
    model = load_model(path, "cpu", "float32")
    args = TrainingArguments(
        output_dir=str(out / "pretrain"),
        max_steps=cfg["max_steps"],
        learning_rate=cfg["learning_rate"],
        per_device_train_batch_size=cfg["per_device_train_batch_size"],
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=ctx.config["seed"],
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=blocks,
        data_collator=collator,
        callbacks=[JsonlLogger(out / "pretrain_log.jsonl")],
    )
    result = trainer.train()
    model.save_pretrained(path)
    losses = [row["loss"] for row in read_jsonl(out / "pretrain_log.jsonl") if "loss" in row]
    return {"steps": result.global_step, "loss_first": losses[0], "loss_last": losses[-1]}


def source_model(ctx: RunContext, texts: list[str], weights: bool) -> str:
    """Local path of the model to quantize: the tiny OPT built on ``texts`` (smoke, untrained) or a Hub
    snapshot at ``revision``: with ``weights=False`` only its config and tokenizer files (megabytes,
    enough to check the texts), with ``weights=True`` everything (opt-2.7b: 5.3 GB)."""
    model_cfg = ctx.config["model"]
    if model_cfg["build_tiny"]:
        from labkit.lab.tiny import build_tiny_opt  # here, not at the top: its imports print (torchao, torch)

        path = build_tiny_opt(ctx.run_dir / "tiny-opt", texts, seed=ctx.config["seed"], **model_cfg["tiny"])
        return str(Path(path).resolve())
    from huggingface_hub import snapshot_download

    patterns = None if weights else ["*.json", "*.txt", "*.model"]
    ignore = ["*.h5", "*.msgpack", "*.ot"]
    path = snapshot_download(
        model_cfg["name_or_path"], revision=model_cfg["revision"], allow_patterns=patterns, ignore_patterns=ignore
    )
    return str(Path(path).resolve())  # quantizers run in the step's folder (their logs land there)


def check_steps(cfg: dict, variant: str) -> None:
    """Fail before any work on a step with an unknown method or calibration source, a missing baseline,
    a profile whose ``variant`` is not the one its image installs, or AWQ windows AutoAWQ would drop."""
    if cfg["variant"] != variant:
        raise LabError(
            f"variant={cfg['variant']!r}, but this profile runs in the {variant!r} image/environment; "
            "choose the variant with VARIANT=course (profiles course-smoke, course-full), not with SET"
        )
    if variant == "course" and cfg["awq"]["seq_len"] > 512:
        raise LabError(f"awq.seq_len={cfg['awq']['seq_len']}: AutoAWQ 0.2.5 drops calibration samples over 512 tokens")
    if cfg["baseline"] not in cfg["steps"]:
        raise LabError(f"baseline={cfg['baseline']!r} is not one of the steps: {', '.join(cfg['steps'])}")
    unknown = [s for s in cfg["only"] or [] if s not in cfg["steps"]]
    if unknown:
        raise LabError(f"only={cfg['only']}: no step(s) {', '.join(unknown)}; steps: {', '.join(cfg['steps'])}")
    for name, step in cfg["steps"].items():
        if step.get("method") not in METHODS:
            raise LabError(f"steps.{name}.method={step.get('method')!r} is not one of {', '.join(METHODS)}")
        if step["method"] in ("gptq", "awq") and step.get("calibration") not in cfg["data"]:
            raise LabError(
                f"steps.{name}.calibration={step.get('calibration')!r} is not a data source: {', '.join(cfg['data'])}"
            )


def run_step(ctx: RunContext, name: str, step: dict, src: str, tokenizer, windows: dict, eval_ids: list[int]):
    """Quantize (or load) one model, reload it from disk, measure it; returns the step's metrics."""
    cfg, device, variant = ctx.config, ctx.device, ctx.config["variant"]
    method, dtype = step["method"], cfg["model"]["dtype"]
    row: dict = {"method": method, "status": "ok", "calibration": None}
    if reason := cuda_skip(variant, method, device):
        return {**row, "status": "skipped: needs CUDA", "reason": reason}
    if method in ("gptq", "awq"):
        model_dir = ctx.run_dir / "models" / name
        calibration = step["calibration"]
        row["calibration"] = describe(cfg["data"][calibration])
        with PeakMemory(device) as peak:
            start = time.perf_counter()
            if method == "gptq":
                quantize_gptq(src, model_dir, windows[name], cfg["gptq"], device, dtype)
            else:
                quantize_awq(variant, src, model_dir, windows[name], cfg["awq"], device, dtype)
            row["quantize_s"] = round(time.perf_counter() - start, 2)
        row["quantize_peak_bytes"] = peak.bytes
        saved = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["quantization_config"]
        row["saved_config"] = {k: saved[k] for k in SAVED_CONFIG_KEYS if k in saved}
        row["weights_format"] = weights_format(model_dir)
        if reason := cuda_skip(variant, f"{method}-reload", device):
            return {**row, "status": "saved; reload skipped: needs CUDA", "reason": reason}
        model = load_model(
            model_dir, device, dtype, cfg["model"]["device_map"], use_safetensors=row["weights_format"] == "safetensors"
        )
        check_on_one_device(model, device, method)
    elif method == "bnb":
        config = bnb_config(step["config"])
        model = load_model(src, device, dtype, cfg["model"]["device_map"], quantization_config=config)
        row["bnb_config"] = step["config"]
    else:
        model = load_model(src, device, dtype, cfg["model"]["device_map"])
    row["footprint_bytes"] = footprint_bytes(model)
    row["perplexity"] = round(perplexity(model, eval_ids, **cfg["perplexity_window"]), 4)
    g = cfg["generation"]
    gen = generate(model, tokenizer, g["prompt"], g["max_new_tokens"], device, g["repeats"])
    row.update(
        tokens_per_s=gen["tokens_per_s"],
        runs_tokens_per_s=gen["runs_tokens_per_s"],
        generate_peak_bytes=gen["peak_memory_bytes"],
        sample=gen["text"],
    )
    del model
    free(device)
    return row


def step_line(name: str, row: dict) -> str:
    """One console line per step: what it measured, or why it did not."""
    if row["status"] != "ok":
        return f"{name} ({row['method']}): {row['status']} ({row['reason']})"
    parts = [f"{row['footprint_bytes'] / 2**20:.2f} MiB"]
    if "footprint_vs_fp16" in row and row["footprint_vs_fp16"] != 1:
        parts[0] += f" ({row['footprint_vs_fp16']:.2f}x smaller)"
    ppl = f"perplexity {row['perplexity']:.4g}"
    parts.append(ppl + (f" (x{row['perplexity_vs_fp16']:.4f})" if "perplexity_vs_fp16" in row else ""))
    if "quantize_s" in row:
        parts.append(f"quantized in {row['quantize_s']:.1f} s")
    parts.append(f"{row['tokens_per_s']:.1f} tokens/s")
    return f"{name} ({row['method']}): " + ", ".join(parts)


def selected_steps(cfg: dict) -> dict:
    """The profile's steps, or those named in ``only`` (in profile order; the baseline always runs,
    since every other step is compared with it)."""
    if not cfg["only"]:
        return cfg["steps"]
    keep = set(cfg["only"]) | {cfg["baseline"]}
    return {name: step for name, step in cfg["steps"].items() if name in keep}


def run(ctx: RunContext) -> dict:
    from transformers import AutoTokenizer

    cfg = ctx.config
    check_steps(cfg, ctx.lab.profile_of(ctx.profile)[1] or "maintained")
    chosen = selected_steps(cfg)
    # What the libraries print goes to run.log (methods.output_to); the console gets one line per step.
    log = open(ctx.run_dir / "run.log", "a", encoding="utf-8", buffering=1)  # noqa: SIM115  (open for the run)

    def say(text: str) -> None:
        print(f"[{ctx.lab.name}] {text}", flush=True)

    # 1. Every text, checked with the model's tokenizer before any long work (download, training).
    with output_to(log):
        sources = {s["calibration"] for s in chosen.values() if s.get("calibration")} | {"eval", "wikitext"}
        texts = {key: load_texts(cfg["data"][key], ctx.repo_root) for key in sorted(sources)}
        src = source_model(ctx, texts["wikitext"], weights=False)
        tokenizer = AutoTokenizer.from_pretrained(src)
        windows = {  # per step: GPTQ and AWQ sample different lengths (gptq/awq.seq_len, num_samples)
            name: calibration_windows(
                texts[step["calibration"]],
                tokenizer,
                cfg[step["method"]]["seq_len"],
                cfg[step["method"]]["num_samples"],
                cfg["seed"],
                f"{step['calibration']} ({describe(cfg['data'][step['calibration']])})",
                setting=f"{step['method']}.seq_len",
            )
            for name, step in chosen.items()
            if step.get("calibration")
        }
        eval_ids = token_ids(texts["eval"], tokenizer)[: cfg["eval_max_tokens"]]
    samples = ", ".join(f"{name} {len(w)} x {len(w[0])}" for name, w in windows.items())
    say(f"data: {len(eval_ids):,} evaluation tokens; calibration windows (samples x tokens): {samples or 'none'}")

    # 2. The model: the tiny one trained briefly (smoke), or the Hub checkpoint's weights.
    with output_to(log):
        if cfg["model"]["build_tiny"]:
            pretrain = pretrain_tiny(ctx, src, tokenizer, texts["wikitext"])
        else:
            src, pretrain = source_model(ctx, [], weights=True), {}
    if pretrain:
        first, last = pretrain["loss_first"], pretrain["loss_last"]
        say(f"tiny OPT trained for {pretrain['steps']} steps on the wikitext source: loss {first:.3f} -> {last:.3f}")

    # 3. Every step: quantize, save, reload, measure.
    steps, base = {}, None
    for name, step in chosen.items():
        say(f"step {name} ({step['method']}) ...")
        with output_to(log):
            row = steps[name] = run_step(ctx, name, step, src, tokenizer, windows, eval_ids)
        base = row if name == cfg["baseline"] else base
        if base and row.get("footprint_bytes"):
            row["footprint_vs_fp16"] = round(base["footprint_bytes"] / row["footprint_bytes"], 3)
            row["perplexity_vs_fp16"] = round(row["perplexity"] / base["perplexity"], 4)
        say(step_line(name, row))

    # 4. Compare with the fp16 baseline; write the table and the chart.
    base = steps[cfg["baseline"]]
    for row in steps.values():
        if row.get("footprint_bytes"):
            row["footprint_vs_fp16"] = round(base["footprint_bytes"] / row["footprint_bytes"], 3)
            row["perplexity_vs_fp16"] = round(row["perplexity"] / base["perplexity"], 4)
    rows = write_tables(steps, ctx.run_dir, ctx.device)
    with output_to(log):
        plot(rows, ctx.run_dir / "comparison.png", f"{ctx.lab.name} / {ctx.profile} ({cfg['variant']} libraries)")
    say(f"comparison of the {len(steps)} steps: {ctx.run_dir / 'comparison.md'} (and .csv, .png)")
    return {
        "variant": cfg["variant"],
        "pretrain": pretrain,
        "data": {
            "eval_tokens": len(eval_ids),
            "calibration_samples": {k: len(v) for k, v in windows.items()},
            "fingerprint": sources_fingerprint(cfg["data"], ctx.repo_root),
        },
        "steps": steps,
        "steps_run": sum(1 for r in steps.values() if r["status"] == "ok"),
        # Checks of steps left out with `only` (and the step count) are SKIP, not FAIL (labkit.verify).
        "not_run": {
            **{
                f"{prefix}{name}{end}": f"not selected (only={cfg['only']})"
                for name in cfg["steps"]
                if name not in chosen
                for prefix, end in (("steps.", "."), ("models/", "/"), ("data.calibration_samples.", ""))
            },
            **({"steps_run": f"a subset ran (only={cfg['only']})"} if cfg["only"] else {}),
        },
    }


if __name__ == "__main__":
    raise SystemExit(main("quantization", run))
