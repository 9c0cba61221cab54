"""Unit tests of the rlhf lab: preference pairs in both formats and their defects, the checks PPO needs
(padding token, one-output heads, one vocabulary, a stop token and its penalty), the pinned TRL's PPO
API run for one update, the judge over HTTP (retries, rejected replies, cache, key), reward functions'
shapes, exact tokenization, LoRA for every stage."""

from __future__ import annotations

import csv
import inspect
import json
import math
import re

import pytest
import torch

from labkit.config import REPO_ROOT, get_lab, load_profile
from labkit.errors import LabError
from labkit.verify import load_expected

from preferences import encode_pair, load_preferences, prompt_ids, split_implicit, swapped

LAB = get_lab("rlhf")
SMOKE = LAB.dir / "data" / "smoke"
FOREIGN = LAB.dir / "data" / "foreign"
KEY = "sk-test-this-key-must-never-be-written-4b1d"
MARKER = "\n\nAssistant:"
PAIR = {
    "prompt": "\n\nHuman: When does the museum open?\n\nAssistant:",
    "chosen": " The museum opens at ten from Tuesday to Sunday.",
    "rejected": " No idea, ask someone else.",
}


def data_cfg(**changes) -> dict:
    return {**load_profile(LAB, "smoke")[0]["data"], **changes}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def write_csv(path, rows, columns):
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def load(tmp_path, train_rows, **changes):
    files = {
        "train": write_jsonl(tmp_path / "train.jsonl", train_rows),
        "test": write_jsonl(tmp_path / "test.jsonl", [PAIR]),
    }
    return load_preferences(data_cfg(files=files, **changes), tmp_path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The smoke run's tiny Llama (its tokenizer trained on the bundled texts) and its tokenizer."""
    from labkit.lab.tiny import build_tiny_llama

    from policy import load_tokenizer

    pairs, _ = load_preferences(data_cfg(), REPO_ROOT)
    texts = [p["prompt"] + p[s] for split in pairs.values() for p in split for s in ("chosen", "rejected")]
    path = build_tiny_llama(tmp_path_factory.mktemp("tiny"), texts, seed=0)
    return str(path), load_tokenizer(str(path), None, "<unk>")


# --- Preference pairs --------------------------------------------------------------------------------


def test_bundled_pairs_load_explicit_and_the_foreign_csv_implicit_with_its_prompts_split_off():
    pairs, dropped = load_preferences(data_cfg(), REPO_ROOT)
    assert (len(pairs["train"]), len(pairs["test"]), dropped) == (160, 32, {})
    first = json.loads((SMOKE / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert pairs["train"][0] == {k: first[k] for k in ("prompt", "chosen", "rejected")}
    foreign = data_cfg(files={"train": str(FOREIGN / "train.csv"), "test": str(FOREIGN / "test.csv")})
    pairs, dropped = load_preferences(foreign, REPO_ROOT)
    assert (len(pairs["train"]), len(pairs["test"]), dropped) == (96, 24, {})
    multi = [p for p in pairs["train"] if p["prompt"].count("Human:") == 2]
    assert 20 <= len(multi) <= 45  # a third are two-turn conversations
    for p in pairs["train"]:
        assert p["prompt"].endswith(MARKER) and p["chosen"].startswith(" ") and p["chosen"] != p["rejected"]
    raw = list(csv.DictReader((FOREIGN / "train.csv").open(encoding="utf-8")))
    assert [p["prompt"] + p["chosen"] for p in pairs["train"]] == [r["chosen"] for r in raw]


def test_the_implicit_prompt_is_the_shared_conversation_up_to_the_last_assistant_marker():
    two_turns = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: When does it open?\n\nAssistant:"
    assert split_implicit(two_turns + " At ten.", two_turns + " No idea.", MARKER) == (
        two_turns,
        " At ten.",
        " No idea.",
    )
    assert split_implicit("Hi there", "Hi you", MARKER) == "no_marker"
    assert split_implicit(two_turns + " At ten.", two_turns.replace("Hello!", "Hi!") + " At ten.", MARKER) == (
        "prompt_differs"
    )


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({**PAIR, "rejected": PAIR["chosen"]}, r"train.jsonl: line 2: chosen and rejected are the same text"),
        ({**PAIR, "rejected": " "}, r"train.jsonl: column 'rejected' is empty at line 2"),
        ({**PAIR, "chosen": "\n"}, r"train.jsonl: column 'chosen' is empty at line 2"),
    ],
)
def test_defective_explicit_pairs_are_named_by_file_and_line(tmp_path, row, message):
    with pytest.raises(LabError, match=message) as err:
        load(tmp_path, [PAIR, row, PAIR])
    assert "\n" not in str(err.value) and "data.bad_text=drop" in str(err.value)


def test_defective_implicit_pairs_are_named_and_dropped_and_counted_under_drop(tmp_path):
    whole = PAIR["prompt"] + PAIR["chosen"], PAIR["prompt"] + PAIR["rejected"]
    other = "\n\nHuman: Where is the library?\n\nAssistant: No idea."
    rows = [
        {"chosen": whole[0], "rejected": whole[1]},
        {"chosen": whole[0], "rejected": other},  # answers another prompt
        {"chosen": PAIR["prompt"], "rejected": whole[1]},  # an empty side after its prompt
        {"chosen": "The museum opens at ten.", "rejected": "No idea."},  # no marker at all
        {"chosen": whole[0], "rejected": whole[0]},  # the same text
    ]
    path = write_csv(tmp_path / "pairs.csv", rows, ["chosen", "rejected"])
    cfg = data_cfg(files={"train": path, "test": path})
    with pytest.raises(LabError) as err:
        load_preferences(cfg, tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path}: record 2 (line 11): chosen and rejected do not share the prompt (they part at")
    assert "must be the same text up to the last 'Assistant:'" in message and "\n" not in message
    pairs, dropped = load_preferences({**cfg, "bad_text": "drop"}, tmp_path)
    assert len(pairs["train"]) == 1 and pairs["train"][0] == PAIR
    assert dropped["train"] == {"prompt_differs": 1, "empty_side": 1, "no_marker": 1, "same_text": 1}


def test_missing_columns_name_the_file_what_it_has_and_both_formats(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "Q", "good": "A", "bad": "B"}])
    with pytest.raises(LabError, match=r"train.jsonl has no column\(s\) chosen, rejected; it has: prompt, good, bad\."):
        load_preferences(data_cfg(files={"train": path, "test": path}), tmp_path)


