"""Steps 1-3 and 6 of the chapter: translation pairs, DeepSpeed configs, and DeepSpeed's memory model.

* :func:`load_pairs`: WMT16 ro-en from the Hub (the course's ``--dataset_name wmt16
  --dataset_config ro-en``) or JSON lines of ``{"en": ..., "ro": ...}``; empty text is an error
  naming the file, line and column (or a counted drop).
* :func:`tokenize_pairs`: the course's ``run_translation.py`` preprocessing: ``source_prefix`` +
  source text cut to ``max_source_length`` tokens, target cut to ``max_target_length`` (both counted).
* :func:`read_ds_config`, :func:`prepare_ds_config`: a DeepSpeed JSON config, read by DeepSpeed's
  own config models and filled as the Trainer fills it, for each launch's world size, before any
  process starts: valid JSON (the error names the line and column), values DeepSpeed accepts and
  reads as Transformers does, the stage asked for, no fp16 for the T5 family, a ZeRO-3 that saves.
* :func:`estimates`: DeepSpeed's own estimators (``estimate_zero2_model_states_mem_needs``,
  ``estimate_zero3_model_states_mem_needs``, what ``*_all_live`` print) for T5-large and T5-3B,
  counted on configs with no weights allocated.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import DatasetDict, load_dataset

from labkit.errors import LabError
from labkit.lab.data import check_texts, load_hub_or_files, subsample

#: google-t5/t5-large and google-t5/t5-3b config.json (the course's ZeRO-2 and ZeRO-3 models); the
#: shared vocabulary is 32,128 and the embeddings are tied.
T5_SIZES = {
    "t5-large": dict(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16),
    "t5-3b": dict(d_model=1024, d_kv=128, d_ff=16384, num_layers=24, num_heads=32),
}

#: Model types built from T5's blocks (mT5, umT5, LongT5 included): their feed-forward activations
#: overflow fp16 alike.
T5_FAMILY = ("t5", "mt5", "umt5", "longt5")

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
        dsd, dropped = load_hub_or_files(cfg, repo_root, ("train", "validation"), columns, columns)
        dsd = DatasetDict({split: rows.select_columns(list(columns)) for split, rows in dsd.items()})  # no extras
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


def read_ds_config(path: Path) -> dict:
    """A DeepSpeed JSON config as written (``"auto"`` values and all).

    Raises:
        LabError: the file is missing, not valid JSON (names the line and column) or not a JSON object.
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
    if not isinstance(config, dict):
        raise LabError(f"DeepSpeed config {path}: a JSON object ({{...}}) is expected, not {type(config).__name__}")
    return config


def training_arguments(training: dict, device: str, out: Path):
    """``Seq2SeqTrainingArguments`` of the profile's ``training`` block: what the Trainer fills a
    DeepSpeed config's ``"auto"`` values from (``use_cpu`` on a CPU). Nothing is written to ``out``.

    Raises:
        LabError: Transformers refuses the settings (its message).
    """
    from transformers import Seq2SeqTrainingArguments

    try:
        return Seq2SeqTrainingArguments(output_dir=str(out), use_cpu=device == "cpu", report_to=[], **training)
    except ValueError as exc:
        raise LabError(f"training settings {training}: {exc}") from None


class AtWorldSize:
    """``TrainingArguments`` as a launch of ``world_size`` ranks sees them (``args.world_size``), for
    filling a config before the ranks exist."""

    def __init__(self, args, world_size: int):
        self._args, self.world_size = args, world_size

    def __getattr__(self, name):
        return getattr(self._args, name)


def _field_kinds(annotation) -> set:
    """The plain types a pydantic field accepts (``Optional``/``Union`` unwrapped; int enums as int)."""
    import enum
    import typing

    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return set().union(*(_field_kinds(a) for a in typing.get_args(annotation)))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum) and issubclass(annotation, int):
        return {int}
    return {annotation}


def loose_values(raw: dict, model, prefix: str = "") -> list[str]:
    """Settings of ``raw`` whose JSON type is not the one DeepSpeed's config model (``model``, a
    pydantic class) declares for them, where DeepSpeed and Transformers would read them differently:
    a boolean written as ``"true"``/``"false"``/``1``, a whole number written as a string or boolean.
    DeepSpeed coerces these (``"false"`` is false); Transformers' ``is_true`` reads any non-empty
    string as true, and the lab's checks would have read them by truthiness. Nested models recurse."""
    from pydantic import BaseModel

    fields = {}
    for name, field in model.model_fields.items():
        fields[name] = field
        if field.alias:
            fields[field.alias] = field
    found = []
    for key, value in raw.items():
        field = fields.get(key)
        if field is None or value == "auto" or value is None:
            continue
        kinds, where = _field_kinds(field.annotation), f"{prefix}{key}"
        nested = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if isinstance(value, dict) and nested:
            found += loose_values(value, nested[0], where + ".")
        elif bool in kinds and not isinstance(value, bool):
            found.append(f"{where} is {json.dumps(value)}: write true or false (a JSON boolean, no quotes)")
        elif int in kinds and bool not in kinds and isinstance(value, (str, bool)):
            found.append(f"{where} is {json.dumps(value)}: write a whole number without quotes")
    return found


