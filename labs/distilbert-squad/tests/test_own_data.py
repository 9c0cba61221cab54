"""Your own questions (issue 21): SQuAD-format files load by extension, a CSV (which cannot hold the
nested ``answers``) is refused naming the formats that can, and the README's "your own data"
command is the run the test suite makes on the lab's second dataset (``lab.yaml`` ``foreign_data``)."""

from __future__ import annotations

import json
import shlex

import pytest
from datasets import Dataset

from labkit.config import get_lab, load_profile
from labkit.errors import LabError
from labkit.lab.data import hub_or_files_fingerprint
from labkit.verify import load_expected

from run import load_squad

LAB = get_lab("distilbert-squad")
REPO = LAB.dir.parents[1]
CONTEXT = "The Aurora sailed from Hobart in 1911 with thirty-one men."
ROWS = [
    {
        "id": f"q{i}",
        "title": "Aurora",
        "context": CONTEXT,
        "question": question,
        "answers": {"text": [answer], "answer_start": [CONTEXT.index(answer)]},
    }
    for i, (question, answer) in enumerate([("Which port?", "Hobart"), ("When?", "1911"), ("Crew?", "thirty-one")])
]


def data_cfg(**files) -> dict:
    return {**load_profile(LAB, "smoke")[0]["data"], "files": files}


def test_squad_rows_load_from_parquet_and_json_alike(tmp_path):
    Dataset.from_list(ROWS).to_parquet(str(tmp_path / "train.parquet"))
    (tmp_path / "validation.json").write_text(json.dumps(ROWS[:2]), encoding="utf-8")  # one JSON array
    dsd, dropped = load_squad(data_cfg(train="train.parquet", validation="validation.json"), tmp_path)
    assert dropped == {} and (len(dsd["train"]), len(dsd["validation"])) == (3, 2)
    assert list(dsd["train"]["answers"]) == [r["answers"] for r in ROWS]
    assert list(dsd["validation"]["answers"])[1] == {"text": ["1911"], "answer_start": [33]}


def test_a_csv_cannot_hold_answers_and_is_refused_naming_the_formats_that_can(tmp_path):
    lines = ["id,title,context,question,answers"] + [
        f'{r["id"]},Aurora,"{CONTEXT}",{r["question"]},{r["answers"]["text"][0]}' for r in ROWS
    ]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    with pytest.raises(
        LabError,
        match=r"train.csv: column 'answers' is 'Hobart' at record 1 \(line 2\) .*SQuAD's .*JSON lines, JSON or Parquet",
    ):
        load_squad(data_cfg(train="train.csv", validation="validation.jsonl"), tmp_path)


def test_readme_own_data_command_is_the_foreign_run_the_suite_makes():
    """tests/test_labs.py runs lab.yaml's foreign_data through the smoke profile and verifies it; the
    README's command must be that run, word for word, so it is known to run as written."""
    lines = [
        line.strip()
        for line in (LAB.dir / "README.md").read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("make lab-distilbert-squad") and "data.files.train=" in line
    ]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0].split("#")[0])
    settings = dict(w.split("=", 1) for w in words[2:])
    assert words[:2] == ["make", "lab-distilbert-squad"] and settings["PROFILE"] == "smoke"
    assert shlex.split(settings["SET"]) == shlex.split(LAB.meta["foreign_data"])


def test_the_foreign_questions_are_other_data_than_the_bundled():
    """The second dataset: its own passages and sizes, several references for most validation questions;
    every answer_start points at its answer; it fingerprints differently (data-bound checks SKIP)."""
    cfg = load_profile(LAB, "smoke", shlex.split(LAB.meta["foreign_data"]))[0]["data"]
    dsd, dropped = load_squad(cfg, REPO)
    assert dropped == {} and (len(dsd["train"]), len(dsd["validation"])) == (38, 11)
    for ex in list(dsd["train"]) + list(dsd["validation"]):
        for text, start in zip(ex["answers"]["text"], ex["answers"]["answer_start"]):
            assert ex["context"][start : start + len(text)] == text
    assert sum(len(a["text"]) > 1 for a in dsd["validation"]["answers"]) == 9  # as in SQuAD's validation split
    lengths = sorted({len(c) for c in dsd["train"]["context"]})
    assert lengths[0] < 200 and lengths[-1] > 600  # one window to several
    bundled = {json.loads(line)["context"] for line in (LAB.dir / "data/smoke/train.jsonl").read_text().splitlines()}
    assert not bundled & set(dsd["train"]["context"])
    smoke = load_expected(LAB.expected_path("smoke"))["data"]["fingerprint"]
    assert hub_or_files_fingerprint(cfg, REPO, ("train", "validation")) != smoke
