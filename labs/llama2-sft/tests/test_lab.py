"""Unit tests of the llama2-sft lab: the template, the exact loss mask (and the SentencePiece trap it
avoids), a learned </s>, truncation that never cuts the completion, bad rows, packing, parameter counts."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys

import pytest
import torch

from labkit.config import REPO_ROOT, get_lab, load_profile
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


# --- The README's "your own data" commands, run as written ------------------------------------------
# Each SET line is resolved the way `make lab-llama2-sft SET=...` resolves it (labkit.host.plan and
# labkit.host.runs, natively, on a host without an accelerator), and the lab's data step runs on what
# its script would receive, with the files where the command names them (relative paths are read
# from the repository root: here a temporary folder stands in for it); the files command also runs
# whole, through make (the last test). tests/test_labs.py's foreign-data test runs the smoke on the
# same rows (lab.yaml foreign_data).

FOREIGN = LAB.dir / "data" / "foreign"
OWN_FILES = 'SET="data.files.train=my_train.jsonl data.files.test=my_test.jsonl"'


def script_settings(command: str, tmp_path, monkeypatch) -> tuple[str, list[str]]:
    """``(profile, --set values)`` the lab's script receives for ``make lab-llama2-sft <command>``: the
    run plan and ``labkit.host.runs.run`` as `make` calls them; the script is captured, not started."""
    from labkit.host import runs
    from labkit.host.plan import resolve
    from labkit.host.probe import Accelerators

    make_vars = dict(word.split("=", 1) for word in shlex.split(command))
    plan = resolve(LAB, make_vars.get("PROFILE", "auto"), "native", make_vars.get("SET", ""), host=Accelerators())
    started = []
    monkeypatch.setattr(runs, "ensure_env", lambda lab, variant=None, flavor=None: sys.executable)
    monkeypatch.setattr(runs, "stream", lambda cmd, env=None: started.append(cmd) or (0, ""))
    assert runs.run(plan, tmp_path / "outputs") == (0, "")
    args = started[0][2:]
    return args[args.index("--profile") + 1], [args[i + 1] for i, a in enumerate(args) if a == "--set"]


def test_readme_gives_these_own_data_commands():
    """The commands the tests below run; a README that gives others must bring their tests."""
    readme = (LAB.dir / "README.md").read_text(encoding="utf-8")
    section = re.split(r"\n#+ ", readme.split("\n## Your own data\n")[1])[0]
    assert re.findall(r"`([^`]*SET=[^`]*)`", section) == [OWN_FILES, "SET=data.bad_text=drop"]


def test_readme_own_files_command_trains_and_tests_on_those_rows(tmp_path, monkeypatch):
    import make_foreign_data
    from transformers import AutoTokenizer

    from labkit.lab.data import hub_or_files_fingerprint
    from labkit.lab.tiny import build_tiny_llama

    from run import load_dolly, tokenized

    shutil.copy(FOREIGN / "train.jsonl", tmp_path / "my_train.jsonl")
    shutil.copy(FOREIGN / "test.jsonl", tmp_path / "my_test.jsonl")
    profile, settings = script_settings(OWN_FILES, tmp_path, monkeypatch)
    assert profile == "smoke" and settings == ["data.files.train=my_train.jsonl", "data.files.test=my_test.jsonl"]
    cfg = load_profile(LAB, profile, settings)[0]
    dsd, dropped = load_dolly(cfg["data"], tmp_path)
    assert dropped == {} and len(dsd["train"]) == 120 and len(dsd["test"]) == 12
    assert sorted(set(dsd["train"]["category"])) == sorted(make_foreign_data.TRAIN)  # six of the eight
    assert dsd["train"]["category"].count("open_qa") == 34
    own = hub_or_files_fingerprint(cfg["data"], tmp_path, ("train", "test"))
    foreign = load_profile(LAB, "smoke", shlex.split(LAB.meta["foreign_data"]))[0]["data"]
    assert own == hub_or_files_fingerprint(foreign, REPO_ROOT, ("train", "test"))  # same rows, other place
    assert own != load_expected(LAB.expected_path("smoke"))["data"]["fingerprint"]
    # The run's tokenizer: the tiny Llama's, trained on these rows (run.py); the 8 long stories are cut.
    task = cfg["task"]
    texts = [prompt_text(r, task) + completion_of(r, task) for split in dsd.values() for r in split]
    tok = AutoTokenizer.from_pretrained(build_tiny_llama(tmp_path / "tiny", texts, seed=42, **cfg["model"]["tiny"]))
    data, lengths = tokenized(dsd["train"], task, tok, cfg["training"]["max_length"], "fail")
    long_stories = sum(len(r["response"]) > 1000 for r in dsd["train"])
    assert len(data) == 120 and lengths == {"inputs_cut": long_stories, "dropped_too_long": 0} and long_stories == 8
    assert max(len(ids) for ids in data["input_ids"]) <= cfg["training"]["max_length"]


def test_readme_bad_text_command_drops_and_counts_bad_rows(tmp_path, monkeypatch):
    from run import load_dolly

    rows = [json.loads(line) for line in (FOREIGN / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    rows[3]["response"], rows[7]["category"] = "", "poetry"
    write_rows(tmp_path / "my_train.jsonl", rows)
    shutil.copy(FOREIGN / "test.jsonl", tmp_path / "my_test.jsonl")
    profile, settings = script_settings(OWN_FILES, tmp_path, monkeypatch)
    with pytest.raises(LabError, match=r"my_train.jsonl: column 'response' is empty at line 4\..*data.bad_text=drop"):
        load_dolly(load_profile(LAB, profile, settings)[0]["data"], tmp_path)
    both = OWN_FILES[:-1] + ' data.bad_text=drop"'  # the README's two settings in one SET
    profile, settings = script_settings(both, tmp_path, monkeypatch)
    assert settings[-1] == "data.bad_text=drop"
    dsd, dropped = load_dolly(load_profile(LAB, profile, settings)[0]["data"], tmp_path)
    assert dropped == {"train": {"response": 1, "category": 1}} and len(dsd["train"]) == 118


def test_readme_own_files_command_runs_through_make_and_verifies(tmp_path):
    """The README's own-data command through make (PROFILE=smoke, natively), the file names replaced
    by copies of the foreign rows: the run verifies, the checks tied to the bundled rows SKIPped."""
    import os
    import subprocess

    if not shutil.which("make") or not (REPO_ROOT / ".venv" / "bin" / "invoke").exists():
        pytest.skip("needs make and the tooling virtualenv .venv (`make venv`)")
    shutil.copy(FOREIGN / "train.jsonl", tmp_path / "my_train.jsonl")
    shutil.copy(FOREIGN / "test.jsonl", tmp_path / "my_test.jsonl")
    command = f"make lab-llama2-sft {OWN_FILES}"
    for name in ("my_train.jsonl", "my_test.jsonl"):
        command = command.replace(name, str(tmp_path / name))
    env = {k: v for k, v in os.environ.items() if k not in ("PROFILE", "RUNTIME", "SET", "VARIANT")}
    env.update(PROFILE="smoke", RUNTIME="native", OUTPUT_ROOT=str(tmp_path / "outputs"))
    done = subprocess.run(
        ["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "=> PASS (8 skipped)" in out and "Traceback" not in out, out[-3000:]
    assert "data: 120 train / 12 held-out rows" in out
