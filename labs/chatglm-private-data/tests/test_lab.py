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
        ('需卦由坎和乾组成。\n\nsource:"《易经》"', "key_value_text"),  # the course CSV's trailing source line
        ("品种是“云雾白毫”", None),  # balanced quotes at an end are text, not a stray quote
        ("“云雾白毫”是主要品种。", None),
    ],
)
def test_pairs_with_the_course_csvs_defects_are_dropped_by_reason(answer, reason):
    pairs, rejected, dropped = validate(pairs_reply(GOOD, ("乾卦是什么？", answer)), "zh")
    if reason is None:
        assert len(pairs) == 2 and rejected is None and dropped == {}
        return
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
    # Resume: a second run answers the 6 valid replies from the cache; the 2 rejected ones were not cached
    # and are asked again (a real endpoint would answer anew; the replay's faults come first in its script,
    # so they fall on the same 2 sections and the rerun's dataset is the first's, byte for byte).
    cached = sorted((tmp_path / "cache").glob("*.json"))
    replies = [json.loads(p.read_text(encoding="utf-8"))["content"] for p in cached]
    assert len(cached) == 6 and all(validate(reply, "zh")[1] is None for reply in replies)
    with ReplayServer(SMOKE / "replies.jsonl") as url:
        again, report2 = generate(gen_cfg(url), SMOKE / "source", tmp_path / "run2", tmp_path / "cache")
    r2 = report2.as_dict()
    assert (r2["requests"], r2["retries"], r2["cache_hits"], r2["pairs"]) == (4, 2, 6, 12)
    assert r2["replies_rejected"] == {"not_json": 1, "schema": 1}
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


