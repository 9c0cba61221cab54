"""Course chapter 12 lab: Mixture of Experts, built by hand, proved equal to Transformers, then fine-tuned.

Part 1 writes a sparse MoE layer step by step (sparse_moe.py): noisy top-k gating (Shazeer et al.
2017), top-1 routing with a capacity factor and dropped tokens (Switch Transformer, GShard), the
load-balancing auxiliary loss (Switch eqs. (4)-(6)) and top-2 routing as in Mixtral; then loads the
same weights into Transformers' ``MixtralSparseMoeBlock`` and into the real model's own blocks and
checks outputs, router logits and aux loss agree within ``part1.tolerance``.

Part 2 fine-tunes a real sparse MoE: ``ibm-granite/granite-3.0-1b-a400m-base`` (1.3 B parameters, 32
experts, top-8, 0.43 B active per token) with LoRA on the attention (``target_modules``) and on the
3-D expert parameters (PEFT ``target_parameters``), the router's aux loss on and logged, QLoRA as an
option (``SET=load_in_4bit=true``); it measures the routers before and after (tokens per expert per
layer, entropy, load CV, the dropped fraction a capacity-limited router would have), perplexity,
peak memory, tokens/s and active vs total parameters. The smoke profile runs every step on a tiny
GraniteMoe built here and bundled text, on a CPU.

    python labs/moe/run.py --profile smoke [--set learning_rate=0] [--set router_aux_loss_coef=0]

Outputs (``outputs/moe/<profile>/<UTC time>/``): ``metrics.json``, ``expert_load.png`` (tokens per
expert, per layer, before and after), ``aux_loss_curve.png``, ``loss_curve.png``,
``train_log.jsonl``, ``adapter/``, ``tensorboard/``, ``manifest.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this lab's modules
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # labkit, when run as a script
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoTokenizer, TrainingArguments, default_data_collator
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from labkit.errors import LabError
from labkit.lab.device import peak_memory_bytes
from labkit.lab.llm.checks import check_device_support, quantization_counts, quantized
from labkit.lab.llm.loading import load_causal_lm, prepare_for_training
from labkit.lab.llm.training import release
from labkit.lab.metrics import JsonlLogger, plot_loss, read_jsonl, training_summary
from labkit.lab.runner import RunContext, main
from labkit.lab.tiny import build_tiny_granitemoe
from labkit.rundir import remove_if_empty

from corpus import data_fingerprint, load_texts, to_blocks
from routing import (
    AuxLossTrainer,
    check_aux_loss_support,
    check_lora_targets,
    measure,
    moe_config,
    parameter_counts,
    plot_aux_loss,
    plot_expert_load,
)
from sparse_moe import (
    SparseMoE,
    capacity_route,
    check_capacity_factor,
    check_routing,
    from_library_block,
    load_balancing_loss,
    noisy_top_k_gating,
    to_mixtral_block,
)


def check_settings(cfg: dict, device: str) -> None:
    """Step 0: every setting the run can refuse, in one line each, before any data or weights load."""
    check_device_support(cfg["model"]["quantization"], cfg["training"]["bf16"], device)
    p1 = cfg["part1"]
    check_routing(p1["num_experts"], p1["num_experts_per_tok"], "part1")
    for factor in p1["capacity_factors"]:
        check_capacity_factor(factor, "part1.capacity_factors")
    check_capacity_factor(cfg["moe"]["capacity_factor"], "moe.capacity_factor")
    if p1["tokens"] < 4 or p1["tokens"] % 4:
        raise LabError(f"part1.tokens={p1['tokens']}: give a multiple of 4 (part 1 feeds 4 sequences of equal length)")
    if cfg["model"]["build_tiny"]:
        tiny = cfg["model"]["tiny"]
        check_routing(tiny["num_local_experts"], tiny["num_experts_per_tok"], "model.tiny")


@torch.no_grad()
def part1_by_hand(p1: dict, device: str, seed: int) -> dict:
    """Part 1: the by-hand layer (sparse_moe.py) on random tokens, then the same weights in
    Transformers' ``MixtralSparseMoeBlock``: outputs, router logits and aux loss compared."""
    g = torch.Generator().manual_seed(seed)
    hidden, experts, k = p1["hidden_size"], p1["num_experts"], p1["num_experts_per_tok"]
    x = torch.randn(p1["tokens"], hidden, generator=g).to(device)

    # 1a. Noisy top-k gating (Shazeer 2017 eqs. 3-5): exactly k non-zero gates per token, summing to 1;
    #     the noise (a learned softplus scale; here a fixed random one) changes some tokens' choices.
    w_gate = (torch.randn(experts, hidden, generator=g) * 0.5).to(device)
    w_noise = (torch.randn(experts, hidden, generator=g) * 0.5).to(device)
    clean = noisy_top_k_gating(x, w_gate, k)
    noisy = noisy_top_k_gating(x, w_gate, k, w_noise, generator=g)
    same = (clean.top_k_index.sort(-1).values == noisy.top_k_index.sort(-1).values).all(-1)
    gating = {
        "nonzero_gates_per_token": float((noisy.gates > 0).sum(-1).float().mean()),
        "gate_row_sum_max_error": float((noisy.gates.sum(-1) - 1).abs().max()),
        "noise_changed_choice_fraction": float(1 - same.float().mean()),
    }

    # 1b. Switch top-1 routing with an expert capacity: tokens over capacity are dropped.
    torch.manual_seed(seed)
    switch = SparseMoE(hidden, p1["intermediate_size"], experts, 1, renormalize=False).to(device).eval()
    _, logits = switch(x)
    top1 = logits.topk(1, dim=-1).indices.cpu()
    dropped = {
        f"cf_{round(f * 100):03d}": capacity_route(top1, experts, f).dropped_fraction for f in p1["capacity_factors"]
    }
    print(
        "1b. Switch top-1, dropped fraction by capacity factor: "
        + ", ".join(f"{f}: {d:.3f}" for f, d in zip(p1["capacity_factors"], dropped.values())),
        flush=True,
    )

    # 1c-d. Top-k (Mixtral's top-2) by hand vs Transformers' MixtralSparseMoeBlock with the same weights:
    #       the experts packed as 3-D gate_up_proj (E, 2I, H) and down_proj (E, H, I).
    torch.manual_seed(seed)
    layer = SparseMoE(hidden, p1["intermediate_size"], experts, k).to(device).eval()
    ours, our_logits = layer(x.reshape(4, -1, hidden))
    block = to_mixtral_block(layer)
    theirs = block(x.reshape(4, -1, hidden).clone())
    their_logits = block.gate(x)[0]
    our_aux = load_balancing_loss([our_logits], k)
    their_aux = load_balancing_loss_func((their_logits,), experts, k)
    compare = {
        "output_max_abs_diff": float((ours - theirs).abs().max()),
        "router_logits_max_abs_diff": float((our_logits - their_logits).abs().max()),
        "aux_loss": float(our_aux),
        "aux_loss_abs_diff": float((our_aux - their_aux).abs()),
        "library_block": type(block).__name__,
    }
    print(
        f"1d. by hand vs MixtralSparseMoeBlock: output {compare['output_max_abs_diff']:.2e}, router logits "
        f"{compare['router_logits_max_abs_diff']:.2e}, aux loss {compare['aux_loss_abs_diff']:.2e} "
        f"(tolerance {p1['tolerance']:g})",
        flush=True,
    )
    return {"gating": gating, "switch_dropped_fraction": dropped, "mixtral_block": compare}