def test_the_broken_override_swaps_the_reward_models_pairs_only():
    assert swapped([PAIR]) == [{**PAIR, "chosen": PAIR["rejected"], "rejected": PAIR["chosen"]}]
    assert load_profile(LAB, "smoke", [LAB.broken_override])[0]["reward"]["swap_preferences"] is True


def test_tokenization_is_exact_and_what_trls_dpo_tokenizes_jointly(tiny):
    """The reward model trains on prompt ids + completion ids + EOS, the ids PPO scores; DPOTrainer
    tokenizes prompt + completion as one text. On every bundled and foreign pair the two agree (the
    completion starts with a space: no token spans the boundary), so DPO and the reward model see
    the same tokens."""
    _, tok = tiny
    enc = encode_pair(tok, PAIR, 128)
    head = prompt_ids(tok, PAIR["prompt"])
    assert enc["chosen_ids"][: len(head)] == head and enc["chosen_ids"][-1] == tok.eos_token_id
    assert tok.decode(enc["chosen_ids"][len(head) : -1]) == PAIR["chosen"].strip()
    assert encode_pair(tok, PAIR, 8) is None  # too long: dropped and counted
    for cfg in (data_cfg(), data_cfg(files={"train": str(FOREIGN / "train.csv"), "test": str(FOREIGN / "test.csv")})):
        pairs, _ = load_preferences(cfg, REPO_ROOT)
        for pair in pairs["train"] + pairs["test"]:
            ours = encode_pair(tok, pair, 512)
            for side in ("chosen", "rejected"):
                joint = tok(pair["prompt"] + pair[side] + tok.eos_token)["input_ids"]
                assert joint == ours[f"{side}_ids"], (pair, side)


