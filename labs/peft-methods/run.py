"""Course chapters 5-6 lab: parameter-efficient fine-tuning methods side by side, under one harness.

One task, one base, one budget: every method fine-tunes the same encoder (roberta-base in the full
profile, a tiny RoBERTa built here in the smoke) on the same labelled sentences (GLUE SST-2 / the
bundled ones) for the same number of optimizer steps and batch size, with the same head
initialisation, seed and evaluation; only the method and its learning rate differ. Full fine-tuning
is the reference. Per method the run records trainable parameters (count, percent of the base, and
where they sit), the metric before and after, the loss drop, peak memory, samples/s, wall time, the
adapter's size on disk and the reloaded adapter's largest logit difference; ``comparison.csv/.md``
and ``comparison.png`` (metric against trainable parameters, log scale) put them side by side.

The methods (``methods.py`` has the table with the papers): LoRA, DoRA, QLoRA (LoRA on a 4-bit NF4
base), AdaLoRA (``update_and_allocate`` after every optimizer step), (IA)^3, prefix tuning (PEFT's
``PrefixEncoder`` is P-Tuning v2's prefix encoder: with ``prefix_projection`` it is Li & Liang's
reparameterised prefix, without it P-Tuning v2's deep prompts), prompt tuning (random and text
initialisation), P-Tuning v1 (``PromptEncoderConfig``, MLP and LSTM encoders) from PEFT; Houlsby
adapters and UniPELT from AdapterHub's ``adapters`` in the ``adapters`` variant (its older
Transformers needs its own environment): ``make lab-peft-methods VARIANT=adapters``.

    python labs/peft-methods/run.py --profile smoke [--set learning_rate_scale=0] [--set only=[lora,ia3]]
    python labs/peft-methods/run.py --profile adapters-smoke      # in .venvs/peft-methods-adapters

Outputs (``outputs/peft-methods/<profile>/<UTC time>/``): ``metrics.json``, ``comparison.{csv,md,png}``
(and ``comparison-all.*`` with the other variant's methods once both have run on the same setup),
``loss_curves.png``, ``methods/<name>/{adapter|model}/``, ``methods/<name>/train_log.jsonl``,
``manifest.json``, ``run.log``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this lab's modules
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # labkit, when run as a script
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import hashlib
from importlib.metadata import version

import numpy as np
import torch
from peft import (
    AdaLoraConfig,
    IA3Config,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
    prepare_model_for_kbit_training,
)
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from labkit.config import profile_name
from labkit.errors import LabError
from labkit.lab.device import PeakMemory, model_device_map
from labkit.lab.llm.loading import keep_4bit_trainable_on_cpu
from labkit.lab.llm.training import release
from labkit.lab.metrics import JsonlLogger, training_summary
from labkit.lab.runner import RunContext, main
from labkit.lab.tiny import build_tiny_encoder, init_weights_portably
from labkit.rundir import remove_if_empty

from comparison import completed_runs, merge_other, plot_losses, rows_of, write
from data import Encoded, data_fingerprint, load_splits
from methods import (
    KINDS,
    accept_past_key_values,
    check_adapters_support,
    check_positions,
    check_settings,
    check_targets,
    parameter_places,
    selected_methods,
    usable_positions,
    weights_bytes,
)

#: The task metric (``metric`` in the profile): GLUE's for SST-2/RTE/QNLI (accuracy), MRPC/QQP (F1 of
#: the positive class) and CoLA (Matthews correlation).
METRICS = {"accuracy": accuracy_score, "f1": f1_score, "matthews": matthews_corrcoef}


class AdaLoraAllocation(TrainerCallback):
    """AdaLoRA's rank allocation inside ``Trainer``: ``model.base_model.update_and_allocate(step)``
    after each optimizer step, while the gradients are still there (its importance scores use them),
    before the Trainer zeroes them, as PEFT's AdaLoRA documentation asks. Counts its calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.model.base_model.update_and_allocate(state.global_step)
        self.calls += 1


