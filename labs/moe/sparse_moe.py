"""Part 1 of the chapter, by hand: a sparse Mixture-of-Experts layer, step by step.

Each function is one idea of the chapter's history, written out in plain PyTorch:

* :func:`noisy_top_k_gating`: Shazeer et al. 2017, "Outrageously Large Neural Networks: The Sparsely-
  Gated Mixture-of-Experts Layer" (arXiv:1701.06538), sec. 2.1, eqs. (3)-(5): tunable Gaussian noise
  on the gate logits, keep the top k, softmax over them; the other experts get exactly 0.
* :func:`capacity_route`: the expert capacity of GShard (Lepikhin et al. 2020, arXiv:2006.16668,
  Algorithm 1) and Switch Transformer (Fedus, Zoph and Shazeer 2021, arXiv:2101.03961, sec. 2.2,
  eq. (3)): each expert takes at most ``capacity = ceil(capacity_factor * tokens * k / experts)``
  assignments; the rest are dropped (their tokens skip the layer through the residual connection).
* :func:`load_balancing_loss`: Switch Transformer eqs. (4)-(6), ``N * sum_i f_i * P_i``, as
  Transformers' ``load_balancing_loss_func`` computes it for Mixtral, Qwen-MoE, OLMoE and Granite-MoE.
* :class:`SparseMoE`: the layer: router, top-k (top-2 as in Mixtral, Jiang et al. 2024,
  arXiv:2401.04088, sec. 2.1: softmax over the top-2 logits), SwiGLU experts, optional noise and
  capacity; top-1 with a capacity factor is the Switch layer.
* :func:`to_mixtral_block` / :func:`from_library_block`: the same weights in Transformers' own sparse
  MoE blocks, which pack the experts as 3-D parameters ``experts.gate_up_proj`` (E, 2I, H) and
  ``experts.down_proj`` (E, H, I) (Transformers 5.x, ``MixtralExperts`` / ``GraniteMoeExperts``).

Course chapter 12 (Mixture of Experts). Shapes use T tokens, H hidden size, I expert intermediate
size, E experts, k experts per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from labkit.errors import LabError


def check_routing(num_experts: int, top_k: int, where: str) -> None:
    """Refuse a routing the layer cannot do, in one line naming the setting.

    Raises:
        LabError: ``top_k`` < 1, or larger than ``num_experts`` (a token cannot go to more experts
            than there are), or ``num_experts`` < 1.
    """
    if int(num_experts) < 1:
        raise LabError(f"{where}: num_experts={num_experts}; a mixture needs at least one expert")
    if not 1 <= int(top_k) <= int(num_experts):
        raise LabError(
            f"{where}: num_experts_per_tok={top_k} with {num_experts} experts; each token goes to between 1 and "
            f"{num_experts} experts: set num_experts_per_tok to at most {num_experts} "
            "(Mixtral: 2 of 8, Granite: 8 of 32)"
        )


def check_capacity_factor(capacity_factor: float, where: str) -> None:
    """Refuse a capacity factor that is not a positive number.

    Raises:
        LabError: ``capacity_factor`` <= 0 (every expert would take no token) or not a number.
    """
    if isinstance(capacity_factor, bool) or not isinstance(capacity_factor, (int, float)) or capacity_factor <= 0:
        raise LabError(
            f"{where}: capacity_factor={capacity_factor!r}; it must be a number > 0 (an expert takes "
            "ceil(capacity_factor x tokens x k / experts) tokens): Switch Transformer trains with 1.25 and "
            "evaluates with 2.0; 1.0 is an exactly even share"
        )


@dataclass
class Gating:
    """What a gate decides for T tokens.

    Attributes:
        logits: (T, E) float32, the router's logits (with noise added, if any).
        gates: (T, E) float32, each row's weights: softmax over its top-k logits, exactly 0 elsewhere.
        top_k_index: (T, k) int64, the chosen experts, best first.
        top_k_weights: (T, k) float32, their weights (rows sum to 1).
    """

    logits: torch.Tensor
    gates: torch.Tensor
    top_k_index: torch.Tensor
    top_k_weights: torch.Tensor


def noisy_top_k_gating(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    k: int,
    w_noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Gating:
    """Noisy top-k gating (Shazeer et al. 2017, sec. 2.1, eqs. (3)-(5)).

    ``H(x)_i = (x W_g)_i + StandardNormal() * Softplus((x W_noise)_i)``;
    ``G(x) = Softmax(KeepTopK(H(x), k))`` where KeepTopK sets all but the k largest to -inf, so their
    gate is exactly 0 and those experts are never computed. Without ``w_noise`` (as at inference, and
    in Mixtral) the noise term is left out.

    Args:
        x: (T, H) token representations.
        w_gate: (E, H) router weight (``nn.Linear`` layout: logits = ``x @ w_gate.T``).
        k: experts per token, 1 <= k <= E.
        w_noise: (E, H) noise weight, or None for no noise.
        generator: the random stream of the noise (a seeded ``torch.Generator`` for reproducibility).

    Returns:
        :class:`Gating` (float32).

    Raises:
        LabError: ``k`` out of range (:func:`check_routing`).
    """
    check_routing(w_gate.shape[0], k, "noisy_top_k_gating")
    logits = x.float() @ w_gate.float().T  # (T, E)
    if w_noise is not None:
        noise_std = F.softplus(x.float() @ w_noise.float().T)
        noise = torch.randn(logits.shape, generator=generator, device="cpu").to(logits.device)
        logits = logits + noise * noise_std
    top_logits, top_index = logits.topk(k, dim=-1)
    kept = torch.full_like(logits, float("-inf")).scatter(-1, top_index, top_logits)  # KeepTopK
    gates = torch.softmax(kept, dim=-1)
    return Gating(logits, gates, top_index, gates.gather(-1, top_index))


@dataclass
class CapacityRouting:
    """Which (token, choice) assignments an expert of limited capacity keeps.

    Attributes:
        kept: (T, k) bool, True where the assignment fits in its expert.
        capacity: assignments each expert takes at most.
        assigned: (E,) int64, assignments each expert was asked to take.
        dropped_fraction: dropped assignments / all T * k assignments (0.0 to 1.0).
        tokens_fully_dropped: tokens none of whose k assignments was kept (they skip the layer).
    """

    kept: torch.Tensor
    capacity: int
    assigned: torch.Tensor
    dropped_fraction: float
    tokens_fully_dropped: int


def expert_capacity(tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """``ceil(capacity_factor * tokens * top_k / num_experts)``: Switch Transformer eq. (3)
    (``tokens per batch / experts * capacity factor``) with GShard's k assignments per token.

    Raises:
        LabError: ``capacity_factor`` <= 0 (:func:`check_capacity_factor`).
    """
    check_capacity_factor(capacity_factor, "expert_capacity")
    return math.ceil(capacity_factor * tokens * top_k / num_experts)


def capacity_route(top_k_index: torch.Tensor, num_experts: int, capacity_factor: float) -> CapacityRouting:
    """Expert capacity with dropped tokens (GShard Algorithm 1; Switch Transformer sec. 2.2).

    Assignments are served in priority order: every token's first choice before any second choice
    (GShard), and within one choice in token order (Switch keeps the first tokens of the batch). An
    expert that is full drops the rest; a dropped assignment contributes nothing and the token is
    carried by the residual connection. With k = 1 this is Switch's top-1 routing.

    Args:
        top_k_index: (T, k) int64, chosen experts per token, best first.
        num_experts: E.
        capacity_factor: > 0; 1.0 gives each expert exactly its even share of the T * k assignments.

    Returns:
        :class:`CapacityRouting`.

    Raises:
        LabError: ``capacity_factor`` <= 0.
    """
    tokens, k = top_k_index.shape
    capacity = expert_capacity(tokens, num_experts, k, capacity_factor)
    order = top_k_index.T.reshape(-1)  # (k*T,): all first choices, then all second choices, ...
    one_hot = F.one_hot(order, num_experts)  # (k*T, E)
    position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1  # place of each assignment in its expert's queue
    kept = (position < capacity).reshape(k, tokens).T  # (T, k)
    dropped = int((~kept).sum())
    return CapacityRouting(
        kept=kept,
        capacity=capacity,
        assigned=one_hot.sum(0),
        dropped_fraction=dropped / (tokens * k),
        tokens_fully_dropped=int((~kept).all(-1).sum()),
    )


def load_balancing_loss(
    router_logits: tuple[torch.Tensor, ...] | list[torch.Tensor],
    top_k: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The auxiliary load-balancing loss (Switch Transformer eqs. (4)-(6)), by hand.

    ``loss = N * sum_i f_i * P_i`` over the N experts, with ``f_i`` the fraction of tokens routed to
    expert i (top-k: each of a token's k choices counts, so the f_i sum to k) and ``P_i`` the mean
    router probability of expert i. It is ``k`` for a uniform router (every f_i = k/N, P_i = 1/N) and
    ``N`` when every token goes to the same k experts with certainty (the collapse it penalises;
    a batch can dip slightly below k when f and P happen to disagree). As Transformers'
    ``load_balancing_loss_func`` (Mixtral, Qwen-MoE, OLMoE, Granite-MoE) computes it, the layers'
    tokens are pooled (concatenated) before f and P are taken, and padding is masked out; the model
    adds ``router_aux_loss_coef`` times it to the language-model loss (Switch's alpha = 0.01).

    Args:
        router_logits: one (T, E) tensor per layer (T = batch x sequence length).
        top_k: experts per token.
        attention_mask: (batch, sequence) 1 for real tokens, 0 for padding; None counts every token.

    Returns:
        Scalar float32 tensor (differentiable through ``P``; ``f`` counts are not differentiable).
    """
    probs = torch.cat([torch.softmax(layer.float(), dim=-1) for layer in router_logits])  # (L*T, E)
    num_experts = probs.shape[-1]
    chosen = F.one_hot(probs.topk(top_k, dim=-1).indices, num_experts).sum(1).float()  # (L*T, E) 0/1
    if attention_mask is None:
        weight = torch.ones(probs.shape[0], device=probs.device)
    else:
        weight = attention_mask.reshape(-1).float().to(probs.device).repeat(len(router_logits))
    f = (chosen * weight[:, None]).sum(0) / weight.sum()  # eq. (5), summing to k
    p = (probs * weight[:, None]).sum(0) / weight.sum()  # eq. (6)
    return num_experts * (f * p).sum()  # eq. (4) without alpha