def test_sources_in_gbk_are_read_with_a_notice_bad_settings_named(tmp_path, monkeypatch, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_bytes("乾卦象征天。\n\n坤卦象征地。\n".encode("gbk"))  # Notepad on a Chinese Windows
    assert read_sections(docs) == ["乾卦象征天。", "坤卦象征地。"]
    assert "notes.txt is not UTF-8; reading it as GB18030" in capsys.readouterr().out
    (docs / "notes.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(LabError, match=r"notes.txt is not UTF-8 \(byte 0xe9 at line 1, column 4\)"):
        read_sections(docs)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(LabError, match="generate.language='fr': use one of zh, en"):
        generate(gen_cfg("http://127.0.0.1:9/v1", language="fr"), SMOKE / "source", tmp_path / "a", tmp_path / "c")
    from run import endpoint

    gen = load_profile(LAB, "smoke")[0]["generate"]
    with pytest.raises(LabError, match="generate.replies='nowhere.jsonl': the replay server's script is not there"):
        endpoint({**gen, "replies": "nowhere.jsonl"}, SMOKE / "source", LAB.dir.parents[1])


def test_sources_folders_and_csvs_with_or_without_bom(tmp_path):
    assert len(read_sections(SMOKE / "source")) == 8
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabError, match="holds no .txt or .md files"):
        read_sections(tmp_path / "empty")
    csv_file = tmp_path / "notes.csv"
    csv_file.write_bytes("\ufefftitle,text\n甲,乾卦象征天。\n乙,\n".encode())
    assert read_sections(csv_file, "text") == ["乾卦象征天。"]
    with pytest.raises(LabError, match=r"has no column 'body'; it has: title, text \(set generate.column\)"):
        read_sections(csv_file, "body")
    csv_file.write_text('title,text\n甲,"乾卦象征天。\n', encoding="utf-8")
    with pytest.raises(LabError, match=r"notes.csv: record 1 \(line 2\): a quote opened there is never closed"):
        read_sections(csv_file, "text")


def test_your_own_csv_with_a_bom_and_its_errors(tmp_path):
    from run import load_pairs

    cfg = load_profile(LAB, "smoke")[0]["data"]
    good = tmp_path / "handmade.csv"  # like the course's zhouyi_dataset_handmade.csv: UTF-8 with a BOM
    good.write_bytes("\ufeffquestion,answer\n乾卦,乾卦象征天。\n坤卦,坤卦象征地。\n屯卦,NA\n".encode())
    dsd, dropped, defective = load_pairs(good, cfg)
    assert len(dsd["train"]) + len(dsd["validation"]) == 3 and dropped == {} == defective  # "NA" stays text
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("content,summary\n乾卦,天\n", encoding="utf-8")
    with pytest.raises(LabError, match=r"has no column\(s\) question, answer; it has: content, summary. Set data"):
        load_pairs(wrong, cfg)
    empty = tmp_path / "empty.csv"
    empty.write_text("question,answer\n乾卦,天\n坤卦,\n", encoding="utf-8")
    with pytest.raises(LabError, match=r"empty.csv: column 'answer' is empty at record 2 \(line 3\)"):
        load_pairs(empty, cfg)
    assert Path(good).exists()


def csv_text(rows, header=("question", "answer")) -> str:
    import csv
    import io

    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    return buf.getvalue()


def test_csv_places_are_the_record_and_the_physical_line_its_field_starts_on(tmp_path):
    """Issue: "'is empty at line 51' for the 50th record whose text starts on physical line 363": with
    quoted multi-line fields the record number and the line differ; messages give both."""
    from run import load_pairs

    cfg = load_profile(LAB, "smoke")[0]["data"]
    long = "第一段。\n\n第二段。\n第三段。\n\n第四段。\n第五段。"  # 7 lines
    longer = long + "\n第六段。\n第七段。"  # 9 lines
    rows = [(f"问题{i}？", long if i <= 40 else longer) for i in range(1, 50)]  # 40 x 7 + 9 x 9 = 361 lines
    rows.append(("问题50？", ""))
    path = tmp_path / "multiline.csv"
    path.write_text(csv_text(rows), encoding="utf-8")
    assert path.read_text(encoding="utf-8").splitlines()[362] == "问题50？,"  # physical line 363
    with pytest.raises(LabError, match=r"multiline.csv: column 'answer' is empty at record 50 \(line 363\)\. Fix"):
        load_pairs(path, cfg)
    rows[49] = ("问题50？\n（续）", '"坤卦代表什么？')  # a defect in a field one line below its record's start
    path.write_text(csv_text(rows), encoding="utf-8")
    with pytest.raises(LabError, match=r"record 50 \(line 364\), column 'answer': a quote left over"):
        load_pairs(path, cfg)


# The course's generated CSV (chatglm/data/zhouyi_dataset_20240118_152413.csv) in its defect shapes:
# a reply's JSON object pasted into the question (over several lines) and into the answer, a question
# opening with a stray quote, an answer with an odd quote and a trailing `source:"..."` line, a
# `summary:` line inside an answer. The loader once trained on all of these silently.
COURSE_DEFECTS = [
    ("蒙卦代表什么？", "蒙卦代表启蒙，开始时迷惑，需要耐心等待时机。"),
    ('{\n  "content": "屯卦",\n  "summary": "屯卦代表困难"\n}\n``代表什么？', '{\n  "content": "屯卦"\n}'),
    ('"讼卦代表什么？', "讼卦代表争讼，宜和解。"),
    ("需卦代表什么？", '需卦"由上卦坎和下卦乾组成，象征等待。\n\nsource:"《易经》"'),
    ("师卦代表什么？", "师卦代表军队。\nsummary: 师卦象征兵众"),
    ("比卦代表什么？", "比卦代表亲密团结，互相辅助。"),
    ("“小畜”是什么卦？", "小畜卦代表积蓄力量，“密云不雨”。"),  # balanced quotes: fine
]


def test_your_csv_goes_through_the_generators_pair_checks_fail_or_drop(tmp_path):
    """Issue: the own-CSV path skipped the generator's pair checks (the course's CSV trained silently
    with 102 defective fields). One validation for both paths: the first defect is named with its
    record, line, column and what is wrong, and the others counted; or dropped and counted."""
    from run import load_pairs

    cfg = {**load_profile(LAB, "smoke")[0]["data"], "prompt_column": "content", "answer_column": "summary"}
    path = tmp_path / "zhouyi.csv"
    path.write_text(csv_text(COURSE_DEFECTS, ("content", "summary")), encoding="utf-8")
    with pytest.raises(LabError) as err:
        load_pairs(path, cfg)
    message = str(err.value)
    assert message.startswith(f"{path}: record 2 (line 3), column 'content': JSON inside the text")
    assert "(4 more defective field(s) in the file)" in message and "data.bad_text=drop" in message
    assert "\n" not in message  # one line
    dsd, dropped, defective = load_pairs(path, {**cfg, "bad_text": "drop"})
    assert defective == {"json_in_field": 1, "stray_quote": 1, "key_value_text": 2} and dropped == {}
    kept = {r["content"] for split in dsd.values() for r in split}
    assert kept == {"蒙卦代表什么？", "比卦代表什么？", "“小畜”是什么卦？"}


def test_a_gbk_csv_is_read_with_a_notice_other_encodings_named(tmp_path, capsys):
    """Issue: a CSV saved as GBK (Excel on a Chinese Windows) ended in a 23-frame traceback
    (DatasetGenerationError) that did not name the file."""
    from run import load_pairs

    cfg = load_profile(LAB, "smoke")[0]["data"]
    gbk = tmp_path / "excel.csv"
    gbk.write_bytes(csv_text(COURSE_DEFECTS[:1] + COURSE_DEFECTS[-2:]).encode("gbk"))
    dsd, _, _ = load_pairs(gbk, cfg)
    assert {r["question"] for split in dsd.values() for r in split} == {
        "蒙卦代表什么？",
        "比卦代表什么？",
        "“小畜”是什么卦？",
    }
    notice = capsys.readouterr().out
    assert f"notice: {gbk} is not UTF-8; reading it as GB18030" in notice and "iconv -f GB18030 -t UTF-8" in notice
    latin = tmp_path / "latin.csv"
    latin.write_bytes("question,answer\ncafé?,déjà vu\n".encode("cp1252"))
    with pytest.raises(LabError, match=r"latin.csv is not UTF-8 \(byte 0xe9 at line 2, column 4\).*iconv -f"):
        load_pairs(latin, cfg)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'question,answer\n乾卦,"乾卦象征天。\n坤卦,坤卦象征地。\n',
            r"record 1 \(line 2\): a quote opened there is never closed",
        ),
        (
            "question,answer\n乾卦,乾卦象征天。\n坤卦,坤卦,象征地。\n",
            r"record 2 \(line 3\) has 3 field\(s\), the header 2",
        ),
        ('question,answer\n乾卦,"乾卦"象征天。\n', r"record 1 \(line 2\): text after a field's closing quote"),
        ("question,question\n乾卦,天\n", r"the header \(line 1\) must name every column once"),
        ("", r"is empty: a CSV needs a header line"),
    ],
)
def test_a_malformed_csv_is_one_line_naming_the_record(tmp_path, text, message):
    from run import load_pairs

    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LabError, match=message):
        load_pairs(path, load_profile(LAB, "smoke")[0]["data"])