# --- What PPO needs of its models --------------------------------------------------------------------


def test_a_tokenizer_without_padding_or_padding_with_eos_is_refused(tiny):
    from policy import load_tokenizer

    path, _ = tiny
    with pytest.raises(LabError, match=r"has no padding token: .* Set model.pad_token to a token .* not its end"):
        load_tokenizer(path, None, None)  # Llama 2's tokenizer has none
    with pytest.raises(LabError, match=r"pads with its end-of-sequence token '</s>': PPO takes the first padding"):
        load_tokenizer(path, None, "</s>")
    with pytest.raises(LabError, match=r"model.pad_token='<pad>' is not a token of"):
        load_tokenizer(path, None, "<pad>")
    assert load_tokenizer(path, None, "<unk>").pad_token_id == 0


def test_a_reward_model_with_two_outputs_is_refused_before_trl_misreads_it(tiny):
    """TRL's get_reward reads score(hidden)[..., last token].squeeze(-1): a two-label head gives two
    numbers per sequence, which PPO would then add to a reward of shape (batch,)."""
    from transformers import AutoModelForSequenceClassification
    from trl.experimental.utils import get_reward

    from policy import check_single_output

    path, tok = tiny
    two = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    two.config.pad_token_id = tok.pad_token_id
    ids = torch.tensor([prompt_ids(tok, PAIR["prompt"]) + [tok.eos_token_id]])
    _, score, _ = get_reward(two, ids, tok.pad_token_id, ids.shape[1] - 1)
    assert score.shape == (1, 2)  # not one reward per sequence
    with pytest.raises(LabError, match=r"the reward model has a head with 2 outputs \(num_labels=2\): PPO reads one"):
        check_single_output(two, "reward model")
    one = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    check_single_output(one, "value model")


def test_a_value_model_with_another_vocabulary_is_refused(tiny, tmp_path):
    from labkit.lab.tiny import build_tiny_llama

    from policy import check_same_vocabulary, load_tokenizer

    _, tok = tiny
    other = load_tokenizer(
        str(build_tiny_llama(tmp_path / "other", ["a wholly different text"] * 20, seed=0)), None, "<unk>"
    )
    with pytest.raises(
        LabError, match=r"the value model has another vocabulary than the policy \(\d+ tokens against \d+;"
    ):
        check_same_vocabulary(tok, other, "value model")
    check_same_vocabulary(tok, tok, "value model")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stop_token": None}, r"ppo.stop_token=None and no stop_token_id: TRL's PPOTrainer then truncates nothing"),
        ({"missing_eos_penalty": None}, r"ppo.missing_eos_penalty=None: without a positive penalty a response"),
        ({"missing_eos_penalty": 0.0}, r"ppo.missing_eos_penalty=0.0"),
    ],
)
def test_ppo_without_a_stop_token_or_missing_eos_penalty_is_explained(change, message):
    from policy import check_ppo_settings

    ppo = load_profile(LAB, "smoke")[0]["ppo"]
    check_ppo_settings(ppo)
    with pytest.raises(LabError, match=message):
        check_ppo_settings({**ppo, **change})
    check_ppo_settings({**ppo, "stop_token": None, "stop_token_id": 2})  # an explicit id is a stop token too


