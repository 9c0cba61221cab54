"""Text sources of the quantization lab: calibration sets, the perplexity slice, pre-flight checks.

A source is a profile entry with either ``file`` (a local text file read with ``datasets``' ``text``
loader; its lines are joined, and calibration windows are drawn across them) or ``dataset`` (a Hub
dataset id, with ``name``, ``split``, ``column`` and ``revision``; the Hub honours ``HF_ENDPOINT`` and
``HF_TOKEN``), e.g. wikitext-2 as in the course:

    wikitext: {dataset: Salesforce/wikitext, name: wikitext-2-raw-v1, split: train, column: text}
    custom:   {file: my_calibration.txt}

``max_texts`` keeps only the first N rows (pile-val has 214k documents; a few thousand calibrate).
"""

from __future__ import annotations

import random
from pathlib import Path

from datasets import load_dataset

from labkit.errors import LabError
from labkit.verify import fingerprint


def describe(source: dict) -> str:
    """``file X`` or ``dataset Y (name, split)`` for messages and the results table."""
    if source.get("file"):
        return f"file {source['file']}"
    return f"dataset {source['dataset']} ({source.get('name') or 'default'}, {source.get('split', 'train')})"


def sources_fingerprint(sources: dict[str, dict], repo_root: Path) -> str:
    """``labkit.verify.fingerprint`` of the profile's text sources (file contents, or dataset ids with
    name, split, column, revision and max_texts)."""
    parts = {}
    for name, source in sources.items():
        if source.get("file"):
            path = Path(source["file"])
            parts[name] = path if path.is_absolute() else repo_root / path
        else:
            keys = ("dataset", "name", "split", "column", "revision", "max_texts")
            parts[name] = "hub:" + "|".join(str(source.get(k)) for k in keys)
    return fingerprint(parts)


def load_texts(source: dict, repo_root: Path) -> list[str]:
    """The non-blank texts of ``source`` (see the module docstring), in order.

    Raises:
        LabError: neither ``file`` nor ``dataset`` given, the file is missing, or the column is absent.
    """
    if source.get("file"):
        path = Path(source["file"])
        path = path if path.is_absolute() else repo_root / path
        if not path.is_file():
            raise LabError(f"calibration/evaluation text file {path} not found (profile entry: {source})")
        rows = load_dataset("text", data_files=str(path), split="train")
        column = "text"
    elif source.get("dataset"):
        rows = load_dataset(
            source["dataset"], source.get("name"), split=source.get("split", "train"), revision=source.get("revision")
        )
        column = source.get("column", "text")
        if column not in rows.column_names:
            raise LabError(f"{describe(source)} has no column {column!r}; it has: {', '.join(rows.column_names)}")
    else:
        raise LabError(f"a text source needs `file` or `dataset`; got {source}")
    if source.get("max_texts"):
        rows = rows.select(range(min(source["max_texts"], len(rows))))
    if source.get("keep_blank"):  # wikitext perplexity joins every row, blank ones included
        return list(rows[column])
    return [t for t in rows[column] if t and t.strip()]


def token_ids(texts: list[str], tokenizer) -> list[int]:
    """All texts tokenized and joined with blank lines, as wikitext perplexity is computed
    (Hugging Face, "Perplexity of fixed-length models"; GPTQ's ``get_wikitext2``)."""
    return tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]


def calibration_windows(
    texts: list[str], tokenizer, seq_len: int, num_samples: int, seed: int, label: str, setting: str = "seq_len"
) -> list[list[int]]:
    """``num_samples`` random windows of ``seq_len`` tokens from the joined ``texts`` (GPTQ's sampling:
    Frantar et al. 2022, "128 random 2048 token segments"), as lists of token ids.

    Raises:
        LabError: before any model work, when the source is empty or shorter than one window; the
            message names the source (``label``), its token count and the settings to change.
    """
    ids = token_ids(texts, tokenizer)
    if len(ids) < seq_len:
        raise LabError(
            f"calibration data {label} has {len(ids)} tokens, fewer than one calibration sample needs "
            f"({setting}={seq_len}). Give a longer text or lower {setting}."
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, len(ids) - seq_len) for _ in range(num_samples)]
    return [ids[s : s + seq_len] for s in starts]
