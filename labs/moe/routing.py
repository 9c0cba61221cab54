"""Part 2's measuring tools: what the routers of a Transformers MoE model do, which of its parameters
are experts, LoRA targets that reach them, and a Trainer that logs the router's auxiliary loss.

Router statistics (:class:`RouterTally`), per layer, over held-out tokens:

* tokens per expert: how many of the T * k top-k assignments each expert received;
* load coefficient of variation (CV): std / mean of those counts (population std). 0 is a perfectly
  even load; a router that sends every token to the same k experts reaches ``sqrt(E / k - 1)``;
* router entropy: mean over tokens of ``-sum_i p_i log p_i`` of the router's softmax, in nats, at most
  ``log E`` (undecided) and 0 (certain);
* dropped fraction: the share of assignments an expert of capacity
  ``ceil(capacity_factor * T * k / E)`` per batch would drop (GShard / Switch capacity routing,
  :func:`sparse_moe.capacity_route`). The dropless models here (Granite, Mixtral) drop nothing; the
  number says what a capacity-limited implementation would lose with this router.

Course chapter 12; Switch Transformer (Fedus et al. 2021, arXiv:2101.03961) sec. 2.2 and fig. 4.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from transformers import Trainer

from labkit.errors import LabError

from sparse_moe import capacity_route, check_capacity_factor, check_routing

#: Checkpoint families whose configs expose ``output_router_logits`` / ``router_aux_loss_coef`` and
#: whose causal-LM head adds the Switch load-balancing loss (Transformers 5.x).
ROUTER_MODELS = "GraniteMoe, Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE"


def moe_config(config) -> tuple[int, int]:
    """``(num_experts, num_experts_per_tok)`` of a Transformers MoE config (``num_local_experts`` in
    Mixtral and Granite, ``num_experts`` in Qwen-MoE and OLMoE).

    Raises:
        LabError: the config names no experts (a dense model).
    """
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    top_k = getattr(config, "num_experts_per_tok", None)
    if not experts or not top_k:
        raise LabError(
            f"{type(config).__name__} (model_type {getattr(config, 'model_type', '?')!r}) has no experts "
            f"(no num_local_experts / num_experts_per_tok): this lab needs a sparse MoE checkpoint ({ROUTER_MODELS})"
        )
    return int(experts), int(top_k)


def check_aux_loss_support(config, moe: dict) -> None:
    """Refuse an auxiliary loss a model cannot give, before any weight loads.

    Args:
        config: the checkpoint's ``PretrainedConfig`` (``AutoConfig.from_pretrained``).
        moe: the profile's ``moe`` section (``output_router_logits``, ``router_aux_loss_coef``,
            ``capacity_factor``).

    Raises:
        LabError: an aux loss (coefficient > 0) or router logits asked of a model whose config has no
            ``output_router_logits`` / ``router_aux_loss_coef`` (a dense model: no router); a negative
            coefficient; an aux loss with ``output_router_logits`` false (the model then never computes
            it); a capacity factor <= 0.
    """
    coef = moe["router_aux_loss_coef"]
    name = f"{type(config).__name__} (model_type {getattr(config, 'model_type', '?')!r})"
    if isinstance(coef, bool) or not isinstance(coef, (int, float)) or coef < 0:
        raise LabError(
            f"moe.router_aux_loss_coef={coef!r}: give a number >= 0 (Switch Transformer: 0.01; Granite: 0.001)"
        )
    has_router = hasattr(config, "output_router_logits") and hasattr(config, "router_aux_loss_coef")
    if (coef > 0 or moe["output_router_logits"]) and not has_router:
        raise LabError(
            f"moe.router_aux_loss_coef={coef} with output_router_logits={moe['output_router_logits']}, but {name} "
            "has no router logits (its config has no output_router_logits / router_aux_loss_coef: it is not a "
            "sparse MoE). "
            f"Use an MoE checkpoint ({ROUTER_MODELS}), or set moe.router_aux_loss_coef=0 moe.output_router_logits=false"
        )
    if coef > 0 and not moe["output_router_logits"]:
        raise LabError(
            f"moe.router_aux_loss_coef={coef} with moe.output_router_logits=false: the model computes the aux loss "
            "only from router logits it outputs; set moe.output_router_logits=true (or the coefficient to 0)"
        )
    check_capacity_factor(moe["capacity_factor"], "moe.capacity_factor")


def expert_parameters(model) -> dict[str, tuple[int, ...]]:
    """``{parameter name: shape}`` of the packed expert weights: the 3-D parameters (E, out, in) of
    ``experts`` modules (Transformers 5.x: ``experts.gate_up_proj`` (E, 2I, H), ``experts.down_proj``
    (E, H, I)); names as ``model.named_parameters()`` gives them."""
    return {name: tuple(p.shape) for name, p in model.named_parameters() if p.dim() == 3 and ".experts." in f".{name}"}


def _pattern(names) -> list[str]:
    """Parameter names with layer numbers folded: ``model.layers.*.block_sparse_moe.experts.down_proj``."""
    return sorted({re.sub(r"\.\d+\.", ".*.", n) for n in names})


def check_lora_targets(model, lora: dict) -> dict:
    """Check that a LoRA config reaches the experts, before ``get_peft_model``.

    PEFT (>= 0.17) adapts 3-D expert parameters through ``LoraConfig(target_parameters=[...])``: an
    entry matches a parameter whose full name is it or ends with ``.`` + it. PEFT says nothing when
    the entries match no expert while ``target_modules`` matched something, so the run would tune
    the attention only; this check refuses that.

    Args:
        model: the loaded base model.
        lora: the profile's ``lora`` section.

    Returns:
        ``{"expert_parameters": n matched, "expert_parameter_names": [folded names]}``.

    Raises:
        LabError: ``target_parameters`` empty, or an entry that matches no parameter, or none that is
            an expert parameter (the message lists the model's expert parameters and their shapes);
            ``lora_dropout`` != 0 (PEFT's parameter LoRA has no dropout).
    """
    experts = expert_parameters(model)
    have = "; ".join(f"{n} {shape}" for n, shape in zip(_pattern(experts), _shapes(experts))) or "none (a dense model)"
    fix = (
        "lora.target_parameters=["
        + ",".join(sorted({n.split(".")[-3] + ".experts." + n.split(".")[-1] for n in experts}))
        + "]"
    )
    targets = list(lora.get("target_parameters") or [])
    if not targets:
        raise LabError(
            f"lora.target_parameters is empty: the LoRA would miss the experts. {type(model).__name__}'s expert "
            f"parameters: {have}. Set {fix}"
        )
    names = [n for n, _ in model.named_parameters()]
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            raise LabError(
                f"lora.target_parameters entry {target!r} matches no parameter of {type(model).__name__}; its expert "
                f"parameters are: {have}. Set {fix}"
            )
    hit = [n for n in experts if any(n == t or n.endswith("." + t) for t in targets)]
    if not hit:
        raise LabError(
            f"lora.target_parameters={targets} reaches none of the experts of {type(model).__name__}; its expert "
            f"parameters are: {have}. Set {fix}"
        )
    if lora.get("lora_dropout"):
        raise LabError(
            f"lora.lora_dropout={lora['lora_dropout']}: PEFT's LoRA on parameters (target_parameters, the experts) has "
            "no dropout (x cannot be factored out of the 3-D delta); set lora.lora_dropout=0"
        )
    return {"expert_parameters": len(hit), "expert_parameter_names": _pattern(hit)}


def _shapes(experts: dict) -> list[str]:
    first = {}
    for name, shape in experts.items():
        first.setdefault(re.sub(r"\.\d+\.", ".*.", name), shape)
    return [str(first[p]) for p in sorted(first)]


def parameter_counts(config) -> dict:
    """Total and active parameters of a model with ``config`` (counted on the meta device: no memory).

    Active = what one token uses: every parameter except the experts it is not routed to, i.e.
    ``total - experts * (1 - k / E)`` (tied embeddings counted once). Granite-3.0-1B-A400M: 1.33 B
    total, 0.43 B active ("A400M"; IBM's model card).

    Returns:
        ``{"total", "experts", "active", "active_fraction", "num_experts", "top_k", "layers"}``.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    num_experts, top_k = moe_config(config)
    total = sum(p.numel() for p in model.parameters())
    experts = sum(math.prod(shape) for shape in expert_parameters(model).values())
    active = total - experts * (1 - top_k / num_experts)
    return {
        "total": total,
        "experts": experts,
        "active": int(round(active)),
        "active_fraction": active / total,
        "num_experts": num_experts,
        "top_k": top_k,
        "layers": config.num_hidden_layers,
    }


class RouterTally:
    """Router statistics accumulated over batches (see the module docstring for each measure).

    Args:
        num_layers, num_experts, top_k: the model's.
        capacity_factor: > 0, for the dropped fraction (capacity per batch).
    """

    def __init__(self, num_layers: int, num_experts: int, top_k: int, capacity_factor: float):
        check_routing(num_experts, top_k, "RouterTally")
        check_capacity_factor(capacity_factor, "moe.capacity_factor")
        self.num_experts, self.top_k, self.capacity_factor = num_experts, top_k, capacity_factor
        self.counts = torch.zeros(num_layers, num_experts, dtype=torch.float64)
        self.entropy = torch.zeros(num_layers, dtype=torch.float64)
        self.dropped = torch.zeros(num_layers, dtype=torch.float64)
        self.tokens = 0

    @torch.no_grad()
    def add(self, router_logits: tuple[torch.Tensor, ...]) -> None:
        """One batch: ``router_logits`` as the model outputs them, one (T, E) tensor per layer."""
        for layer, logits in enumerate(router_logits):
            logits = logits.float()
            top = logits.topk(self.top_k, dim=-1).indices
            self.counts[layer] += torch.bincount(top.reshape(-1).cpu(), minlength=self.num_experts).double()
            self.entropy[layer] += float(-(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum(-1).sum())
            routed = capacity_route(top.cpu(), self.num_experts, self.capacity_factor)
            self.dropped[layer] += routed.dropped_fraction * top.numel()
        self.tokens += router_logits[0].shape[0]

    def summary(self) -> dict:
        """Per layer and over layers: ``tokens_per_expert`` (L x E lists), ``load_cv`` (per layer, mean,
        max), ``entropy_nats`` (per layer, mean; ``max_entropy_nats`` = log E), ``dropped_fraction``
        (per layer, mean), ``max_expert_share`` (the busiest expert's share of a layer's assignments,
        largest over layers; k / E is an even share)."""
        counts = self.counts
        cv = counts.std(dim=1, correction=0) / counts.mean(dim=1)
        entropy = self.entropy / self.tokens
        dropped = self.dropped / (self.tokens * self.top_k)
        return {
            "tokens": self.tokens,
            "tokens_per_expert": [[int(c) for c in row] for row in counts.tolist()],
            "load_cv": [round(float(v), 6) for v in cv],
            "load_cv_mean": float(cv.mean()),
            "load_cv_max": float(cv.max()),
            "load_cv_collapsed": math.sqrt(self.num_experts / self.top_k - 1),
            "entropy_nats": [round(float(v), 6) for v in entropy],
            "entropy_nats_mean": float(entropy.mean()),
            "max_entropy_nats": math.log(self.num_experts),
            "capacity_factor": self.capacity_factor,
            "dropped_fraction": [round(float(v), 6) for v in dropped],
            "dropped_fraction_mean": float(dropped.mean()),
            "max_expert_share": float((counts.max(dim=1).values / counts.sum(dim=1)).max()),
        }


@torch.no_grad()
def measure(model, blocks: torch.Tensor, batch_size: int, capacity_factor: float) -> dict:
    """Language-model loss and router statistics of ``model`` on ``blocks``, in eval mode.

    Args:
        model: a Transformers MoE causal LM (or a PEFT model around one).
        blocks: (n, block_size) int64 token ids (no padding).
        batch_size: blocks per forward pass.
        capacity_factor: for the dropped fraction.

    Returns:
        ``{"loss": mean next-token cross-entropy in nats (the aux loss not included), "perplexity":
        exp(loss), "tokens": tokens predicted, "router": RouterTally.summary()}``.
    """
    config = model.config
    num_experts, top_k = moe_config(config)
    tally = RouterTally(config.num_hidden_layers, num_experts, top_k, capacity_factor)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start : start + batch_size].to(device)
        out = model(input_ids=ids, output_router_logits=True, use_cache=False)
        logits = out.logits[:, :-1].float()
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"))
        count += ids[:, 1:].numel()
        tally.add(out.router_logits)
    model.train(was_training)
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count, "router": tally.summary()}


class AuxLossTrainer(Trainer):
    """``Trainer`` that also logs the two parts of an MoE model's training loss.

    The MoE causal-LM heads return ``loss = cross_entropy + router_aux_loss_coef * aux_loss`` and the
    aux loss itself (``outputs.aux_loss``); every logging step this adds their means since the last
    log as ``aux_loss`` and ``ce_loss`` beside the Trainer's ``loss`` (train_log.jsonl, TensorBoard).
    """

    def __init__(self, *args, aux_coef: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.aux_coef = aux_coef
        self._aux: list[float] = []
        self._total: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        aux = getattr(outputs, "aux_loss", None)
        if model.training and aux is not None:
            self._aux.append(float(aux.detach()))
            self._total.append(float(loss.detach()))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, start_time=None) -> None:
        if "loss" in logs and self._aux:
            aux = sum(self._aux) / len(self._aux)
            logs["aux_loss"] = round(aux, 6)
            logs["ce_loss"] = round(sum(self._total) / len(self._total) - self.aux_coef * aux, 6)
            self._aux.clear()
            self._total.clear()
        super().log(logs, start_time)


def plot_expert_load(before: dict, after: dict, png, title: str) -> None:
    """One bar chart per layer: assignments per expert before (grey) and after (blue) tuning, as
    shares of the layer's assignments, with the even share k / E dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts_b = torch.tensor(before["tokens_per_expert"], dtype=torch.float64)
    counts_a = torch.tensor(after["tokens_per_expert"], dtype=torch.float64)
    layers, experts = counts_b.shape
    cols = min(4, layers)
    rows = math.ceil(layers / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows + 0.6), dpi=90, squeeze=False, sharey=True)
    x = torch.arange(experts).numpy()
    even = 1.0 / experts
    for layer in range(rows * cols):
        ax = axes[layer // cols][layer % cols]
        if layer >= layers:
            ax.axis("off")
            continue
        share_b = (counts_b[layer] / counts_b[layer].sum()).numpy()
        share_a = (counts_a[layer] / counts_a[layer].sum()).numpy()
        ax.bar(x - 0.2, share_b, width=0.4, color="0.7", label="before")
        ax.bar(x + 0.2, share_a, width=0.4, color="tab:blue", label="after")
        ax.axhline(even, color="k", linestyle="--", linewidth=0.8)
        ax.set_title(f"layer {layer}: CV {before['load_cv'][layer]:.2f} -> {after['load_cv'][layer]:.2f}", fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.supxlabel("expert", fontsize=8)
    fig.supylabel("share of top-k assignments", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def plot_aux_loss(rows: list[dict], png, title: str) -> None:
    """The router's auxiliary loss per logging step (left) and the cross-entropy part of the
    training loss (right), from ``train_log.jsonl`` rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    for ax, key, label in ((left, "aux_loss", "load-balancing aux loss"), (right, "ce_loss", "cross-entropy")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3)
        ax.set(xlabel="step", ylabel=label)
        ax.grid(alpha=0.3)
    left.set_title("aux loss (k for a uniform router, E when collapsed)", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
