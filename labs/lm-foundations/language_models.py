"""Steps 1, 2 and 4's models and their one perplexity: the n-gram (NLTK), the feed-forward neural LM
(Bengio et al. 2003), and the tiny GPT / BERT of Transformers; the training loop they share.

Every perplexity here is ``exp(total NLL / predicted tokens)`` over the units of :mod:`corpus`: each
held-out word (``<UNK>`` included) and one ``</s>`` per sentence, each predicted from the words before
it in its sentence.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from nltk.lm import KneserNeyInterpolated
from nltk.lm.preprocessing import padded_everygram_pipeline
from nltk.util import ngrams
from torch import nn

from corpus import BOS, EOS, Corpus

# --- step 1: the n-gram model --------------------------------------------------------------------


def fit_kneser_ney(corpus: Corpus, order: int, discount: float) -> KneserNeyInterpolated:
    """NLTK's interpolated Kneser-Ney model (Kneser & Ney 1995; Chen & Goodman 1998) of ``order``
    over the training sentences: ``padded_everygram_pipeline`` pads each sentence with ``order - 1``
    ``<s>`` and ``</s>`` and counts every 1..order-gram; the vocabulary is the corpus's."""
    model = KneserNeyInterpolated(order, discount=discount, vocabulary=corpus.vocab)
    grams, _ = padded_everygram_pipeline(order, corpus.train)
    model.fit(grams)
    return model


def eval_ngrams(sentences: list[list[str]], order: int) -> list[tuple[str, ...]]:
    """The n-grams whose last word is predicted: ``order - 1`` ``<s>`` on the left, one ``</s>`` on the
    right (so each word and one end-of-sentence are predicted, as by every other model)."""
    return [g for s in sentences for g in ngrams([BOS] * (order - 1) + s + [EOS], order)]


def ngram_perplexity(model: KneserNeyInterpolated, sentences: list[list[str]]) -> tuple[float, int]:
    """``(perplexity, predicted tokens)``: NLTK's ``perplexity`` (2 to the mean negative log2 score,
    the same number as ``exp`` of the mean NLL in nats)."""
    grams = eval_ngrams(sentences, model.order)
    return float(model.perplexity(grams)), len(grams)


def ngram_table_size(model: KneserNeyInterpolated) -> int:
    """Distinct n-grams stored (orders 1..n): the n-gram model's 'parameters'."""
    return sum(
        len(model.counts[i]) if i == 1 else sum(len(v) for v in model.counts[i].values())
        for i in range(1, model.order + 1)
    )


# --- step 2: the feed-forward neural LM ----------------------------------------------------------


class FeedForwardLM(nn.Module):
    """Bengio et al. 2003, "A Neural Probabilistic Language Model", sec. 2 (without the optional direct
    connections): the ``context`` previous words' embeddings ``C(w)`` concatenated into ``x``, then
    ``y = b + U tanh(d + H x)``, a softmax over the vocabulary.

    ``forward(context_ids (b, context) long) -> logits (b, vocab)``.
    """

    def __init__(self, vocab: int, context: int, embedding_dim: int, hidden_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding_dim)  # C
        self.hidden = nn.Linear(context * embedding_dim, hidden_size)  # H, d
        self.out = nn.Linear(hidden_size, vocab)  # U, b

    def forward(self, context_ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.embed(context_ids).flatten(1))))


def context_windows(sentences: list[list[int]], context: int, bos: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(contexts (N, context), targets (N,))``: for each word and each sentence's ``</s>``, the
    ``context`` ids before it, ``<s>`` where the sentence has fewer."""
    xs, ys = [], []
    for s in sentences:
        padded = [bos] * context + s + [eos]
        for i in range(context, len(padded)):
            xs.append(padded[i - context : i])
            ys.append(padded[i])
    return torch.tensor(xs), torch.tensor(ys)


@torch.no_grad()
def feedforward_perplexity(model: FeedForwardLM, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> float:
    model.eval()
    nll = sum(
        float(nn.functional.cross_entropy(model(x[i : i + batch]), y[i : i + batch], reduction="sum"))
        for i in range(0, len(y), batch)
    )
    return math.exp(nll / len(y))


# --- step 4: sequences for the tiny GPT and BERT -------------------------------------------------


def sentence_batch(sentences: list[list[int]], bos: int, eos: int, pad: int) -> dict[str, torch.Tensor]:
    """``<s> w1 .. wk </s>`` per sentence, right-padded: ``input_ids``, ``attention_mask`` (1 = real),
    and ``labels`` (the ids, ``-100`` on padding and on ``<s>``, which no model predicts; GPT-2 shifts
    labels by one inside its loss, so position i's logits are scored on token i + 1)."""
    seqs = [[bos] + s + [eos] for s in sentences]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad)
    real = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        real[i, : len(s)] = 1
    labels = ids.masked_fill(real == 0, -100)
    labels[:, 0] = -100
    return {"input_ids": ids, "attention_mask": real, "labels": labels}


@torch.no_grad()
def decoder_perplexity(model, sentences: list[list[int]], ids: dict, batch: int, device: str) -> tuple[float, int]:
    """``(perplexity, predicted tokens)`` of a causal LM on whole sentences, with the model's own
    causal mask (the library's, not the one it was trained under) and the padding mask."""
    model.eval()
    nll, count = 0.0, 0
    for i in range(0, len(sentences), batch):
        b = {k: v.to(device) for k, v in sentence_batch(sentences[i : i + batch], **ids).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
        targets = b["labels"][:, 1:]
        nll += float(
            nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
            )
        )
        count += int((targets != -100).sum())
    return math.exp(nll / count), count


def additive_mask(allowed: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """A boolean ``(t, t)`` mask as the additive float ``(batch, 1, t, t)`` mask Transformers takes as a
    custom 4-D ``attention_mask`` (0 where allowed, the dtype's minimum where not); a 4-D mask is used
    as given, in place of the model's own causal mask (``transformers.masking_utils``)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask.expand(batch, 1, *allowed.shape)


# --- the training loop steps 2 and 4 share --------------------------------------------------------


def train(
    model: nn.Module,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    examples: int,
    cfg: dict,
    seed: int,
    log_path: Path,
    name: str,
) -> list[dict]:
    """Minibatch training: each step draws ``per_device_train_batch_size`` example indices (seeded,
    with replacement), ``loss_of(indices)`` gives the mean loss, AdamW (``learning_rate``,
    ``weight_decay``), gradients clipped to ``max_grad_norm``, Transformers' ``get_scheduler``
    (``lr_scheduler_type``, ``warmup_steps``) for ``max_steps``. Every ``logging_steps`` a row
    ``{"model", "step", "loss"}`` (the mean over those steps) is appended to ``log_path``."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    schedule = get_scheduler(cfg["lr_scheduler_type"], optimizer, cfg["warmup_steps"], cfg["max_steps"])
    generator = torch.Generator().manual_seed(seed)
    rows, running = [], []
    model.train()
    for step in range(1, cfg["max_steps"] + 1):
        loss = loss_of(torch.randint(examples, (cfg["per_device_train_batch_size"],), generator=generator))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
        optimizer.step()
        schedule.step()
        running.append(float(loss.detach()))
        if step % cfg["logging_steps"] == 0 or step == cfg["max_steps"]:
            rows.append({"model": name, "step": step, "loss": sum(running) / len(running)})
            running = []
            with log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    model.eval()
    return rows


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
