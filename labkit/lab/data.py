"""Dataset loading the labs share: a Hub dataset or local JSON lines, column and text checks, sub-sampling.

Imported by lab code only (it needs ``datasets``); the host tooling never imports it.

Text columns (reviews, questions, contexts, transcripts, instructions, responses) are checked as
one kind, in every lab, before anything else sees them: a row whose text is null, empty (or only
whitespace) or not a string is either an error naming the file, the line and the column
(``bad_text: fail``, every lab's default) or dropped and counted (``bad_text: drop``; the counts go to
``metrics.json``). CSV/TSV readers keep words such as ``null``, ``NA`` or ``None`` as text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, Value, load_dataset

from labkit.errors import LabError
from labkit.lab.files import (  # noqa: F401  (re-exported: the labs' CSV reader and formats live there)
    LOCAL_FORMATS,
    CsvRecords,
    local_format,
    read_csv_records,
    read_csv_text,
    row_place,
)
from labkit.verify import fingerprint

BAD_TEXT_POLICIES = ("fail", "drop")
#: How a JSON value that is not a string is named in messages.
JSON_KINDS = {bool: "true or false", int: "a number", float: "a number", list: "a list", dict: "an object"}
#: CSV/TSV options for ``load_dataset("csv", ...)``: no value is read as missing (pandas would
#: otherwise turn "NA", "null", "None", "nan" and empty fields into NaN), so a transcript that is
#: exactly such a word stays text and an empty field stays "" (which the text check then reports).
CSV_KEEP_TEXT = {"keep_default_na": False, "na_filter": False}


def read_csv(path: Path, delimiter: str = ",") -> tuple[Dataset, CsvRecords]:
    """A CSV (or, with ``delimiter="\\t"``, TSV) file with a header line as a :class:`Dataset` of text
    columns, and where each record sits: :func:`labkit.lab.files.read_csv_records`'s records (every
    field text as written, the encoding recognised, blank lines skipped) as columns.

    Raises:
        LabError: what :func:`~labkit.lab.files.read_csv_records` refuses (one line naming the file,
            the record and its line).
    """
    values, records = read_csv_records(path, delimiter)
    columns = {name: [row[i] for row in values] for i, name in enumerate(records.header)}
    features = Features({name: Value("string") for name in records.header})
    return Dataset.from_dict(columns, features=features), records


def bad_text_rows(ds: Dataset, column: str, written: list | None = None) -> dict[str, list[int]]:
    """Row indices (0-based, in ``ds``' order) whose ``column`` is not usable text, by kind.

    Kinds: ``"missing or null"`` (a JSON key absent or null: Arrow reads both as null), ``"empty"``
    (empty or whitespace only), ``"not text (a number)"`` (also ``a list``, ``an object``, ``true or
    false``: a JSON value of another type). A column that mixes them with strings is read by
    ``datasets`` as JSON values (its ``Json`` feature), which cannot tell the text ``"5"`` from the
    number 5: ``written``, the file's own values of that column (``raw`` of :func:`read_local_file`),
    classifies each row then; without it the decoded values do.
    """
    values = ds.with_format("arrow")[column]
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        if pa.types.is_null(values.type):
            return {"missing or null": list(range(len(values)))}
        found: dict[str, list[int]] = {}
        for row, value in enumerate(written if written is not None else ds[column][:]):  # str, int, list, None...
            if value is None:
                kind = "missing or null"
            elif isinstance(value, str):
                kind = "empty" if not value.strip() else None
            else:
                kind = f"not text ({JSON_KINDS.get(type(value), type(value).__name__)})"
            if kind:
                found.setdefault(kind, []).append(row)
        return found
    found = {}
    nulls = pc.is_null(values)
    empty = pc.and_(pc.invert(nulls), pc.equal(pc.utf8_trim_whitespace(values.fill_null("")), ""))
    for kind, mask in (("missing or null", nulls), ("empty", empty)):
        rows = pc.indices_nonzero(mask).to_pylist()
        if rows:
            found[kind] = rows
    return found


def check_texts(
    ds: Dataset,
    columns: tuple[str, ...] | list[str],
    policy: str,
    where: str,
    first_line: int | None = None,
    records: CsvRecords | None = None,
    raw: dict[str, list] | None = None,
) -> tuple[Dataset, dict[str, int]]:
    """Check ``columns`` of ``ds`` for null, empty and non-string values (see the module docstring).

    Args:
        ds: rows in the order of their source (before shuffling or sub-sampling).
        columns: the text columns this lab reads.
        policy: ``"fail"`` or ``"drop"`` (a profile's ``data.bad_text``).
        where: the source, for messages: a file path, or ``"<hub id> split <name>"``.
        first_line: the file line of row 0 (1 for JSON lines, 2 for a CSV/TSV with a header);
            ``None`` numbers records from 1 instead (:func:`row_place`).
        records: a CSV/TSV's :class:`CsvRecords` (:func:`read_csv`): places are then given as the
            record number and the physical line its field starts on (``record 50 (line 363)``),
            which differ once a quoted field holds a line break.
        raw: ``{column: the file's values}`` for columns ``datasets`` read as JSON values (mixed
            types: :func:`read_local_file`), so each row is classified, and kept, as written.

    Returns:
        ``(ds without the bad rows, {column: rows dropped})`` (nothing dropped under ``fail``).

    Raises:
        LabError: ``policy`` is ``fail`` and a row is bad (names the source, line/row, column and the
            way to drop such rows), ``drop`` left no row, or ``policy`` is unknown.
    """
    if policy not in BAD_TEXT_POLICIES:
        raise LabError(f"data.bad_text={policy!r}: use one of {', '.join(BAD_TEXT_POLICIES)}")

    def place(row: int, column: str | None = None) -> str:
        return row_place(row, first_line, records, column)

    bad_rows: set[int] = set()
    counts: dict[str, int] = {}
    raw = raw or {}
    for column in columns:
        found = bad_text_rows(ds, column, raw.get(column))
        rows = sorted({r for rs in found.values() for r in rs})
        if not rows:
            continue
        if policy == "fail":
            kind, first = min(((k, rs[0]) for k, rs in found.items()), key=lambda kr: kr[1])
            more = (
                f" (and {len(rows) - 1} more row(s): {', '.join(place(r, column) for r in rows[1:6])}"
                if len(rows) > 1
                else ""
            )
            more += ", ...)" if len(rows) > 6 else (")" if more else "")
            raise LabError(
                f"{where}: column {column!r} is {kind} at {place(first, column)}{more}. Fix the data, or set "
                "data.bad_text=drop to drop such rows (they are counted in metrics.json)."
            )
        counts[column] = len(rows)
        bad_rows.update(rows)
    kept = [i for i in range(len(ds)) if i not in bad_rows]
    if bad_rows:
        ds = ds.select(kept)
    for column in columns:  # a column read as JSON values (strings mixed with others): plain text again
        if column in ds.column_names and ds.features[column] != Value("string"):
            texts = [raw[column][i] for i in kept] if column in raw else ds[column][:]
            if all(isinstance(t, str) for t in texts):
                ds = ds.flatten_indices().map(
                    lambda _, i, c=column, t=texts: {c: t[i]},
                    with_indices=True,
                    features=Features({**ds.features, column: Value("string")}),
                )
    if bad_rows and not len(ds):
        raise LabError(
            f"{where}: every row ({len(bad_rows)}) has missing, empty or non-text values in {', '.join(counts)}: "
            "nothing is left to use. Check the column names and the file's format."
        )
    if bad_rows:
        shown = ", ".join(place(r) for r in sorted(bad_rows)[:10]) + (", ..." if len(bad_rows) > 10 else "")
        print(
            f"{where}: dropped {len(bad_rows)} row(s) with missing, empty or non-text values {counts}: {shown}",
            flush=True,
        )
    return ds, counts


SAMPLING_KEYS = ("train_samples", "eval_samples", "shuffle_seed")


def sampling_part(cfg: dict) -> str:
    """The sub-sampling settings of a profile's ``data`` as one fingerprint part: a subset of the
    bundled data is other data (its counts differ), so it must fingerprint differently."""
    return "|".join(f"{key}={cfg.get(key)}" for key in SAMPLING_KEYS)


def hub_or_files_fingerprint(cfg: dict, repo_root: Path, splits: tuple[str, ...]) -> str:
    """``labkit.verify.fingerprint`` of what :func:`load_hub_or_files` reads for ``cfg`` (a profile's
    ``data``): the files (or the Hub id and revision) and the sub-sampling settings."""
    if cfg["source"] == "files":
        parts = {split: repo_root / cfg["files"][split] for split in splits}
    else:
        parts = {split: f"hub:{cfg['hub_dataset']}@{cfg['hub_revision']}" for split in splits}
    return fingerprint({**parts, "sampling": sampling_part(cfg)})


def require_columns(
    dsd: DatasetDict, columns: tuple[str, ...] | list[str], hint: str = "", sources: dict[str, str] | None = None
) -> None:
    """Raise :class:`LabError` naming the split (and its file: ``sources``, split -> where it was
    read), the missing columns, the columns it has and ``hint`` (else: rename the header or keys)."""
    for split, ds in dsd.items():
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            where = f"{sources[split]} ({split} split)" if sources and split in sources else f"{split} split"
            advice = hint or f"Rename the header (CSV/TSV) or the keys (JSON) to {', '.join(columns)}"
            raise LabError(
                f"{where} lacks column(s) {', '.join(missing)}; it has: {', '.join(ds.column_names)}. {advice}"
            )


def check_values(
    ds: Dataset,
    column: str,
    accepts,
    expected: str,
    where: str,
    first_line: int | None = None,
    records: CsvRecords | None = None,
    raw: dict[str, list] | None = None,
) -> None:
    """Refuse a row whose ``column`` value ``accepts(value)`` rejects: one line naming the source, the
    first such row's place (:func:`row_place`, as :func:`check_texts` names them), the value (quoted,
    so an empty one shows) and ``expected`` (what a value may be). ``ds``: rows in their source's order;
    ``raw``: as in :func:`check_texts` (the file's values of a mixed-type column).

    Raises:
        LabError: a rejected value (the first; the count of the others).
    """
    values = (raw or {}).get(column) or ds[column][:]
    bad = [i for i, value in enumerate(values) if not accepts(value)]
    if bad:
        more = f" (and {len(bad) - 1} more row(s))" if len(bad) > 1 else ""
        raise LabError(
            f"{where}: column {column!r} is {values[bad[0]]!r} at {row_place(bad[0], first_line, records, column)}"
            f"{more}: {expected}. Fix the data."
        )


def first_bad_json_line(path: Path) -> str | None:
    """``line N: <json error> at column C; ...`` for the first non-blank line of a JSON lines file
    that is not one JSON object, or None (Arrow's parser reports a byte position in a block instead).
    Read only after Arrow has failed on the file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                why = exc.msg.removesuffix(" at")  # "Invalid control character at": a string left open, often
                hint = " (a string left open, or a line break or tab inside one?)" if "control character" in why else ""
                return f"line {number}: {why} at column {exc.colno}{hint}; each line must be one JSON object"
            if not isinstance(value, dict):
                return f"line {number}: a JSON {type(value).__name__}, not an object; each line must be one JSON object"
    return None


def is_blank(path: Path) -> bool:
    """Whether a file holds nothing but whitespace (read in blocks until the first other byte)."""
    with open(path, "rb") as f:
        while block := f.read(1 << 16):
            if block.strip():
                return False
    return True


def read_local_file(path: Path) -> tuple[Dataset, dict]:
    """One local data file, read by its extension (:func:`local_format`), and how its rows are
    placed in messages (keyword arguments for :func:`check_texts`).

    ``.jsonl`` and ``.json`` go through ``datasets``' ``json`` loader (rows placed by file line for
    ``.jsonl``; by 0-based row for ``.json``, which may hold one array), ``.parquet`` through its
    ``parquet`` loader (0-based rows). ``.csv`` and ``.tsv`` go through :func:`read_csv`: every
    column text as written (``NA``, ``null`` and empty fields stay text), the encoding recognised,
    rows placed by record and line (a quoted field may span lines).

    Returns:
        ``(dataset, {"first_line": 1} | {"records": CsvRecords} | {})``, and ``"raw"``: ``{column:
        values}`` as the file holds them for columns of mixed JSON types (``datasets`` reads those as
        JSON values; :func:`check_texts` classifies them by what was written).

    Raises:
        LabError: the file does not exist, its extension is not one of :data:`LOCAL_FORMATS`, or it
            cannot be parsed as its format (the format and the parser's first error line).
    """
    path = Path(path)
    if not path.is_file():
        raise LabError(f"data file {path} not found")
    about, suffix = local_format(path), path.suffix.lower()
    if suffix in (".jsonl", ".json") and is_blank(path):
        raise LabError(f"data file {path} is empty: {about} needs at least one row")
    if suffix in (".csv", ".tsv"):
        ds, records = read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
        return ds, {"records": records}
    try:
        ds = load_dataset("parquet" if suffix == ".parquet" else "json", data_files=str(path), split="train")
    except Exception as exc:  # datasets wraps pyarrow's parse errors in several types
        if suffix == ".jsonl" and (line := first_bad_json_line(path)):
            raise LabError(f"cannot read {path} as {about}: {line}") from None
        cause = exc.__cause__ or exc
        first = (str(cause).splitlines() or [""])[0][:300]
        raise LabError(f"cannot read {path} as {about}: {type(cause).__name__}: {first}") from exc
    places: dict = {"first_line": 1} if suffix == ".jsonl" else {}
    # datasets >= 5 reads a mixed-type column as its Json feature (the course variants' older datasets has none)
    mixed = [name for name, feature in ds.features.items() if type(feature).__name__ == "Json"]
    if mixed and suffix in (".jsonl", ".json") and (rows := json_rows(path, suffix)) and len(rows) == len(ds):
        places["raw"] = {name: [row.get(name) for row in rows] for name in mixed}
    return ds, places


def json_rows(path: Path, suffix: str) -> list[dict] | None:
    """The rows of a JSON lines file (its non-blank lines) or of a JSON file holding one array of
    objects, as Python's ``json`` reads them; None for any other layout."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        rows = (
            [json.loads(line) for line in text.splitlines() if line.strip()] if suffix == ".jsonl" else json.loads(text)
        )
    except json.JSONDecodeError:
        return None
    return rows if isinstance(rows, list) and all(isinstance(r, dict) for r in rows) else None


def load_hub_or_files(
    cfg: dict,
    repo_root: Path,
    splits: tuple[str, ...],
    columns: tuple[str, ...],
    text_columns: tuple[str, ...] = (),
    values: dict | None = None,
) -> tuple[DatasetDict, dict]:
    """``splits`` of ``cfg["hub_dataset"]`` (``source: hub``) or of local files (``source: files``).

    ``cfg`` is a profile's ``data`` section: ``source``, ``hub_dataset``, ``hub_revision``, ``files``
    (split name -> path relative to ``repo_root``, or absolute) and ``bad_text`` (``fail``/``drop``,
    for ``text_columns``; see :func:`check_texts`). The Hub honours ``HF_ENDPOINT`` and ``HF_TOKEN``.
    ``source: files`` reads each split's file by its extension
    through :func:`read_local_file`: JSON lines, JSON, CSV, TSV or Parquet (:data:`LOCAL_FORMATS`);
    the splits may differ in format. ``values``: ``{column: (accepts, expected)}`` checked on every
    row before anything is dropped (:func:`check_values`), e.g. labels.

    Returns:
        ``(dataset dict, {split: {column: rows dropped}})``.

    Raises:
        LabError: unknown source, a missing file, a file of an unknown extension (names the formats
            accepted) or one its reader cannot parse, a split without ``columns`` (names the file,
            lists what is there), a value ``values`` rejects, or bad text under ``bad_text: fail``
            (each names file, line and column).
    """
    if cfg["source"] == "hub":
        dsd = load_dataset(cfg["hub_dataset"], revision=cfg["hub_revision"])
        sources = {split: (f"{cfg['hub_dataset']} split {split}", {}) for split in splits}
    elif cfg["source"] == "files":
        read = {split: read_local_file(repo_root / cfg["files"][split]) for split in splits}
        dsd = DatasetDict({split: ds for split, (ds, _) in read.items()})
        sources = {split: (str(repo_root / cfg["files"][split]), read[split][1]) for split in splits}
    else:
        raise LabError(f"data.source {cfg['source']!r} is not one of hub, files (local files read by extension)")
    require_columns(dsd, columns, sources={split: where for split, (where, _) in sources.items()})
    dsd = DatasetDict({split: dsd[split] for split in splits})
    dropped = {}
    for split in splits:
        where, places = sources[split]
        for column, (accepts, expected) in (values or {}).items():
            check_values(dsd[split], column, accepts, expected, where, **places)
        dsd[split], counts = check_texts(dsd[split], text_columns, cfg.get("bad_text", "fail"), where, **places)
        if counts:
            dropped[split] = counts
    return dsd, dropped


def subsample(dsd: DatasetDict, sizes: dict[str, int | None], seed: int) -> DatasetDict:
    """The course's demo subsets: ``shuffle(seed=seed).select(range(n))`` per split (None keeps all)."""
    for split, n in sizes.items():
        if n is not None and n < len(dsd[split]):
            dsd[split] = dsd[split].shuffle(seed=seed).select(range(n))
    return dsd
