"""Course chapter 4 lab: extractive question answering, DistilBERT fine-tuned on SQuAD.

The full profile follows the course: ``distilbert-base-uncased`` on SQuAD v1.1, 384-token windows
with a 128-token stride, ``Trainer`` (batch 64, learning rate 2e-5, 3 epochs), answers rebuilt
from the n-best (20) start/end logits with at most 30 tokens, exact match and F1 on the validation
set. The smoke profile runs the same steps on a tiny DistilBERT and 96 bundled questions, on a CPU.

    python labs/distilbert-squad/run.py --profile smoke [--set learning_rate=0]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

from datasets import DatasetDict
from torchmetrics.text import SQuAD
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, Trainer, TrainingArguments

from labkit.errors import LabError
from labkit.lab.data import hub_or_files_fingerprint, load_hub_or_files, subsample
from labkit.lab.metrics import JsonlLogger, plot_loss, training_summary
from labkit.lab.runner import RunContext, main
from labkit.lab.tiny import build_tiny_encoder
from labkit.rundir import remove_if_empty

from qa import (
    check_window,
    is_squad_answers,
    misplaced_answer,
    postprocess_predictions,
    prepare_train_features,
    prepare_validation_features,
    truncate_questions,
)

COLUMNS = ("id", "context", "question", "answers")
SQUAD_ANSWERS = '{"text": [...], "answer_start": [...]}'


def load_squad(cfg: dict, repo_root: Path) -> tuple[DatasetDict, dict]:
    """SQuAD-format ``train`` and ``validation`` splits from the Hub or local files, and rows dropped.

    Local files are read by extension (``labkit.lab.data.read_local_file``); ``answers`` is nested
    (``{"text": [...], "answer_start": [...]}``), so JSON lines, JSON or Parquet hold it, a CSV/TSV
    field cannot. A null, empty or non-string ``question`` or ``context`` stops the run naming file,
    line and column, or is dropped and counted with ``bad_text: drop`` (``labkit.lab.data.check_texts``).

    Raises:
        LabError: a missing file or column (lists the columns there), a file of another format, a
            row whose ``answers`` is not SQuAD's nested one (names file, line and value), an answer
            in a local file not at its ``answer_start`` (names file, line or row id, what the context
            holds there; the Hub's SQuAD is taken as published), or bad
            text; the last two are dropped and counted instead with ``bad_text: drop``.
    """
    shape = (
        is_squad_answers,
        f"SQuAD's {SQUAD_ANSWERS}: at least one non-empty answer, starts >= 0, lists of one length (SQuAD v2's "
        "unanswerable questions are not supported; a CSV/TSV field is text: use JSON lines, JSON or Parquet)",
    )
    splits = ("train", "validation")
    dsd, dropped = load_hub_or_files(cfg, repo_root, splits, COLUMNS, ("question", "context"), {"answers": shape})
    for split, ds in dsd.items() if cfg["source"] == "files" else ():  # your files: each answer where it says
        bad = [(i, why) for i, ex in enumerate(ds) if (why := misplaced_answer(ex["context"], ex["answers"]))]
        if not bad:
            continue
        where = str(repo_root / cfg["files"][split])
        by_line = where.endswith(".jsonl") and split not in dropped  # no row dropped yet: row i is line i + 1

        def place(i: int, ds=ds, by_line=by_line) -> str:
            return f"line {i + 1} (id {str(ds[i]['id'])!r})" if by_line else f"row id {str(ds[i]['id'])!r}"

        if cfg.get("bad_text", "fail") != "drop":
            more = f" (and {len(bad) - 1} more row(s))" if len(bad) > 1 else ""
            raise LabError(
                f"{where}: {place(bad[0][0])}: {bad[0][1]}{more}. Fix answer_start (a character offset into the "
                "context), or set data.bad_text=drop to drop such rows (they are counted in metrics.json)."
            )
        rows = {i for i, _ in bad}
        dsd[split] = ds.select([i for i in range(len(ds)) if i not in rows])
        dropped.setdefault(split, {})["answers"] = len(bad)
        shown = ", ".join(place(i) for i, _ in bad[:10]) + (", ..." if len(bad) > 10 else "")
        print(f"{where}: dropped {len(bad)} row(s) whose answer is not at its answer_start: {shown}", flush=True)
    sizes = {"train": cfg["train_samples"], "validation": cfg["eval_samples"]}
    return subsample(dsd, sizes, cfg["shuffle_seed"]), dropped


def run(ctx: RunContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir
    qa = cfg["qa"]
    check_window(qa["max_length"], qa["doc_stride"], qa["max_question_tokens"])

    # 1. Data and tokenizer; questions longer than max_question_tokens are cut (and counted).
    dsd, dropped = load_squad(cfg["data"], ctx.repo_root)
    model_path = cfg["model"]["name_or_path"]
    if cfg["model"]["build_tiny"]:
        texts = [t for split in dsd.values() for t in list(split["context"]) + list(split["question"])]
        model_path = str(build_tiny_encoder(out / "tiny-model", texts, "distilbert", seed=cfg["seed"], lowercase=True))
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=cfg["model"]["revision"])
    cut = {"n": 0}

    def shorten(batch):
        cut["n"] += truncate_questions(batch, tokenizer, qa["max_question_tokens"])
        return batch

    dsd = dsd.map(shorten, batched=True)
    window = {"tokenizer": tokenizer, "max_length": qa["max_length"], "stride": qa["doc_stride"]}
    train_features = dsd["train"].map(
        prepare_train_features, batched=True, fn_kwargs=window, remove_columns=dsd["train"].column_names
    )
    eval_features = {
        split: ds.map(prepare_validation_features, batched=True, fn_kwargs=window, remove_columns=ds.column_names)
        for split, ds in dsd.items()
    }

    # 2. Model and training.
    model = AutoModelForQuestionAnswering.from_pretrained(model_path, revision=cfg["model"]["revision"])
    args = TrainingArguments(output_dir=str(out / "checkpoints"), **cfg["training"])
    trainer = Trainer(
        model=model, args=args, train_dataset=train_features, callbacks=[JsonlLogger(out / "train_log.jsonl")]
    )
    loss_before = trainer.evaluate(train_features, metric_key_prefix="train")["train_loss"]

    def answer_and_score(split: str) -> tuple[dict, dict]:
        """Answers for a split's examples and their exact match / F1 (0-100, SQuAD's normalisation)."""
        features = eval_features[split]
        logits = trainer.predict(features.remove_columns(["example_id", "offset_mapping"])).predictions
        answers = postprocess_predictions(
            dsd[split], features, logits[0], logits[1], qa["n_best"], qa["max_answer_length"]
        )
        scores = SQuAD()(
            preds=[{"id": k, "prediction_text": v} for k, v in answers.items()],
            target=[{"id": ex["id"], "answers": ex["answers"]} for ex in dsd[split]],
        )
        return answers, {k: float(v) for k, v in scores.items()}

    _, before = answer_and_score("validation")
    result = trainer.train()
    loss_after = trainer.evaluate(train_features, metric_key_prefix="train")["train_loss"]
    answers, after = answer_and_score("validation")
    _, on_train = answer_and_score("train")  # the span mapping end to end, on questions the model has seen
    plot_loss(out / "train_log.jsonl", out / "loss_curve.png", f"{ctx.lab.name} ({ctx.profile})")

    # 3. Save, and keep the predictions beside the references.
    remove_if_empty(out / "checkpoints")
    trainer.save_model(out / "model")
    tokenizer.save_pretrained(out / "model")
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for ex in dsd["validation"]:
            row = {
                "id": ex["id"],
                "question": ex["question"],
                "answers": ex["answers"]["text"],
                "predicted": answers[ex["id"]],
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    no_answer = sum(
        1 for s, e in zip(train_features["start_positions"], train_features["end_positions"]) if s == 0 and e == 0
    )
    return {
        "data": {
            "train_examples": len(dsd["train"]),
            "train_features": len(train_features),
            "train_features_without_answer": no_answer,
            "eval_examples": len(dsd["validation"]),
            "eval_features": len(eval_features["validation"]),
            "questions_truncated": cut["n"],
            "dropped_rows": dropped,
            "fingerprint": hub_or_files_fingerprint(cfg["data"], ctx.repo_root, ("train", "validation")),
        },
        "train": training_summary(loss_before, loss_after, result),
        "eval": {
            "exact_match_before": before["exact_match"],
            "f1_before": before["f1"],
            "exact_match": after["exact_match"],
            "f1": after["f1"],
            "exact_match_train": on_train["exact_match"],
            "f1_train": on_train["f1"],
        },
    }


if __name__ == "__main__":
    raise SystemExit(main("distilbert-squad", run))
