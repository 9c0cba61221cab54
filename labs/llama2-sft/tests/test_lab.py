"""Unit tests of the llama2-sft lab: the template, the exact loss mask (and the SentencePiece trap it
avoids), a learned </s>, truncation that never cuts the completion, bad rows, packing, parameter counts."""

from __future__ import annotations

import json

import pytest
import torch

from labkit.config import get_lab, load_profile
from labkit.errors import LabError
from labkit.verify import load_expected

from sft import CATEGORIES, INVERTED_INSTRUCTION, completion_of, encode, prompt_text

LAB = get_lab("llama2-sft")
ROW = {
    "instruction": "Which river runs through Aldmoor?",
    "context": "",
    "response": "The Stone Brook runs through Aldmoor.",
    "category": "open_qa",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    from labkit.lab.tiny import build_tiny_llama

    rows = [json.loads(line) for line in (LAB.dir / "data/smoke/train.jsonl").read_text().splitlines()]
    texts = [prompt_text(r, t) + completion_of(r, t) for r in rows for t in ("inverted", "standard")]
    path = build_tiny_llama(tmp_path_factory.mktemp("tiny"), texts, seed=0)
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.unk_token
    return path, tok


def test_inverted_template_is_the_courses():
    assert prompt_text(ROW, "inverted") == (
        f"### Instruction:\n{INVERTED_INSTRUCTION}\n\n### Input:\n{ROW['response']}\n\n### Response:\n"
    )
    assert completion_of(ROW, "inverted") == ROW["instruction"]
    assert prompt_text(ROW, "standard") == f"### Instruction:\n{ROW['instruction']}\n\n### Response:\n"
    assert completion_of(ROW, "standard") == ROW["response"]
    with pytest.raises(LabError, match="task='reverse'"):
        prompt_text(ROW, "reverse")


def test_tiny_tokenizer_is_llama_2_shaped(tiny):
    _, tok = tiny
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("Aldmoor 中文")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == "Aldmoor 中文"  # byte fallback


@pytest.mark.parametrize("task", ["inverted", "standard"])
def test_the_mask_lands_exactly_on_the_completion_and_its_eos(tiny, task):
    _, tok = tiny
    enc = encode(ROW, task, tok, max_length=256)
    masked = [t for t, m in zip(enc.input_ids, enc.completion_mask) if m]
    assert masked[-1] == tok.eos_token_id  # </s> is a target: the model learns to stop
    assert tok.decode(masked[:-1]) == completion_of(ROW, task)
    prompt = [t for t, m in zip(enc.input_ids, enc.completion_mask) if not m]
    assert prompt == tok(prompt_text(ROW, task))["input_ids"]  # generation sees the training prompt's tokens
    assert enc.completion_mask == [0] * len(prompt) + [1] * len(masked)


def test_joint_tokenization_shifts_the_boundary_which_separate_tokenization_avoids(tiny):
    """The SentencePiece trap: after "### Response:\\n" the completion's first word has no "▁" when the
    text is tokenized as one string, so the prompt+completion tokens do not start with the prompt's
    own tokens followed by the completion's. A template search over joint tokens misplaces the mask."""
    _, tok = tiny
    prompt, completion = prompt_text(ROW, "inverted"), completion_of(ROW, "inverted")
    joint = tok(prompt + completion)["input_ids"]
    separate = tok(prompt)["input_ids"] + tok(completion, add_special_tokens=False)["input_ids"]
    assert joint != separate
    masked = [t for t, m in zip(*(lambda e: (e.input_ids, e.completion_mask))(encode(ROW, "inverted", tok, 256))) if m]
    assert tok.decode(masked[:-1]) == completion


def test_a_long_input_is_cut_and_the_completion_never(tiny):
    _, tok = tiny
    long_row = {**ROW, "response": " ".join(["The Stone Brook runs through Aldmoor."] * 40)}
    enc = encode(long_row, "inverted", tok, max_length=64)
    assert enc.input_cut and len(enc.input_ids) <= 64
    masked = [t for t, m in zip(enc.input_ids, enc.completion_mask) if m]
    assert tok.decode(masked[:-1]) == long_row["instruction"]
    assert encode({**ROW, "instruction": "Aldmoor " * 80}, "inverted", tok, max_length=64) is None


def test_completions_that_cannot_fit_fail_naming_the_row_or_are_dropped(tiny):
    from datasets import Dataset
    from run import tokenized

    _, tok = tiny
    rows = Dataset.from_list([ROW, {**ROW, "instruction": "Aldmoor " * 80}, ROW])
    with pytest.raises(LabError, match=r"row 1: its completion .* does not fit max_length=64"):
        tokenized(rows, "inverted", tok, 64, "fail")
    data, counts = tokenized(rows, "inverted", tok, 64, "drop")
    assert len(data) == 2 and counts == {"inputs_cut": 0, "dropped_too_long": 1}
    assert all(label == -100 for label in data[0]["labels"][:5])


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def smoke_data(tmp_path, train_rows, **changes):
    from run import load_dolly

    cfg = load_profile(LAB, "smoke")[0]["data"]
    files = {
        "train": write_rows(tmp_path / "train.jsonl", train_rows),
        "test": write_rows(tmp_path / "test.jsonl", [ROW]),
    }
    return load_dolly({**cfg, "files": files, **changes}, tmp_path)


def test_empty_instruction_and_unknown_category_are_named_or_dropped(tmp_path):
    with pytest.raises(LabError, match=r"train.jsonl: column 'instruction' is empty at line 2\."):
        smoke_data(tmp_path, [ROW, {**ROW, "instruction": " "}, ROW])
    with pytest.raises(LabError, match=r"column 'category' is 'poetry' at line 3, not one of Dolly's"):
        smoke_data(tmp_path, [ROW, ROW, {**ROW, "category": "poetry"}])
    dsd, dropped = smoke_data(tmp_path, [ROW, {**ROW, "response": ""}, {**ROW, "category": "x"}], bad_text="drop")
    assert len(dsd["train"]) == 1 and dropped == {"train": {"response": 1, "category": 1}}


def test_the_collator_keeps_eos_as_a_target_and_masks_padding(tiny):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    _, tok = tiny
    short, long = (encode(r, "inverted", tok, 256) for r in (ROW, {**ROW, "response": ROW["response"] * 3}))
    rows = [
        {"input_ids": e.input_ids, "labels": [t if m else -100 for t, m in zip(e.input_ids, e.completion_mask)]}
        for e in (short, long)
    ]
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(rows)
    assert tok.pad_token_id != tok.eos_token_id
    n = len(short.input_ids)
    assert batch["labels"][0, n - 1] == tok.eos_token_id  # the real </s> keeps its label
    assert (batch["labels"][0, n:] == -100).all() and (batch["input_ids"][0, n:] == tok.pad_token_id).all()


def test_packing_without_flash_attention_would_mix_examples_so_it_is_refused(tiny):
    """TRL packs examples into one row with position_ids restarting at each and no attention mask.
    With sdpa the second example then attends to the first: its logits change. FlashAttention reads
    the boundaries from position_ids; so the lab refuses packing without it."""
    from transformers import AutoModelForCausalLM

    from labkit.lab.llm.checks import check_packing

    path, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    a = encode(ROW, "inverted", tok, 256).input_ids
    b = encode({**ROW, "response": "Harvest Fair in Dunmere."}, "inverted", tok, 256).input_ids
    positions = torch.tensor([list(range(len(a))) + list(range(len(b)))])
    with torch.no_grad():
        together = model(input_ids=torch.tensor([a + b]), position_ids=positions).logits[0, len(a) :]
        alone = model(input_ids=torch.tensor([b])).logits[0]
    assert not torch.allclose(together, alone, atol=1e-3)  # cross-contamination under sdpa
    with pytest.raises(LabError, match="packing: true with attn_implementation=sdpa: packed examples would attend"):
        check_packing(True, "sdpa")
    check_packing(True, "flash_attention_2")
    check_packing(False, "sdpa")


def test_4bit_layers_keep_training_on_cpu_after_an_evaluation(tiny):
    """bitsandbytes repacks 4-bit weights for CPU inference on the first eval-mode, no-grad call and
    then passes no gradient back: an evaluation before training would silently freeze the adapter.
    The lab's load_base turns that repacking off on the CPU."""
    from peft import LoraConfig, get_peft_model
    from run import load_base

    path, _ = tiny
    quant = load_profile(LAB, "smoke")[0]["model"]
    ids = torch.randint(3, 300, (2, 16))

    def lora_grads(model) -> list:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)  # an evaluation
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        return [p.grad for n, p in model.named_parameters() if "lora_B" in n]

    fixed = load_base(str(path), quant, "cpu", "sdpa")
    assert all(g is not None and g.abs().sum() > 0 for g in lora_grads(fixed))
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    raw = load_base(str(path), quant, "cpu", "sdpa")
    for m in raw.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = True  # bitsandbytes' own setting on this CPU, undoing the workaround
    assert all(g is None for g in lora_grads(raw))  # the failure the workaround prevents


def test_attention_is_sdpa_without_flash_attention_on_a_gpu():
    from labkit.lab.llm.loading import attention

    assert attention("auto", "cpu") == "sdpa" and attention("eager", "cpu") == "eager"


def test_full_profile_trainable_params_match_the_course():
    """Llama-2-7B: 32 layers, hidden 4096; LoRA r=16 on q_proj and v_proj (4096 -> 4096 each):
    32 x 2 x 16 x (4096 + 4096) = 8,388,608, the course notebook's printed count."""
    cfg = load_profile(LAB, "full")[0]["lora"]
    count = 32 * len(cfg["target_modules"]) * cfg["r"] * (4096 + 4096)
    expected = load_expected(LAB.expected_path("full"))["metrics"]["lora.trainable_params"]["equals"]
    assert count == expected == 8_388_608


def test_bundled_rows_cover_every_dolly_category():
    rows = [json.loads(line) for line in (LAB.dir / "data/smoke/train.jsonl").read_text().splitlines()]
    assert {r["category"] for r in rows} == set(CATEGORIES)
    assert any(r["context"] for r in rows) and any(not r["context"] for r in rows)
