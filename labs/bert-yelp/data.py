"""Step 1, data (course chapter 4): Yelp Review Full, labels as class ids, tokenized with padding.

Yelp Review Full has a ``text`` column and a ``label`` column whose feature is a ``ClassLabel`` with
five names ("1 star" … "5 stars", ids 0-4). The classifier head is sized from that feature, never
from Transformers' default of two labels. Labels that arrive as strings (the smoke profile's JSON
lines, or a CSV export) are mapped to ids through the profile's ``label_names`` (label2id).
"""

from __future__ import annotations

from pathlib import Path

from datasets import ClassLabel, DatasetDict, load_dataset

from labkit import LabError


def load_reviews(cfg: dict, repo_root: Path) -> DatasetDict:
    """``DatasetDict(train, test)`` with ``text`` and an integer ``label`` (a ``ClassLabel``).

    ``cfg["source"]`` is ``hub`` (``load_dataset(hub_dataset)``) or ``json`` (local JSON lines, one
    file per split). Sub-samples with ``shuffle(seed).select(range(n))`` as the course does.

    Raises:
        LabError: a missing file, a missing column (lists the columns there), or a label that is not
            one of ``label_names`` (names it).
    """
    if cfg["source"] == "hub":
        dsd = load_dataset(cfg["hub_dataset"], revision=cfg["hub_revision"])
    elif cfg["source"] == "json":
        files = {split: repo_root / path for split, path in cfg["files"].items()}
        for path in files.values():
            if not path.is_file():
                raise LabError(f"data file {path} not found")
        dsd = load_dataset("json", data_files={k: str(v) for k, v in files.items()})
    else:
        raise LabError(f"data.source {cfg['source']!r} is not one of hub, json")
    for split, ds in dsd.items():
        missing = [c for c in ("text", "label") if c not in ds.column_names]
        if missing:
            raise LabError(f"{split} split lacks column(s) {', '.join(missing)}; it has: {', '.join(ds.column_names)}")
    dsd = DatasetDict(train=dsd["train"], test=dsd["test"])
    dsd = encode_labels(dsd, cfg["label_names"])
    for split, n in (("train", cfg["train_samples"]), ("test", cfg["eval_samples"])):
        if n is not None and n < len(dsd[split]):
            dsd[split] = dsd[split].shuffle(seed=cfg["shuffle_seed"]).select(range(n))
    return dsd


def encode_labels(dsd: DatasetDict, label_names: list[str]) -> DatasetDict:
    """Make ``label`` a ``ClassLabel``: keep the dataset's own, or map strings/ints through ``label_names``."""
    feature = dsd["train"].features["label"]
    if isinstance(feature, ClassLabel):
        return dsd
    target = ClassLabel(names=label_names)
    for split, ds in dsd.items():
        values = set(ds["label"])
        unknown = sorted(str(v) for v in values if not _known(v, label_names))
        if unknown:
            raise LabError(
                f"{split} split has label(s) {', '.join(unknown[:5])} that are not among the profile's "
                f"label_names ({', '.join(label_names)}) nor ids 0-{len(label_names) - 1}"
            )
    return dsd.cast_column("label", target)


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