class SparseMoE(nn.Module):
    """A sparse Mixture-of-Experts feed-forward layer written out by hand.

    A router (E, H) scores each token; the top-k experts (softmax over all logits, keep the k
    largest, renormalise them to sum to 1: Mixtral's rule, the same as a softmax over the k logits)
    each run a SwiGLU feed-forward ``down(silu(x W_gate^T) * (x W_up^T))`` on it, and the outputs are
    summed with the gate weights. Options from the chapter's history: ``noisy`` (Shazeer 2017's
    learned Gaussian noise on the logits, training only), ``capacity_factor`` (GShard/Switch expert
    capacity, dropping assignments over it), and ``renormalize=False`` (Switch's top-1 gate: the
    router probability itself, so the router still gets a gradient when k = 1).

    Args:
        hidden_size: H.
        intermediate_size: I, each expert's inner width.
        num_experts: E.
        top_k: k, 1 <= k <= E.
        capacity_factor: None for no capacity limit (dropless, as Mixtral and Granite), else > 0.
        noisy: add Shazeer's noise to the logits in training mode.
        renormalize: renormalise the top-k probabilities to sum to 1 (Mixtral; False for Switch).

    Raises:
        LabError: ``top_k`` out of range, or ``capacity_factor`` <= 0.
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_experts: int,
        top_k: int,
        capacity_factor: float | None = None,
        noisy: bool = False,
        renormalize: bool = True,
    ):
        super().__init__()
        check_routing(num_experts, top_k, "SparseMoE")
        if capacity_factor is not None:
            check_capacity_factor(capacity_factor, "SparseMoE")
        self.num_experts, self.top_k = num_experts, top_k
        self.capacity_factor, self.noisy, self.renormalize = capacity_factor, noisy, renormalize
        self.router = nn.Parameter(torch.randn(num_experts, hidden_size) * 0.02)  # (E, H)
        self.noise = nn.Parameter(torch.zeros(num_experts, hidden_size)) if noisy else None
        self.w_gate = nn.Parameter(torch.randn(num_experts, intermediate_size, hidden_size) * 0.02)  # (E, I, H)
        self.w_up = nn.Parameter(torch.randn(num_experts, intermediate_size, hidden_size) * 0.02)  # (E, I, H)
        self.w_down = nn.Parameter(torch.randn(num_experts, hidden_size, intermediate_size) * 0.02)  # (E, H, I)
        self.last_routing: CapacityRouting | None = None

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e``'s SwiGLU feed-forward on x (n, H) -> (n, H)."""
        return F.linear(F.silu(F.linear(x, self.w_gate[e])) * F.linear(x, self.w_up[e]), self.w_down[e])

    def forward(
        self, hidden_states: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Route and compute.

        Args:
            hidden_states: (B, S, H) or (T, H).
            generator: the noise's random stream (``noisy`` in training mode only).

        Returns:
            ``(output of the input's shape and dtype, router logits (T, E) float32)``.
        """
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        noise = self.noise if (self.noisy and self.training) else None
        gating = noisy_top_k_gating(x, self.router, self.top_k, noise, generator)
        if self.renormalize:
            weights = gating.top_k_weights  # softmax over the k kept logits = Mixtral's renormalised top-k
        else:
            weights = torch.softmax(gating.logits, dim=-1).gather(-1, gating.top_k_index)  # Switch: p_i(x)
        kept = torch.ones_like(gating.top_k_index, dtype=torch.bool)
        self.last_routing = None
        if self.capacity_factor is not None:
            self.last_routing = capacity_route(gating.top_k_index, self.num_experts, self.capacity_factor)
            kept = self.last_routing.kept
        out = torch.zeros_like(x)
        for e in range(self.num_experts):  # one expert at a time: only its tokens are computed
            token, slot = torch.where((gating.top_k_index == e) & kept)
            if token.numel():
                y = self.expert(e, x[token]) * weights[token, slot, None].to(x.dtype)
                out.index_add_(0, token, y)
        return out.reshape(shape), gating.logits


def mixtral_config(layer: SparseMoE):
    """A ``MixtralConfig`` whose ``MixtralSparseMoeBlock`` has ``layer``'s sizes (no jitter noise)."""
    from transformers import MixtralConfig

    return MixtralConfig(
        hidden_size=layer.w_gate.shape[2],
        intermediate_size=layer.w_gate.shape[1],
        num_local_experts=layer.num_experts,
        num_experts_per_tok=layer.top_k,
        router_jitter_noise=0.0,
        hidden_act="silu",
    )


def pack_gate_up(w_gate: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
    """(E, I, H) gate and up projections -> Transformers 5's packed ``gate_up_proj`` (E, 2I, H):
    rows [0, I) are the gate, rows [I, 2I) the up projection (``chunk(2, dim=-1)`` in the experts'
    forward)."""
    return torch.cat([w_gate, w_up], dim=1)


@torch.no_grad()
def to_mixtral_block(layer: SparseMoE):
    """``layer``'s weights in Transformers' ``MixtralSparseMoeBlock`` (eval mode, float32).

    The router goes to ``gate.weight`` (E, H); the experts are packed into the 3-D parameters
    ``experts.gate_up_proj`` (E, 2I, H) and ``experts.down_proj`` (E, H, I).
    """
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = mixtral_config(layer)
    config._experts_implementation = "eager"  # the reference loop (grouped_mm needs a model to dispatch)
    block = MixtralSparseMoeBlock(config).float().eval()
    block.gate.weight.copy_(layer.router)
    block.experts.gate_up_proj.copy_(pack_gate_up(layer.w_gate, layer.w_up))
    block.experts.down_proj.copy_(layer.w_down)
    return block.to(layer.router.device)


@torch.no_grad()
def from_library_block(block, top_k: int) -> SparseMoE:
    """A :class:`SparseMoE` (float32, eval mode) holding the weights of a Transformers sparse MoE
    block: ``MixtralSparseMoeBlock`` (router ``gate.weight``) or ``GraniteMoeMoE`` (``router.weight``),
    both with ``experts.gate_up_proj`` (E, 2I, H) and ``experts.down_proj`` (E, H, I).

    Raises:
        LabError: the block has neither router nor packed experts (names what it has).
    """
    router = getattr(block, "gate", None) or getattr(block, "router", None)
    experts = getattr(block, "experts", None)
    if router is None or not hasattr(experts, "gate_up_proj"):
        names = ", ".join(n for n, _ in block.named_parameters())
        raise LabError(f"{type(block).__name__} is not a packed sparse MoE block (its parameters: {names})")
    num_experts, two_i, hidden = experts.gate_up_proj.shape
    layer = SparseMoE(hidden, two_i // 2, num_experts, top_k).to(experts.gate_up_proj.device).eval()
    layer.router.copy_(router.weight.float())
    w_gate, w_up = experts.gate_up_proj.float().chunk(2, dim=1)
    layer.w_gate.copy_(w_gate)
    layer.w_up.copy_(w_up)
    layer.w_down.copy_(experts.down_proj.float())
    return layer
