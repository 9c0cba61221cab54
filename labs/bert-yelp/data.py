"""Step 1, data (course chapter 4): Yelp Review Full, labels as class ids, tokenized with padding.

Yelp Review Full has a ``text`` column and a ``label`` column whose feature is a ``ClassLabel`` with
five names ("1 star" … "5 stars", ids 0-4). The classifier head is sized from that feature, never
from Transformers' default of two labels. Labels that arrive as strings (the smoke profile's JSON
lines, or a CSV export) are mapped to ids through the profile's ``label_names`` (label2id).
"""

from __future__ import annotations

from pathlib import Path

from datasets import ClassLabel, DatasetDict

from labkit.lab.data import load_hub_or_files, subsample


def load_reviews(cfg: dict, repo_root: Path) -> tuple[DatasetDict, dict]:
    """``(DatasetDict(train, test), rows dropped)``: ``text`` and an integer ``label`` (a ``ClassLabel``).

    ``cfg["source"]`` is ``hub`` (``load_dataset(hub_dataset)``) or ``json``: one local file per
    split, read by its extension (``.jsonl``, ``.json``, ``.csv``, ``.tsv``, ``.parquet``;
    ``labkit.lab.data.read_local_file``). Sub-samples with ``shuffle(seed).select(range(n))`` as
    the course does.

    A review whose ``text`` is null, empty or not a string stops the run naming file, line and
    column, or is dropped and counted with ``bad_text: drop`` (``labkit.lab.data.check_texts``).

    Raises:
        LabError: a missing file, a file of another format (names the formats read), a missing
            column (names the file, lists the columns there), bad text, or a label that is not one of
            ``label_names`` nor an id (names the file, the line or record and the value).
    """
    names, as_text = cfg["label_names"], ids_as_text(cfg["label_names"])
    labels = (
        lambda value: _known(value, names) or (isinstance(value, str) and value in as_text),
        f"a label is one of label_names ({', '.join(names)}) or an id 0-{len(names) - 1}",
    )
    columns = ("text", "label")
    dsd, dropped = load_hub_or_files(cfg, repo_root, ("train", "test"), columns, ("text",), {"label": labels})
    dsd = encode_labels(dsd, names)
    sizes = {"train": cfg["train_samples"], "test": cfg["eval_samples"]}
    return subsample(dsd, sizes, cfg["shuffle_seed"]), dropped


def encode_labels(dsd: DatasetDict, label_names: list[str]) -> DatasetDict:
    """Make ``label`` a ``ClassLabel``: keep the dataset's own, or map strings/ints through ``label_names``.

    A label is a name from ``label_names`` or an id ``0 .. len(label_names) - 1``, as a number or,
    from a CSV/TSV file (whose fields are all text), as digits (``"3"``): :func:`load_reviews` has
    refused any other value already, naming its file and line (``labkit.lab.data.check_values``).
    """
    feature = dsd["train"].features["label"]
    if isinstance(feature, ClassLabel):
        return dsd
    target = ClassLabel(names=label_names)
    dsd = DatasetDict({split: _ids_as_names(ds, label_names) for split, ds in dsd.items()})
    return dsd.cast_column("label", target)


def ids_as_text(names: list[str]) -> set[str]:
    """Label ids as a CSV/TSV field holds them: ``{"0", ..., "<n - 1>"}``."""
    return {str(i) for i in range(len(names))}


def _ids_as_names(ds, names: list[str]):
    """``ds`` with text labels that are ids written as digits (``"3"``) replaced by their names."""
    if getattr(ds.features["label"], "dtype", None) not in ("string", "large_string"):
        return ds

    ids = {str(i): names[i] for i in range(len(names))}

    def name(value):
        return ids.get(value, value) if value not in names else value

    return ds.map(lambda batch: {"label": [name(v) for v in batch["label"]]}, batched=True)


def _known(value, names: list[str]) -> bool:
    if isinstance(value, str):
        return value in names
    return isinstance(value, int) and 0 <= value < len(names)


def tokenize(dsd: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    """Course ``tokenize_function``: ``padding="max_length"``, ``truncation=True`` via ``Dataset.map``."""
    return dsd.map(
        lambda batch: tokenizer(batch["text"], padding="max_length", truncation=True, max_length=max_length),
        batched=True,
    )
