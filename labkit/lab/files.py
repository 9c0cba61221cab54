"""Local data files without ``datasets``: their formats by extension and the CSV/TSV reader every lab
shares (:func:`read_csv_records`), with messages that name the file, the record and the line.

Standard library only, so an environment without ``datasets`` (the peft-methods lab's ``adapters``
variant) reads CSV/TSV exactly as the others; :mod:`labkit.lab.data` builds its ``Dataset`` on it.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import LabError

#: The encoding a CSV that is not UTF-8 most likely has: Excel on a Chinese Windows saves "CSV
#: (comma delimited)" in the ANSI code page, GBK (code page 936), of which GB18030 is a superset.
CSV_FALLBACK_ENCODING = "gb18030"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _convert_hint(path: Path, encoding: str) -> str:
    encoding = encoding if encoding.startswith("<") else encoding.upper()
    excel = " (Excel: Save As > 'CSV UTF-8')" if path.suffix.lower() in (".csv", ".tsv") else ""
    return (
        f"save it as UTF-8{excel}, or convert it: "
        f"iconv -f {encoding} -t UTF-8 '{path}' > '{path.with_suffix('')}-utf8{path.suffix}'"
    )


def _mostly_chinese(text: str) -> bool:
    """At least 90 % of the non-ASCII characters are CJK ideographs or CJK/full-width punctuation:
    what a GBK file decoded as GB18030 gives, and what other 8-bit encodings decoded so do not."""
    wide = [c for c in text if ord(c) > 127]
    cjk = sum("\u4e00" <= c <= "\u9fff" or "\u3000" <= c <= "\u303f" or "\uff00" <= c <= "\uffef" for c in wide)
    return bool(wide) and cjk >= 0.9 * len(wide)


def read_csv_text(path: Path) -> tuple[str, str]:
    """The text of a CSV/TSV (or any text) file and the encoding it was read in.

    UTF-8, with or without a byte-order mark, is read as such. A UTF-16 file with its byte-order mark
    (Excel's "Unicode text") and a file that is not UTF-8 but reads as Chinese in GB18030 (GBK: what
    Excel on a Chinese Windows saves) are read too, with a one-line notice naming the file, the
    encoding and how to convert it.

    Raises:
        LabError: the file is neither (names the file, the line and column of its first byte that is
            not UTF-8, and how to convert it).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        try:
            return raw.decode("utf-8-sig"), "utf-8"
        except UnicodeDecodeError as exc:
            bad = exc.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        encoding = CSV_FALLBACK_ENCODING
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            text = None
        if text is None or not _mostly_chinese(text):
            line = raw.count(b"\n", 0, bad) + 1
            column = len(raw[raw.rfind(b"\n", 0, bad) + 1 : bad].decode("utf-8-sig")) + 1
            raise LabError(
                f"{path} is not UTF-8 (byte 0x{raw[bad]:02x} at line {line}, column {column}) and does not "
                f"read as GB18030/GBK either: {_convert_hint(path, '<its encoding>')}"
            )
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise LabError(f"{path} starts with a UTF-16 byte-order mark but is not UTF-16 ({exc.reason})") from None
    name = "UTF-16" if encoding == "utf-16" else "GB18030 (GBK: what Excel and Notepad on a Chinese Windows save)"
    print(f"notice: {path} is not UTF-8; reading it as {name}. To convert: {_convert_hint(path, encoding)}", flush=True)
    return text.removeprefix("\ufeff"), encoding


@dataclass(frozen=True)
class CsvRecords:
    """Where the records of a CSV/TSV file sit: for each record (the header not counted), the
    physical line each of its fields starts on. A quoted field may hold line breaks, so the 50th
    record can start on line 363; messages give both (:meth:`place`)."""

    header: tuple[str, ...]
    field_lines: tuple[tuple[int, ...], ...]

    def place(self, row: int, column: str | None = None) -> str:
        """``"record 50 (line 363)"``: the 1-based record number and the line where ``column``'s
        field (or, without a column, the record) starts."""
        lines = self.field_lines[row]
        line = lines[self.header.index(column)] if column in self.header else lines[0]
        return f"record {row + 1} (line {line})"


