"""Unit tests of the moe lab: the by-hand MoE pieces against hand-computed values and against
Transformers' own blocks, the router measures, the aux-loss logging, QLoRA on an MoE, the data, and
every bad input the issue names (top-k above the experts, capacity factor <= 0, LoRA that misses the
experts, an aux loss asked of a model without router logits)."""

from __future__ import annotations

import json
import math
import re
import shlex

import pytest
import torch

from labkit.config import REPO_ROOT, get_lab, load_profile
from labkit.errors import LabError
from labkit.verify import load_expected

from corpus import data_fingerprint, load_texts, read_paragraphs, to_blocks
from routing import (
    RouterTally,
    check_aux_loss_support,
    check_lora_targets,
    expert_parameters,
    moe_config,
    parameter_counts,
)
from sparse_moe import (
    SparseMoE,
    capacity_route,
    expert_capacity,
    from_library_block,
    load_balancing_loss,
    noisy_top_k_gating,
    to_mixtral_block,
)

LAB = get_lab("moe")
SMOKE = load_profile(LAB, "smoke")[0]
MOE = SMOKE["moe"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The smoke profile's tiny GraniteMoe, built on the bundled text."""
    from transformers import AutoTokenizer

    from labkit.lab.tiny import build_tiny_granitemoe

    texts, _ = load_texts(SMOKE["data"], REPO_ROOT)
    path = build_tiny_granitemoe(
        tmp_path_factory.mktemp("tiny"), texts["train"] + texts["test"], seed=42, **SMOKE["model"]["tiny"]
    )
    return path, AutoTokenizer.from_pretrained(path)


def load_tiny(path, **kwargs):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, output_router_logits=True, router_aux_loss_coef=0.01, **kwargs)


# --- part 1, by hand ---------------------------------------------------------------------------------


