"""Text for causal language modelling: load it (a Hub dataset, or local files), check it, and cut it
into fixed-length blocks of token ids (the ``group_texts`` step of Transformers' ``run_clm.py``).

Local files are read by extension: ``.txt`` as paragraphs (separated by blank lines; a paragraph's
lines joined with a space), and JSON lines, JSON, CSV, TSV or Parquet through
``labkit.lab.data.read_local_file`` with the text in ``data.text_column``. A null, empty or
non-text value stops the run naming the file, line and column (``data.bad_text: fail``) or is dropped
and counted (``drop``). On the Hub (wikitext), blank rows separate paragraphs: they are skipped and
counted, not errors.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from labkit.errors import LabError
from labkit.lab.data import check_texts, read_local_file, require_columns
from labkit.verify import fingerprint

SPLITS = ("train", "test")


def read_paragraphs(path: Path) -> list[str]:
    """A plain-text file's paragraphs (blank-line separated, inner line breaks become spaces).

    Raises:
        LabError: the file is missing, not UTF-8, or holds no text.
    """
    path = Path(path)
    if not path.is_file():
        raise LabError(f"data file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LabError(f"{path} is not UTF-8 (byte {exc.start}): convert it, e.g. iconv -t UTF-8") from None
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    paragraphs = [p for p in paragraphs if p]
    if not paragraphs:
        raise LabError(f"{path} holds no text")
    return paragraphs


def read_split(path: Path, column: str, policy: str) -> tuple[list[str], int]:
    """The texts of one local file and the rows dropped as bad text (``policy`` ``drop``).

    Raises:
        LabError: see the module docstring; also a missing ``column`` (lists the file's columns).
    """
    if Path(path).suffix.lower() == ".txt":
        return read_paragraphs(path), 0
    ds, places = read_local_file(path)
    from datasets import DatasetDict

    require_columns(
        DatasetDict(data=ds), [column], hint=f"set data.text_column to the column holding the text ({path})"
    )
    ds, counts = check_texts(ds, [column], policy, str(path), **places)
    return list(ds[column]), sum(counts.values())


def load_texts(cfg: dict, repo_root: Path) -> tuple[dict[str, list[str]], dict]:
    """``{"train": [...], "test": [...]}`` texts for a profile's ``data`` section, and what was left out.

    ``source: files`` reads ``files.train`` / ``files.test`` (paths relative to the repository, or
    absolute); ``source: hub`` loads ``hub_dataset`` / ``hub_config`` at ``hub_revision`` (splits
    ``hub_splits``), honouring ``HF_ENDPOINT`` and ``HF_TOKEN``.

    Returns:
        ``(texts, {"dropped_rows": {split: n}, "blank_rows_skipped": {split: n}})``.

    Raises:
        LabError: an unknown source, a missing file or column, bad text under ``bad_text: fail``.
    """
    texts, dropped, blank = {}, {}, {}
    if cfg["source"] == "files":
        for split in SPLITS:
            path = Path(cfg["files"][split])
            texts[split], dropped[split] = read_split(
                path if path.is_absolute() else repo_root / path, cfg["text_column"], cfg["bad_text"]
            )
    elif cfg["source"] == "hub":
        from datasets import load_dataset

        for split in SPLITS:
            rows = load_dataset(
                cfg["hub_dataset"], cfg["hub_config"], split=cfg["hub_splits"][split], revision=cfg["hub_revision"]
            )
            column = list(rows[cfg["text_column"]])
            texts[split] = [t for t in column if isinstance(t, str) and t.strip()]
            blank[split] = len(column) - len(texts[split])
    else:
        raise LabError(f"data.source={cfg['source']!r}: use files (data.files.train / test) or hub (data.hub_dataset)")
    return texts, {"dropped_rows": {k: v for k, v in dropped.items() if v}, "blank_rows_skipped": blank}


def data_fingerprint(cfg: dict, repo_root: Path) -> str:
    """``labkit.verify.fingerprint`` of the texts and of how they are cut (block size and limits): the
    same files cut differently are other data."""
    if cfg["source"] == "files":
        parts = {}
        for split in SPLITS:
            path = Path(cfg["files"][split])
            parts[split] = path if path.is_absolute() else repo_root / path
    else:
        parts = {
            s: f"hub:{cfg['hub_dataset']}/{cfg['hub_config']}@{cfg['hub_revision']}:{cfg['hub_splits'][s]}"
            for s in SPLITS
        }
    cut = "|".join(f"{key}={cfg[key]}" for key in ("block_size", "max_train_blocks", "max_eval_blocks"))
    return fingerprint({**parts, "blocks": cut})


def to_blocks(texts: list[str], tokenizer, block_size: int, max_blocks: int | None, what: str) -> torch.Tensor:
    """Tokenize ``texts`` (each followed by the end-of-text token), concatenate them and cut the stream
    into ``block_size`` tokens (the remainder is dropped), keeping at most ``max_blocks`` blocks.

    Returns:
        (n_blocks, block_size) int64.

    Raises:
        LabError: ``block_size`` < 2, or the text gives less than one block (names ``what`` and the sizes).
    """
    if int(block_size) < 2:
        raise LabError(f"data.block_size={block_size}: a causal LM block needs at least 2 tokens")
    ids: list[int] = []
    for row in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(row)
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // block_size
    if max_blocks is not None:
        n = min(n, int(max_blocks))
    if n < 1:
        raise LabError(
            f"{what}: {len(texts)} texts give {len(ids)} tokens, less than one block of data.block_size={block_size}; "
            "add text or lower data.block_size"
        )
    return torch.tensor(ids[: n * block_size], dtype=torch.long).reshape(n, block_size)