@torch.no_grad()
def compare_with_model_blocks(model, probe: torch.Tensor, top_k: int) -> dict:
    """The real model's own sparse MoE blocks (every layer) against the by-hand layer holding their
    weights, on the hidden states each block receives for ``probe``; and the model's aux loss
    against :func:`sparse_moe.load_balancing_loss` of its router logits. Compared in float32."""
    blocks = [
        layer.block_sparse_moe if hasattr(layer, "block_sparse_moe") else layer.mlp for layer in model.model.layers
    ]
    inputs = {}
    hooks = [
        b.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].detach()))
        for i, b in enumerate(blocks)
    ]
    model.eval()
    out = model(input_ids=probe, output_router_logits=True, use_cache=False)
    for h in hooks:
        h.remove()
    out_diff, logit_diff = 0.0, 0.0
    for i, block in enumerate(blocks):
        x = inputs[i].float()
        ours, our_logits = from_library_block(block, top_k)(x)
        reference = _float_copy(block)
        theirs = reference(x)
        router = getattr(reference, "router", None) or reference.gate
        their_logits = router(x.reshape(-1, x.shape[-1]))[0]
        out_diff = max(out_diff, float((ours - theirs).abs().max()))
        logit_diff = max(logit_diff, float((our_logits - their_logits.float()).abs().max()))
    aux_diff = float((load_balancing_loss(out.router_logits, top_k) - out.aux_loss.float()).abs())
    return {
        "library_block": type(blocks[0]).__name__,
        "layers": len(blocks),
        "output_max_abs_diff": out_diff,
        "router_logits_max_abs_diff": logit_diff,
        "aux_loss": float(out.aux_loss),
        "aux_loss_abs_diff": aux_diff,
    }