def test_fewer_pairs_than_a_stages_batch_are_refused_before_training_with_the_count_and_setting():
    """TRL's PPO loader drops an incomplete batch and loops over an empty one forever; GRPO's sampler
    keeps only full batches of prompts: the lab refuses such data up front, naming count and setting."""
    from trl.experimental.ppo import PPOTrainer
    from trl.trainer.utils import RepeatSampler

    from policy import check_batches

    source = inspect.getsource(PPOTrainer.__init__)  # the batch the pinned TRL really uses, and why it starves
    assert "args.local_batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps" in source
    assert "batch_size=self.local_dataloader_batch_size" in source and "drop_last=True" in source
    assert "while True:\n                yield from dataloader" in inspect.getsource(PPOTrainer.train)
    assert list(RepeatSampler(range(3), mini_repeat_count=4, batch_size=4)) == []  # GRPO: 3 prompts, 16 / 4 a batch

    cfg = load_profile(LAB, "smoke")[0]
    check_batches(cfg, 16, 4)  # one PPO batch of 16 prompts (the trial's 20 + 4 pairs run)
    with pytest.raises(
        LabError,
        match=r"^12 training pairs \(PPO's prompts\), fewer than PPO's batch of 16 "
        r"\(ppo.per_device_train_batch_size 16 x ppo.gradient_accumulation_steps 1\).*Lower "
        r"ppo.per_device_train_batch_size x gradient_accumulation_steps to 12 or less",
    ):
        check_batches(cfg, 12, 4)
    with pytest.raises(
        LabError, match=r"batch of 32 \(ppo.per_device_train_batch_size 8 x ppo.gradient_accumulation_steps 4"
    ):
        check_batches(
            {**cfg, "ppo": {**cfg["ppo"], "per_device_train_batch_size": 8, "gradient_accumulation_steps": 4}}, 20, 4
        )
    small = {**cfg, "ppo": {**cfg["ppo"], "per_device_train_batch_size": 2}}
    check_batches(small, 4, 1)
    with pytest.raises(LabError, match=r"^3 training pairs \(GRPO's prompts\), fewer than GRPO's batch of 4 \(16 "):
        check_batches(small, 3, 1)
    dropping = {**small, "trainer": {**cfg["trainer"], "dataloader_drop_last": True}}
    with pytest.raises(
        LabError, match=r"^4 held-out rows, fewer than sft's batch of 32 \(sft.per_device_eval_batch_size"
    ):
        check_batches(dropping, 16, 4)


@pytest.mark.parametrize(
    ("name", "small_data", "learning_rate_0"),
    [  # measured 2026-12-06: smoke on 20 + 4 pairs (the least PPO's batch of 16 allows); and at learning rate 0
        ("sft.eval_loss_drop_ratio", 0.359955, 0.0),
        ("ppo.loss.value_avg.gain", 0.024617, -0.007839),
    ],
)
def test_mechanics_checks_hold_on_small_valid_data_and_data_bound_values_skip_there(name, small_data, learning_rate_0):
    """A mechanics check holds on any reasonable data (and still tells learning rate 0 apart); a value only
    the bundled pairs give is depends_on_data, so it SKIPs on other data instead of failing."""
    from labkit.verify import check_metric

    spec = load_expected(LAB.expected_path("smoke"))["metrics"][name]
    if spec.get("depends_on_data"):  # no mechanics check: learning rate 0 passes it too
        assert check_metric(name, spec, learning_rate_0).passed
    else:
        assert check_metric(name, spec, small_data).passed and not check_metric(name, spec, learning_rate_0).passed


