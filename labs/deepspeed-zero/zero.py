"""Steps 1-3 and 6 of the chapter: translation pairs, DeepSpeed configs, and DeepSpeed's memory model.

* :func:`load_pairs`: WMT16 ro-en from the Hub (the course's ``--dataset_name wmt16
  --dataset_config ro-en``) or JSON lines of ``{"en": ..., "ro": ...}``; empty text is an error
  naming the file, line and column (or a counted drop).
* :func:`tokenize_pairs`: the course's ``run_translation.py`` preprocessing: ``source_prefix`` +
  source text cut to ``max_source_length`` tokens, target cut to ``max_target_length`` (both counted).
* :func:`load_ds_config`: a DeepSpeed JSON config, checked before any process starts: valid JSON
  (the error names the line and column), a known ZeRO stage, and no fp16 for T5.
* :func:`estimates`: DeepSpeed's own estimators (``estimate_zero2_model_states_mem_needs``,
  ``estimate_zero3_model_states_mem_needs``, what ``*_all_live`` print) for T5-large and T5-3B,
  counted on configs with no weights allocated.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import DatasetDict, load_dataset

from labkit.errors import LabError
from labkit.lab.data import check_texts, load_hub_or_json, subsample

STAGES = (0, 1, 2, 3)

#: google-t5/t5-large and google-t5/t5-3b config.json (the course's ZeRO-2 and ZeRO-3 models); the
#: shared vocabulary is 32,128 and the embeddings are tied.
T5_SIZES = {
    "t5-large": dict(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16),
    "t5-3b": dict(d_model=1024, d_kv=128, d_ff=16384, num_layers=24, num_heads=32),
}

T5_FP16 = (
    "T5 overflows in fp16 (activations past 65,504 in its feed-forward layers: the loss turns NaN or DeepSpeed "
    "repeats 'OVERFLOW! Skipping step'; huggingface/transformers#5651; t5-large with run_translation.py: "
    "#11461). Use bf16 on a GPU that has it "
    "(Ampere and newer; SET=bf16=true) or fp32 (both false)"
)


def load_pairs(cfg: dict, repo_root: Path) -> tuple[DatasetDict, dict]:
    """``DatasetDict(train, validation)`` with columns ``source_lang`` and ``target_lang``, sub-sampled.

    Returns:
        ``(pairs, {split: {column: rows dropped}})``.

    Raises:
        LabError: a missing file or column, or empty text under ``bad_text: fail`` (file, line, column).
    """
    columns = (cfg["source_lang"], cfg["target_lang"])
    if cfg["source"] == "hub":
        dsd, dropped = DatasetDict(), {}
        for split in ("train", "validation"):
            rows = load_dataset(cfg["hub_dataset"], cfg["hub_config"], split=split, revision=cfg["hub_revision"])
            rows = rows.map(lambda r: {c: r["translation"][c] for c in columns}, remove_columns=rows.column_names)
            dsd[split], counts = check_texts(rows, columns, cfg["bad_text"], f"{cfg['hub_dataset']} split {split}")
            dropped.update({split: counts} if counts else {})
    else:
        dsd, dropped = load_hub_or_json(cfg, repo_root, ("train", "validation"), columns, columns)
    sizes = {"train": cfg["train_samples"], "validation": cfg["eval_samples"]}
    return subsample(dsd, sizes, cfg["shuffle_seed"]), dropped


def tokenize_pairs(pairs: DatasetDict, tokenizer, cfg: dict) -> tuple[list[dict], dict]:
    """Rows ``{"split", "input_ids", "labels"}`` (the course's ``preprocess_function``) and counts.

    Sources are ``source_prefix + text`` cut to ``max_source_length`` tokens (eos kept), targets cut
    to ``max_target_length``; ``{split: {"sources_cut", "targets_cut"}}`` counts the cuts.
    """
    rows, counts = [], {}
    for split, ds in pairs.items():
        cut = {"sources_cut": 0, "targets_cut": 0}
        for pair in ds:
            source = tokenizer(cfg["source_prefix"] + pair[cfg["source_lang"]]).input_ids
            target = tokenizer(text_target=pair[cfg["target_lang"]]).input_ids
            for key, ids, limit in (
                ("sources_cut", source, cfg["max_source_length"]),
                ("targets_cut", target, cfg["max_target_length"]),
            ):
                if len(ids) > limit:
                    cut[key] += 1
                    ids[limit - 1 :] = [tokenizer.eos_token_id]
            rows.append({"split": split, "input_ids": source, "labels": target})
        counts[split] = cut
    return rows, counts


def config_path(config_dir: Path, stage: int, offload: bool) -> Path:
    """``configs/ds_zero<stage>[_offload].json``: the lab's config for a stage."""
    return config_dir / f"ds_zero{stage}{'_offload' if offload else ''}.json"


def load_ds_config(path: Path, model_type: str, fp16: bool) -> dict:
    """Read and check a DeepSpeed config before any process starts.

    Raises:
        LabError: the file is missing or not valid JSON (names the line and column), its
            ``zero_optimization.stage`` is not 0-3, or fp16 is asked for a T5 model.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LabError(f"DeepSpeed config {path}: {exc.strerror}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabError(
            f"DeepSpeed config {path} line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg}); "
            "JSON has no comments and no trailing commas"
        ) from None
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in STAGES:
        raise LabError(
            f"DeepSpeed config {path}: zero_optimization.stage is {stage!r}; ZeRO has stages 0, 1, 2 and 3 "
            "(configs/ has ds_zero2.json and ds_zero3.json)"
        )
    zero = config.get("zero_optimization", {})
    if stage == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save"):
        raise LabError(
            f"DeepSpeed config {path}: ZeRO-3 without zero_optimization.stage3_gather_16bit_weights_on_model_save: "
            "true saves no full model (each rank keeps only its partition); set it, as configs/ds_zero3.json does"
        )
    fp16_on = config.get("fp16", {}).get("enabled") is True or (
        config.get("fp16", {}).get("enabled") == "auto" and fp16
    )
    if model_type == "t5" and fp16_on:
        raise LabError(f"{path}: fp16 with a T5 model is refused. {T5_FP16}")
    return config


def count_params(size: dict) -> tuple[int, int]:
    """``(total, largest layer)`` parameters of ``T5ForConditionalGeneration`` with ``size``, as
    DeepSpeed's ``model_to_params`` counts them (tied embeddings once), built on the meta device."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    with torch.device("meta"):
        model = T5ForConditionalGeneration(T5Config(vocab_size=32128, **size))
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def estimates(gpus: tuple[int, ...] = (1, 2, 8)) -> list[dict]:
    """DeepSpeed's memory model for the course's models: per GPU and per node (CPU) bytes for model
    states (parameters, gradients, Adam states; activations excluded), ZeRO-2/3, with and without offload.

    Source: ``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`` and
    ``stage3.estimate_zero3_model_states_mem_needs`` (additional_buffer_factor 1.5, DeepSpeed's default).
    """
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    rows = []
    for name, size in T5_SIZES.items():
        total, largest = count_params(size)
        for n in gpus:
            for offload in (False, True):
                cpu, gpu = estimate_zero2_model_states_mem_needs(total, n, 1, cpu_offload=offload)
                rows.append(
                    dict(
                        model=name,
                        params=total,
                        stage=2,
                        offload=offload,
                        gpus=n,
                        gpu_gib=gpu / 2**30,
                        cpu_gib=cpu / 2**30,
                    )
                )
                cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                    total, largest, n, 1, cpu_offload=offload, cpu_offload_params=offload
                )
                rows.append(
                    dict(
                        model=name,
                        params=total,
                        stage=3,
                        offload=offload,
                        gpus=n,
                        gpu_gib=gpu / 2**30,
                        cpu_gib=cpu / 2**30,
                    )
                )
    return rows
