"""Step 1, data: labelled sentences (or sentence pairs) for a GLUE-style classification task.

One reader for both of the lab's environments: the default one (Transformers 5, PEFT) and the
``adapters`` variant (Transformers 4.57, which needs ``huggingface_hub < 1.0``: no ``datasets``
release installs beside it on the shared image, see ``requirements-adapters.in``). So this module
uses only the standard library, pyarrow and ``huggingface_hub``, and both environments read the
same rows, in the same order, with the same checks.

Sources (``data.source`` in the profile):

* ``files``: one local file per split, read by its extension: ``.jsonl`` (JSON lines), ``.json``
  (one array of objects, or JSON lines), ``.csv`` / ``.tsv`` (a header line; every field kept as
  written: the labs' shared reader, :mod:`labkit.lab.files`), ``.parquet``. Paths are relative to
  the repository root, or absolute.
* ``hub``: Parquet files of a Hub dataset at a pinned revision (``hf_hub_download``; ``HF_ENDPOINT``
  and ``HF_TOKEN`` apply), e.g. GLUE SST-2 from ``nyu-mll/glue``: ``sst2/train-00000-of-00001.parquet``
  and ``sst2/validation-00000-of-00001.parquet`` (GLUE's test labels are hidden, so the validation
  split is the evaluation set, as in the LoRA, AdaLoRA and UniPELT papers).

Labels are class ids ``0 .. len(label_names) - 1`` or names from ``label_names`` (``"positive"``),
or ids written as digits (a CSV's ``"1"``). A row whose text is null, empty or not a string stops
the run naming the file, the line (JSON lines, CSV records) or row (Parquet, JSON arrays) and the
column, or is dropped and counted with ``bad_text: drop``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from labkit.errors import LabError
from labkit.lab.files import local_format, read_csv_records, row_place  # the labs' shared formats and CSV/TSV reader
from labkit.verify import fingerprint

SPLITS = ("train", "test")
BAD_TEXT = ("fail", "drop")


@dataclass
class Split:
    """One split's rows: ``text`` (and ``text_pair`` for pair tasks, else None), integer ``label``."""

    text: list[str]
    label: list[int]
    text_pair: list[str] | None = None
    where: str = ""
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, indices: list[int]) -> Split:
        pairs = [self.text_pair[i] for i in indices] if self.text_pair is not None else None
        return Split([self.text[i] for i in indices], [self.label[i] for i in indices], pairs, self.where, self.dropped)


@dataclass(frozen=True)
class Row:
    """A raw row and where it sits, for messages: ``line 12`` / ``record 3 (line 5)`` / ``row 7``."""

    values: dict
    place: str