def test_the_pinned_trl_runs_one_ppo_update_with_the_labs_models(tiny, tmp_path):
    """The API this lab depends on: trl.experimental.ppo, PPOTrainer's signature, one update with a
    policy, a frozen reference, a value model and a reward model of one tiny architecture, and the
    metrics the lab reports. An upgrade that moves or changes any of it fails here, not in a course."""
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from labkit.lab.metrics import JsonlLogger, read_jsonl

    from policy import load_tokenizer

    pinned = re.search(r"^trl==(\S+)", (LAB.dir / "requirements.in").read_text(), re.M).group(1)
    assert trl.__version__ == pinned
    params = list(inspect.signature(PPOTrainer.__init__).parameters)
    assert params[1:8] == [
        "args",
        "processing_class",
        "model",
        "ref_model",
        "reward_model",
        "train_dataset",
        "value_model",
    ]
    path, _ = tiny
    tok = load_tokenizer(path, None, "<unk>", padding_side="left")

    def scorer():
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
        return model

    cfg = load_profile(LAB, "smoke")[0]
    own = {k: v for k, v in cfg["ppo"].items() if k not in ("reward_model", "value_model")}
    own.update(total_episodes=4, per_device_train_batch_size=4, local_rollout_forward_batch_size=4, response_length=6)
    args = PPOConfig(output_dir=str(tmp_path), seed=0, **{**cfg["trainer"], "report_to": "none"}, **own)
    prompts = Dataset.from_dict({"input_ids": [prompt_ids(tok, PAIR["prompt"])] * 4})
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=AutoModelForCausalLM.from_pretrained(path),
        ref_model=AutoModelForCausalLM.from_pretrained(path),
        reward_model=scorer(),
        train_dataset=prompts,
        value_model=scorer(),
        eval_dataset=prompts,
        callbacks=[JsonlLogger(tmp_path / "ppo.jsonl")],
    )
    trainer.train()
    (row,) = read_jsonl(tmp_path / "ppo.jsonl")
    for key in ("objective/kl", "objective/rlhf_reward", "objective/scores", "loss/value_avg", "loss/policy_avg"):
        assert math.isfinite(row[key]), key
    assert abs(row["objective/kl"]) < 0.05  # the first rollout: the policy is still its reference
    assert row["objective/rlhf_reward"] == pytest.approx(
        row["objective/scores"] + row["objective/non_score_reward"], abs=1e-4
    )
    assert trainer.state.global_step == 1 and trainer.stop_token_id == tok.eos_token_id


# --- The judge ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"preferred": "B", "reason": "on topic"}', ("B", None)),
        ('{"preferred": " a "}', ("A", None)),
        ("Answer A is better.", (None, "not_json")),
        ('{"winner": "A"}', (None, "schema")),
        ('["A"]', (None, "schema")),
        ('{"preferred": "both"}', (None, "bad_value")),
    ],
)
def test_preference_replies_are_validated(reply, expected):
    from judge import validate_preference

    assert validate_preference(reply) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"score": 7}', (7, None)),
        ('{"score": 7.0}', (7, None)),
        ('{"score": 11}', (None, "bad_value")),
        ('{"score": 6.5}', (None, "bad_value")),
        ('{"score": true}', (None, "bad_value")),
        ('{"rating": 7}', (None, "schema")),
        ("seven", (None, "not_json")),
    ],
)
def test_score_replies_are_validated(reply, expected):
    from judge import validate_score

    assert validate_score(reply) == expected


def test_the_rule_judge_scores_the_principle():
    from rule_judge import last_question, score

    q = last_question(PAIR["prompt"])
    assert q == "When does the museum open?"
    assert score(q, PAIR["chosen"]) == 10  # polite, concrete (ten, Tuesday), takes up museum and open
    assert score(q, PAIR["rejected"]) == 0  # dismissive, nothing concrete, nothing of the question
    assert score(q, "The bakery is on Mill Street.") == 7  # polite and concrete, but nothing of the question
    assert score(q, "It depends on the day.") == 0
    two = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Where is the lighthouse?\n\nAssistant:"
    assert last_question(two) == "Where is the lighthouse?"


def judge_cfg() -> dict:
    return {**load_profile(LAB, "smoke")[0]["judge"], "timeout_s": 5, "max_retries": 3}


