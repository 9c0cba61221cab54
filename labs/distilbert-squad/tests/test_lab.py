"""Unit tests of the distilbert-squad lab: windows, answer labels, span mapping, long questions."""

from __future__ import annotations

import re

import numpy as np
import pytest
from datasets import Dataset

from labkit.errors import LabError

from qa import (
    check_window,
    postprocess_predictions,
    prepare_train_features,
    prepare_validation_features,
    truncate_questions,
)

FILLER = " ".join(f"word{i} is here." for i in range(40))
CHINESE = "北京是中国的首都，也是一座历史悠久的城市。长城位于北京的北部。故宫在城市的中心。"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from labkit.lab.tiny import build_tiny_encoder

    texts = [FILLER, CHINESE, "Where is the treasure hidden? The treasure is hidden under the old oak tree."]
    return AutoTokenizer.from_pretrained(
        build_tiny_encoder(tmp_path_factory.mktemp("tok"), texts, "distilbert", lowercase=True)
    )


def example(context: str, question: str, answer: str, qid: str = "q") -> dict:
    start = context.index(answer)
    return {
        "id": [qid],
        "context": [context],
        "question": [question],
        "answers": [{"text": [answer], "answer_start": [start]}],
    }


def labelled_spans(features, tokenizer) -> list[str]:
    """The text each training feature is labelled with ('' for the [CLS] / no-answer label)."""
    spans = []
    for ids, s, e in zip(features["input_ids"], features["start_positions"], features["end_positions"]):
        spans.append("" if (s, e) == (0, 0) else tokenizer.decode(ids[s : e + 1]))
    return spans


def test_answer_straddling_two_windows_is_labelled_only_where_whole(tokenizer):
    answer = "the old oak tree"
    context = FILLER[:150] + " The treasure is hidden under " + answer + ". " + FILLER[:150]
    ex = example(context, "Where is the treasure hidden?", answer)
    feats = prepare_train_features(ex, tokenizer, max_length=48, stride=16)
    spans = labelled_spans(feats, tokenizer)
    assert len(spans) >= 3  # the context overflows into several windows
    assert spans.count(answer) >= 1 and all(s in ("", answer) for s in spans)
    # a window that holds only part of the answer is labelled [CLS] (0, 0), never a partial span
    for ids, s in zip(feats["input_ids"], feats["start_positions"]):
        text = tokenizer.decode(ids)
        if "oak" in text and "old" not in text or "old oak" in text and "tree" not in text:
            assert s == 0


def test_answer_in_the_last_characters_of_a_long_context(tokenizer):
    context = FILLER + " The treasure is hidden under the old oak tree"
    ex = example(context, "Where is the treasure hidden?", "oak tree")
    assert context.endswith("oak tree")
    feats = prepare_train_features(ex, tokenizer, max_length=48, stride=16)
    spans = labelled_spans(feats, tokenizer)
    assert spans[-1] == "oak tree" and all(s == "" for s in spans[:-2])


def test_chinese_context_offsets_map_back_to_the_characters(tokenizer):
    ex = example(CHINESE, "长城在哪里？", "北京的北部")
    feats = prepare_train_features(ex, tokenizer, max_length=32, stride=8)
    assert "北 京 的 北 部" in labelled_spans(feats, tokenizer)
    val = prepare_validation_features(ex, tokenizer, max_length=32, stride=8)
    # logits that point at the answer's first and last characters in the feature holding it
    i = next(k for k, (s, e) in enumerate(zip(feats["start_positions"], feats["end_positions"])) if s)
    start_logits, end_logits = np.zeros((len(val["input_ids"]), 32)), np.zeros((len(val["input_ids"]), 32))
    start_logits[i, feats["start_positions"][i]] = end_logits[i, feats["end_positions"][i]] = 10
    answers = postprocess_predictions(Dataset.from_dict(ex), Dataset.from_dict(dict(val)), start_logits, end_logits)
    assert answers == {"q": "北京的北部"}  # exact characters of the context, not tokens


def test_postprocess_skips_spans_outside_the_context_reversed_or_too_long(tokenizer):
    ex = example("The treasure is hidden under the old oak tree.", "Where is the treasure hidden?", "old oak tree")
    val = Dataset.from_dict(dict(prepare_validation_features(ex, tokenizer, max_length=48, stride=16)))
    start, end = np.full((1, 48), -10.0), np.full((1, 48), -10.0)
    start[0, 0] = end[0, 0] = 100  # [CLS]: not context, must be skipped
    ids = val[0]["input_ids"]
    first_ctx = next(k for k, o in enumerate(val[0]["offset_mapping"]) if o is not None)
    start[0, first_ctx + 9], end[0, first_ctx + 1] = 50, 50  # "." ... "treasure": reversed, skipped
    old = ids.index(tokenizer.convert_tokens_to_ids("old"))
    start[0, old], end[0, old + 2] = 30, 30
    assert postprocess_predictions(Dataset.from_dict(ex), val, start, end) == {"q": "old oak tree"}
    assert postprocess_predictions(Dataset.from_dict(ex), val, start, end, max_answer_length=2)["q"] != "old oak tree"


def test_question_longer_than_the_window_is_truncated_not_a_crash(tokenizer):
    long_question = "Where is the treasure hidden " + "word1 " * 80 + "?"
    ex = example(FILLER + " The treasure is under the old oak tree.", long_question, "old oak tree")
    assert truncate_questions(ex, tokenizer, max_question_tokens=16) == 1
    assert len(tokenizer(ex["question"][0], add_special_tokens=False)["input_ids"]) == 16
    feats = prepare_train_features(ex, tokenizer, max_length=48, stride=16)
    assert "old oak tree" in labelled_spans(feats, tokenizer)