def read_rows(path: Path) -> list[Row]:
    """Every row of one local file, read by its extension (:data:`labkit.lab.files.LOCAL_FORMATS`):
    CSV/TSV by the labs' shared reader (:func:`labkit.lab.files.read_csv_records`: fields as written,
    UTF-8 or GBK, rows placed by record and the line it starts on), JSON lines, JSON and Parquet here
    (no ``datasets`` in the ``adapters`` environment).

    Raises:
        LabError: the file is missing, its extension is not a local format, it is not UTF-8, or it
            cannot be parsed (names the file, the record or line, and what to fix).
    """
    path = Path(path)
    if not path.is_file():
        raise LabError(f"data file {path} not found")
    local_format(path)  # an extension the labs read, or one line naming them
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        values, records = read_csv_records(path, "\t" if suffix == ".tsv" else ",")
        return [Row(dict(zip(records.header, fields)), records.place(i)) for i, fields in enumerate(values)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise LabError(f"cannot read {path} as Parquet: {type(exc).__name__}: {str(exc)[:200]}") from None
        return [Row(values, row_place(i)) for i, values in enumerate(table.to_pylist())]
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabError(f"{path} is not UTF-8 (byte {exc.start}): save it as UTF-8 (Excel: 'CSV UTF-8')") from None
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LabError(f"cannot read {path} as JSON: {exc}") from None
        return [Row(_object(item, path, row_place(i)), row_place(i)) for i, item in enumerate(items)]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LabError(f"cannot read {path} as JSON lines: line {number}: {exc.msg}") from None
            rows.append(Row(_object(item, path, f"line {number}"), f"line {number}"))
    return rows


def _object(item, path: Path, place: str) -> dict:
    if not isinstance(item, dict):
        raise LabError(f"{path}: {place} is a {type(item).__name__}, not an object with named columns")
    return item


def hub_rows(cfg: dict, split: str) -> tuple[list[Row], str]:
    """The rows of ``cfg["hub_files"][split]`` in Hub dataset ``cfg["hub_dataset"]`` at
    ``cfg["hub_revision"]`` (a Parquet file), and its cached local path."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        cfg["hub_dataset"], cfg["hub_files"][split], repo_type="dataset", revision=cfg["hub_revision"]
    )
    return read_rows(Path(path)), path


def label_id(value, names: list[str]) -> int | None:
    """``value`` as a class id: an id, an id written as digits, or a name from ``names``; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < len(names) else None
    if isinstance(value, str):
        if value in names:
            return names.index(value)
        if value.strip().isdigit() and int(value) < len(names):
            return int(value)
    return None


def to_split(rows: list[Row], cfg: dict, where: str) -> Split:
    """Rows as a :class:`Split`: text checked (``bad_text``), labels mapped through ``label_names``.

    Raises:
        LabError: a missing column (lists the columns there), bad text under ``bad_text: fail`` (names
            file, line and column), or a label that is neither a name from ``label_names`` nor an id.
    """
    if cfg["bad_text"] not in BAD_TEXT:
        raise LabError(f"data.bad_text={cfg['bad_text']!r}: use fail or drop")
    columns = [cfg["text_column"], *([cfg["text_pair_column"]] if cfg["text_pair_column"] else []), cfg["label_column"]]
    if rows:
        missing = [c for c in columns if c not in rows[0].values]
        if missing:
            raise LabError(
                f"{where} lacks column(s) {', '.join(missing)}; it has: {', '.join(rows[0].values)}. "
                "Name yours with data.text_column, data.text_pair_column, data.label_column"
            )
    names, dropped = cfg["label_names"], {}
    text, pairs, labels = [], [] if cfg["text_pair_column"] else None, []
    for row in rows:
        bad = None
        for column in columns[:-1]:
            value = row.values.get(column)
            if value is None:
                bad = (column, "missing or null")
            elif not isinstance(value, str):
                bad = (column, f"not text ({type(value).__name__} {value!r})")
            elif not value.strip():
                bad = (column, "empty")
            if bad:
                break
        if bad:
            if cfg["bad_text"] == "fail":
                raise LabError(
                    f"{where}: column {bad[0]!r} is {bad[1]} at {row.place}. Fix the file, or drop such rows "
                    "(counted in metrics.json): SET=data.bad_text=drop"
                )
            dropped[bad[0]] = dropped.get(bad[0], 0) + 1
            continue
        label = label_id(row.values[cfg["label_column"]], names)
        if label is None:
            raise LabError(
                f"{where}: {row.place} has label {row.values[cfg['label_column']]!r}, which is neither one of "
                f"data.label_names ({', '.join(names)}) nor an id 0-{len(names) - 1}"
            )
        text.append(row.values[cfg["text_column"]])
        if pairs is not None:
            pairs.append(row.values[cfg["text_pair_column"]])
        labels.append(label)
    if not labels:
        raise LabError(f"{where} has no usable rows")
    return Split(text, labels, pairs, where, dropped)


def load_splits(cfg: dict, repo_root: Path) -> dict[str, Split]:
    """``{"train": Split, "test": Split}`` as the profile's ``data`` section says (module docstring),
    sub-sampled to ``train_samples`` / ``eval_samples`` rows (None: all) with a seeded
    ``random.Random(shuffle_seed).sample``, which keeps the rows' file order.

    Raises:
        LabError: an unknown source, or anything :func:`read_rows` / :func:`to_split` refuse.
    """
    splits = {}
    for split in SPLITS:
        if cfg["source"] == "files":
            path = Path(repo_root) / cfg["files"][split]
            rows, where = read_rows(path), str(path)
        elif cfg["source"] == "hub":
            rows, where = hub_rows(cfg, split)
            where = f"{cfg['hub_dataset']}@{cfg['hub_revision']}/{cfg['hub_files'][split]}"
        else:
            raise LabError(f"data.source {cfg['source']!r} is not one of files, hub")
        splits[split] = to_split(rows, cfg, where)
    sizes = {"train": cfg["train_samples"], "test": cfg["eval_samples"]}
    for split, n in sizes.items():
        if n is not None and n < len(splits[split]):
            keep = sorted(random.Random(cfg["shuffle_seed"]).sample(range(len(splits[split])), n))
            splits[split] = splits[split].subset(keep)
    return splits


def data_fingerprint(cfg: dict, repo_root: Path) -> str:
    """``labkit.verify.fingerprint`` of what :func:`load_splits` reads: each split's file (or the Hub
    dataset, file and revision), the columns, the labels and the sub-sampling settings."""
    if cfg["source"] == "files":
        parts = {split: Path(repo_root) / cfg["files"][split] for split in SPLITS}
    else:
        parts = {split: f"hub:{cfg['hub_dataset']}@{cfg['hub_revision']}/{cfg['hub_files'][split]}" for split in SPLITS}
    keys = ("text_column", "text_pair_column", "label_column", "label_names", "train_samples", "eval_samples")
    parts["settings"] = "|".join(f"{key}={cfg[key]}" for key in (*keys, "shuffle_seed"))
    return fingerprint(parts)


class Encoded:
    """Tokenized rows for the ``Trainer`` (a map-style dataset of dicts of lists; the collator pads).

    Each item: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the tokenizer makes
    them) truncated to ``max_length`` tokens, and ``labels``.
    """

    def __init__(self, split: Split, tokenizer, max_length: int):
        enc = tokenizer(split.text, split.text_pair, truncation=True, max_length=max_length)
        self.rows = [{**{k: v[i] for k, v in enc.items()}, "labels": label} for i, label in enumerate(split.label)]
        self.longest = max(len(r["input_ids"]) for r in self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]