def row_place(row: int, first_line: int | None = None, records: CsvRecords | None = None, column=None) -> str:
    """Where row ``row`` (0-based, in the source's order) sits, for messages: ``record 50 (line 363)``
    in a CSV/TSV (``records``), ``line 12`` in JSON lines (``first_line``: the line of row 0), else
    ``record 31``: 1-based, as a CSV's records and a person count (a JSON array, Parquet, the Hub)."""
    if records is not None:
        return records.place(row, column)
    return f"line {row + first_line}" if first_line is not None else f"record {row + 1}"


def read_csv_records(path: Path, delimiter: str = ",") -> tuple[list[list[str]], CsvRecords]:
    """A CSV (or, with ``delimiter="\\t"``, TSV) file with a header line: its records (each a list of
    text fields, in the header's order) and where each sits (:class:`CsvRecords`, for messages).

    Every field stays text as written (no ``NA``/``null``/empty field becomes missing, as
    :data:`CSV_KEEP_TEXT`); blank lines are skipped; the encoding is UTF-8 or what
    :func:`read_csv_text` recognises.

    Raises:
        LabError: a missing or empty file, an encoding it cannot read, a header with an empty or
            repeated name, a quote never closed or followed by text, or a record with more or fewer
            fields than the header: one line naming the file, the record and its line.
    """
    path = Path(path)
    if not path.is_file():
        raise LabError(f"data file {path} not found")
    if path.suffix.lower() in (".xlsx", ".xls", ".xlsm", ".ods"):
        raise LabError(f"{path} is a spreadsheet workbook, not a CSV: save it as 'CSV UTF-8' and give that file")
    text, _ = read_csv_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header, values, field_lines = None, [], []
    start = 1  # the physical line the next record starts on
    try:
        for fields in reader:
            if fields and header is None:
                header = tuple(fields)
                if len(set(header)) != len(header) or not all(name.strip() for name in header):
                    raise LabError(
                        f"{path}: the header (line {start}) must name every column once; it is: {', '.join(header)}"
                    )
            elif fields:
                where = f"record {len(values) + 1} (line {start})"
                if len(fields) != len(header):
                    raise LabError(
                        f"{path}: {where} has {len(fields)} field(s), the header {len(header)} "
                        f"({', '.join(header)}): quote fields that hold {delimiter!r} or line breaks"
                    )
                lines, line = [], start
                for value in fields:
                    lines.append(line)
                    line += len(_LINE_BREAK.findall(value))
                values.append(fields)
                field_lines.append(tuple(lines))
            start = reader.line_num + 1
    except csv.Error as exc:
        where = f"record {len(values) + 1} (line {start})" if header else f"the header (line {start})"
        why = str(exc)
        if "end of data" in why:
            why = (
                'a quote opened there is never closed: close it, or write a quote inside a field as "" '
                "within a quoted field (a field that starts with a quote is read up to its closing quote)"
            )
        elif "expected after" in why:
            why = f'text after a field\'s closing quote ({why}): write "" for a quote inside a quoted field'
        raise LabError(f"{path}: {where}: {why}") from None
    if header is None:
        raise LabError(f"{path} is empty: a CSV needs a header line naming its columns")
    return values, CsvRecords(header, tuple(field_lines))


#: Local data files by extension: ``extension -> format``, for :func:`read_local_file` and messages.
LOCAL_FORMATS = {
    ".jsonl": "JSON lines (one object per line, each column of one type)",
    ".json": "JSON (JSON lines, or one array of objects)",
    ".csv": "CSV with a header line",
    ".tsv": "TSV (tab-separated) with a header line",
    ".parquet": "Parquet",
}


def local_format(path: Path) -> str:
    """``path``'s format (:data:`LOCAL_FORMATS`), by its extension (case-insensitive).

    Raises:
        LabError: an extension not in :data:`LOCAL_FORMATS`, in one line naming the file and the
            formats accepted.
    """
    suffix = Path(path).suffix
    if suffix.lower() in LOCAL_FORMATS:
        return LOCAL_FORMATS[suffix.lower()]
    kind = repr(suffix) if suffix else "a file without an extension"
    raise LabError(
        f"data file {path}: {kind} is not a format the labs read; by extension they read "
        f"{', '.join(LOCAL_FORMATS)} (JSON lines, JSON, CSV, TSV, Parquet; export a spreadsheet as CSV)"
    )
