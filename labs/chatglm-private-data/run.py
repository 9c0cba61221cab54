"""Course chapter 10 lab: fine-tuning a GLM chat model on your own text ("ChatGLM3-6B 私有数据微调").

The course asks a chat model (gpt-3.5 / gpt-4o-mini through LangChain) to turn the sections of a
private text (the I-Ching's hexagrams) into training data, then QLoRA-tunes ChatGLM3-6B on the CSV
(r=16, 3 epochs, batch 8, learning rate 1e-3) and compares answers before and after. Here:

1. **Generate** (``generate.py``): question/answer pairs from your documents through any
   OpenAI-compatible endpoint, every reply validated, retried, cached and de-duplicated
   (``dataset.csv``, ``generation_report.json``); or bring your own CSV (``data.file``).
2-6. **QLoRA**, the chapter 9 lab's steps on these pairs: chat-template prompts with the exact mask,
   GLM in 4-bit (``BitsAndBytesConfig``) with LoRA (``LoraConfig``), ``Trainer``, save and reload
   (``PeftModel``), answers with the adapter disabled and enabled.

    OPENAI_API_KEY=... python labs/chatglm-private-data/run.py --profile full --set generate.source=/my/docs
    python labs/chatglm-private-data/run.py --profile smoke     # a local replay server stands in for the API
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this lab's modules
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # labkit, when run as a script
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import contextlib
import os

from datasets import DatasetDict
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

from labkit.errors import LabError
from labkit.lab.chatapi import shown_url
from labkit.lab.data import check_texts, read_csv
from labkit.lab.llm.chat import ChatTemplateModel
from labkit.lab.llm.checks import check_device_support, quantization_counts, quantized
from labkit.lab.llm.generation import compare_before_after, logits_on
from labkit.lab.llm.loading import attention
from labkit.lab.llm.training import release, save_adapter, train_between_evaluations
from labkit.lab.metrics import JsonlLogger, training_summary
from labkit.lab.runner import RunContext, main
from labkit.lab.tiny import build_tiny_glm
from labkit.verify import fingerprint

from generate import check_pairs, generate, read_sections
from replay_server import ReplayServer, recorded_source

#: What a run without generation (your own CSV) leaves out, for verification (``metrics.json`` ``not_run``).
NO_GENERATION = "generate.enabled is false: the pairs are your CSV (data.file), nothing was generated"
GENERATION_OUTPUTS = ("dataset.csv", "generation_report.json", "generation_report.")


def endpoint(gen: dict, source: Path, repo_root: Path):
    """The chat endpoint for step 1, as a context manager giving its URL.

    ``base_url`` a URL: that endpoint; ``null``: ``OPENAI_BASE_URL``, else OpenAI's. ``replay``: the
    lab's replay server, which has replies for one text only (the ``source`` folder beside its
    script, :func:`replay_server.recorded_source`); for other documents the run asks
    ``OPENAI_BASE_URL`` when it is set.

    Raises:
        LabError: other documents under ``replay`` with no ``OPENAI_BASE_URL``, or with the replay's
            model name: before any request, one line saying how to point the run at a chat API.
    """
    if gen["base_url"] != "replay":
        return contextlib.nullcontext(gen["base_url"])
    replies = repo_root / (gen["replies"] or "")
    if not replies.is_file():
        raise LabError(f"generate.replies={gen['replies']!r}: the replay server's script is not there")
    recorded = recorded_source(replies)
    if read_sections(source, gen["column"]) == read_sections(recorded):
        os.environ.setdefault("OPENAI_API_KEY", "replay")  # the replay checks a key is sent, not which
        return ReplayServer(replies)
    how = (
        "export OPENAI_BASE_URL=http://localhost:8000/v1 (a local vLLM or `transformers serve`; Ollama: "
        "http://localhost:11434/v1) and OPENAI_API_KEY (any value for a local server), and SET "
        'generate.model=<a model it serves>; or SET "generate.base_url=https://api.openai.com/v1 '
        'generate.model=gpt-4o-mini" with your OPENAI_API_KEY'
    )
    url = os.environ.get("OPENAI_BASE_URL")
    if not url:
        raise LabError(
            f"generate.source {source} is not the text the replay server (generate.base_url=replay) has replies "
            f"for ({recorded}), and no chat API is set: {how}"
        )
    if gen["model"] == "replay":
        raise LabError(
            f"generate.model is 'replay', the replay server's name: {shown_url(url)} needs a model it serves: {how}"
        )
    print(f"generate.source is not the replay's text: asking {shown_url(url)} (model {gen['model']})", flush=True)
    return contextlib.nullcontext(url)


def load_pairs(csv_path: Path, cfg: dict) -> tuple[DatasetDict, dict, dict]:
    """``train`` / ``validation`` splits of a question/answer CSV (UTF-8 with or without a BOM; a
    GBK/GB18030 or UTF-16 file is read with a notice), checked as generated pairs are.

    Returns:
        ``(splits, {column: empty rows dropped}, {defect: rows dropped})`` (drops under ``bad_text: drop``).

    Raises:
        LabError: the file is missing, unreadable (encoding, quoting, field counts), lacks the
            profile's columns, has an empty or defective question or answer under ``bad_text:
            fail`` (names the record, its physical line and the column), or leaves fewer than 2 rows.
    """
    rows, records = read_csv(csv_path)
    columns = (cfg["prompt_column"], cfg["answer_column"])
    missing = [c for c in columns if c not in rows.column_names]
    if missing:
        raise LabError(
            f"{csv_path} has no column(s) {', '.join(missing)}; it has: {', '.join(rows.column_names)}. "
            "Set data.prompt_column / data.answer_column to yours"
        )
    rows = rows.add_column("__record__", list(range(len(rows))))  # the record each row came from, for messages

    def place(i: int, column: str | None = None) -> str:
        return records.place(rows[i]["__record__"], column)

    rows, dropped = check_texts(rows, columns, cfg["bad_text"], str(csv_path), records=records)
    rows, defective = check_pairs(rows, columns, cfg["bad_text"], str(csv_path), place)
    rows = rows.remove_columns("__record__")
    if len(rows) < 2:
        raise LabError(f"{csv_path} holds {len(rows)} usable row(s): at least 2 are needed (one to hold out)")
    split = rows.train_test_split(test_size=max(1, round(len(rows) * cfg["eval_fraction"])), seed=cfg["shuffle_seed"])
    return DatasetDict(train=split["train"], validation=split["test"]), dropped, defective


def run(ctx: RunContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir
    gen = cfg["generate"]

    # 1. The training set: generated from your documents through the chat API, or your own CSV.
    report, not_run = None, {}
    if gen["enabled"]:
        source = ctx.repo_root / gen["source"]  # an absolute path stays as given
        cache = ctx.repo_root / gen["cache"] if gen["cache"] else out.parents[1] / "cache"  # <output root>/<lab>/cache
        with endpoint(gen, source, ctx.repo_root) as url:
            csv_path, report = generate({**gen, "base_url": url}, source, out, cache)
        print(f"generated {report.pairs} pairs from {report.sections} sections: {out / 'dataset.csv'}", flush=True)
    else:
        if not cfg["data"]["file"]:
            raise LabError("generate.enabled is false and data.file is not set: give a CSV (SET=data.file=...)")
        csv_path = ctx.repo_root / cfg["data"]["file"]  # an absolute path stays as given
        not_run = dict.fromkeys(GENERATION_OUTPUTS, NO_GENERATION)
    dsd, dropped, defective = load_pairs(csv_path, cfg["data"])

    columns = (cfg["data"]["prompt_column"], cfg["data"]["answer_column"])
    data = {
        "dropped_rows": dropped,
        "dropped_defective": defective,
        "fingerprint": fingerprint({"pairs": csv_path}),
    }
    chat = ChatTemplateModel()

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
        "generation_report": report.as_dict() if report else None,
        "attn_implementation": attn,
        "lora": {"trainable_params": trainable, "all_params": total},
        "quantization": counts,
        "train": training_summary(losses["train_before"], losses["train_after"], losses["result"]),
        "eval": {"loss_before": losses["eval_before"], "loss_after": losses["eval_after"]},
        "generation": generation,
        "reload": {"max_abs_logit_diff": max_diff},
        **({"not_run": not_run} if not_run else {}),
    }


if __name__ == "__main__":
    raise SystemExit(main("chatglm-private-data", run))
