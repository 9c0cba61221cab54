"""Your own reviews (issue 21): local files load by extension (JSON lines, CSV, TSV, Parquet), any
other file is refused in one line, and the README's "your own reviews" command is the run the test
suite makes on the lab's second dataset (``lab.yaml`` ``foreign_data``, tests/test_labs.py)."""

from __future__ import annotations

import csv
import json
import re
import shlex
from collections import Counter

import pytest
from datasets import Dataset

from labkit.config import get_lab, load_profile
from labkit.errors import LabError
from labkit.lab.data import hub_or_files_fingerprint
from labkit.verify import load_expected

from data import load_reviews

LAB = get_lab("bert-yelp")
REPO = LAB.dir.parents[1]
NAMES = ["1 star", "2 star", "3 stars", "4 stars", "5 stars"]
# Texts a CSV reader could mangle: commas, doubled quotes, words pandas reads as missing by default.
ROWS = [
    {"text": 'Great tacos, "best in town", friendly staff.', "label": "5 stars"},
    {"text": "NA", "label": "1 star"},
    {"text": "null", "label": "2 star"},
    {"text": "Slow service; cold fries, warm beer.", "label": "2 star"},
    {"text": "Fine.", "label": "3 stars"},
]


def write(path, rows, labels_as_ids: bool = False) -> str:
    """``rows`` in the format of ``path``'s extension (labels as star names, or as ids 0-4)."""
    rows = [{**r, "label": NAMES.index(r["label"])} if labels_as_ids else r for r in rows]
    if path.suffix in (".csv", ".tsv"):
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, ["text", "label"], delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        Dataset.from_list(rows).to_parquet(str(path))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def data_cfg(**files) -> dict:
    return {**load_profile(LAB, "smoke")[0]["data"], "files": files}


@pytest.mark.parametrize(
    ("train_name", "test_name", "labels_as_ids"),
    [
        ("train.csv", "test.csv", False),
        ("train.tsv", "test.tsv", True),
        ("train.parquet", "test.parquet", False),
        ("train.tsv", "test.jsonl", False),  # splits may differ in format
    ],
)
def test_reviews_load_from_csv_tsv_parquet_by_extension(tmp_path, train_name, test_name, labels_as_ids):
    cfg = data_cfg(train=write(tmp_path / train_name, ROWS, labels_as_ids), test=write(tmp_path / test_name, ROWS[:2]))
    dsd, dropped = load_reviews(cfg, tmp_path)
    assert dropped == {}
    assert list(dsd["train"]["text"]) == [r["text"] for r in ROWS]  # quotes, commas, "NA" and "null" kept as text
    assert list(dsd["train"]["label"]) == [4, 0, 1, 1, 2]  # star names or ids, mapped through label_names
    assert list(dsd["test"]["text"]) == ['Great tacos, "best in town", friendly staff.', "NA"]
    assert dsd["train"].features["label"].names == NAMES


def test_an_empty_review_in_a_csv_is_named_by_its_file_line(tmp_path):
    rows = [ROWS[0], {"text": "", "label": "1 star"}, ROWS[2]]
    cfg = data_cfg(train=write(tmp_path / "train.csv", rows), test=write(tmp_path / "test.csv", ROWS[:1]))
    with pytest.raises(LabError, match=r"train\.csv: column 'text' is empty at record 2 \(line 3\)"):
        load_reviews(cfg, tmp_path)
    dsd, dropped = load_reviews({**cfg, "bad_text": "drop"}, tmp_path)
    assert dropped == {"train": {"text": 1}} and list(dsd["train"]["text"]) == [ROWS[0]["text"], "null"]


