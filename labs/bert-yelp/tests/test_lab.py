"""Unit tests of the bert-yelp lab, run in its environment: labels, head size, tokenization, counts."""

from __future__ import annotations

import json
import re

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Value

from labkit.config import get_lab, load_profile
from labkit.errors import LabError
from labkit.verify import load_expected

from data import encode_labels, load_reviews, tokenize

LAB = get_lab("bert-yelp")
NAMES = ["1 star", "2 star", "3 stars", "4 stars", "5 stars"]


def smoke_data_cfg(**changes) -> dict:
    return {**load_profile(LAB, "smoke")[0]["data"], **changes}


def test_string_labels_are_mapped_through_label2id():
    dsd, dropped = load_reviews(smoke_data_cfg(), LAB.dir.parents[1])
    assert dropped == {}
    feature = dsd["train"].features["label"]
    assert isinstance(feature, ClassLabel) and feature.names == NAMES
    raw = [json.loads(line) for line in (LAB.dir / "data/smoke/train.jsonl").read_text().splitlines()]
    assert [feature.int2str(i) for i in dsd["train"]["label"]] == [row["label"] for row in raw]
    assert sorted(set(dsd["train"]["label"])) == [0, 1, 2, 3, 4]


def test_a_dataset_class_label_is_kept_and_sizes_the_head(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from labkit.lab.tiny import build_tiny_encoder

    ds = Dataset.from_dict({"text": ["a", "b"], "label": [0, 4]}).cast_column("label", ClassLabel(names=list("abcde")))
    dsd = encode_labels(DatasetDict(train=ds, test=ds), NAMES)
    names = dsd["train"].features["label"].names
    assert names == list("abcde")  # the dataset's own names win over the profile's
    path = build_tiny_encoder(tmp_path / "m", ["a b c"], "bert")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(names))
    assert model.classifier.out_features == 5  # never the default 2


def test_missing_column_and_file_are_named(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"review": "good", "label": "1 star"}\n')
    with pytest.raises(
        LabError, match=r"train.jsonl \(train split\) lacks column\(s\) text; it has: review, label\. Rename the header"
    ):
        load_reviews(smoke_data_cfg(files={"train": str(bad), "test": str(bad)}), tmp_path)
    with pytest.raises(LabError, match="data file .*nope.jsonl not found"):
        load_reviews(smoke_data_cfg(files={"train": str(tmp_path / "nope.jsonl"), "test": str(bad)}), tmp_path)


@pytest.mark.parametrize(("label", "shown"), [("six stars", "'six stars'"), ("", "''"), (7, "7"), ("5", "'5'")])
def test_a_bad_label_in_a_file_names_the_file_line_and_value(tmp_path, label, shown):
    """Found by a new user: the label error named neither file nor line, and an empty label showed as
    a double space. Now one line: file, line, the value quoted, what a label may be."""
    good = {"text": "Great tacos, friendly staff.", "label": "5 stars"}
    train = write_reviews(tmp_path / "train.jsonl", [good, good, good, {"text": "meh", "label": label}, good])
    cfg = smoke_data_cfg(files={"train": train, "test": write_reviews(tmp_path / "test.jsonl", [good])})
    message = (
        rf"train.jsonl: column 'label' is {re.escape(shown)} at line 4: a label is one of label_names "
        r"\(1 star, .*\) or an id 0-4\. Fix the data\."
    )
    with pytest.raises(LabError, match=message):
        load_reviews(cfg, tmp_path)


def test_a_malformed_json_line_is_named_by_its_line(tmp_path):
    good = json.dumps({"text": "Great tacos.", "label": "5 stars"})
    train = tmp_path / "train.jsonl"
    train.write_text(f'{good}\n{good}\n\n{{"text": "broken", label: 1}}\n{good}\n', encoding="utf-8")
    cfg = smoke_data_cfg(files={"train": str(train), "test": str(train)})
    with pytest.raises(
        LabError, match=r"train.jsonl as JSON lines .*: line 4: Expecting property name .* at column 20"
    ):
        load_reviews(cfg, tmp_path)
    train.write_text(f'{good}\n{{"text": "cut off\n', encoding="utf-8")  # a string never closed
    with pytest.raises(LabError, match=r": line 2: Invalid control character at column 18 \(a string left open"):
        load_reviews(cfg, tmp_path)
    train.write_text("\n", encoding="utf-8")
    with pytest.raises(LabError, match=r"^data file .*train.jsonl is empty: JSON lines .* needs at least one row$"):
        load_reviews(cfg, tmp_path)


