"""Step 1 (course chapter 10, "ChatGLM3-6B 私有数据微调"): a training set generated from your own text.

The course sends each section of a private text to a chat model (OpenAI's, through LangChain) and
parses ``content:"..." summary:"..."`` out of the reply with string searches; its committed CSV
shows what that lets through: JSON blobs inside fields, stray quotes, ``key: "..."`` with a space,
extra sections. Here:

* the source is a folder of ``.txt``/``.md`` files (sections split on blank lines, as the course
  splits its ``raw_data.txt``) or a CSV with a text column;
* each section goes to an **OpenAI-compatible chat endpoint** (the ``openai`` client: OpenAI,
  DeepSeek, vLLM, Ollama, ``transformers serve``; ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, model
  name in the profile) asking for question/answer pairs as a JSON object;
* every reply is validated (:func:`validate`: JSON, schema, non-empty, no JSON or ``key:`` text
  inside fields, no stray quotes, the expected language) and rejected replies are counted by reason;
* rate limits (429) and server errors (5xx) are retried with the client's exponential backoff
  (honouring ``retry-after``); every valid reply is cached by the hash of its request, so a stopped
  run resumes without paying for the same call twice, and a rejected one is asked again
  (:mod:`labkit.lab.chatapi`, shared with the rlhf lab's AI judge);
* pairs are de-duplicated and written to ``dataset.csv`` (``question,answer``, UTF-8) with
  ``generation_report.json`` (requests, retries, cache hits, rejected replies by reason, tokens).

The API key is read from the environment at run time and never printed, logged or saved.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from labkit.errors import LabError  # noqa: E402
from labkit.lab.chatapi import ask, client_for  # noqa: E402  (the shared client: key, retries, cache by request hash)

SYSTEM = (
    "You turn a section of a document into training data for a question-answering assistant. "
    "Reply with one JSON object and nothing else, in this shape: "
    '{"pairs": [{"question": "...", "answer": "..."}]}. Write {n} pairs in {language}: questions a reader '
    "would ask about the section, answers taken from the section only, as plain text (no JSON, no "
    "markdown, no field names inside the text)."
)
LANGUAGES = {"zh": "Chinese", "en": "English"}
KEY_TEXT = re.compile(
    r"^\s*(content|summary|question|answer|format|comment|source|interpretation)\s*[:：]", re.IGNORECASE | re.MULTILINE
)
#: Why a question or answer is unusable (:func:`check_field`), in words for messages.
REASONS = {
    "empty_field": "empty",
    "json_in_field": "JSON inside the text (a reply's object pasted as a field)",
    "key_value_text": "a 'key: value' line inside the text (summary:, format:, source: ...)",
    "stray_quote": "a quote left over at its start or end (an odd number of quotes)",
    "wrong_language": "not in the language asked for",
}


@dataclass
class Report:
    """What a generation cost and produced (``generation_report.json``)."""

    sections: int = 0
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0  # requests answered 429 or 5xx (the client retried them)
    cache_hits: int = 0
    replies_valid: int = 0
    replies_rejected: Counter = field(default_factory=Counter)  # by reason
    pairs_rejected: Counter = field(default_factory=Counter)
    pairs: int = 0
    duplicates: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stopped: str | None = None  # why generation stopped early, if it did

    def as_dict(self) -> dict:
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in self.__dict__.items()}


def read_sections(source: Path, column: str | None = None) -> list[str]:
    """Text sections of ``source``: a folder's ``.txt``/``.md`` files split on blank lines, or a CSV's
    ``column`` (UTF-8, with or without a byte-order mark; GBK read with a notice: ``labkit.lab.data``).

    Raises:
        LabError: the source does not exist, holds no text files or sections, a file's encoding or a
            CSV's quoting is unreadable, or the CSV lacks the column.
    """
    from labkit.lab.data import read_csv, read_csv_text

    source = Path(source)
    if not source.exists():
        raise LabError(f"source {source} does not exist: give a folder of .txt/.md files or a CSV file")
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".txt", ".md") and p.is_file())
        if not files:
            raise LabError(f"source folder {source} holds no .txt or .md files")
        text = "\n\n".join(read_csv_text(p)[0] for p in files)  # UTF-8; GBK read with a notice
        sections = [s.strip() for s in re.split(r"\n\s*\n", text) if s.strip()]
    else:
        rows, _ = read_csv(source)
        if not column or column not in rows.column_names:
            raise LabError(
                f"{source} has no column {column!r}; it has: {', '.join(rows.column_names)} (set generate.column)"
            )
        sections = [t.strip() for t in rows[column] if t.strip()]
    if not sections:
        raise LabError(f"source {source} holds no text")
    return sections


def language_ok(text: str, language: str) -> bool:
    """Chinese: at least 30 % CJK characters among letters; English: under 10 %."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    cjk = sum("\u4e00" <= c <= "\u9fff" for c in letters) / len(letters)
    return cjk >= 0.3 if language == "zh" else cjk < 0.1


def stray_quote(t: str) -> bool:
    """A quote at the start or end of ``t`` that pairs with nothing: an odd number of ``"`` or ``'``,
    or unequal numbers of ``“`` and ``”`` (``“云雾白毫”是什么？`` is fine, ``"讼卦代表争讼。`` is not)."""
    ends = {t[0], t[-1]}
    return bool(
        ('"' in ends and t.count('"') % 2)
        or ("'" in ends and t.count("'") % 2)
        or (ends & {"“", "”"} and t.count("“") != t.count("”"))
    )