def test_the_judge_over_http_labels_pairs_retries_counts_rejects_and_resumes_from_its_cache(tmp_path, monkeypatch):
    from judge import Judge, endpoint, label_pairs, validate_preference

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    pairs, _ = load_preferences(data_cfg(), REPO_ROOT)
    rows = pairs["train"][:40]
    with endpoint(judge_cfg(), REPO_ROOT) as url:
        judge = Judge(judge_cfg(), url, tmp_path / "cache")
        labelled, summary = label_pairs(judge, rows, seed=42)
    report = judge.report.as_dict()
    assert (report["requests"], report["retries"], report["cache_hits"]) == (42, 2, 0)  # a 429 and a 500 retried
    assert report["replies_rejected"] == {"not_json": 1, "schema": 1, "bad_value": 1}
    assert summary["labelled"] == 37 and summary["left_out"] == 3 and len(labelled) == 37
    assert 0.3 < summary["position_a_share"] < 0.7
    human = {(p["prompt"], p["chosen"]) for p in rows}
    agree = sum((p["prompt"], p["chosen"]) in human for p in labelled)
    assert agree / 37 == summary["agreement_with_human_labels"] > 0.85
    # Resume: the valid replies answer from the cache; the 3 rejected ones were not cached (a real endpoint
    # is asked again): the fresh replay answers them with its 3 faults again, so the labels are the same.
    files = sorted((tmp_path / "cache").glob("*.json"))
    cached = [json.loads(p.read_text(encoding="utf-8"))["content"] for p in files]
    assert len(cached) == 37 and all(validate_preference(reply)[1] is None for reply in cached)
    with endpoint(judge_cfg(), REPO_ROOT) as url:
        again = Judge(judge_cfg(), url, tmp_path / "cache")
        assert label_pairs(again, rows, seed=42) == (labelled, summary)
    assert (again.report.api.requests, again.report.api.cache_hits) == (3, 37)
    assert again.report.as_dict()["replies_rejected"] == {"not_json": 1, "schema": 1, "bad_value": 1}
    # Other data through the same cache (the trial: bike pairs, then others overlapping them): each fault
    # is counted once, none replayed from the cache.
    with endpoint(judge_cfg(), REPO_ROOT) as url:
        other = Judge(judge_cfg(), url, tmp_path / "cache")
        label_pairs(other, pairs["train"][30:60], seed=42)
    assert other.report.as_dict()["replies_rejected"] == {"not_json": 1, "schema": 1, "bad_value": 1}
    # A malformed reply cached before this rule (the trial's cache): not replayed, asked again and replaced.
    files[0].write_text(json.dumps({"content": '{"winner": "A"}'}), encoding="utf-8")  # one of the 40 rows'
    with endpoint(judge_cfg(), REPO_ROOT) as url:
        late = Judge(judge_cfg(), url, tmp_path / "cache")
        label_pairs(late, rows, seed=42)
    assert (late.report.api.requests, late.report.api.cache_hits) == (4, 36)  # the 3 faults again, and that one
    assert "winner" not in files[0].read_text(encoding="utf-8")
    for path in tmp_path.rglob("*"):  # the key is read at run time and never written
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_a_judge_whose_every_reply_is_rejected_stops_the_run_in_one_line(tmp_path, monkeypatch):
    from labkit.lab.replay import ReplayServer

    from judge import Judge, label_pairs

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ReplayServer([{"content": "I prefer the first one."}]) as url, pytest.raises(LabError) as err:
        label_pairs(Judge(judge_cfg(), url, tmp_path), [PAIR, PAIR], seed=0)
    assert str(err.value).startswith("the judge (replay-rule-judge) gave no usable label for 2 pair(s): every reply")
    assert "{'not_json': 2}" in str(err.value) and "\n" not in str(err.value)


