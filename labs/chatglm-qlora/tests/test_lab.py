"""Unit tests of the chatglm-qlora lab: chat-template prompts, the exact mask (with pad == eos, as in
GLM-4), lengths and bad rows, the 4-bit check, parameter counts, and before/after done right."""

from __future__ import annotations

import json

import pytest
import torch

from labkit.config import get_lab, load_profile
from labkit.errors import LabError
from labkit.lab.llm.prompts import chat_prompt, tokenize_chat
from labkit.verify import load_expected

LAB = get_lab("chatglm-qlora")
COLS = ("content", "summary")
ROW = {"content": "类型#裙*颜色#蓝色*风格#清新", "summary": "这款连衣裙选用清爽的蓝色，整体风格清新自然。"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    from labkit.lab.tiny import build_tiny_glm

    rows = [json.loads(line) for line in (LAB.dir / "data/smoke/train.jsonl").read_text().splitlines()]
    texts = [t for r in rows + [ROW] for t in (r["content"], r["summary"])]
    path = build_tiny_glm(tmp_path_factory.mktemp("tiny"), texts, seed=0)
    return path, AutoTokenizer.from_pretrained(path)


def rows_of(*rows):
    from datasets import Dataset

    return Dataset.from_list(list(rows))


def test_prompt_is_the_chat_template_in_glm_4_layout(tiny):
    _, tok = tiny
    assert chat_prompt(tok, ROW["content"]) == f"[gMASK]<sop><|user|>\n{ROW['content']}<|assistant|>\n"


def test_mask_covers_the_summary_and_its_eos_even_though_pad_is_eos(tiny):
    from transformers import DataCollatorForSeq2Seq

    _, tok = tiny
    assert tok.pad_token_id == tok.eos_token_id  # GLM-4's choice: masking padding by id would drop the real eos
    data, counts = tokenize_chat(rows_of(ROW, {**ROW, "summary": ROW["summary"] * 2}), COLS, tok, 64, 64, "fail")
    assert counts == {"answers_cut": 0, "prompts_cut": 0, "dropped_no_room": 0}
    labels = [t for t in data[0]["labels"] if t != -100]
    assert labels[-1] == tok.eos_token_id and tok.decode(labels[:-1]) == ROW["summary"]
    prompt = [t for t, lab in zip(data[0]["input_ids"], data[0]["labels"]) if lab == -100]
    assert prompt == tok(chat_prompt(tok, ROW["content"]), add_special_tokens=False)["input_ids"]
    batch = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)([data[0], data[1]])
    short = len(data[0]["input_ids"])
    row = batch["labels"][0]  # padded on the left, as GLM-4's tokenizer pads
    assert row[-1] == tok.eos_token_id and (row[: row.shape[0] - short] == -100).all()


def test_long_summaries_are_cut_and_counted_long_contents_cut_no_room_named(tiny):
    _, tok = tiny
    long_summary = {**ROW, "summary": ROW["summary"] * 30}
    long_content = {**ROW, "content": "*".join(["颜色#蓝色"] * 60)}
    data, counts = tokenize_chat(rows_of(long_summary, long_content), COLS, tok, 40, 32, "fail")
    assert counts["answers_cut"] == 1 and counts["prompts_cut"] == 1
    assert sum(t != -100 for t in data[0]["labels"]) == 33  # 32 summary tokens and the eos
    assert sum(t == -100 for t in data[1]["labels"]) <= 40
    with pytest.raises(LabError, match="row 0: the chat prompt alone exceeds max_input_length=3"):
        tokenize_chat(rows_of(ROW), COLS, tok, 3, 32, "fail")
    assert tokenize_chat(rows_of(ROW), COLS, tok, 3, 32, "drop")[1]["dropped_no_room"] == 1