def test_a_window_without_room_for_the_stride_is_a_clear_error():
    check_window(384, 128, 64)  # the full profile's settings
    with pytest.raises(LabError, match="max_length 64 leaves 13 context tokens .* not more than stride 24"):
        check_window(64, 24, 48)


def test_an_empty_question_is_named_by_file_line_and_column_or_dropped(tmp_path):
    import json

    from labkit.config import get_lab, load_profile

    from run import load_squad

    lab = get_lab("distilbert-squad")
    cfg = load_profile(lab, "smoke")[0]["data"]
    rows = [json.loads(line) for line in (lab.dir / "data/smoke/train.jsonl").read_text().splitlines()[:5]]
    rows[3]["question"] = ""
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {**cfg, "files": {**cfg["files"], "train": str(train)}, "train_samples": None, "eval_samples": None}
    with pytest.raises(LabError, match=r"train.jsonl: column 'question' is empty at line 4\. .*bad_text=drop"):
        load_squad(cfg, lab.dir.parents[1])
    dsd, dropped = load_squad({**cfg, "bad_text": "drop"}, lab.dir.parents[1])
    assert dropped == {"train": {"question": 1}} and len(dsd["train"]) == 4


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_expected_data_fingerprint_is_the_profiles_data(profile):
    """expected/<profile>.yaml's data.fingerprint must name the profile's own data (see bert-yelp's twin)."""
    from labkit.config import get_lab, load_profile
    from labkit.lab.data import hub_or_files_fingerprint
    from labkit.verify import load_expected

    lab = get_lab("distilbert-squad")
    cfg = load_profile(lab, profile)[0]["data"]
    assert (
        hub_or_files_fingerprint(cfg, lab.dir.parents[1], ("train", "validation"))
        == (load_expected(lab.expected_path(profile))["data"]["fingerprint"])
    )


def test_answers_are_checked_where_they_sit_and_in_their_shape(tmp_path):
    """An answer not at its answer_start (a wrong offset, or a text the context lacks) would train on
    wrong labels: one line naming the file, the row id, what the context holds there and where the
    text is; drop removes those rows alone (counted). A row whose answers are not SQuAD's nested shape
    is named by file and line; a CSV's answers field (text) is refused naming the file."""
    import json

    from labkit.config import get_lab, load_profile

    from run import load_squad

    lab = get_lab("distilbert-squad")
    cfg = load_profile(lab, "smoke")[0]["data"]
    rows = [json.loads(line) for line in (lab.dir / "data/smoke/train.jsonl").read_text().splitlines()[:6]]
    context, answer = rows[1]["context"], rows[1]["answers"]["text"][0]
    rows[1]["answers"]["answer_start"] = [context.index(answer) + 1]
    rows[4]["answers"] = {"text": ["蜂蜜"], "answer_start": [0]}

    def load(rows, name="train.jsonl", **more):
        train = tmp_path / name
        train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        files = {**cfg["files"], "train": str(train)}
        return load_squad(
            {**cfg, "files": files, "train_samples": None, "eval_samples": None, **more}, lab.dir.parents[1]
        )

    start = context.index(answer) + 1
    shifted = f"train.jsonl: line 2 (id {rows[1]['id']!r}): answer {answer!r} is not at answer_start {start}"
    with pytest.raises(
        LabError, match=re.escape(shifted) + r" .*; it occurs at \d+\) \(and 1 more row\(s\)\)\. Fix answer_start"
    ):
        load(rows)
    dsd, dropped = load(rows, bad_text="drop")
    assert dropped == {"train": {"answers": 2}} and len(dsd["train"]) == 4
    assert rows[1]["id"] not in dsd["train"]["id"] and rows[0]["id"] in dsd["train"]["id"]
    with pytest.raises(LabError, match=r"line 3 \(id .*\): answer '蜂蜜' is not at answer_start 0 .*does not occur in"):
        load(rows[2:])
    twins = [dict(rows[0]), {**rows[1], "id": rows[0]["id"]}]  # ids repeat: only the misplaced row goes
    dsd, dropped = load(twins, bad_text="drop")
    assert dropped == {"train": {"answers": 1}} and dsd["train"]["answers"][:] == [rows[0]["answers"]]
    negative = [dict(rows[0]), {**rows[2], "answers": {"text": [answer], "answer_start": [-3]}}]
    with pytest.raises(LabError, match=r"column 'answers' is .* at line 2: SQuAD's .* starts >= 0"):
        load(negative)
    plain = [dict(rows[0]), *rows[2:4]]
    plain[2] = {**plain[2], "answers": "an answer as plain text"}
    with pytest.raises(
        LabError, match=r"train.jsonl: column 'answers' is 'an answer as plain text' at line 3: SQuAD's"
    ):
        load(plain)
    csv = tmp_path / "train.csv"
    csv.write_text('id,context,question,answers\nq1,Some context.,What?,"{""text"": [""Some""]}"\n', encoding="utf-8")
    with pytest.raises(LabError, match=r"train.csv: column 'answers' is .* at record 1 \(line 2\): .*use JSON lines"):
        load_squad({**cfg, "files": {**cfg["files"], "train": str(csv)}}, lab.dir.parents[1])