def test_a_missing_key_and_a_rejected_key_are_named(tmp_path, monkeypatch):
    from labkit.lab.replay import ReplayServer

    from judge import Judge

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LabError, match="OPENAI_API_KEY is not set"):
        Judge(judge_cfg(), "http://127.0.0.1:9/v1", tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ReplayServer([{"status": 401}]) as url, pytest.raises(LabError, match=r"rejected the API key \(HTTP 401\)"):
        Judge(judge_cfg(), url, tmp_path).prefer(PAIR["prompt"], "a", "b")
    with (
        ReplayServer([{"status": 404}]) as url,
        pytest.raises(LabError, match=r"HTTP 404 for model .*: set judge.model"),
    ):
        Judge(judge_cfg(), url, tmp_path / "c2").score(PAIR["prompt"], "a")


def test_win_rates_count_ties_as_half_and_leave_rejected_replies_out(tmp_path, monkeypatch):
    from labkit.lab.replay import ReplayServer

    from judge import Judge, win_rate
    from rule_judge import respond

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    prompts = [PAIR["prompt"]] * 4
    before = [PAIR["rejected"], "It depends on the day.", "same", "Why would I know that?"]
    after = [PAIR["chosen"], "The museum opens at nine.", "same", "The museum opens at ten."]
    script = [{"respond": True}, {"respond": True}, {"content": "not json"}]
    with ReplayServer(script, responder=respond) as url:
        result = win_rate(Judge(judge_cfg(), url, tmp_path), prompts, before, after, seed=0)
    assert result == {"win_rate": (2 + 0.5) / 3, "wins": 2, "losses": 0, "ties": 1, "left_out": 1}


def test_reward_functions_must_return_one_finite_reward_per_completion():
    """TRL's GRPOTrainer takes len() of a reward function's result: a single number fails with
    "object of type 'float' has no len()". The lab's wrapper says what is wrong, naming the function."""
    from judge import check_rewards, checked

    assert check_rewards("f", [1, 0.5, None], 3) == [1.0, 0.5, None]
    assert check_rewards("f", torch.tensor([0.25, 0.5]), 2) == [0.25, 0.5]
    with pytest.raises(
        LabError, match=r"reward function 'mean' returned one value \(0.5\) for a batch of 4 completions"
    ):
        checked("mean", lambda prompts, completions, **kw: 0.5)(prompts=["p"] * 4, completions=["c"] * 4)
    with pytest.raises(LabError, match=r"returned one value \(tensor\(0.5000\)\)|returned one value \(0.5\)"):
        check_rewards("t", torch.tensor(0.5), 4)
    with pytest.raises(LabError, match=r"reward function 'f' returned 1 reward\(s\) for 4 completions"):
        check_rewards("f", [0.5], 4)
    with pytest.raises(LabError, match=r"returned nan among its rewards: each must be a finite number"):
        check_rewards("f", [0.5, float("nan")], 2)
    with pytest.raises(LabError, match=r"returned 'good' among its rewards"):
        check_rewards("f", [0.5, "good"], 2)


def test_the_judges_reward_function_scores_each_completion_in_order(tmp_path, monkeypatch):
    from labkit.lab.replay import ReplayServer

    from judge import Judge, reward_function
    from rule_judge import respond

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ReplayServer([{"respond": True}, {"content": "{}"}, {"respond": True}], responder=respond) as url:
        reward = reward_function(Judge(judge_cfg(), url, tmp_path))
        got = reward(prompts=[PAIR["prompt"]] * 3, completions=[PAIR["chosen"], "x", PAIR["rejected"]])
    assert got == [1.0, None, 0.0] and reward.__name__ == "ai_judge"


# --- LoRA for every stage, and the settings -------------------------------------------------------


def test_lora_for_every_stage_and_a_merged_adapter_gives_the_trained_logits(tiny):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from run import lora_config, merged

    path, tok = tiny
    full = load_profile(LAB, "full")[0]
    assert lora_config(load_profile(LAB, "smoke")[0], "CAUSAL_LM") is None
    seq = lora_config(full, "SEQ_CLS")
    assert seq.task_type == "SEQ_CLS" and seq.modules_to_save == ["score"] and seq.r == 16
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(path, num_labels=1), seq)
    assert {n.split(".")[-3] for n, p in model.named_parameters() if p.requires_grad} >= {"lora_A", "lora_B"}
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(path), lora_config(full, "CAUSAL_LM"))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)  # a trained adapter, not the identity
    policy.eval()  # lora_dropout off
    ids = torch.tensor([prompt_ids(tok, PAIR["prompt"])])
    with torch.no_grad():
        trained = policy(input_ids=ids).logits

    class Wrapped:
        model = policy

        class accelerator:  # noqa: N801 (a stand-in for the trainer's)
            @staticmethod
            def unwrap_model(m):
                return m

    plain = merged(Wrapped)
    assert not hasattr(plain, "peft_config")
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, trained, atol=1e-5)