def test_top_k_gating_by_hand():
    """logits (1, 0, 2), k = 2: expert 1 is cut (gate exactly 0); softmax over (1, 2) for the others."""
    x = torch.tensor([[1.0, 0.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    g = noisy_top_k_gating(x, w, k=2)
    e1, e2 = math.e, math.e**2
    assert g.gates.tolist()[0] == pytest.approx([e1 / (e1 + e2), 0.0, e2 / (e1 + e2)])
    assert g.top_k_index.tolist() == [[2, 0]]
    assert g.gates[0, 1].item() == 0.0


def test_noise_changes_choices_and_keeps_exactly_k_gates():
    g = torch.Generator().manual_seed(0)
    x, w, noise = torch.randn(256, 16, generator=g), torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    clean = noisy_top_k_gating(x, w, 2)
    noisy = noisy_top_k_gating(x, w, 2, noise, generator=torch.Generator().manual_seed(1))
    assert ((noisy.gates > 0).sum(-1) == 2).all() and torch.allclose(noisy.gates.sum(-1), torch.ones(256))
    changed = (clean.top_k_index.sort(-1).values != noisy.top_k_index.sort(-1).values).any(-1).float().mean()
    assert 0.2 < changed < 0.9  # the noise explores, it does not replace the router
    again = noisy_top_k_gating(x, w, 2, noise, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.gates, noisy.gates)  # a seeded noise stream: the same choices every run


def test_capacity_switch_top1_drops_the_tokens_over_capacity():
    """4 tokens, 2 experts, capacity factor 1: capacity 2; three tokens want expert 0, the third is dropped."""
    r = capacity_route(torch.tensor([[0], [0], [0], [1]]), num_experts=2, capacity_factor=1.0)
    assert r.capacity == 2 and r.kept.squeeze(1).tolist() == [True, True, False, True]
    assert r.dropped_fraction == 0.25 and r.tokens_fully_dropped == 1 and r.assigned.tolist() == [3, 1]


def test_capacity_top2_serves_first_choices_before_second_choices():
    """GShard's priority: capacity ceil(0.5 x 4 x 2 / 2) = 2. Expert 0 takes tokens 0 and 1 (first
    choices), not token 2's first choice nor token 3's second; expert 1 takes token 3's first choice,
    then token 0's second."""
    r = capacity_route(torch.tensor([[0, 1], [0, 1], [0, 1], [1, 0]]), num_experts=2, capacity_factor=0.5)
    assert r.capacity == 2
    assert r.kept.tolist() == [[True, True], [True, False], [False, False], [True, False]]
    assert r.dropped_fraction == 0.5 and r.tokens_fully_dropped == 1
    assert expert_capacity(tokens=10, num_experts=4, top_k=2, capacity_factor=1.25) == 7  # ceil(6.25)


def test_dropped_tokens_skip_the_layer_entirely():
    torch.manual_seed(0)
    layer = SparseMoE(16, 32, 4, 1, capacity_factor=0.25, renormalize=False).eval()
    x = torch.randn(64, 16)
    out, _ = layer(x)
    dropped = ~layer.last_routing.kept.squeeze(1)
    assert dropped.sum() == 64 - 4 * 4  # capacity 4 per expert
    assert (out[dropped] == 0).all() and (out[~dropped] != 0).any(-1).all()


def test_switch_top1_needs_the_unnormalised_gate_for_the_router_to_learn():
    """With k = 1, renormalising the top-k probabilities makes every gate exactly 1: the router gets no
    gradient. Switch multiplies by the router probability p_i(x) instead (Switch Transformer sec. 2.1)."""
    grads = {}
    for renormalize in (True, False):
        torch.manual_seed(0)
        layer = SparseMoE(16, 32, 4, 1, renormalize=renormalize)
        out, _ = layer(torch.randn(32, 16))
        out.square().sum().backward()
        grads[renormalize] = layer.router.grad.abs().sum().item()
    assert grads[True] == 0.0 and grads[False] > 1e-6


def test_aux_loss_by_hand_equals_the_library_and_its_bounds():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    g = torch.Generator().manual_seed(0)
    layers = tuple(torch.randn(24, 8, generator=g) for _ in range(3))
    mask = torch.ones(2, 12)
    mask[1, 9:] = 0
    for m in (None, mask):
        ours = load_balancing_loss(layers, 2, m)
        assert ours.item() == pytest.approx(load_balancing_loss_func(layers, 8, 2, m).item(), abs=1e-6)
    collapsed = torch.full((24, 8), -30.0)
    collapsed[:, :2] = 0.0  # every token certain of experts 0 and 1
    assert load_balancing_loss([collapsed], 2).item() == pytest.approx(8.0, rel=1e-5)  # = E
    uniform_f = torch.eye(8).repeat(3, 1) * 1e-4  # each expert first choice of 3 of 24 tokens, P nearly uniform
    assert load_balancing_loss([uniform_f], 1).item() == pytest.approx(1.0, rel=1e-3)  # = k


def test_by_hand_layer_equals_mixtral_block_with_the_same_weights():
    torch.manual_seed(1)
    layer = SparseMoE(32, 64, 8, 2).eval()
    block = to_mixtral_block(layer)
    assert tuple(block.experts.gate_up_proj.shape) == (8, 128, 32)  # (E, 2I, H)
    assert tuple(block.experts.down_proj.shape) == (8, 32, 64)  # (E, H, I)
    x = torch.randn(3, 10, 32)
    with torch.no_grad():
        ours, logits = layer(x)
        theirs = block(x.clone())
    assert (ours - theirs).abs().max() < 1e-6
    assert torch.equal(logits, block.gate(x.reshape(-1, 32))[0])
    back = from_library_block(block, 2)  # and back: the unpacked weights are the same tensors
    assert torch.equal(back.w_gate, layer.w_gate) and torch.equal(back.w_up, layer.w_up)


def test_by_hand_layer_equals_the_models_own_blocks(tiny):
    """The real model's GraniteMoeMoE (grouped_mm experts) against the by-hand loop with its weights,
    on each layer's real input; and the model's aux loss against ours on its router logits."""
    from run import compare_with_model_blocks

    path, tok = tiny
    model = load_tiny(path)
    ids = tok(["The old sailor on the quay watches the tide."] * 2, return_tensors="pt")["input_ids"]
    result = compare_with_model_blocks(model, ids, 2)
    assert result["library_block"] == "GraniteMoeMoE" and result["layers"] == 2
    assert result["output_max_abs_diff"] < 1e-5 and result["router_logits_max_abs_diff"] < 1e-5
    assert result["aux_loss_abs_diff"] < 1e-6 and 1.9 < result["aux_loss"] < 2.5  # about k = 2 for a random router


# --- part 2: the model, its parameters, its routers ---------------------------------------------------


def test_granite_1b_a400m_total_and_active_parameters():
    """Granite-3.0-1B-A400M (its config.json, bench.ARCHS): 1.33 B parameters, 0.43 B active ("A400M")."""
    from transformers import GraniteMoeConfig

    from bench import ARCHS

    counts = parameter_counts(GraniteMoeConfig(tie_word_embeddings=True, **ARCHS["full"]))
    experts = 24 * 32 * (2 * 512 * 1024 + 1024 * 512)
    assert counts["experts"] == experts == 1_207_959_552
    attention = 24 * (1024 * 1024 * 2 + 1024 * 512 * 2)  # q, o: 16 heads x 64; k, v: 8 heads x 64
    routers, norms, embeddings = 24 * 32 * 1024, 24 * 2 * 1024 + 1024, 49155 * 1024  # lm_head tied
    assert counts["total"] == experts + attention + routers + norms + embeddings == 1_334_628_352
    assert counts["active"] == counts["total"] - experts * 3 // 4 == 428_658_688
    assert (counts["num_experts"], counts["top_k"], counts["layers"]) == (32, 8, 24)


def test_expert_parameters_are_the_packed_3d_tensors(tiny):
    model = load_tiny(tiny[0])
    experts = expert_parameters(model)
    assert experts == {
        f"model.layers.{i}.block_sparse_moe.experts.{name}": shape
        for i in range(2)
        for name, shape in (("gate_up_proj", (8, 64, 64)), ("down_proj", (8, 64, 32)))
    }
    assert moe_config(model.config) == (8, 2)


def test_router_tally_on_a_collapsed_and_an_even_router():
    tally = RouterTally(2, 4, 1, capacity_factor=1.0)
    collapsed = torch.tensor([[5.0, 0, 0, 0]]).repeat(8, 1)
    even = torch.eye(4).repeat(2, 1) * 10
    tally.add((collapsed, even))
    s = tally.summary()
    assert s["tokens_per_expert"] == [[8, 0, 0, 0], [2, 2, 2, 2]]
    assert s["load_cv"] == [pytest.approx(math.sqrt(3)), 0.0] and s["load_cv_collapsed"] == pytest.approx(math.sqrt(3))
    assert s["dropped_fraction"] == [0.75, 0.0]  # capacity ceil(8 / 4) = 2 of the 8 tokens kept
    assert s["max_expert_share"] == 1.0
    uniform = RouterTally(1, 4, 1, 1.0)
    uniform.add((torch.zeros(5, 4),))
    assert uniform.summary()["entropy_nats"] == [pytest.approx(math.log(4))]


def test_trainer_logs_the_aux_loss_and_the_cross_entropy_apart(tiny, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments, default_data_collator

    from labkit.lab.metrics import JsonlLogger, read_jsonl

    from routing import AuxLossTrainer

    path, tok = tiny
    texts, _ = load_texts(SMOKE["data"], REPO_ROOT)
    blocks = to_blocks(texts["train"], tok, 32, 16, "train")
    model = get_peft_model(load_tiny(path), LoraConfig(**SMOKE["lora"]))
    rows = Dataset.from_dict({"input_ids": blocks.tolist(), "labels": blocks.tolist()})
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        logging_steps=2,
        report_to="none",
        use_cpu=True,
    )
    trainer = AuxLossTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=default_data_collator,
        callbacks=[JsonlLogger(tmp_path / "log.jsonl")],
        aux_coef=0.01,
    )
    trainer.train()
    logged = [r for r in read_jsonl(tmp_path / "log.jsonl") if "aux_loss" in r]
    assert [r["step"] for r in logged] == [2, 4]
    for r in logged:
        assert 1.9 < r["aux_loss"] < 2.5 and r["ce_loss"] + 0.01 * r["aux_loss"] == pytest.approx(r["loss"], abs=2e-3)


def test_lora_reaches_each_expert_with_its_own_rank_r_adapter(tiny):
    from peft import LoraConfig, get_peft_model

    model = load_tiny(tiny[0])
    assert check_lora_targets(model, SMOKE["lora"])["expert_parameters"] == 4
    model = get_peft_model(model, LoraConfig(**SMOKE["lora"]))
    r, experts = SMOKE["lora"]["r"], 8
    on_experts = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".experts." in n)
    # per layer: gate_up (in 64, out 64) and down (in 32, out 64), each r x E rows in A and columns in B
    assert on_experts == 2 * (r * experts * (64 + 64) + r * experts * (32 + 64))
    out = model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]]))
    out.loss.backward()
    expert_grads = [p.grad for n, p in model.named_parameters() if ".experts." in n and "lora_B" in n]
    assert expert_grads and all(g is not None and g.abs().sum() > 0 for g in expert_grads)