def test_an_answer_cut_inside_a_rare_character_ends_on_a_whole_one(tiny):
    """Byte-level BPE (GLM-4's scheme) writes a character it never saw in training as its 3 UTF-8
    bytes, 3 tokens. Cutting such an answer at max_output_length must not leave part of a character:
    decoded and tokenized again, the part became U+FFFD (3 more tokens) and the target ended in '\ufffd',
    longer than the limit. The cut is on token ids, moved back to the last whole character."""
    _, tok = tiny
    rare = "龘龘齉齉爩"  # none in the tiny tokenizer's training texts: 2-3 byte tokens each
    ids = tok(rare, add_special_tokens=False)["input_ids"]
    inside = [n for n in range(1, len(ids)) if tok.decode(ids[:n]).endswith("\ufffd")]
    assert len(ids) > len(rare) and inside  # cuts that fall inside a character exist
    for max_output in range(1, len(ids)):
        data, counts = tokenize_chat(rows_of({**ROW, "summary": rare}), COLS, tok, 64, max_output, "fail")
        target = [t for t in data[0]["labels"] if t != -100]
        assert target[-1] == tok.eos_token_id and counts["answers_cut"] == 1
        kept = target[:-1]
        assert len(kept) <= max_output and kept == ids[: len(kept)], (max_output, kept)  # the answer's own ids
        assert "\ufffd" not in tok.decode(kept) and rare.startswith(tok.decode(kept))
        assert all(n in inside for n in range(len(kept) + 1, max_output + 1))  # the last whole character
    # a prompt cut inside a rare character is cut back to a whole one too
    for max_input in range(8, 22):
        data, counts = tokenize_chat(rows_of({"content": rare * 4, "summary": "好"}), COLS, tok, max_input, 8, "fail")
        prompt = [t for t, lab in zip(data[0]["input_ids"], data[0]["labels"]) if lab == -100]
        assert counts["prompts_cut"] == 1 and len(prompt) <= max_input and "\ufffd" not in tok.decode(prompt)


def test_a_tokenizer_without_chat_template_is_named(tiny):
    _, tok = tiny
    bare = type(tok).from_pretrained(tok.name_or_path)
    bare.chat_template = None
    with pytest.raises(LabError, match="has no chat template"):
        chat_prompt(bare, ROW["content"])


def test_empty_content_or_summary_is_named_or_dropped(tmp_path):
    from adgen import load_adgen

    cfg = load_profile(LAB, "smoke")[0]["data"]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [ROW, {**ROW, "summary": ""}, ROW]))
    val = tmp_path / "validation.jsonl"
    val.write_text(json.dumps(ROW, ensure_ascii=False) + "\n")
    cfg = {**cfg, "files": {"train": str(train), "validation": str(val)}}
    with pytest.raises(LabError, match=r"train.jsonl: column 'summary' is empty at line 2\."):
        load_adgen(cfg, tmp_path)
    dsd, dropped = load_adgen({**cfg, "bad_text": "drop"}, tmp_path)
    assert len(dsd["train"]) == 2 and dropped == {"train": {"summary": 1}}


