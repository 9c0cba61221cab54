"""Course chapter 10 lab: fine-tuning a GLM chat model on your own text ("ChatGLM3-6B 私有数据微调").

The course asks a chat model (gpt-3.5 / gpt-4o-mini through LangChain) to turn the sections of a
private text (the I-Ching's hexagrams) into training data, then QLoRA-tunes ChatGLM3-6B on the CSV
(r=16, 3 epochs, batch 8, learning rate 1e-3) and compares answers before and after. Here:

1. **Generate** (``generate.py``): question/answer pairs from your documents through any
   OpenAI-compatible endpoint, every reply validated, retried, cached and de-duplicated
   (``dataset.csv``, ``generation_report.json``); or bring your own CSV (``data.file``).
2-6. **QLoRA** as the chapter 9 lab (``labkit.qlora.chat_qlora``): chat-template prompts with the
   exact mask, GLM in 4-bit with LoRA, ``Trainer``, save and reload, answers with the adapter
   disabled and enabled.

    OPENAI_API_KEY=... python labs/chatglm-private-data/run.py --profile full --set generate.source=/my/docs
    python labs/chatglm-private-data/run.py --profile smoke     # a local replay server stands in for the API
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this lab's modules
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # labkit, when run as a script
import labkit  # noqa: F401  (first: it quiets a bitsandbytes start-up message)

# isort: split

import contextlib
import os

from datasets import DatasetDict, load_dataset

from labkit.data import CSV_KEEP_TEXT, check_texts, require_columns
from labkit.errors import LabError
from labkit.qlora import chat_qlora
from labkit.runner import RunContext, main
from labkit.verify import fingerprint

from generate import generate
from replay_server import ReplayServer


def endpoint(gen: dict, repo_root: Path):
    """The chat endpoint for step 1: the lab's replay server (``base_url: replay``) or a real one."""
    if gen["base_url"] != "replay":
        return contextlib.nullcontext(gen["base_url"])
    os.environ.setdefault("OPENAI_API_KEY", "replay")  # the replay checks a key is sent, not which
    return ReplayServer(repo_root / gen["replies"])


def load_pairs(csv_path: Path, cfg: dict) -> DatasetDict:
    """``train`` / ``validation`` splits of a question/answer CSV (UTF-8, with or without a BOM).

    Raises:
        LabError: the file is missing, lacks the profile's columns, or has an empty cell (under
            ``bad_text: fail``; names the line and column).
    """
    if not csv_path.is_file():
        raise LabError(f"data file {csv_path} not found")
    rows = load_dataset("csv", data_files=str(csv_path), split="train", encoding="utf-8-sig", **CSV_KEEP_TEXT)
    columns = (cfg["prompt_column"], cfg["answer_column"])
    require_columns(
        DatasetDict(data=rows), columns, f"set data.prompt_column / data.answer_column (the CSV is {csv_path})"
    )
    rows, dropped = check_texts(rows, columns, cfg["bad_text"], str(csv_path), first_line=2)
    if len(rows) < 2:
        raise LabError(f"{csv_path} holds {len(rows)} usable row(s): at least 2 are needed (one to hold out)")
    split = rows.train_test_split(test_size=max(1, round(len(rows) * cfg["eval_fraction"])), seed=cfg["shuffle_seed"])
    return DatasetDict(train=split["train"], validation=split["test"]), dropped


def run(ctx: RunContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir
    gen = cfg["generate"]

    # 1. The training set: generated from your documents through the chat API, or your own CSV.
    report = None
    if gen["enabled"]:
        source = ctx.repo_root / gen["source"]  # an absolute path stays as given
        cache = ctx.repo_root / gen["cache"] if gen["cache"] else out.parents[1] / "cache"  # <output root>/<lab>/cache
        with endpoint(gen, ctx.repo_root) as url:
            csv_path, report = generate({**gen, "base_url": url}, source, out, cache)
        print(f"generated {report.pairs} pairs from {report.sections} sections: {out / 'dataset.csv'}", flush=True)
    else:
        if not cfg["data"]["file"]:
            raise LabError("generate.enabled is false and data.file is not set: give a CSV (SET=data.file=...)")
        csv_path = Path(cfg["data"]["file"])
        csv_path = csv_path if csv_path.is_absolute() else ctx.repo_root / csv_path
    dsd, dropped = load_pairs(csv_path, cfg["data"])

    # 2-6. QLoRA on the pairs and the before/after comparison (shared with chapter 9's lab).
    columns = (cfg["data"]["prompt_column"], cfg["data"]["answer_column"])
    steps = chat_qlora(ctx, dsd, columns, (cfg["max_input_length"], cfg["max_output_length"]))
    data = {
        "train_examples": steps.pop("train_examples"),
        "eval_examples": steps.pop("eval_examples"),
        "lengths": steps.pop("lengths"),
        "dropped_rows": dropped,
        "fingerprint": fingerprint({"pairs": csv_path}),
    }
    return {"data": data, "generation_report": report.as_dict() if report else None, **steps}


if __name__ == "__main__":
    raise SystemExit(main("chatglm-private-data", run))