def load_base(base: dict, device: str, kind: str, quantization: dict | None):
    """The base model with a classification head sized from the labels (``id2label``), optionally in
    4-bit NF4 (QLoRA: ``BitsAndBytesConfig``; the head stays in full precision), with the profile's
    dropout (``model.dropout``; null keeps the checkpoint's). For prefix tuning its backbone takes the
    prefix as ``past_key_values`` (:func:`methods.accept_past_key_values`)."""
    path, revision, names = base["path"], base["revision"], base["label_names"]
    kwargs = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if base["dropout"] is not None:
        kwargs.update(hidden_dropout_prob=base["dropout"], attention_probs_dropout_prob=base["dropout"])
    if kind == "prefix_tuning":
        model = AutoModelForSequenceClassification.from_pretrained(path, revision=revision, **kwargs)
        accept_past_key_values(model)
        return model
    if quantization:
        q = dict(quantization, bnb_4bit_compute_dtype=getattr(torch, quantization["bnb_4bit_compute_dtype"]))
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            revision=revision,
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, llm_int8_skip_modules=["classifier"], **q),
            device_map=model_device_map(device),
            **kwargs,
        )
        if device == "cpu":
            keep_4bit_trainable_on_cpu(model)
        return model
    return AutoModelForSequenceClassification.from_pretrained(path, revision=revision, **kwargs)


def attach(name: str, method: dict, model, base: dict, gradient_checkpointing: bool):
    """Step 3b: the method's library call on the base model; returns the model to train.

    PEFT's ``TaskType.SEQ_CLS`` also trains (and saves) the classification head through
    ``modules_to_save``; in the adapters variant ``train_adapter`` freezes everything but the adapter
    and the model's head, which ``save_adapter`` saves beside it.
    """
    kind, settings = method["kind"], dict(method["config"])
    if kind == "full":  # the reference: every weight trains
        return model
    if kind in ("lora", "qlora"):  # DoRA: use_dora=True (the magnitude vector m and direction V + BA)
        if kind == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        return get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, **settings))
    if kind == "adalora":
        return get_peft_model(model, AdaLoraConfig(task_type=TaskType.SEQ_CLS, **settings))
    if kind == "ia3":
        return get_peft_model(model, IA3Config(task_type=TaskType.SEQ_CLS, **settings))
    if kind == "prefix_tuning":  # P-Tuning v2's prefix encoder; prefix_projection: Li & Liang's MLP
        return get_peft_model(model, PrefixTuningConfig(task_type=TaskType.SEQ_CLS, **settings))
    if kind == "prompt_tuning":  # RANDOM, or TEXT: the init text's token embeddings, repeated to length
        if settings["prompt_tuning_init"] == "TEXT":
            settings.update(tokenizer_name_or_path=base["path"], tokenizer_kwargs={"revision": base["revision"]})
        else:
            settings.pop("prompt_tuning_init_text", None)
        return get_peft_model(model, PromptTuningConfig(task_type=TaskType.SEQ_CLS, **settings))
    if kind == "p_tuning":  # P-Tuning v1: virtual tokens through an MLP or LSTM prompt encoder
        return get_peft_model(model, PromptEncoderConfig(task_type=TaskType.SEQ_CLS, **settings))
    if kind in ("houlsby", "unipelt"):  # AdapterHub's adapters (the adapters variant)
        import adapters
        from adapters import DoubleSeqBnConfig, LoRAConfig, SeqBnConfig, UniPELTConfig
        from adapters import PrefixTuningConfig as AdapterPrefixConfig

        adapters.init(model)
        if kind == "houlsby":  # two bottleneck adapters per layer: after attention and after the FFN
            config = DoubleSeqBnConfig(**settings)
        else:  # UniPELT: gated LoRA + prefix tuning + a sequential bottleneck adapter
            config = UniPELTConfig(
                prefix_tuning=AdapterPrefixConfig(**settings["prefix_tuning"]),
                adapter=SeqBnConfig(**settings["adapter"]),
                lora=LoRAConfig(**settings["lora"]),
            )
        check_adapters_support(name, model, config)
        model.add_adapter(name, config=config)
        model.train_adapter(name)  # freezes the base; the adapter and the model's own head train
        return model
    raise LabError(f"methods.{name}.kind={kind!r} has no library call here")  # methods.KINDS lists them