def test_the_replay_answers_for_its_own_text_only(tmp_path, monkeypatch):
    """Issue: the smoke profile's replay server answered your documents with its recorded pairs about
    the bundled text, and the run trained on them and passed. Other documents go to OPENAI_BASE_URL,
    or stop before any request with one line saying how to point the run at an endpoint."""
    import shutil

    from run import endpoint

    gen = load_profile(LAB, "smoke")[0]["generate"]
    mine = tmp_path / "my-docs"
    mine.mkdir()
    (mine / "notes.md").write_text("社区图书馆每周一闭馆。\n\n借书需要带借书证。\n", encoding="utf-8")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(LabError) as err:
        endpoint(gen, mine, LAB.dir.parents[1])
    assert "no chat API is set: export OPENAI_BASE_URL=" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    with pytest.raises(LabError, match="generate.model is 'replay'"):
        endpoint(gen, mine, LAB.dir.parents[1])
    with endpoint({**gen, "model": "qwen2.5"}, mine, LAB.dir.parents[1]) as url:
        assert url == "http://127.0.0.1:9/v1"
    copy = tmp_path / "copy"  # the bundled text, wherever it is: the replay
    shutil.copytree(SMOKE / "source", copy)
    with endpoint(gen, copy, LAB.dir.parents[1]) as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1") and url != "http://127.0.0.1:9/v1"
    with endpoint({**gen, "base_url": "http://10.0.0.1/v1"}, mine, LAB.dir.parents[1]) as url:
        assert url == "http://10.0.0.1/v1"  # a URL in the profile: that endpoint, whatever the text


def test_a_model_the_endpoint_does_not_serve_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ReplayServer([{"status": 404}]) as url, pytest.raises(LabError, match=r"HTTP 404 for model 'replay': set"):
        generate(gen_cfg(url), SMOKE / "source", tmp_path / "a", tmp_path / "c")