def prepare_ds_config(
    raw: dict,
    path: Path,
    *,
    stage: int,
    model_type: str,
    hidden_size: int,
    args,
    world_size: int,
    max_steps: int,
) -> dict:
    """The config a launch of ``world_size`` ranks runs, checked before any process starts.

    1. DeepSpeed's own config models (``DeepSpeedZeroConfig``, ``DeepSpeedFP16Config``,
       ``DeepSpeedBF16Config``) read the file: unknown ZeRO keys, a stage outside 0-3, values
       of the wrong kind are refused with DeepSpeed's message; settings DeepSpeed and Transformers
       would read differently (:func:`loose_values`) are refused;
    2. the lab's refusals on the values as DeepSpeed reads them: another stage than ``stage``,
       fp16 with a model of the T5 family (:data:`T5_FAMILY`), ZeRO-3 that cannot save a full model;
    3. ``"auto"`` values filled as the Trainer's ``--deepspeed`` fills them
       (``HfTrainerDeepSpeedConfig.trainer_config_process`` / ``trainer_config_finalize``: batch
       sizes for ``world_size`` ranks, optimizer, scheduler, precision, bucket sizes from the model's
       ``hidden_size``), refusing the values that contradict the training settings (its message);
    4. the filled config parsed whole by ``deepspeed.runtime.config.DeepSpeedConfig`` for
       ``world_size`` ranks (batch arithmetic and its other assertions).

    Raises:
        LabError: naming the file, the setting and what to write instead.
    """
    import copy
    from types import SimpleNamespace
    from unittest import mock

    import deepspeed.runtime.config as ds_runtime_config
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from pydantic import ValidationError
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    def refuse(why: str) -> LabError:
        return LabError(f"DeepSpeed config {path}: {why}")

    sections = {"zero_optimization": DeepSpeedZeroConfig, "fp16": DeepSpeedFP16Config, "bf16": DeepSpeedBF16Config}
    parsed = {}
    for key, model in sections.items():
        section = raw.get(key, {})
        if not isinstance(section, dict):
            raise refuse(f"{key} is {json.dumps(section)}: a JSON object ({{...}}) is expected")
        try:
            parsed[key] = model(**section)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join([key, *(str(p) for p in first["loc"])])
            if where == "zero_optimization.stage":
                raise refuse(
                    f"zero_optimization.stage is {json.dumps(first.get('input'))}; ZeRO has stages 0, 1, 2 and 3 "
                    "(configs/ has ds_zero2.json and ds_zero3.json)"
                ) from None
            got = f" (got {json.dumps(first['input'])})" if "input" in first and first["type"] != "missing" else ""
            raise refuse(f"{where}: {first['msg']}{got}; DeepSpeed's config model refuses it") from None
    zero, fp16 = parsed["zero_optimization"], parsed["fp16"]
    if int(zero.stage) != stage:
        raise refuse(
            f"a ZeRO-{int(zero.stage)} config (zero_optimization.stage), not ZeRO-{stage}: set zero_stage to its "
            "stage, or use a config of this one"
        )
    fp16_on = fp16.enabled or (raw.get("fp16", {}).get("enabled") == "auto" and args.fp16)
    if model_type in T5_FAMILY and fp16_on:
        raise refuse(f"fp16 with a {model_type} model (T5 family) is refused. {T5_FP16}")
    if stage == 3 and not zero.gather_16bit_weights_on_model_save:
        raise refuse(
            "ZeRO-3 without zero_optimization.stage3_gather_16bit_weights_on_model_save: true saves no full model "
            "(each rank keeps only its partition); set it, as configs/ds_zero3.json does"
        )
    loose = [line for key, model in sections.items() for line in loose_values(raw.get(key, {}), model, key + ".")]
    if loose:
        raise refuse(f"{loose[0]} (DeepSpeed and Transformers read such values differently)")

    filled = HfTrainerDeepSpeedConfig(copy.deepcopy(raw))
    try:
        filled.trainer_config_process(AtWorldSize(args, world_size))
        model = SimpleNamespace(config=SimpleNamespace(hidden_size=hidden_size))
        filled.trainer_config_finalize(AtWorldSize(args, world_size), model, max_steps)
    except ValueError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip().startswith("- ds ")]
        raise refuse(
            f'{"; ".join(lines) or exc}: these contradict the training settings; write "auto" (filled from the '
            "profile) or the same value"
        ) from None
    finally:
        config = filled.config
        del filled
        unset_hf_deepspeed_config()  # no zero.Init for models this process loads later

    class OneLaunch:  # deepspeed.comm as a launch of world_size ranks would answer
        @staticmethod
        def get_rank():
            return 0

        @staticmethod
        def get_world_size(group=None):
            return world_size

    try:
        with mock.patch.object(ds_runtime_config, "dist", OneLaunch):
            ds_runtime_config.DeepSpeedConfig(copy.deepcopy(config))
    except (AssertionError, ValueError, ValidationError, KeyError, TypeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise refuse(f"for {world_size} process(es): {message} (DeepSpeed's DeepSpeedConfig)") from None
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