def save(kind: str, name: str, model, folder: Path) -> Path:
    """Step 3d: the adapter (or, for full fine-tuning, the whole model) to ``folder``; its path."""
    if kind == "full":
        model.save_pretrained(folder / "model")
        return folder / "model"
    if KINDS[kind] == "adapters":  # torch.save files: adapters 1.3.0's safetensors path refuses UniPELT's
        model.save_adapter(str(folder / "adapter"), name)  # prefix (one pool shared by every layer)
    else:
        model.save_pretrained(folder / "adapter")  # adapter_model.safetensors + adapter_config.json
    return folder / "adapter"


def reload(kind: str, name: str, saved: Path, base: dict, device: str, quantization: dict | None):
    """Step 3e: a fresh base with the saved adapter loaded (or the saved full model), in eval mode, on
    ``device`` (a 4-bit base is placed there as it loads)."""
    if kind == "full":
        return AutoModelForSequenceClassification.from_pretrained(saved).to(device).eval()
    model = load_base(base, device, kind, quantization)
    if KINDS[kind] == "adapters":
        import adapters

        adapters.init(model)
        loaded = model.load_adapter(str(saved))  # the adapter and the head saved beside it
        model.set_active_adapters(loaded)
    else:
        model = PeftModel.from_pretrained(model, saved)
    return (model if quantization else model.to(device)).eval()


def evaluate(model, dataset: Encoded, collator, batch_size: int, device: str, metric: str) -> dict:
    """``{"loss": mean cross-entropy, metric: value}`` of ``model`` on ``dataset`` (eval mode).

    The loss is computed here from the logits, the same way for every method: a model's own loss
    may hold more (AdaLoRA adds its orthogonality regulariser ``orth_reg_weight * R(P, Q)``).
    """
    logits = logits_of(model, dataset, collator, batch_size, device)
    labels = np.array([row["labels"] for row in dataset.rows])
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    return {"loss": loss, metric: float(METRICS[metric](labels, logits.argmax(axis=-1)))}