def readme_commands(lab_dir: Path, lab: str) -> list[str]:
    """The README's "Run it" commands for your own data: the ``make lab-<lab>`` lines with a ``SET`` of
    ``generate.source`` or ``data.file``, backslash continuations joined."""
    text = (lab_dir / "README.md").read_text(encoding="utf-8")
    block = text.split("## Run it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [
        " ".join(line.split())
        for line in lines
        if f"make lab-{lab} " in line and ("generate.source=" in line or "data.file=" in line)
    ]


MY_DOCS = [  # three sections of our own (a community library), and the replies a chat model might give
    "社区图书馆在银杏街八号，周二到周日上午九点开门，晚上八点闭馆，周一闭馆整理图书。",
    "借书要带借书证，每人一次最多借五本，借期三十天，可以在网上续借一次。",
    "二楼的自习室需要提前一天预约，每次最多使用四个小时，室内不能吃东西。",
]
MY_REPLIES = [
    [("图书馆在哪里？", "社区图书馆在银杏街八号。"), ("图书馆几点开门？", "周二到周日上午九点开门，晚上八点闭馆。"),
     ("图书馆哪天闭馆？", "每周一闭馆整理图书。")],
    [("借书要带什么？", "借书要带借书证。"), ("一次能借几本书？", "每人一次最多借五本。"),
     ("借期是多久？", "借期三十天，可以在网上续借一次。")],
    [("自习室要预约吗？", "需要提前一天预约。"), ("自习室能用多久？", "每次最多使用四个小时。"),
     ("自习室里能吃东西吗？", "自习室里不能吃东西。")],
]  # fmt: skip


def test_the_readmes_your_own_data_commands_run_as_written(tmp_path, monkeypatch):
    """Every "your own data" command of the README, run as written through make (PROFILE=smoke
    RUNTIME=native, so the same on any host): the endpoint is a local replay server with replies about
    the test's own documents; the paths are the test's files. The own-CSV command verifies (issue:
    it always FAILed on generation files it does not write); the OpenAI one, with no OPENAI_BASE_URL on a
    smoke run, stops before any request in one line (issue: the replay answered with its own pairs)."""
    import os
    import shutil
    import subprocess

    repo = LAB.dir.parents[1]
    if not shutil.which("make") or not (repo / ".venv" / "bin" / "invoke").exists():
        pytest.skip("needs make and the tooling virtualenv .venv (`make venv`)")
    commands = readme_commands(LAB.dir, LAB.name)
    assert len(commands) == 4, commands
    docs = tmp_path / "my-docs"
    docs.mkdir()
    (docs / "library.md").write_text("\n\n".join(MY_DOCS) + "\n", encoding="utf-8")
    notes = tmp_path / "notes.csv"
    notes.write_text(csv_text([(f"第{i}节", s) for i, s in enumerate(MY_DOCS, 1)], ("title", "text")), encoding="utf-8")
    qa = tmp_path / "qa.csv"  # the course's hand-made CSV: its column names, a BOM
    pairs = [p for reply in MY_REPLIES for p in reply]
    qa.write_bytes(b"\xef\xbb\xbf" + csv_text(pairs, ("content", "summary")).encode())
    script = [{"content": pairs_reply(*pairs)} for pairs in MY_REPLIES]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PROFILE", "RUNTIME", "SET"))}
    env.update(PROFILE="smoke", RUNTIME="native", OUTPUT_ROOT=str(tmp_path / "outputs"))
    with ReplayServer(script) as url:
        for command in commands:
            mine = (
                command.replace("/data/my-docs", str(docs))
                .replace("/data/notes.csv", str(notes))
                .replace("/data/qa.csv", str(qa))
                .replace("http://localhost:8000/v1", url)
            )
            done = subprocess.run(
                ["bash", "-c", mine], cwd=repo, env=env, capture_output=True, text=True, timeout=900, check=False
            )
            out = done.stdout + done.stderr
            assert "Traceback" not in out, out[-3000:]
            if "generate.source=" in command and "OPENAI_BASE_URL" not in command:
                assert done.returncode != 0, out[-3000:]
                error = [line for line in out.splitlines() if line.startswith("error:")]
                assert len(error) == 1 and "no chat API is set: export OPENAI_BASE_URL=" in error[0], out[-3000:]
            else:
                assert done.returncode == 0 and "=> PASS" in out, (command, out[-3000:])