def write_reviews(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("bad", "kind"),
    [({"text": None, "label": "1 star"}, "missing or null"), ({"text": "  ", "label": "1 star"}, "empty")],
)
def test_missing_or_empty_review_text_is_named_or_dropped(tmp_path, bad, kind):
    good = {"text": "Great tacos, friendly staff.", "label": "5 stars"}
    train = write_reviews(tmp_path / "train.jsonl", [good, good, bad, good])
    test = write_reviews(tmp_path / "test.jsonl", [good])
    cfg = smoke_data_cfg(files={"train": train, "test": test})
    with pytest.raises(LabError, match=rf"train.jsonl: column 'text' is {kind} at line 3\. .*bad_text=drop"):
        load_reviews(cfg, tmp_path)
    dsd, dropped = load_reviews({**cfg, "bad_text": "drop"}, tmp_path)
    assert dropped == {"train": {"text": 1}} and len(dsd["train"]) == 3


def test_text_of_the_wrong_type_is_named_on_its_own_line_and_dropped_alone(tmp_path):
    """One number among strings makes `datasets` read the column as JSON values: the row named is that
    one (not line 1), `drop` removes it alone and leaves the others as plain text; a file whose every
    row is dropped is one line, not an empty dataset failing later."""
    rows = [{"text": "5", "label": "1 star"}, {"text": '"Great"', "label": "5 stars"}]
    rows += [
        {"text": 3, "label": "2 star"},
        {"text": ["a list"], "label": "2 star"},
        {"text": "null", "label": "1 star"},
    ]
    cfg = smoke_data_cfg(
        files={
            "train": write_reviews(tmp_path / "train.jsonl", rows),
            "test": write_reviews(tmp_path / "test.jsonl", rows[:1]),
        }
    )
    with pytest.raises(
        LabError, match=r"train.jsonl: column 'text' is not text \(a number\) at line 3 \(and 1 more row\(s\): line 4\)"
    ):
        load_reviews(cfg, tmp_path)
    dsd, dropped = load_reviews({**cfg, "bad_text": "drop"}, tmp_path)
    # text that is itself JSON ("5", "null", '"Great"') stays text, as written (read from the file)
    assert dropped == {"train": {"text": 2}} and dsd["train"]["text"][:] == ["5", '"Great"', "null"]
    assert dsd["train"].features["text"] == Value("string")
    only_bad = write_reviews(tmp_path / "bad.jsonl", rows[2:4])
    with pytest.raises(LabError, match=r"bad.jsonl: every row \(2\) has missing, empty or non-text values in text"):
        load_reviews({**cfg, "bad_text": "drop", "files": {"train": only_bad, "test": cfg["files"]["test"]}}, tmp_path)


def test_tokenize_pads_and_truncates_to_max_length(tmp_path):
    from transformers import AutoTokenizer

    from labkit.lab.tiny import build_tiny_encoder

    tok = AutoTokenizer.from_pretrained(build_tiny_encoder(tmp_path / "m", ["good food", "bad food"], "bert"))
    ds = Dataset.from_dict({"text": ["good", "good food " * 50], "label": [0, 1]})
    out = tokenize(DatasetDict(train=ds), tok, max_length=16)["train"]
    assert [len(ids) for ids in out["input_ids"]] == [16, 16]
    assert out["attention_mask"][0] == [1, 1, 1] + [0] * 13  # [CLS] good [SEP] + padding
    assert out["input_ids"][1][-1] == tok.sep_token_id  # truncated, still closed by [SEP]


def test_full_profile_expected_parameter_count_matches_bert_base_cased():
    from transformers import BertConfig, BertForSequenceClassification

    # bert-base-cased config.json: vocabulary 28,996, hidden 768, 12 layers, 12 heads, FFN 3072.
    with torch.device("meta"):
        model = BertForSequenceClassification(BertConfig(vocab_size=28996, num_labels=5))
    expected = load_expected(LAB.expected_path("full"))["metrics"]["model.all_params"]["equals"]
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_expected_data_fingerprint_is_the_profiles_data(profile):
    """expected/<profile>.yaml's data.fingerprint must name the profile's own data, or every run
    would skip the data-dependent checks (a stale fingerprint after the data changed)."""
    from labkit.lab.data import hub_or_files_fingerprint
    from labkit.verify import load_expected

    cfg = load_profile(LAB, profile)[0]["data"]
    assert (
        hub_or_files_fingerprint(cfg, LAB.dir.parents[1], ("train", "test"))
        == (load_expected(LAB.expected_path(profile))["data"]["fingerprint"])
    )