def _float_copy(block):
    """A float32 copy of a library block (the model may be bf16), same experts implementation."""
    import copy

    return copy.deepcopy(block).float().eval()


def run(ctx: RunContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir
    data_cfg, model_cfg, moe, train_cfg = cfg["data"], cfg["model"], cfg["moe"], cfg["training"]

    # 0. What the run refuses before loading anything: routing and capacity settings, the device.
    check_settings(cfg, ctx.device)

    # 1. Part 1, by hand: noisy top-k, Switch capacity, aux loss, top-2; proved equal to Mixtral's block.
    part1 = part1_by_hand(cfg["part1"], ctx.device, cfg["seed"])

    # 2. Data: texts, the tokenizer, fixed-length blocks of token ids.
    texts, left_out = load_texts(data_cfg, ctx.repo_root)
    model_path = model_cfg["name_or_path"]
    if model_cfg["build_tiny"]:  # a GraniteMoe of the real model's layout, tiny, tokenizer trained on the texts
        model_path = str(
            build_tiny_granitemoe(
                out / "tiny-model", texts["train"] + texts["test"], seed=cfg["seed"], **model_cfg["tiny"]
            )
        )
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_cfg["revision"])

    def source(split: str) -> str:  # where a split's text came from, for messages
        if data_cfg["source"] == "files":
            return f"data.files.{split} ({data_cfg['files'][split]})"
        return f"{data_cfg['hub_dataset']} split {data_cfg['hub_splits'][split]}"

    blocks = {
        split: to_blocks(texts[split], tokenizer, data_cfg["block_size"], data_cfg[f"max_{kind}_blocks"], source(split))
        for split, kind in (("train", "train"), ("test", "eval"))
    }
    print(
        f"data: {len(blocks['train'])} train / {len(blocks['test'])} held-out blocks "
        f"of {data_cfg['block_size']} tokens",
        flush=True,
    )

    # 3. Model: the checkpoint's config first (refuse an aux loss it cannot give, a top-k above its
    #    experts), then the weights with router logits on and the aux-loss coefficient set.
    config = AutoConfig.from_pretrained(model_path, revision=model_cfg["revision"])
    check_aux_loss_support(config, moe)
    num_experts, top_k = moe_config(config)
    if model_cfg["num_experts_per_tok"] is not None:
        top_k = int(model_cfg["num_experts_per_tok"])
        check_routing(num_experts, top_k, f"model.num_experts_per_tok ({model_path} has {num_experts} experts)")
        config.num_experts_per_tok = top_k
    params = parameter_counts(config)
    print(
        f"model: {params['total']:,} parameters, {params['active']:,} active per token "
        f"({num_experts} experts, top-{top_k})",
        flush=True,
    )
    model = load_causal_lm(
        model_path,
        model_cfg["quantization"],
        ctx.device,
        model_cfg["attn_implementation"],
        model_cfg["revision"],
        experts_implementation=model_cfg["experts_implementation"],
        output_router_logits=moe["output_router_logits"],
        router_aux_loss_coef=moe["router_aux_loss_coef"],
        num_experts_per_tok=top_k,
    )

    # 4. Prove it again on the real model: its own blocks vs the by-hand layer holding their weights.
    blocks_check = part1["model_blocks"] = compare_with_model_blocks(model, blocks["test"][:2].to(model.device), top_k)
    print(
        f"4. by hand vs {blocks_check['library_block']} (x{blocks_check['layers']} layers): output "
        f"{blocks_check['output_max_abs_diff']:.2e}, router logits {blocks_check['router_logits_max_abs_diff']:.2e}, "
        f"aux loss {blocks_check['aux_loss_abs_diff']:.2e}",
        flush=True,
    )

    # 5. Before tuning: perplexity and the routers on held-out text; the training-set loss.
    ev = cfg["evaluation"]
    train_probe = blocks["train"][: ev["train_blocks"]]
    before = measure(model, blocks["test"], ev["batch_size"], moe["capacity_factor"])
    train_before = measure(model, train_probe, ev["batch_size"], moe["capacity_factor"])["loss"]

    # 6. LoRA on the attention (target_modules) and on the 3-D experts (target_parameters).
    targets = check_lora_targets(model, cfg["lora"])
    model = prepare_for_training(model, model_cfg["quantization"])
    model = get_peft_model(model, LoraConfig(**cfg["lora"]))
    trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    expert_lora = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".experts." in n)
    router_lora = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".router." in n)
    print(
        f"LoRA: {trainable:,} trainable parameters, {expert_lora:,} of them on the experts, "
        f"{router_lora:,} on the routers",
        flush=True,
    )

    # 7. Train with the router's aux loss in the loss (and logged apart).
    rows = {split: Dataset.from_dict({"input_ids": b.tolist(), "labels": b.tolist()}) for split, b in blocks.items()}
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        seed=cfg["seed"],
        gradient_checkpointing_kwargs={"use_reentrant": False},
        **train_cfg,
    )
    trainer = AuxLossTrainer(
        model=model,
        args=args,
        train_dataset=rows["train"],
        data_collator=default_data_collator,
        callbacks=[JsonlLogger(out / "train_log.jsonl")],
        aux_coef=moe["router_aux_loss_coef"],
    )
    result = trainer.train()
    remove_if_empty(out / "checkpoints")

    # 8. After tuning: the same measures; the plots.
    after = measure(model, blocks["test"], ev["batch_size"], moe["capacity_factor"])
    train_after = measure(model, train_probe, ev["batch_size"], moe["capacity_factor"])["loss"]
    title = f"{ctx.lab.name} ({ctx.profile})"
    plot_expert_load(
        before["router"], after["router"], out / "expert_load.png", f"{title}: tokens per expert, per layer"
    )
    log = read_jsonl(out / "train_log.jsonl")
    plot_aux_loss(log, out / "aux_loss_curve.png", title)
    plot_loss(out / "train_log.jsonl", out / "loss_curve.png", title)
    aux_curve = [r["aux_loss"] for r in log if "aux_loss" in r]

    # 9. Save the adapter, reload it on a fresh base, and check it gives the same logits.
    model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    probe = blocks["test"][:1].to(model.device)
    model.eval()
    with torch.no_grad():
        trained_logits = model(input_ids=probe).logits.float()
    quantization = quantization_counts(model) if quantized(model_cfg["quantization"]) else None
    del trainer, model
    release(ctx.device)
    base = load_causal_lm(
        model_path,
        model_cfg["quantization"],
        ctx.device,
        model_cfg["attn_implementation"],
        model_cfg["revision"],
        experts_implementation=model_cfg["experts_implementation"],
        num_experts_per_tok=top_k,
    )
    if quantized(model_cfg["quantization"]):
        base = prepare_for_training(base, model_cfg["quantization"])
    reloaded = PeftModel.from_pretrained(base, out / "adapter").eval()
    with torch.no_grad():
        reload_diff = float((reloaded(input_ids=probe).logits.float() - trained_logits).abs().max())

    steps = result.global_step
    tokens = (
        steps
        * train_cfg["per_device_train_batch_size"]
        * train_cfg["gradient_accumulation_steps"]
        * data_cfg["block_size"]
    )
    runtime = result.metrics["train_runtime"]
    return {
        "data": {
            "train_texts": len(texts["train"]),
            "test_texts": len(texts["test"]),
            "train_blocks": len(blocks["train"]),
            "eval_blocks": len(blocks["test"]),
            "block_size": data_cfg["block_size"],
            **left_out,
            "fingerprint": data_fingerprint(data_cfg, ctx.repo_root),
        },
        "part1": part1,
        "model": {
            "name": model_cfg["name_or_path"] or "tiny GraniteMoe (built here)",
            "class": type(base).__name__,
            **params,
        },
        "lora": {
            "trainable_params": trainable,
            "expert_lora_params": expert_lora,
            "router_lora_params": router_lora,
            **targets,
        },
        "quantization": quantization,
        "moe": {"router_aux_loss_coef": moe["router_aux_loss_coef"], "capacity_factor": moe["capacity_factor"]},
        "train": {
            **training_summary(train_before, train_after, result),
            "tokens_per_second": round(tokens / runtime, 1),
            "aux_loss_first": aux_curve[0] if aux_curve else None,
            "aux_loss_last": aux_curve[-1] if aux_curve else None,
            "aux_loss_logged": len(aux_curve),
        },
        "eval": {
            "loss_before": before["loss"],
            "loss_after": after["loss"],
            "perplexity_before": before["perplexity"],
            "perplexity_after": after["perplexity"],
            "perplexity_ratio": after["perplexity"] / before["perplexity"],
            "tokens": after["tokens"],
        },
        "routing": {"before": before["router"], "after": after["router"]},
        "cpu_threads": torch.get_num_threads(),
        "memory": {"peak_gib": round(peak_memory_bytes(ctx.device) / 2**30, 3)},
        "reload": {"max_abs_logit_diff": reload_diff},
    }


if __name__ == "__main__":
    raise SystemExit(main("moe", run))