def test_profiles_name_real_revisions_and_one_architecture():
    full = load_profile(LAB, "full")[0]
    assert re.fullmatch(r"[0-9a-f]{40}", full["model"]["revision"])
    assert re.fullmatch(r"[0-9a-f]{40}", full["data"]["hub_revision"])
    smoke = load_profile(LAB, "smoke")[0]
    assert smoke["model"]["build_tiny"] and smoke["ppo"]["reward_model"] is None and smoke["ppo"]["value_model"] is None
    assert smoke["deterministic"] is True and full["deterministic"] is False


def test_readme_gives_the_own_data_command_and_it_loads_the_foreign_pairs(tmp_path):
    import shlex
    import shutil

    readme = (LAB.dir / "README.md").read_text(encoding="utf-8")
    section = re.split(r"\n#+ ", readme.split("\n## Your own data\n")[1])[0]
    (command,) = re.findall(r"`(make lab-rlhf [^`]*SET=[^`]*)`", section)
    shutil.copy(FOREIGN / "train.csv", tmp_path / "my_train.csv")
    shutil.copy(FOREIGN / "test.csv", tmp_path / "my_test.csv")
    settings = shlex.split(shlex.split(command.split("SET=", 1)[1])[0])
    cfg = load_profile(LAB, "smoke", settings)[0]["data"]
    assert cfg["files"] == {"train": "my_train.csv", "test": "my_test.csv"}
    pairs, dropped = load_preferences(cfg, tmp_path)
    assert (len(pairs["train"]), len(pairs["test"]), dropped) == (96, 24, {})


def test_rates_on_a_handful_of_held_out_pairs_are_left_out_not_judged(tmp_path):
    """10 held-out pairs (a learner's own set): an accuracy or a win rate moves 10 points per pair, so
    the checks on held-out rates SKIP with the reason (metrics.json not_run); the bundled (32) and
    foreign (24) sets keep every check, and so the broken run still fails its rate checks."""
    from labkit.verify import verify_run

    from policy import HELD_OUT_RATES, rates_left_out

    assert rates_left_out(32, 32) == {} and rates_left_out(24, 24) == {}
    small = rates_left_out(10, 10)
    assert set(small) == set(HELD_OUT_RATES)
    assert small["dpo.eval_reward_accuracy_after"] == "10 held-out pairs, too few to judge a rate (16 or more)"
    assert set(rates_left_out(24, 8)) == {"ppo.judge_win_rate", "dpo.judge_win_rate", "rlaif.grpo.judge_win_rate"}
    expected = load_expected(LAB.expected_path("smoke"))["metrics"]
    assert set(HELD_OUT_RATES) <= set(expected) and set(LAB.broken_fails) - set(HELD_OUT_RATES) == {
        "ppo.ai_reward_model_score_gain"
    }
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"status": "completed"}))
    (run / "metrics.json").write_text(json.dumps({"dpo": {"eval_reward_accuracy_after": 0.7}, "not_run": small}))
    checks = {c.name: c for c in verify_run(run, LAB.expected_path("smoke"))}
    assert checks["dpo.eval_reward_accuracy_after"].result == "SKIP"
    assert "10 held-out pairs, too few" in checks["dpo.eval_reward_accuracy_after"].got
