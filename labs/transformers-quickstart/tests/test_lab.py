"""Unit tests of the transformers-quickstart lab: extractive QA spans, tokenizer checks, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from labkit.config import get_lab, load_profile
from labkit.lab.tiny import build_tiny_encoder, build_tiny_gpt2

from run import DATA, check_pipelines, extractive_qa, model_round_trip, tokenizer_demo

INPUTS = yaml.safe_load((DATA / "inputs.yaml").read_text(encoding="utf-8"))
TEXTS = INPUTS["tokenizer"] + INPUTS["sentiment"] + [INPUTS["qa"]["context"], INPUTS["qa"]["question"]]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer

    path = build_tiny_encoder(tmp_path_factory.mktemp("bert"), TEXTS, "bert")
    tok = AutoTokenizer.from_pretrained(path)
    return (
        tok,
        AutoModelForSequenceClassification.from_pretrained(path, num_labels=2),
        AutoModelForQuestionAnswering.from_pretrained(path),
    )


def test_extractive_qa_returns_a_context_span(bert):
    tok, _, qa_model = bert
    context, question = INPUTS["qa"]["context"], INPUTS["qa"]["question"]
    with torch.no_grad():
        qa_model.qa_outputs.weight.zero_()
        qa_model.qa_outputs.bias.zero_()
    out = extractive_qa(qa_model, tok, question, context)  # flat logits: any valid span, never the question
    assert set(out) == {"score", "start", "end", "answer"} and out["answer"] == context[out["start"] : out["end"]]
    assert 0 <= out["start"] < out["end"] <= len(context) and 0 < out["score"] <= 1


def test_extractive_qa_picks_the_highest_scoring_valid_span(bert, monkeypatch):
    tok, _, qa_model = bert
    context, question = INPUTS["qa"]["context"], INPUTS["qa"]["question"]
    enc = tok(question, context, return_offsets_mapping=True)
    target = context.index("in London")
    s = next(i for i, (o, q) in enumerate(zip(enc["offset_mapping"], enc.sequence_ids())) if q == 1 and o[0] == target)

    class Fixed(torch.nn.Module):
        device = torch.device("cpu")

        def forward(self, input_ids, **kwargs):
            start = torch.full(input_ids.shape, -5.0)
            end = torch.full(input_ids.shape, -5.0)
            start[0, 1] = end[0, 1] = 50.0  # a question token: must be ignored
            start[0, s], end[0, s + 1] = 10.0, 10.0
            return type("Out", (), {"start_logits": start, "end_logits": end})

    out = extractive_qa(Fixed(), tok, question, context)
    assert out["answer"] == "in London"


def test_tokenizer_checks_hold_and_catch_a_lossy_tokenizer(bert, tmp_path):
    from transformers import AutoTokenizer

    tok = bert[0]
    bpe = AutoTokenizer.from_pretrained(build_tiny_gpt2(tmp_path / "gpt2", TEXTS))
    checks, record = tokenizer_demo(tok, bpe, INPUTS["tokenizer"])
    assert checks == {
        "round_trip_identical": 1.0,
        "special_tokens_ok": True,
        "padding_ok": True,
        "truncation_ok": True,
        "offsets_ok": True,
    }
    assert record["tokens"][0] == "[CLS]"
    lossy, _ = tokenizer_demo(tok, tok, INPUTS["tokenizer"])  # WordPiece does not round-trip spacing/Chinese
    assert lossy["round_trip_identical"] < 1.0


def test_round_trip_is_exact_in_float32_and_not_in_float16(bert, tmp_path):
    tok, model, _ = bert
    assert model_round_trip(model, tok, TEXTS[0], tmp_path / "fp32", "float32") == 0.0
    assert model_round_trip(model, tok, TEXTS[0], tmp_path / "fp16", "float16") > 1e-6


def test_check_pipelines_rejects_wrong_structures():
    good = {
        "sentiment": [{"label": "POSITIVE", "score": 0.9}] * 2,
        "ner": [],
        "qa": {"score": 0.5, "start": 0, "end": 3, "answer": INPUTS["qa"]["context"][:3]},
        "generation": [{"generated_text": INPUTS["generation"][0] + " is fun"}],
        "asr": {"text": "谢谢"},
    }
    assert all(v for k, v in check_pipelines(good, INPUTS, ["NEGATIVE", "POSITIVE"]).items() if k.endswith("_ok"))
    bad = dict(good, qa={**good["qa"], "answer": "nope"}, sentiment=[{"label": "MAYBE", "score": 1.5}] * 2)
    result = check_pipelines(bad, INPUTS, ["NEGATIVE", "POSITIVE"])
    assert not result["qa_ok"] and not result["sentiment_ok"]


def _cached(hub: Path, kind: str, repo: str, refs: dict[str, str], commits: list[str]) -> None:
    """A repository in a Hugging Face Hub cache as huggingface_hub lays it out: refs/<name> holding a
    commit (no newline), snapshots/<commit>/ with files linked to blobs/."""
    folder = hub / f"{kind}s--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "blobs").mkdir()
    for name, commit in refs.items():
        (folder / "refs" / name).write_text(commit)
    for i, commit in enumerate(commits):
        (folder / "blobs" / f"b{i}").write_text("{}")
        (folder / "snapshots" / commit).mkdir(parents=True)
        (folder / "snapshots" / commit / "config.json").symlink_to(f"../../blobs/b{i}")


def test_the_manifest_records_which_commit_each_named_hub_repo_resolved_to(tmp_path):
    """The full profile loads five checkpoints at `revision: main`: the run's manifest records the commit
    `main` was in the Hub cache (labkit.rundir.hub_commits, from finish_run), so a rerun can pin it;
    repositories the profile does not name are left out; a smoke profile (tiny local models) names none;
    long prose settings and paths are skipped, not looked up."""
    from labkit.rundir import hub_commits

    hub = tmp_path / "hub"
    sha, old = "a" * 40, "b" * 40
    _cached(hub, "model", "openai-community/gpt2", {"main": sha}, [sha, old])
    _cached(hub, "model", "someone/unrelated", {"main": "c" * 40}, ["c" * 40])
    full = load_profile(get_lab("transformers-quickstart"), "full")[0]
    assert hub_commits(full, hub) == [
        {"repo": "openai-community/gpt2", "type": "model", "refs": {"main": sha}, "commits": [sha, old]}
    ]
    assert hub_commits(load_profile(get_lab("transformers-quickstart"), "smoke")[0], hub) == []
    # Settings that are prose or paths are not repository ids: a 300-character prompt (rlhf's judge
    # principle; once an OSError "File name too long" that failed the run at its end) and a file path.
    prose = {"judge": {"principle": "The better answer helps the person who asked. " * 7}, "data": "./x/y"}
    assert hub_commits({**full, **prose}, hub) == hub_commits(full, hub)
    assert hub_commits(prose, hub) == []
    assert hub_commits(full, tmp_path / "no-cache") == []


def test_an_unreadable_hub_cache_costs_the_record_not_the_run(tmp_path, monkeypatch, capsys):
    """A cache the scan cannot read (permissions, a file vanishing mid-scan) leaves the manifest without
    commits and says so on stderr; the run that already finished is not failed for it."""
    import huggingface_hub

    from labkit.rundir import hub_commits

    hub = tmp_path / "hub"
    _cached(hub, "model", "openai-community/gpt2", {"main": "a" * 40}, ["a" * 40])

    def unreadable(cache_dir):
        raise PermissionError(13, "Permission denied", str(cache_dir))

    monkeypatch.setattr(huggingface_hub, "scan_cache_dir", unreadable)
    assert hub_commits(load_profile(get_lab("transformers-quickstart"), "full")[0], hub) == []
    assert f"warning: the Hub cache {hub} could not be read" in capsys.readouterr().err