@pytest.mark.parametrize("name", ["reviews.xlsx", "reviews"])
def test_a_spreadsheet_or_unknown_file_is_refused_in_one_line(tmp_path, name):
    bad = tmp_path / name
    bad.write_bytes(b"PK\x03\x04 not a table the labs read")
    cfg = data_cfg(train=str(bad), test=write(tmp_path / "test.jsonl", ROWS))
    with pytest.raises(LabError) as err:
        load_reviews(cfg, tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"data file {bad}: ")
    assert re.search(r"\.jsonl, \.json, \.csv, \.tsv, \.parquet", message), message
    assert "JSON parse error" not in message


def test_a_review_spanning_lines_is_placed_by_record_and_line(tmp_path):
    rows = [{"text": "Line one,\nline two of a long review.", "label": "4 stars"}, {"text": " ", "label": "1 star"}]
    cfg = data_cfg(train=write(tmp_path / "train.csv", rows), test=write(tmp_path / "test.csv", ROWS))
    with pytest.raises(LabError, match=r"column 'text' is empty at record 2 \(line 4\)"):
        load_reviews(cfg, tmp_path)
    dsd, _ = load_reviews({**cfg, "bad_text": "drop"}, tmp_path)
    assert list(dsd["train"]["text"]) == ["Line one,\nline two of a long review."]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('text,label\n"an unterminated quote,1 star\n', r"record 1 \(line 2\): a quote opened there is never closed"),
        ("{not json\n", None),
    ],
)
def test_a_malformed_file_names_the_file_and_what_is_wrong(tmp_path, content, why):
    bad = tmp_path / ("train.csv" if why else "train.jsonl")
    bad.write_text(content, encoding="utf-8")
    cfg = data_cfg(train=str(bad), test=write(tmp_path / "test.csv", ROWS))
    why = why or r"as JSON lines \(one object per line, each column of one type\): \w+"
    with pytest.raises(LabError, match=rf"{re.escape(str(bad))}.*{why}"):
        load_reviews(cfg, tmp_path)


def readme_own_data_command() -> list[str]:
    """The ``make lab-bert-yelp ... SET="data.files..."`` line of the README, split like a shell."""
    lines = [
        line.strip()
        for line in (LAB.dir / "README.md").read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("make lab-bert-yelp") and "data.files.train=" in line
    ]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("#")[0])


def test_readme_own_data_command_is_the_foreign_run_the_suite_makes():
    """tests/test_labs.py runs lab.yaml's foreign_data through the smoke profile and verifies it; the
    README's command must be that run, word for word, so it is known to run as written."""
    words = readme_own_data_command()
    assert words[:2] == ["make", "lab-bert-yelp"]
    settings = dict(w.split("=", 1) for w in words[2:])
    assert settings["PROFILE"] == "smoke" and settings["RUNTIME"] == "native"
    assert shlex.split(settings["SET"]) == shlex.split(LAB.meta["foreign_data"])


def test_the_foreign_reviews_are_other_data_than_the_bundled():
    """The second dataset loads through the README's overrides, with its own size and label balance,
    and fingerprints differently from the bundled data (so the data-bound checks SKIP on it)."""
    cfg = load_profile(LAB, "smoke", shlex.split(LAB.meta["foreign_data"]))[0]["data"]
    dsd, dropped = load_reviews(cfg, REPO)
    assert dropped == {} and (len(dsd["train"]), len(dsd["test"])) == (30, 10)
    assert sorted(Counter(dsd["train"]["label"]).items()) == [(0, 9), (1, 3), (2, 5), (3, 4), (4, 9)]
    assert sorted(Counter(dsd["test"]["label"]).items()) == [(0, 3), (1, 1), (2, 2), (3, 1), (4, 3)]
    bundled = {json.loads(line)["text"] for line in (LAB.dir / "data/smoke/train.jsonl").read_text().splitlines()}
    assert not bundled & set(list(dsd["train"]["text"]) + list(dsd["test"]["text"]))
    smoke = load_expected(LAB.expected_path("smoke"))["data"]["fingerprint"]
    assert hub_or_files_fingerprint(cfg, REPO, ("train", "test")) != smoke
