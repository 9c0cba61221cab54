"""Step 3 by hand: attention, multi-head attention, the causal mask, positional encoding, the block.

Plain PyTorch, one piece at a time, each cited to its source; then the same weights are copied into
Transformers' own modules (:func:`to_gpt2_block`, :func:`to_bert_layer`, :func:`to_gpt2_lm`) so the
run can prove the hand-written pieces compute what the library computes.

Shapes: ``x`` is ``(batch, time, d_model)`` float; masks are boolean ``(time, time)`` with ``True``
where a query position may attend to a key position.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q k^T / sqrt(d_k)) v`` (Vaswani et al. 2017, "Attention Is All You Need", eq. 1).

    Args:
        q: ``(..., T_q, d_k)``; k: ``(..., T_k, d_k)``; v: ``(..., T_k, d_v)``.
        mask: boolean ``(T_q, T_k)`` (broadcast), ``True`` = may attend; a masked score becomes
            ``-inf`` before the softmax, so its weight is exactly 0.
        scale: the factor on the scores; ``None`` = ``1 / sqrt(d_k)`` (sec. 3.2.1: without it the dot
            products grow with ``d_k`` and push the softmax into regions of tiny gradients).

    Returns:
        ``(output (..., T_q, d_v), weights (..., T_q, T_k))``; each row of weights sums to 1.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def causal_mask(t: int, device=None) -> torch.Tensor:
    """The decoder's mask: position i may attend to positions 0..i only (Vaswani et al. sec. 3.2.3,
    "masking out ... all values which correspond to illegal connections"). Boolean ``(t, t)``, lower
    triangle and diagonal ``True``."""
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


def full_mask(t: int, device=None) -> torch.Tensor:
    """Every position attends to every other (the encoder's, BERT's; or a broken decoder's)."""
    return torch.ones(t, t, dtype=torch.bool, device=device)


def sinusoidal_positions(n_positions: int, d_model: int) -> torch.Tensor:
    """``PE(pos, 2i) = sin(pos / 10000^(2i/d))``, ``PE(pos, 2i+1) = cos(pos / 10000^(2i/d))``
    (Vaswani et al. sec. 3.5). Float32 ``(n_positions, d_model)``; ``d_model`` must be even. For any
    offset k, ``PE(pos + k)`` is a fixed linear function (a rotation per frequency) of ``PE(pos)``."""
    if d_model % 2:
        raise ValueError(f"d_model={d_model}: sinusoidal positions need an even width")
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    freq = torch.pow(10000.0, -torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(n_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table.float()


class MultiHeadAttention(nn.Module):
    """``MultiHead(x) = Concat(head_1..head_h) W_O`` with ``head_i = Attention(x W_Q^i, x W_K^i, x W_V^i)``
    (Vaswani et al. sec. 3.2.2): one projection each for Q, K, V (``d_model -> d_model``), split into
    ``n_heads`` heads of ``d_model / n_heads``, attended separately, concatenated, projected by W_O.

    ``scale`` is passed to :func:`scaled_dot_product_attention` (``None``: ``1/sqrt(d_head)``).
    ``last_weights`` keeps the latest attention weights ``(batch, heads, T, T)`` for plotting.
    """

    def __init__(self, d_model: int, n_heads: int, scale: float | None = None):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not a multiple of n_heads={n_heads}")
        self.n_heads, self.d_head, self.scale = n_heads, d_model // n_heads, scale
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape

        def heads(y):  # (b, t, d) -> (b, heads, t, d_head)
            return y.view(b, t, self.n_heads, self.d_head).transpose(1, 2)

        out, self.last_weights = scaled_dot_product_attention(
            heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), mask, self.scale
        )
        return self.o(out.transpose(1, 2).reshape(b, t, d))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (Hendrycks & Gimpel 2016, sec. 2; GPT-2's ``gelu_new``)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    """GELU, exact: ``x Phi(x)`` (Hendrycks & Gimpel 2016; BERT's ``gelu``)."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class TransformerBlock(nn.Module):
    """One Transformer layer: multi-head self-attention and a position-wise feed-forward network
    ``W_2 act(W_1 x + b_1) + b_2`` (Vaswani et al. sec. 3.3), each wrapped in a residual connection and
    a layer normalisation (Ba et al. 2016).

    ``pre_norm=True`` is GPT-2's order (Radford et al. 2019, sec. 2.3: the norm moved to each
    sub-block's input): ``x + Attn(LN1(x))``, then ``h + FFN(LN2(h))``, with the tanh GELU.
    ``pre_norm=False`` is the original order, BERT's (Devlin et al. 2019): ``LN1(x + Attn(x))``, then
    ``LN2(h + FFN(h))``, with the exact GELU. No dropout: the comparisons run in eval mode.
    """

    def __init__(
        self, d_model: int, n_heads: int, d_ff: int, pre_norm: bool, eps: float = 1e-5, scale: float | None = None
    ):
        super().__init__()
        self.pre_norm = pre_norm
        self.attn = MultiHeadAttention(d_model, n_heads, scale)
        self.ln1, self.ln2 = nn.LayerNorm(d_model, eps=eps), nn.LayerNorm(d_model, eps=eps)
        self.ff1, self.ff2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.act = gelu_tanh if pre_norm else gelu_erf

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        def ffn(y):
            return self.ff2(self.act(self.ff1(y)))

        if self.pre_norm:
            h = x + self.attn(self.ln1(x), mask)
            return h + ffn(self.ln2(h))
        h = self.ln1(x + self.attn(x, mask))
        return self.ln2(h + ffn(h))


class TinyGPT(nn.Module):
    """A decoder-only language model by hand (GPT-1/GPT-2 layout): token embedding + positional
    table, pre-norm blocks under the causal mask, a final LayerNorm, logits through the token
    embedding's transpose (tied weights, as GPT-2). ``positions`` starts as the sinusoidal table
    (:func:`sinusoidal_positions`); GPT-2 learns its own, of the same shape.

    ``forward(ids (b, t) long, mask (t, t) bool) -> logits (b, t, vocab)``.
    """

    def __init__(self, vocab: int, n_positions: int, d_model: int, n_heads: int, n_layers: int, eps: float = 1e-5):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Parameter(sinusoidal_positions(n_positions, d_model))
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, 4 * d_model, True, eps) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, eps=eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x) @ self.tokens.weight.T