def check_field(text, language: str | None) -> str | None:
    """Why a question or answer is unusable (a key of :data:`REASONS`), or ``None``.

    The same checks for generated pairs and for a CSV you bring (:func:`check_pairs`); the language
    is checked where one was asked for (``language`` ``zh``/``en``; ``None``: not checked).
    """
    if not isinstance(text, str) or not text.strip():
        return "empty_field"
    t = text.strip()
    if t.startswith(("{", "[")) or re.search(r'"\s*(content|summary|question|answer)"\s*:', t):
        return "json_in_field"
    if KEY_TEXT.search(t):
        return "key_value_text"
    if stray_quote(t):
        return "stray_quote"
    if language and not language_ok(t, language):
        return "wrong_language"
    return None


def check_pairs(rows, columns: tuple[str, str], policy: str, where: str, place) -> tuple[object, dict[str, int]]:
    """The pair checks of :func:`check_field` on a question/answer ``datasets.Dataset`` (your CSV, or
    the generated one): under ``policy`` ``fail`` the first defective field is an error naming
    ``where``, the record and line (``place(row, column)``), the column and the defect, with the
    count of all others; under ``drop`` defective rows are dropped and counted by reason.

    Returns:
        ``(rows without the defective ones, {reason: rows dropped})``.

    Raises:
        LabError: a defective field under ``fail``.
    """
    found = []  # (row, column, reason)
    for i, row in enumerate(rows):
        for column in columns:
            why = check_field(row[column], None)
            if why:
                found.append((i, column, why))
    if not found:
        return rows, {}
    bad_rows = sorted({i for i, _, _ in found})
    if policy == "fail":
        i, column, why = found[0]
        excerpt = rows[i][column].strip().replace("\n", " ")
        excerpt = excerpt[:40] + ("..." if len(excerpt) > 40 else "")
        more = f" ({len(found) - 1} more defective field(s) in the file)" if len(found) > 1 else ""
        raise LabError(
            f"{where}: {place(i, column)}, column {column!r}: {REASONS[why]}: {excerpt!r}{more}. "
            "Fix the data, or set data.bad_text=drop to drop such rows (they are counted in metrics.json)."
        )
    first_reason = {}
    for i, _, why in found:
        first_reason.setdefault(i, why)  # a row is counted once, under its first defect
    counts = dict(Counter(first_reason.values()))
    shown = ", ".join(place(i) for i in bad_rows[:10]) + (", ..." if len(bad_rows) > 10 else "")
    print(f"{where}: dropped {len(bad_rows)} row(s) with defective text {counts}: {shown}", flush=True)
    keep = set(range(len(rows))) - set(bad_rows)
    return rows.select(sorted(keep)), counts


def validate(reply: str, language: str) -> tuple[list[dict], str | None, Counter]:
    """``(valid pairs, reason the whole reply is rejected or None, reasons pairs were dropped)``."""
    try:
        data = json.loads(reply)
    except (TypeError, ValueError):
        return [], "not_json", Counter()
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        return [], "schema", Counter()
    pairs, dropped = [], Counter()
    for item in data["pairs"]:
        if not isinstance(item, dict) or set(item) != {"question", "answer"}:
            dropped["schema"] += 1
            continue
        why = check_field(item["question"], language) or check_field(item["answer"], language)
        if why:
            dropped[why] += 1
            continue
        pairs.append({"question": item["question"].strip(), "answer": item["answer"].strip()})
    return pairs, (None if pairs else (next(iter(dropped)) if dropped else "no_pairs")), dropped


def generate(cfg: dict, source: Path, out_dir: Path, cache: Path) -> tuple[Path, Report]:
    """Generate ``out_dir/dataset.csv`` and ``generation_report.json`` from ``source``.

    ``cfg`` is the profile's ``generate`` section: ``base_url``, ``model``, ``pairs_per_section``,
    ``language`` (zh/en), ``temperature``, ``max_tokens``, ``timeout_s``, ``max_retries``,
    ``max_rejected`` (stop after that many rejected replies, keeping the valid pairs), ``column``.

    Raises:
        LabError: bad source, missing or rejected key, unreachable endpoint, or no valid pair at all.
    """
    if cfg["language"] not in LANGUAGES:
        raise LabError(f"generate.language={cfg['language']!r}: use one of {', '.join(LANGUAGES)}")
    report = Report()
    sections = read_sections(source, cfg.get("column"))
    report.sections = len(sections)
    client = client_for(cfg["base_url"], cfg["timeout_s"], cfg["max_retries"], report)
    system = SYSTEM.replace("{n}", str(cfg["pairs_per_section"])).replace("{language}", LANGUAGES[cfg["language"]])
    pairs, seen = [], set()
    for section in sections:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": section}]
        reply = ask(  # a reply rejected whole is not cached: the next run asks again
            client,
            cfg,
            messages,
            cache,
            report,
            model_setting="generate.model",
            valid=lambda text: validate(text, cfg["language"])[1] is None,
        )
        valid, rejected, dropped = validate(reply, cfg["language"])
        report.pairs_rejected.update(dropped)
        if rejected:
            report.replies_rejected[rejected] += 1
            if sum(report.replies_rejected.values()) >= cfg["max_rejected"]:
                report.stopped = f"{cfg['max_rejected']} replies rejected (max_rejected): kept the valid pairs so far"
                break
            continue
        report.replies_valid += 1
        for pair in valid:
            key = re.sub(r"\W+", "", pair["question"]).lower()
            if key in seen:
                report.duplicates += 1
                continue
            seen.add(key)
            pairs.append(pair)
    report.pairs = len(pairs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "generation_report.json").write_text(
        json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    if not pairs:
        raise LabError(
            f"no valid question/answer pair from {report.sections} section(s): rejected replies "
            f"{dict(report.replies_rejected)} (see {out_dir / 'generation_report.json'})"
        )
    dataset = out_dir / "dataset.csv"
    with dataset.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows(pairs)
    return dataset, report