def test_qlora_quantizes_the_attention_and_leaves_the_3d_experts_in_full_precision(tiny):
    """bitsandbytes replaces nn.Linear layers only: the 3-D expert parameters (most of an MoE's weights)
    stay in the compute dtype, and LoRA on them still trains."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model

    from labkit.lab.llm.loading import load_causal_lm, prepare_for_training

    quantization = dict(SMOKE["model"]["quantization"], load_in_4bit=True)
    model = load_causal_lm(
        str(tiny[0]), quantization, "cpu", "sdpa", output_router_logits=True, router_aux_loss_coef=0.01
    )
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 2 * 4  # q, k, v, o per layer
    assert all(p.dtype == torch.float32 for p in dict(model.named_parameters()).values() if p.dim() == 3)
    model = get_peft_model(prepare_for_training(model, quantization), LoraConfig(**SMOKE["lora"]))
    out = model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]]))
    assert out.aux_loss is not None
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n)


# --- data ------------------------------------------------------------------------------------------


def test_bundled_and_foreign_texts_are_what_the_expected_file_counts():
    texts, left = load_texts(SMOKE["data"], REPO_ROOT)
    assert (len(texts["train"]), len(texts["test"])) == (240, 40) and left["dropped_rows"] == {}
    topics = [json.loads(line)["topic"] for line in (LAB.dir / "data/smoke/train.jsonl").read_text().splitlines()]
    assert {t: topics.count(t) for t in set(topics)} == {"weather": 60, "farm": 60, "sea": 60, "town": 60}
    foreign = load_profile(LAB, "smoke", shlex.split(LAB.meta["foreign_data"]))[0]["data"]
    texts, _ = load_texts(foreign, REPO_ROOT)
    assert (len(texts["train"]), len(texts["test"])) == (48, 10)
    assert data_fingerprint(foreign, REPO_ROOT) != load_expected(LAB.expected_path("smoke"))["data"]["fingerprint"]
    assert (
        data_fingerprint(SMOKE["data"], REPO_ROOT) == load_expected(LAB.expected_path("smoke"))["data"]["fingerprint"]
    )


def test_paragraphs_join_their_lines(tmp_path):
    (tmp_path / "t.txt").write_text("one\ntwo  three\n\n\n  four \n\n", encoding="utf-8")
    assert read_paragraphs(tmp_path / "t.txt") == ["one two three", "four"]


def test_empty_text_is_named_or_dropped(tmp_path):
    rows = [{"text": "A line of text."}, {"text": ""}, {"text": "Another line."}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "test.jsonl").write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
    cfg = dict(SMOKE["data"], files={"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl")})
    with pytest.raises(LabError, match=r"train.jsonl: column 'text' is empty at line 2\..*data.bad_text=drop"):
        load_texts(cfg, REPO_ROOT)
    texts, left = load_texts(dict(cfg, bad_text="drop"), REPO_ROOT)
    assert texts["train"] == ["A line of text.", "Another line."] and left["dropped_rows"] == {"train": 1}
    with pytest.raises(LabError, match="set data.text_column"):
        load_texts(dict(cfg, text_column="body"), REPO_ROOT)


def test_too_little_text_for_one_block_is_named(tiny):
    blocks = to_blocks(["a b c d e f g h"] * 4, tiny[1], 8, None, "data train")
    assert blocks.shape[1] == 8 and blocks.dtype == torch.long
    with pytest.raises(
        LabError, match=r"data test: 1 texts give \d+ tokens, less than one block of data.block_size=512"
    ):
        to_blocks(["short"], tiny[1], 512, None, "data test")


# --- bad input: each a clear LabError naming the setting -------------------------------------------------


def run_main(overrides: list[str], tmp_path, capsys) -> tuple[int, str]:
    from run import main, run

    code = main(
        "moe",
        run,
        ["--profile", "smoke", "--output-root", str(tmp_path), *[a for o in overrides for a in ("--set", o)]],
    )
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("part1.num_experts_per_tok=9", r"part1: num_experts_per_tok=9 with 8 experts.*at most 8"),
        ("model.tiny.num_experts_per_tok=12", r"model.tiny: num_experts_per_tok=12 with 8 experts"),
        ("moe.capacity_factor=0", r"moe.capacity_factor: capacity_factor=0\.0; it must be a number > 0"),
        ("moe.capacity_factor=-1.25", r"capacity_factor=-1.25; it must be a number > 0"),
        ("part1.capacity_factors=[1.0,0]", r"part1.capacity_factors: capacity_factor=0;"),
    ],
)
def test_bad_routing_settings_stop_before_anything_loads(override, message, tmp_path, capsys):
    code, err = run_main([override], tmp_path, capsys)
    assert code == 2 and re.search(message, err), err
    assert not list(tmp_path.rglob("tiny-model"))  # refused at step 0, before the model is built


def test_a_split_too_short_for_one_block_names_its_file(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Too short to fill a block.\n", encoding="utf-8")
    code, err = run_main([f"data.files.test={short}"], tmp_path, capsys)
    assert code == 2 and f"data.files.test ({short}): 1 texts give" in err and "less than one block" in err, err


def test_top_k_above_the_checkpoints_experts_is_refused(tmp_path, capsys):
    code, err = run_main(["model.num_experts_per_tok=9"], tmp_path, capsys)
    assert (
        code == 2 and "model.num_experts_per_tok" in err and "has 8 experts" in err and "num_experts_per_tok=9" in err
    )


def test_lora_that_misses_the_experts_names_the_expert_parameters(tiny):
    model = load_tiny(tiny[0])
    have = (
        "model.layers.*.block_sparse_moe.experts.down_proj (8, 64, 32); "
        "model.layers.*.block_sparse_moe.experts.gate_up_proj (8, 64, 64)"
    )
    fix = "lora.target_parameters=[block_sparse_moe.experts.down_proj,block_sparse_moe.experts.gate_up_proj]"
    # Mixtral's layout (mlp.experts), not Granite's (block_sparse_moe.experts):
    mixtral_names = dict(SMOKE["lora"], target_parameters=["mlp.experts.gate_up_proj"])
    with pytest.raises(LabError, match="matches no parameter") as info:
        check_lora_targets(model, mixtral_names)
    assert have in str(info.value) and fix in str(info.value)
    router_only = dict(SMOKE["lora"], target_parameters=["block_sparse_moe.router.weight"])
    with pytest.raises(LabError, match="reaches none of the experts") as info:
        check_lora_targets(model, router_only)
    assert have in str(info.value)
    with pytest.raises(LabError, match="target_parameters is empty"):
        check_lora_targets(model, dict(SMOKE["lora"], target_parameters=[]))
    with pytest.raises(LabError, match="lora_dropout=0.1.*set lora.lora_dropout=0"):
        check_lora_targets(model, dict(SMOKE["lora"], lora_dropout=0.1))


def test_lora_that_misses_the_experts_stops_the_run(tmp_path, capsys):
    code, err = run_main(["lora.target_parameters=[mlp.experts.gate_up_proj]"], tmp_path, capsys)
    assert (
        code == 2 and "matches no parameter of GraniteMoeForCausalLM" in err and "experts.down_proj (8, 64, 32)" in err
    )


def test_aux_loss_of_a_model_without_router_logits_is_refused(tmp_path, capsys):
    """A dense Llama has no router: asking it for an aux loss stops at the config, before its weights load."""
    from transformers import LlamaConfig

    from labkit.lab.tiny import build_tiny_llama

    with pytest.raises(LabError, match="LlamaConfig.*has no router logits.*moe.router_aux_loss_coef=0"):
        check_aux_loss_support(LlamaConfig(), MOE)
    with pytest.raises(LabError, match="router_aux_loss_coef=-0.1"):
        check_aux_loss_support(LlamaConfig(), dict(MOE, router_aux_loss_coef=-0.1))
    llama = build_tiny_llama(tmp_path / "llama", ["a few words of text"] * 8, seed=0)
    code, err = run_main([f"model.name_or_path={llama}", "model.build_tiny=false"], tmp_path / "out", capsys)
    assert code == 2 and "LlamaConfig (model_type 'llama')" in err and "has no router logits" in err
    code, err = run_main(
        [
            f"model.name_or_path={llama}",
            "model.build_tiny=false",
            "router_aux_loss_coef=0",
            "output_router_logits=false",
        ],
        tmp_path / "out",
        capsys,
    )
    assert code == 2 and "has no experts" in err  # no aux loss asked, but a dense model has nothing to route


def test_aux_loss_without_router_logits_output_is_refused():
    from transformers import GraniteMoeConfig

    with pytest.raises(LabError, match="set moe.output_router_logits=true"):
        check_aux_loss_support(GraniteMoeConfig(), dict(MOE, output_router_logits=False))
    check_aux_loss_support(GraniteMoeConfig(), dict(MOE, output_router_logits=False, router_aux_loss_coef=0))


# --- the expected file and the profiles ----------------------------------------------------------------


def test_expected_file_bounds_part1_by_the_profiles_tolerance():
    metrics = load_expected(LAB.expected_path("smoke"))["metrics"]
    for name in ("part1.mixtral_block.output_max_abs_diff", "part1.model_blocks.output_max_abs_diff"):
        assert metrics[name]["max"] == SMOKE["part1"]["tolerance"]


def test_profiles_tune_the_experts_and_the_routers():
    for profile in ("smoke", "full"):
        lora = load_profile(LAB, profile)[0]["lora"]
        assert lora["lora_dropout"] == 0.0 and {"q_proj", "k_proj", "v_proj", "o_proj"} == set(lora["target_modules"])
        assert {t.split(".")[-1] for t in lora["target_parameters"]} == {"gate_up_proj", "down_proj", "weight"}
    full = load_profile(LAB, "full")[0]
    assert (
        full["model"]["name_or_path"] == "ibm-granite/granite-3.0-1b-a400m-base"
        and full["moe"]["router_aux_loss_coef"] == 0.001
    )


def test_aux_coefficient_zero_unbalances_the_routers_and_fails_verification(tmp_path, capsys):
    """The MoE-specific broken pipeline: without the load-balancing loss (router_aux_loss_coef=0) the
    routers, trained through their LoRA, drift onto a few experts. The run completes and learns (its loss
    checks pass), but verification fails exactly the load-balance checks (measured: CV 0.54 vs 0.19,
    dropped fraction 0.155 vs 0.009 with the coefficient 0.01, which passes: tests/test_labs.py)."""
    from labkit.rundir import newest_completed_run
    from labkit.verify import format_table, verify_run

    code, _ = run_main(["router_aux_loss_coef=0"], tmp_path, capsys)
    assert code == 0
    run_dir = newest_completed_run(tmp_path, "moe", "smoke")[0]
    checks = verify_run(run_dir, LAB.expected_path("smoke"))
    print(format_table(checks))
    failed = {c.name for c in checks if not c.passed}
    balance = {"routing.after.load_cv_mean", "routing.after.dropped_fraction_mean"}
    pinned = {"eval.perplexity_after", "train.loss_after"}  # the seed-42 values, pinned to 1e-3: another run
    assert balance <= failed <= balance | pinned
    assert {"train.loss_drop_ratio", "eval.perplexity_ratio", "routing.after.entropy_nats_mean"}.isdisjoint(failed)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # CV 0.542 on the CPU the values were measured on, 0.433 on a Xeon with AVX-512 + AMX: far above the 0.35 check
    assert metrics["routing"]["after"]["load_cv_mean"] > 0.4 and metrics["train"]["loss_drop_ratio"] > 0.03


def test_ctrl_c_is_one_line_the_run_marked_failed_and_latest_kept(tmp_path, capsys):
    """Ctrl-C mid-run (KeyboardInterrupt): exit 130 and one line saying so, no traceback; the run's
    manifest says failed, and latest is not moved to it (labkit.lab.runner.main)."""
    from run import main

    def interrupted(ctx):
        raise KeyboardInterrupt

    code = main("moe", interrupted, ["--profile", "smoke", "--output-root", str(tmp_path)])
    err = capsys.readouterr().err
    (run_dir,) = (tmp_path / "moe" / "smoke").iterdir()
    assert code == 130 and err.strip() == (
        f"interrupted: {run_dir} is marked failed, latest still names the newest completed run"
    )
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] == "interrupted (Ctrl-C)"
    assert not (tmp_path / "moe" / "smoke" / "latest").exists()