@torch.no_grad()
def randomize_(module: nn.Module, generator: torch.Generator, std: float = 0.2) -> nn.Module:
    """Every parameter drawn afresh (normal, ``std``; LayerNorm weights around 1), so a comparison
    exercises every weight and bias, not the zeros and ones of a default initialisation. The
    positional table, a fixed function, is kept."""
    for name, p in module.named_parameters():
        if name == "positions":
            continue
        base = 1.0 if (".ln" in f".{name}" and name.endswith("weight")) else 0.0
        p.copy_(base + std * torch.randn(p.shape, generator=generator))
    return module


def _linear_to_conv1d(linears: list[nn.Linear], conv) -> None:
    """Transformers' ``Conv1D`` computes ``x @ W + b`` with W ``(in, out)``: a ``nn.Linear``'s
    ``(out, in)`` weight transposed; several linears side by side (GPT-2's ``c_attn`` = [Q | K | V])."""
    conv.weight.copy_(torch.cat([lin.weight.T for lin in linears], dim=1))
    conv.bias.copy_(torch.cat([lin.bias for lin in linears]))


def gpt2_config(
    d_model: int, n_heads: int, n_layers: int, vocab: int, n_positions: int, eps: float = 1e-5, **special_ids
):
    """A ``GPT2Config`` of the hand-written model's shape: no dropout, 4 x d_model feed-forward,
    ``gelu_new``, tied embeddings; ``sdpa`` attention (its causal masking is torch's ``is_causal``).
    ``special_ids``: ``bos_token_id``, ``eos_token_id``, ``pad_token_id`` (default: none, as the
    comparisons of step 3 need none; GPT-2's own 50256 lies outside a small vocabulary)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab,
        n_positions=n_positions,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=n_heads,
        n_inner=4 * d_model,
        activation_function="gelu_new",
        layer_norm_epsilon=eps,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="sdpa",
        **{"bos_token_id": None, "eos_token_id": None, "pad_token_id": None, **special_ids},
    )


@torch.no_grad()
def to_gpt2_block(hand: TransformerBlock, config):
    """The hand-written pre-norm block's weights in Transformers' ``GPT2Block``."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    block = GPT2Block(config, layer_idx=0).to(hand.ff1.weight.dtype).eval()
    _copy_gpt2_block(hand, block)
    return block


def _copy_gpt2_block(hand: TransformerBlock, block) -> None:
    block.ln_1.load_state_dict(hand.ln1.state_dict())
    block.ln_2.load_state_dict(hand.ln2.state_dict())
    _linear_to_conv1d([hand.attn.q, hand.attn.k, hand.attn.v], block.attn.c_attn)
    _linear_to_conv1d([hand.attn.o], block.attn.c_proj)
    _linear_to_conv1d([hand.ff1], block.mlp.c_fc)
    _linear_to_conv1d([hand.ff2], block.mlp.c_proj)


@torch.no_grad()
def to_gpt2_lm(hand: TinyGPT, config):
    """The hand-written model's weights in Transformers' ``GPT2LMHeadModel`` (the positional table into
    ``wpe``, the blocks, ``ln_f``; the head is tied to ``wte``)."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel(config).to(hand.tokens.weight.dtype).eval()
    model.transformer.wte.weight.copy_(hand.tokens.weight)
    model.transformer.wpe.weight.copy_(hand.positions)
    for ours, theirs in zip(hand.blocks, model.transformer.h, strict=True):
        _copy_gpt2_block(ours, theirs)
    model.transformer.ln_f.load_state_dict(hand.ln_f.state_dict())
    return model


@torch.no_grad()
def to_bert_layer(hand: TransformerBlock, d_model: int, n_heads: int, d_ff: int, eps: float):
    """The hand-written post-norm block's weights in Transformers' ``BertLayer`` (bidirectional:
    ``is_decoder`` false), exact GELU, no dropout, ``sdpa`` attention."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    config = BertConfig(
        hidden_size=d_model,
        num_attention_heads=n_heads,
        intermediate_size=d_ff,
        hidden_act="gelu",
        layer_norm_eps=eps,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )
    layer = BertLayer(config).to(hand.ff1.weight.dtype).eval()
    attn = layer.attention
    for ours, theirs in ((hand.attn.q, attn.self.query), (hand.attn.k, attn.self.key), (hand.attn.v, attn.self.value)):
        theirs.load_state_dict(ours.state_dict())
    attn.output.dense.load_state_dict(hand.attn.o.state_dict())
    attn.output.LayerNorm.load_state_dict(hand.ln1.state_dict())
    layer.intermediate.dense.load_state_dict(hand.ff1.state_dict())
    layer.output.dense.load_state_dict(hand.ff2.state_dict())
    layer.output.LayerNorm.load_state_dict(hand.ln2.state_dict())
    return layer


def first_output(out):
    """A library layer's hidden states, whether it returns a tensor or a tuple (versions differ)."""
    return out[0] if isinstance(out, tuple) else out