def test_before_is_exactly_the_base_model_and_after_differs(tiny, tmp_path):
    """The course's "before" ran on a base model PeftModel.from_pretrained had already changed in place;
    here "before" is the reloaded model with the adapter disabled: it must equal a fresh base model."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    from labkit.lab.llm.generation import generate
    from labkit.lab.llm.loading import load_causal_lm

    path, tok = tiny
    quant = load_profile(LAB, "smoke")[0]["model"]["quantization"]
    tuned = get_peft_model(
        load_causal_lm(str(path), quant, "cpu", "sdpa"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a "trained" adapter
    tuned.save_pretrained(tmp_path / "adapter")
    prompts = [chat_prompt(tok, ROW["content"])]
    fresh = generate(load_causal_lm(str(path), quant, "cpu", "sdpa"), tok, prompts, 12, prompt_special_tokens=False)
    base = load_causal_lm(str(path), quant, "cpu", "sdpa")
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    with reloaded.disable_adapter():
        before = generate(reloaded, tok, prompts, 12, prompt_special_tokens=False)
    after = generate(reloaded, tok, prompts, 12, prompt_special_tokens=False)
    assert before == fresh and after != before


def test_full_profile_counts_match_glm_4_9b():
    """GLM-4-9B (Transformers' GlmConfig defaults are its config.json): 40 layers, hidden 4096, 2 kv
    heads of 128. LoRA r=4 on q (4096->4096), k and v (4096->256)."""
    from transformers import GlmConfig

    c = GlmConfig()
    lora = load_profile(LAB, "full")[0]["lora"]
    kv = c.num_key_value_heads * c.head_dim
    count = c.num_hidden_layers * lora["r"] * ((c.hidden_size * 2) + 2 * (c.hidden_size + kv))
    expected = load_expected(LAB.expected_path("full"))["metrics"]
    assert count == expected["lora.trainable_params"]["equals"] == 2_703_360
    assert c.num_hidden_layers * 6 == expected["quantization.linear4bit_modules"]["equals"] == 240


def test_every_decoder_linear_is_4bit_and_a_plain_load_is_caught(tiny):
    from transformers import AutoModelForCausalLM

    from labkit.lab.llm.checks import quantization_counts
    from labkit.lab.llm.loading import load_causal_lm

    path, _ = tiny
    quant = load_profile(LAB, "smoke")[0]["model"]["quantization"]
    assert quantization_counts(load_causal_lm(str(path), quant, "cpu", "sdpa")) == {
        "linear4bit_modules": 12,
        "linear_modules_not_quantized": 0,
    }
    plain = quantization_counts(AutoModelForCausalLM.from_pretrained(path))  # loaded without quantization
    assert plain == {"linear4bit_modules": 0, "linear_modules_not_quantized": 12}  # verification would fail


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_expected_data_fingerprint_is_the_profiles_data(profile):
    from labkit.lab.data import hub_or_files_fingerprint

    cfg = load_profile(LAB, profile)[0]["data"]
    expected = load_expected(LAB.expected_path(profile))["data"]["fingerprint"]
    assert hub_or_files_fingerprint(cfg, LAB.dir.parents[1], ("train", "validation")) == expected


class ChatGLM3LikeTokenizer:
    """The two methods of ChatGLM3's remote tokenizer the course's tokenize_func calls, with its ids:
    ``[gMASK]`` 64790, ``sop`` 64792, eos 2 (one id per character here)."""

    def encode(self, text, add_special_tokens=False):
        assert not add_special_tokens
        return [1000 + ord(c) % 5000 for c in text]

    def build_inputs_with_special_tokens(self, q_ids, a_ids):
        return [64790, 64792, *q_ids, *a_ids, 2]


def test_course_variant_tokenizes_as_the_course_prompt_masked_answer_and_eos_supervised():
    from course import ChatGLM3Model

    long = {"content": "类" * 20, "summary": "裙" * 30}
    data, counts = ChatGLM3Model().tokenize(rows_of(ROW, long), COLS, ChatGLM3LikeTokenizer(), 18, 25, "fail")
    ids, labels = data[0]["input_ids"], data[0]["labels"]
    q, a = len(ROW["content"]), len(ROW["summary"])
    assert ids[:2] == [64790, 64792] and ids[-1] == 2 and len(ids) == q + a + 3
    assert labels == [-100] * (q + 2) + ids[q + 2 :]  # the answer and eos are the targets
    # cut as the course: prompt to max_input - 2, answer to max_output - 1 (room for eos), counted
    assert len(data[1]["input_ids"]) == (18 - 2) + (25 - 1) + 3
    assert counts == {"answers_cut": 1, "prompts_cut": 1, "dropped_no_room": 0}


def test_course_variant_knows_which_transformers_runs_the_remote_code():
    from course import remote_code_runs_on

    assert remote_code_runs_on("4.41.2") and remote_code_runs_on("4.37.2")
    assert not remote_code_runs_on("4.42.0") and not remote_code_runs_on("4.45.2") and not remote_code_runs_on("5.24.0")
    lock = (LAB.dir / "requirements-course.txt").read_text()
    assert "\ntransformers==4.41.2 " in lock  # the version the expected course-smoke output checks


def test_course_variant_without_hub_or_gpu_says_what_it_needs(monkeypatch):
    from course import ChatGLM3Model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LabError, match=r"THUDM/chatglm3-6b@b098244: its remote code is not reachable and not cached"):
        ChatGLM3Model().tokenizer("THUDM/chatglm3-6b", "b098244")
    with pytest.raises(LabError, match="needs a CUDA GPU"):
        ChatGLM3Model().model("THUDM/chatglm3-6b", {}, "cpu", "sdpa", "b098244")
    for profile in ("course-smoke", "course-full"):
        cfg = load_profile(LAB, profile)[0]
        assert cfg["model"]["trust_remote_code"] and cfg["model"]["revision"] == "b098244"
        assert cfg["lora"]["target_modules"] == ["query_key_value"] and cfg["lora"]["r"] == 4


def run_npu_smoke(root, *overrides: str):
    """The npu variant's smoke profile (course chapter 16: bf16 LoRA) run as a script on this CPU."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, str(LAB.dir / "run.py"), "--profile", "npu-smoke", "--output-root", str(root)]
    cmd += [arg for o in overrides for arg in ("--set", o)]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return (root / LAB.name / "npu-smoke" / "latest").resolve()


def test_npu_smoke_path_trains_bf16_lora_verifies_and_a_broken_run_fails(tmp_path):
    """npu-smoke's path (nothing quantized: an NPU refuses bitsandbytes' 4-bit) passes its expected
    outputs here, and learning rate 0 fails them; its image's run: tests/test_ascend.py."""
    from labkit.verify import verify_run

    good = verify_run(run_npu_smoke(tmp_path), LAB.expected_path("npu-smoke"))
    assert all(c.passed for c in good) and not any(c.skipped for c in good), [c for c in good if not c.passed]
    metrics = json.loads((tmp_path / LAB.name / "npu-smoke" / "latest" / "metrics.json").read_text())
    assert metrics["quantization"] == {"linear4bit_modules": 0, "linear_modules_not_quantized": 12}
    broken = verify_run(run_npu_smoke(tmp_path, *LAB.broken_override.split()), LAB.expected_path("npu-smoke"))
    assert set(LAB.broken_fails) <= {c.name for c in broken if not c.passed}


def test_npu_profiles_refuse_4bit_on_an_npu_before_loading():
    from labkit.lab.llm.checks import check_device_support

    cfg = load_profile(LAB, "npu-full")[0]
    check_device_support(cfg["model"]["quantization"], False, "npu")  # bf16 LoRA passes
    with pytest.raises(LabError, match="load_in_4bit on an Ascend NPU"):
        check_device_support(load_profile(LAB, "full")[0]["model"]["quantization"], False, "npu")


def test_the_readmes_your_own_data_command_runs_as_written(tmp_path):
    """The README's own-data command, as written, through make (RUNTIME=native): other rows verify,
    with the checks that count the bundled rows SKIPped. Our rows: the lab's second dataset
    (data/foreign, written by hand: shoes, bags and accessories)."""
    import os
    import shutil
    import subprocess

    repo = LAB.dir.parents[1]
    if not shutil.which("make") or not (repo / ".venv" / "bin" / "invoke").exists():
        pytest.skip("needs make and the tooling virtualenv .venv (`make venv`)")
    text = (LAB.dir / "README.md").read_text(encoding="utf-8")
    block = text.split("## Run it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [" ".join(line.split("#")[0].split()) for line in block.splitlines() if "data.files." in line]
    assert commands == [
        'make lab-chatglm-qlora PROFILE=smoke SET="data.files.train=my_train.jsonl data.files.validation=my_val.jsonl"'
    ]
    shutil.copy(LAB.dir / "data" / "foreign" / "train.jsonl", tmp_path / "my_train.jsonl")
    shutil.copy(LAB.dir / "data" / "foreign" / "validation.jsonl", tmp_path / "my_val.jsonl")
    command = commands[0].replace("my_train.jsonl", str(tmp_path / "my_train.jsonl"))
    command = command.replace("my_val.jsonl", str(tmp_path / "my_val.jsonl"))
    env = {k: v for k, v in os.environ.items() if k not in ("PROFILE", "RUNTIME", "SET", "VARIANT")}
    env.update(RUNTIME="native", OUTPUT_ROOT=str(tmp_path / "outputs"))
    done = subprocess.run(
        ["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "=> PASS" in out and "Traceback" not in out, out[-3000:]
    assert "data.train_examples" in out and "skipped: the run used other data" in out
