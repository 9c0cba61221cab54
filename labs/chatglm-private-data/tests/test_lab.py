"""Unit tests of the chatglm-private-data lab: reply validation against the shapes the course's own CSV
let through, the HTTP path against the replay server (retries, cache, resume), errors, the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit.config import get_lab, load_profile
from labkit.errors import LabError

from generate import generate, read_sections, validate
from replay_server import ReplayServer

LAB = get_lab("chatglm-private-data")
SMOKE = LAB.dir / "data" / "smoke"
KEY = "sk-test-this-key-must-never-be-written-9f8e7d"


def pairs_reply(*pairs) -> str:
    return json.dumps({"pairs": [{"question": q, "answer": a} for q, a in pairs]}, ensure_ascii=False)


GOOD = ("乾卦代表什么？", "乾卦象征天，代表刚健和自强不息。")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ('{"content": "屯卦", "summary": "屯卦象征初生"}', "json_in_field"),  # a JSON blob inside a field
        ('"讼卦代表争讼。', "stray_quote"),  # a leading quote, as in the course's CSV
        ('需卦"', "stray_quote"),
        ('summary: "乾卦象征天"', "key_value_text"),  # `key: "..."` with a space
        ("乾卦象征天。\nformat: 三段", "key_value_text"),  # an extra section
        ("", "empty_field"),
        ("The Qian hexagram stands for heaven.", "wrong_language"),
    ],
)
def test_pairs_with_the_course_csvs_defects_are_dropped_by_reason(answer, reason):
    pairs, rejected, dropped = validate(pairs_reply(GOOD, ("乾卦是什么？", answer)), "zh")
    assert pairs == [{"question": GOOD[0], "answer": GOOD[1]}] and rejected is None and dropped == {reason: 1}


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ('content:"屯卦"\nsummary:"屯卦象征初生"', "not_json"),  # the course's own reply format
        (json.dumps({"content": "屯卦", "summary": "象征初生"}, ensure_ascii=False), "schema"),
        (
            json.dumps({"pairs": [{"question": "屯卦？", "answer": "初生", "comment": "x"}]}, ensure_ascii=False),
            "schema",
        ),
        (pairs_reply(("", "空")), "empty_field"),
    ],
)
def test_whole_replies_that_do_not_validate_are_rejected_by_reason(reply, reason):
    assert validate(reply, "zh")[:2] == ([], reason)


def gen_cfg(url: str, **changes) -> dict:
    cfg = dict(load_profile(LAB, "smoke")[0]["generate"], base_url=url, timeout_s=5, max_retries=3)
    return {**cfg, **changes}


def test_generation_against_the_replay_retries_validates_dedups_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ReplayServer(SMOKE / "replies.jsonl") as url:
        dataset, report = generate(gen_cfg(url), SMOKE / "source", tmp_path / "run1", tmp_path / "cache")
    r = report.as_dict()
    assert (r["sections"], r["requests"], r["retries"], r["cache_hits"]) == (8, 10, 2, 0)  # a 429 and a 500 retried
    assert r["replies_rejected"] == {"not_json": 1, "schema": 1}
    assert r["pairs_rejected"] == {"json_in_field": 1, "stray_quote": 1}
    assert (r["duplicates"], r["pairs"]) == (1, 12) and r["prompt_tokens"] > 0 and r["completion_tokens"] > 0
    rows = dataset.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "question,answer" and len(rows) == 13
    # Resume: a second run answers from the cache, without one request.
    with ReplayServer([{"status": 500}]) as url:
        again, report2 = generate(gen_cfg(url), SMOKE / "source", tmp_path / "run2", tmp_path / "cache")
    assert (report2.requests, report2.cache_hits, report2.pairs) == (0, 8, 12)
    assert again.read_bytes() == dataset.read_bytes()
    for path in tmp_path.rglob("*"):  # the key is passed at run time and never written
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_a_missing_key_is_named_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with (
        ReplayServer([{"content": pairs_reply(GOOD)}]) as url,
        pytest.raises(LabError, match="OPENAI_API_KEY is not set"),
    ):
        generate(gen_cfg(url), SMOKE / "source", tmp_path / "out", tmp_path / "cache")


def test_a_rejected_key_and_a_silent_endpoint_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ReplayServer([{"status": 401}]) as url, pytest.raises(LabError, match="rejected the API key .HTTP 401"):
        generate(gen_cfg(url), SMOKE / "source", tmp_path / "a", tmp_path / "c1")
    slow = ReplayServer([{"content": pairs_reply(GOOD)}], delay_s=2.0)
    with slow as url, pytest.raises(LabError, match=r"did not answer within 0.5 s \(0 retries\)"):
        generate(gen_cfg(url, timeout_s=0.5, max_retries=0), SMOKE / "source", tmp_path / "b", tmp_path / "c2")


def test_replies_that_never_validate_stop_the_run_and_keep_what_was_valid(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    script = [{"content": pairs_reply(GOOD)}] + [{"content": "not json"}] * 10
    with ReplayServer(script) as url:
        _, report = generate(gen_cfg(url, max_rejected=3), SMOKE / "source", tmp_path / "a", tmp_path / "c1")
    assert report.pairs == 1 and report.replies_rejected == {"not_json": 3} and "max_rejected" in report.stopped
    with ReplayServer([{"content": "nope"}]) as url, pytest.raises(LabError, match="no valid question/answer pair"):
        generate(gen_cfg(url, max_rejected=3), SMOKE / "source", tmp_path / "b", tmp_path / "c2")
    assert json.loads((tmp_path / "b" / "generation_report.json").read_text())["replies_rejected"] == {"not_json": 3}


def test_sources_folders_and_csvs_with_or_without_bom(tmp_path):
    assert len(read_sections(SMOKE / "source")) == 8
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabError, match="holds no .txt or .md files"):
        read_sections(tmp_path / "empty")
    csv_file = tmp_path / "notes.csv"
    csv_file.write_bytes("\ufefftitle,text\n甲,乾卦象征天。\n乙,\n".encode())
    assert read_sections(csv_file, "text") == ["乾卦象征天。"]
    with pytest.raises(LabError, match="has no column 'body'; it has: title, text"):
        read_sections(csv_file, "body")


def test_your_own_csv_with_a_bom_and_its_errors(tmp_path):
    from run import load_pairs

    cfg = load_profile(LAB, "smoke")[0]["data"]
    good = tmp_path / "handmade.csv"  # like the course's zhouyi_dataset_handmade.csv: UTF-8 with a BOM
    good.write_bytes("\ufeffquestion,answer\n乾卦,乾卦象征天。\n坤卦,坤卦象征地。\n屯卦,NA\n".encode())
    dsd, dropped = load_pairs(good, cfg)
    assert len(dsd["train"]) + len(dsd["validation"]) == 3 and dropped == {}  # "NA" stays text
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("content,summary\n乾卦,天\n", encoding="utf-8")
    with pytest.raises(LabError, match="lacks column\\(s\\) question, answer; it has: content, summary"):
        load_pairs(wrong, cfg)
    empty = tmp_path / "empty.csv"
    empty.write_text("question,answer\n乾卦,天\n坤卦,\n", encoding="utf-8")
    with pytest.raises(LabError, match=r"empty.csv: column 'answer' is empty at line 3"):
        load_pairs(empty, cfg)
    assert Path(good).exists()