def logits_of(model, dataset: Encoded, collator, batch_size: int, device: str) -> np.ndarray:
    """The model's logits on every row of ``dataset`` (eval mode, no gradients), in order."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch.pop("labels")
            out.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    return torch.cat(out).numpy()


def fine_tune(ctx: RunContext, name: str, base: dict, train_set: Encoded, test_set: Encoded, collator) -> dict:
    """Step 3 for one method: a fresh base, the method, training, evaluation, save, reload."""
    cfg, device = ctx.config, ctx.device
    method, kind = cfg["methods"][name], cfg["methods"][name]["kind"]
    folder = ctx.run_dir / "methods" / name
    folder.mkdir(parents=True)
    quantization = method["quantization"] if kind == "qlora" else None
    metric = cfg["metric"]
    sets = {"train": train_set, "test": test_set}
    start = time.perf_counter()
    with PeakMemory(device) as peak:
        # 3a. A fresh base and the same head for every method (seeded, whatever ran before).
        set_seed(cfg["seed"])
        model = load_base(base, device, kind, quantization)
        init_weights_portably(model.classifier, cfg["seed"])
        # 3b. The method.
        model = attach(name, method, model, base, cfg["training"]["gradient_checkpointing"])
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        places = parameter_places(model)
        # 3c. Train with the shared budget; evaluate before and after.
        args = TrainingArguments(
            output_dir=str(folder / "checkpoints"),
            learning_rate=method["learning_rate"] * cfg["learning_rate_scale"],
            seed=cfg["seed"],
            **cfg["training"],
        )

        callbacks = [JsonlLogger(folder / "train_log.jsonl")]
        if kind == "adalora":
            callbacks.append(AdaLoraAllocation(model))
        trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator, callbacks=callbacks)
        eval_batch = cfg["training"]["per_device_eval_batch_size"]
        before = {split: evaluate(model, rows, collator, eval_batch, device, metric) for split, rows in sets.items()}
        result = trainer.train()
        after = {split: evaluate(model, rows, collator, eval_batch, device, metric) for split, rows in sets.items()}
        remove_if_empty(folder / "checkpoints")  # save_strategy "no": nothing was written there
        # 3d-e. Save, reload into a fresh base, compare logits.
        logits = logits_of(model, test_set, collator, eval_batch, device)
        saved = save(kind, name, model, folder)
        reloaded = reload(kind, name, saved, base, device, quantization)
        reloaded_logits = logits_of(reloaded, test_set, collator, eval_batch, device)
    record = {
        "kind": kind,
        "library": f"{KINDS[kind]} {version(KINDS[kind])}",
        "learning_rate": args.learning_rate,
        "params": {
            "trainable": trainable,
            "trainable_percent": 100.0 * trainable / base["params"],
            "without_head": trainable - places.get("head", 0),  # the method's own, as papers count them
            "by_place": places,
        },
        "train": training_summary(before["train"]["loss"], after["train"]["loss"], result),
        "eval": {
            "metric_before": before["test"][metric],
            "metric": after["test"][metric],
            "loss": after["test"]["loss"],
        },
        "adapter": {"weights_bytes": weights_bytes(saved), "files": sorted(p.name for p in saved.iterdir())},
        "reload": {"max_abs_logit_diff": float(np.abs(reloaded_logits - logits).max())},
        "peak_memory_bytes": peak.bytes,
        "wall_s": time.perf_counter() - start,
    }
    if kind == "adalora":  # ranks left after allocation: target_r per adapted matrix (the budget)
        pattern = model.peft_config["default"].rank_pattern or {}
        record["adalora"] = {
            "update_calls": callbacks[-1].calls,
            "matrices": len(pattern),
            "ranks_after": int(sum(sum(mask) for mask in pattern.values())),
        }
    if kind == "qlora":
        import bitsandbytes as bnb

        record["qlora"] = {"linear4bit_modules": sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())}
    del trainer, model, reloaded
    release(device)  # the next method loads a fresh base
    return record


def run(ctx: RunContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir
    variant = ctx.lab.profile_of(ctx.profile)[1]  # None, or adapters (its own environment: VARIANT=adapters)

    # 0. Settings: every refusal before any data or weights load.
    names = selected_methods(cfg, variant)
    check_settings(cfg, names)

    # 1. Data: labelled sentences (SST-2 in the full profile; the bundled ones in the smoke).
    splits = load_splits(cfg["data"], ctx.repo_root)
    label_names = list(cfg["data"]["label_names"])

    # 2. The base model and tokenizer: roberta-base at a pinned revision, or a tiny RoBERTa built here.
    path, revision = cfg["model"]["name_or_path"], cfg["model"]["revision"]
    tiny_sha = None
    if cfg["model"]["build_tiny"]:
        texts = splits["train"].text + (splits["train"].text_pair or [])
        path = str(build_tiny_encoder(out / "tiny-model", texts, "roberta", seed=cfg["seed"], **cfg["model"]["tiny"]))
        tiny_sha = hashlib.sha256((Path(path) / "model.safetensors").read_bytes()).hexdigest()
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    config = AutoConfig.from_pretrained(path, revision=revision, num_labels=len(label_names))
    with torch.device("meta"):  # the architecture without weights: its Linear layers and size
        skeleton = AutoModelForSequenceClassification.from_config(config)
    linear = [n for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)]
    check_targets(cfg, names, linear, config.model_type)
    check_positions(cfg, names, config)
    base = {
        "path": path,
        "revision": revision,
        "label_names": label_names,
        "dropout": cfg["model"]["dropout"],
        "params": sum(p.numel() for p in skeleton.parameters()),
    }
    train_set = Encoded(splits["train"], tokenizer, cfg["max_length"])
    test_set = Encoded(splits["test"], tokenizer, cfg["max_length"])
    collator = DataCollatorWithPadding(tokenizer)
    print(
        f"[{ctx.lab.name}] base {cfg['model']['name_or_path'] or 'tiny RoBERTa (built here)'}: "
        f"{base['params']:,} parameters; {len(train_set)} train / {len(test_set)} test rows; "
        f"{cfg['training']['max_steps']} steps of {cfg['training']['per_device_train_batch_size']} for each of "
        f"{len(names)} methods: {', '.join(names)}",
        flush=True,
    )

    # 3. Every method with the same budget: fresh base, method, train, evaluate, save, reload.
    results = {}
    for name in names:
        results[name] = r = fine_tune(ctx, name, base, train_set, test_set, collator)
        print(
            f"[{ctx.lab.name}] {name:<22} {r['params']['trainable']:>11,} trainable "
            f"({r['params']['trainable_percent']:.3f} %)  {cfg['metric']} {r['eval']['metric_before']:.3f} -> "
            f"{r['eval']['metric']:.3f}  loss drop {r['train']['loss_drop_ratio']:.3f}  "
            f"{r['wall_s']:.1f} s  adapter {r['adapter']['weights_bytes']:,} B  "
            f"reload diff {r['reload']['max_abs_logit_diff']:.1e}",
            flush=True,
        )

    metrics = {
        "data": {
            "train_examples": len(train_set),
            "eval_examples": len(test_set),
            "num_labels": len(label_names),
            "label_names": label_names,
            "longest_train_tokens": train_set.longest,
            "dropped_rows": {s: splits[s].dropped for s in splits if splits[s].dropped},
            "fingerprint": data_fingerprint(cfg["data"], ctx.repo_root),
        },
        "model": {
            "name": cfg["model"]["name_or_path"] or "tiny-roberta",
            "revision": revision,
            "type": config.model_type,
            "base_params": base["params"],
            "positions": usable_positions(config),
            "tiny_weights_sha256": tiny_sha,
        },
        "budget": {
            "metric": cfg["metric"],
            "max_steps": cfg["training"]["max_steps"],
            "batch_size": cfg["training"]["per_device_train_batch_size"],
            "max_length": cfg["max_length"],
            "learning_rate_scale": cfg["learning_rate_scale"],
            "seed": cfg["seed"],
        },
        "methods_run": len(results),
        "methods": results,
    }
    left = [n for n in selected_methods(dict(cfg, only=None), variant) if n not in results]
    if left:  # only=[...]: verification SKIPs the checks (and files) of the methods left out
        why = f"left out with only=[{','.join(names)}]"
        metrics["not_run"] = {"methods_run": why} | {k: why for n in left for k in (f"methods.{n}.", f"methods/{n}/")}

    # 4. The comparison: table, plot of the metric against trainable parameters, loss curves.
    memory = "GPU" if ctx.device != "cpu" else "RSS"
    title = f"{ctx.lab.name} {ctx.profile}: {cfg['metric']} after {cfg['training']['max_steps']} steps"
    write(rows_of(metrics, variant), out, "comparison", cfg["metric"], title, memory)
    plot_losses({n: out / "methods" / n / "train_log.jsonl" for n in results}, out / "loss_curves.png", title)
    kind = ctx.lab.profile_of(ctx.profile)[0]
    other = profile_name(kind, None if variant else "adapters")
    candidates = completed_runs(out.parents[2], ctx.lab.name, other)
    merged, why = merge_other(metrics, variant, out, candidates, cfg["metric"], memory)
    print(f"[{ctx.lab.name}] comparison: {out / 'comparison.md'}", flush=True)
    if merged:
        print(f"[{ctx.lab.name}] every method (with {merged}): {out / 'comparison-all.md'}", flush=True)
    else:
        print(f"[{ctx.lab.name}] no comparison-all.* ({why}): run profile {other} too", flush=True)
    return metrics


if __name__ == "__main__":
    raise SystemExit(main("peft-methods", run))
