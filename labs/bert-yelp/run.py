"""Course chapter 4 lab: full fine-tuning of BERT on Yelp Review Full (5-class sentiment).

The full profile follows the course: ``bert-base-cased`` with a 5-way classification head, reviews
tokenized to 512 tokens, ``Trainer`` with ``TrainingArguments`` (batch 16, 3 epochs), accuracy
on a held-out subset, the model saved and reloaded. The smoke profile runs the same steps on a tiny
BERT with a WordPiece vocabulary trained on 120 bundled reviews, on a CPU, in about half a minute.

    python labs/bert-yelp/run.py --profile smoke [--set learning_rate=0]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import numpy as np
import torch
from sklearn.metrics import accuracy_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from labkit.lab.data import hub_or_files_fingerprint
from labkit.lab.metrics import JsonlLogger, plot_loss, training_summary
from labkit.lab.runner import RunContext, main
from labkit.lab.tiny import build_tiny_encoder
from labkit.rundir import remove_if_empty

from data import load_reviews, tokenize


def compute_metrics(eval_pred) -> dict:
    """Accuracy of the arg-max class (scikit-learn's ``accuracy_score``)."""
    logits, labels = eval_pred
    return {"accuracy": float(accuracy_score(labels, np.argmax(logits, axis=-1)))}


def run(ctx: RunContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir

    # 1. Data: reviews with 5 class ids; the smoke profile's labels arrive as strings.
    dsd, dropped = load_reviews(cfg["data"], ctx.repo_root)
    names = dsd["train"].features["label"].names
    model_path = cfg["model"]["name_or_path"]
    if cfg["model"]["build_tiny"]:
        model_path = str(build_tiny_encoder(out / "tiny-model", list(dsd["train"]["text"]), "bert", seed=cfg["seed"]))
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=cfg["model"]["revision"])
    tokenized = tokenize(dsd, tokenizer, cfg["max_length"])

    # 2. Model: the pre-trained encoder + a classification head sized from the label feature.
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path,
        revision=cfg["model"]["revision"],
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )

    # 3. Train every weight (full fine-tuning) with Trainer; accuracy before and after.
    args = TrainingArguments(output_dir=str(out / "checkpoints"), **cfg["training"])
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["test"],
        compute_metrics=compute_metrics,
        callbacks=[JsonlLogger(out / "train_log.jsonl")],
    )
    before = trainer.evaluate()
    train_before = trainer.evaluate(tokenized["train"], metric_key_prefix="train")["train_loss"]
    result = trainer.train()
    train_after = trainer.evaluate(tokenized["train"], metric_key_prefix="train")["train_loss"]
    after = trainer.evaluate()
    plot_loss(out / "train_log.jsonl", out / "loss_curve.png", f"{ctx.lab.name} ({ctx.profile})")

    # 4. Save, reload, and check the reloaded model predicts the same.
    remove_if_empty(out / "checkpoints")  # the Trainer's output_dir: empty with save_strategy "no"
    trainer.save_model(out / "model")
    tokenizer.save_pretrained(out / "model")
    logits = trainer.predict(tokenized["test"]).predictions
    reloaded = AutoModelForSequenceClassification.from_pretrained(out / "model")
    batch = tokenizer(
        list(dsd["test"]["text"]),
        padding="max_length",
        truncation=True,
        max_length=cfg["max_length"],
        return_tensors="pt",
    )
    with torch.no_grad():
        reloaded_logits = reloaded.eval()(**batch).logits.numpy()
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for text, label, row in zip(dsd["test"]["text"], dsd["test"]["label"], logits):
            f.write(json.dumps({"text": text, "label": names[label], "predicted": names[int(row.argmax())]}) + "\n")

    total = sum(p.numel() for p in model.parameters())
    return {
        "data": {
            "train_examples": len(dsd["train"]),
            "eval_examples": len(dsd["test"]),
            "num_labels": len(names),
            "label_names": names,
            "dropped_rows": dropped,
            "fingerprint": hub_or_files_fingerprint(cfg["data"], ctx.repo_root, ("train", "test")),
        },
        "model": {
            "num_labels": reloaded.config.num_labels,
            "all_params": total,
            "trainable_fraction": sum(p.numel() for p in model.parameters() if p.requires_grad) / total,
        },
        "train": training_summary(train_before, train_after, result),
        "eval": {
            "accuracy_before": before["eval_accuracy"],
            "accuracy_after": after["eval_accuracy"],
            "eval_loss": after["eval_loss"],
        },
        "reload": {"max_abs_logit_diff": float(np.abs(reloaded_logits - logits).max())},
    }


if __name__ == "__main__":
    raise SystemExit(main("bert-yelp", run))
