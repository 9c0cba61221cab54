"""Course chapter 2 lab: from n-grams to the Transformer, on one corpus and one vocabulary.

1. A statistical LM: NLTK's interpolated Kneser-Ney n-gram model; held-out perplexity.
2. A neural LM: Bengio et al. (2003)'s feed-forward model in PyTorch, same split, same units.
3. Attention by hand (attention.py): scaled dot-product attention, multi-head attention, the causal
   mask, sinusoidal positions, the Transformer block; the same weights in Transformers' ``GPT2Block``
   (causal), ``BertLayer`` (bidirectional) and a whole ``GPT2LMHeadModel``: outputs compared.
4. GPT-1 vs BERT objectives: a tiny ``GPT2LMHeadModel`` trained on next-token prediction (under the
   causal mask of step 3) and a tiny ``BertForMaskedLM`` on masked-LM; held-out perplexity and
   masked-token accuracy, generation, attention maps of one sentence.

The table n-gram -> neural -> Transformer compares perplexities over the same predicted tokens
(corpus.py: each held-out word, ``<UNK>`` included, and one ``</s>`` per sentence).

    python labs/lm-foundations/run.py --profile smoke [--set attention.causal_mask=false]

Outputs (``outputs/lm-foundations/<profile>/<UTC time>/``): ``metrics.json``, ``perplexity_table.md``,
``loss_curves.png``, ``attention_decoder.png``, ``attention_encoder.png``, ``train_log.jsonl``,
``decoder/`` and ``encoder/`` (the tiny models, safetensors), ``manifest.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this lab's modules
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # labkit, when run as a script
import labkit.lab  # noqa: F401  (first, before torch: labkit/lab/__init__.py)

# isort: split

import torch
from nltk.tokenize import wordpunct_tokenize
from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from labkit.errors import LabError
from labkit.lab.device import peak_memory_bytes
from labkit.lab.runner import RunContext, main

from attention import (
    TinyGPT,
    TransformerBlock,
    causal_mask,
    first_output,
    full_mask,
    gpt2_config,
    randomize_,
    scaled_dot_product_attention,
    to_bert_layer,
    to_gpt2_block,
    to_gpt2_lm,
)
from corpus import BOS, EOS, PAD, check_context, data_fingerprint, load_corpus, word_tokenizer
from language_models import (
    FeedForwardLM,
    additive_mask,
    context_windows,
    count_parameters,
    decoder_perplexity,
    feedforward_perplexity,
    fit_kneser_ney,
    ngram_perplexity,
    ngram_table_size,
    sentence_batch,
    train,
)
from plots import plot_attention, plot_loss_curves, write_table


def check_settings(cfg: dict) -> None:
    """Step 0: the shapes the run refuses before reading any text, one line each."""
    for name, shape in (("equivalence", cfg["equivalence"]), ("model", cfg["model"])):
        d, h = shape["hidden_size"], shape["num_attention_heads"]
        if d % h:
            raise LabError(f"{name}.hidden_size={d} must be a multiple of {name}.num_attention_heads={h}")
        if d % 2 and name == "equivalence":  # the hand-written decoder's sinusoidal positions
            raise LabError(f"{name}.hidden_size={d}: the sinusoidal positions need an even width")
    if not 0 < cfg["encoder"]["mlm_probability"] < 1:
        raise LabError(f"encoder.mlm_probability={cfg['encoder']['mlm_probability']}: give a fraction in (0, 1)")


def decoder_mask(t: int, causal: bool, device=None) -> torch.Tensor:
    """The decoder's mask from the setting ``attention.causal_mask``: causal (true) or, the broken
    pipeline, every position seeing every other (false)."""
    return causal_mask(t, device) if causal else full_mask(t, device)


@torch.no_grad()
def step3_by_hand(cfg: dict, causal: bool, device: str, seed: int) -> dict:
    """Step 3: the hand-written pieces against PyTorch's and Transformers' own, same weights, float32."""
    eq = cfg["equivalence"]
    d, h, layers, t = eq["hidden_size"], eq["num_attention_heads"], eq["num_hidden_layers"], eq["tokens"]
    eps, vocab = 1e-5, eq["vocab_size"]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(eq["batch"], t, d, generator=g).to(device)
    mask = decoder_mask(t, causal, device)

    # 3a. Scaled dot-product attention vs torch's fused kernel (is_causal=True), 4 heads of d/h.
    q, k, v = (torch.randn(eq["batch"], h, t, d // h, generator=g).to(device) for _ in range(3))
    ours, weights = scaled_dot_product_attention(q, k, v, mask)
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    sdpa = {
        "max_abs_diff": float((ours - theirs).abs().max()),
        "row_sum_max_error": float((weights.sum(-1) - 1).abs().max()),
        "weight_above_diagonal": float(weights.triu(1).abs().max()),
    }

    # 3b. The pre-norm block (multi-head attention under the decoder mask) in GPT-2's GPT2Block.
    block = randomize_(TransformerBlock(d, h, 4 * d, pre_norm=True, eps=eps), g).to(device).eval()
    library = to_gpt2_block(block, gpt2_config(d, h, 1, vocab, t, eps)).to(device)
    gpt2_block = {"max_abs_diff": float((block(x, mask) - first_output(library(x))).abs().max())}

    # 3c. The post-norm block, no mask (bidirectional), in BERT's BertLayer.
    post = randomize_(TransformerBlock(d, h, 4 * d, pre_norm=False, eps=eps), g).to(device).eval()
    bert = to_bert_layer(post, d, h, 4 * d, eps).to(device)
    bert_layer = {"max_abs_diff": float((post(x, None) - first_output(bert(x))).abs().max())}

    # 3d. A whole decoder by hand (embeddings + sinusoidal positions + blocks + ln_f + tied head)
    #     in GPT2LMHeadModel (positions into wpe); and the causal check: changing the last half of
    #     the tokens must leave the first half's logits unchanged.
    gpt = randomize_(TinyGPT(vocab, t, d, h, layers, eps), g).to(device).eval()
    ids = torch.randint(vocab, (eq["batch"], t), generator=g).to(device)
    lm = to_gpt2_lm(gpt, gpt2_config(d, h, layers, vocab, t, eps)).to(device)
    logits = gpt(ids, mask)
    changed = ids.clone()
    changed[:, t // 2 :] = (ids[:, t // 2 :] + 1) % vocab
    # The same comparison in float64: the float32 differences above are rounding, not a formula.
    gpt64 = TinyGPT(vocab, t, d, h, layers, eps).to(device).double().eval()
    gpt64.load_state_dict(gpt.state_dict())
    lm64 = to_gpt2_lm(gpt64, gpt2_config(d, h, layers, vocab, t, eps)).to(device)
    gpt2_model = {
        "max_abs_logit_diff": float((logits - lm(input_ids=ids).logits).abs().max()),
        "float64_max_abs_logit_diff": float((gpt64(ids, mask) - lm64(input_ids=ids).logits).abs().max()),
        "parameters": count_parameters(gpt),
        "library_parameters": count_parameters(lm),
    }
    causal_check = {"future_influence": float((gpt(changed, mask) - logits)[:, : t // 2].abs().max())}
    print(
        f"3. by hand vs library (float32, tolerance {eq['tolerance']:g}): attention {sdpa['max_abs_diff']:.2e}, "
        f"GPT2Block {gpt2_block['max_abs_diff']:.2e}, BertLayer {bert_layer['max_abs_diff']:.2e}, "
        f"GPT2LMHeadModel logits {gpt2_model['max_abs_logit_diff']:.2e} "
        f"(float64: {gpt2_model['float64_max_abs_logit_diff']:.1e}); "
        f"future tokens' influence on the past {causal_check['future_influence']:.2e}",
        flush=True,
    )
    return {
        "tolerance": eq["tolerance"],
        "attention": sdpa,
        "gpt2_block": gpt2_block,
        "bert_layer": bert_layer,
        "gpt2_model": gpt2_model,
        "causal": causal_check,
    }


def words_of(text: str, corpus, lowercase: bool) -> list[str]:
    """A prompt or sentence in the corpus's units (``<UNK>`` for unknown words)."""
    return list(corpus.vocab.lookup(wordpunct_tokenize(text.lower() if lowercase else text)))


def run(ctx: RunContext) -> dict:
    cfg, out, device, seed = ctx.config, ctx.run_dir, ctx.device, ctx.config["seed"]
    data_cfg, model_cfg = cfg["data"], cfg["model"]
    check_settings(cfg)
    hf_logging.disable_progress_bar()  # no progress bars for saving the tiny models
    log_path = out / "train_log.jsonl"

    # 1. Data: sentences, words, the shared vocabulary (<UNK> below data.unk_cutoff); refuse an n or
    #    a context the text cannot fill. Then the statistical LM: NLTK's interpolated Kneser-Ney.
    corpus = load_corpus(data_cfg, ctx.repo_root)
    n = cfg["ngram"]["order"]
    check_context(corpus, n, model_cfg["n_positions"], data_cfg, ctx.repo_root)
    tokenizer = word_tokenizer(corpus.words)
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    train_ids = [tokenizer.convert_tokens_to_ids(s) for s in corpus.train]
    test_ids = [tokenizer.convert_tokens_to_ids(s) for s in corpus.test]
    print(
        f"data: {len(corpus.train)} / {len(corpus.test)} sentences, {corpus.predicted_tokens('test')} held-out "
        f"tokens to predict, vocabulary {len(corpus.vocab)} (+ {PAD}, <mask>), "
        f"held-out <UNK> rate {corpus.unk_rate:.3f}",
        flush=True,
    )
    kn = fit_kneser_ney(corpus, n, cfg["ngram"]["discount"])
    ngram_ppl, ngram_tokens = ngram_perplexity(kn, corpus.test)
    print(f"1. Kneser-Ney {n}-gram (NLTK): held-out perplexity {ngram_ppl:.3f}", flush=True)

    # 2. The neural LM: Bengio et al. 2003 on the same n - 1 words of context.
    ff_cfg = cfg["neural"]
    torch.manual_seed(seed)
    ff = FeedForwardLM(len(corpus.words), n - 1, ff_cfg["embedding_dim"], ff_cfg["hidden_size"]).to(device)
    x_train, y_train = (t.to(device) for t in context_windows(train_ids, n - 1, ids["bos"], ids["eos"]))
    x_test, y_test = (t.to(device) for t in context_windows(test_ids, n - 1, ids["bos"], ids["eos"]))
    ff_before = feedforward_perplexity(ff, x_test, y_test)
    ff_log = train(
        ff,
        lambda i: torch.nn.functional.cross_entropy(ff(x_train[i.to(device)]), y_train[i.to(device)]),
        len(y_train),
        ff_cfg["training"],
        seed,
        log_path,
        "feed-forward",
    )
    ff_ppl = feedforward_perplexity(ff, x_test, y_test)
    print(f"2. feed-forward neural LM: held-out perplexity {ff_before:.1f} -> {ff_ppl:.3f}", flush=True)

    # 3. Attention and the Transformer block by hand, proved equal to the library's.
    causal = cfg["attention"]["causal_mask"]
    step3 = step3_by_hand(cfg, causal, device, seed)

    # 4a. GPT-1's objective: a tiny GPT2LMHeadModel, next-token prediction on whole sentences, trained
    #     under the decoder mask of step 3 (a custom 4-D mask), evaluated with the library's own.
    shape = {
        "hidden_size": model_cfg["hidden_size"],
        "num_hidden_layers": model_cfg["num_hidden_layers"],
        "num_attention_heads": model_cfg["num_attention_heads"],
    }
    torch.manual_seed(seed)
    gpt_config = gpt2_config(
        shape["hidden_size"],
        shape["num_attention_heads"],
        shape["num_hidden_layers"],
        len(corpus.words),
        model_cfg["n_positions"],
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    decoder = GPT2LMHeadModel(gpt_config).to(device)
    dec_before, _ = decoder_perplexity(decoder, test_ids, ids, cfg["evaluation"]["batch_size"], device)

    def decoder_loss(i: torch.Tensor) -> torch.Tensor:
        b = {k: v.to(device) for k, v in sentence_batch([train_ids[j] for j in i.tolist()], **ids).items()}
        width = b["input_ids"].shape[1]
        mask = additive_mask(decoder_mask(width, causal, device), len(i), torch.float32)
        return decoder(input_ids=b["input_ids"], attention_mask=mask, labels=b["labels"]).loss

    dec_log = train(decoder, decoder_loss, len(train_ids), cfg["decoder"]["training"], seed, log_path, "GPT (decoder)")
    dec_ppl, dec_tokens = decoder_perplexity(decoder, test_ids, ids, cfg["evaluation"]["batch_size"], device)
    print(f"4a. tiny GPT: held-out perplexity {dec_before:.1f} -> {dec_ppl:.3f}", flush=True)

    # 4b. BERT's objective: a tiny BertForMaskedLM, masked-LM (15% of the words: 80% <mask>, 10% a
    #     random word, 10% kept; Devlin et al. 2019 sec. 3.1) through Transformers' collator.
    torch.manual_seed(seed)
    bert_config = BertConfig(
        vocab_size=len(corpus.words),
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        intermediate_size=4 * shape["hidden_size"],
        max_position_embeddings=model_cfg["n_positions"],
        type_vocab_size=1,
        pad_token_id=ids["pad"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    encoder = BertForMaskedLM(bert_config).to(device)
    enc_cfg = cfg["encoder"]
    train_rows = [{"input_ids": [ids["bos"]] + s + [ids["eos"]]} for s in train_ids]
    test_rows = [{"input_ids": [ids["bos"]] + s + [ids["eos"]]} for s in test_ids]
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=enc_cfg["mlm_probability"], seed=seed)

    def encoder_loss(i: torch.Tensor) -> torch.Tensor:
        b = {k: v.to(device) for k, v in collate([train_rows[j] for j in i.tolist()]).items()}
        return encoder(**b).loss

    acc_before = masked_accuracy(encoder, tokenizer, test_rows, enc_cfg["mlm_probability"], seed, device)
    enc_log = train(encoder, encoder_loss, len(train_rows), enc_cfg["training"], seed, log_path, "BERT (encoder)")
    acc = masked_accuracy(encoder, tokenizer, test_rows, enc_cfg["mlm_probability"], seed, device)
    print(
        f"4b. tiny BERT: held-out masked-token accuracy {acc_before['accuracy']:.3f} -> {acc['accuracy']:.3f}",
        flush=True,
    )

    # 4c. Generation from the decoder (greedy: the model's single most likely continuation).
    gen_cfg = cfg["generation"]
    samples = []
    for prompt in gen_cfg["prompts"]:
        prompt_ids = [ids["bos"]] + tokenizer.convert_tokens_to_ids(words_of(prompt, corpus, data_cfg["lowercase"]))
        generated = decoder.generate(
            torch.tensor([prompt_ids], device=device),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=device),
            max_new_tokens=gen_cfg["max_new_tokens"],
            do_sample=False,
            eos_token_id=ids["eos"],
            pad_token_id=ids["pad"],
        )[0].tolist()
        text = " ".join(tokenizer.convert_ids_to_tokens(generated[1:]))
        samples.append({"prompt": prompt, "text": text, "complete": generated[-1] == ids["eos"]})
        print(f"4c. {prompt!r} -> {text}", flush=True)

    # 4d. Attention maps of one sentence, every layer and head, from each model.
    sentence = [BOS] + words_of(cfg["attention_maps"]["sentence"], corpus, data_cfg["lowercase"]) + [EOS]
    maps = {}
    for name, model in (("decoder", decoder), ("encoder", encoder)):
        model.set_attn_implementation("eager")  # sdpa returns no weights
        with torch.no_grad():
            attn = model(
                input_ids=torch.tensor([tokenizer.convert_tokens_to_ids(sentence)], device=device),
                output_attentions=True,
            ).attentions
        stacked = torch.stack([a[0].float().cpu() for a in attn])  # (layers, heads, T, T)
        plot_attention(
            stacked, sentence, out / f"attention_{name}.png", f"tiny {'GPT' if name == 'decoder' else 'BERT'}"
        )
        maps[name] = {"weight_above_diagonal": float(stacked.triu(1).abs().max()), "tokens": len(sentence)}

    # 5. The table, the curves, the models.
    rows = [
        {
            "model": f"Kneser-Ney {n}-gram (NLTK)",
            "parameters": ngram_table_size(kn),
            "perplexity": ngram_ppl,
            "tokens": ngram_tokens,
        },
        {
            "model": f"feed-forward neural LM, {n - 1} words of context",
            "parameters": count_parameters(ff),
            "perplexity": ff_ppl,
            "tokens": len(y_test),
        },
        {
            "model": "tiny GPT (whole sentence as context)",
            "parameters": count_parameters(decoder),
            "perplexity": dec_ppl,
            "tokens": dec_tokens,
        },
    ]
    write_table(rows, out / "perplexity_table.md", len(corpus.vocab), corpus.unk_rate)
    plot_loss_curves(ff_log + dec_log + enc_log, out / "loss_curves.png", f"{ctx.lab.name} ({ctx.profile})")
    decoder.save_pretrained(out / "decoder")
    encoder.save_pretrained(out / "encoder")
    tokenizer.save_pretrained(out / "decoder")
    tokenizer.save_pretrained(out / "encoder")
    return {
        "data": {
            "train_sentences": len(corpus.train),
            "test_sentences": len(corpus.test),
            "vocabulary": len(corpus.vocab),
            "test_tokens": corpus.predicted_tokens("test"),
            "test_unk_rate": corpus.unk_rate,
            "fingerprint": data_fingerprint(data_cfg, ctx.repo_root),
        },
        "table": {
            "rows": rows,
            "same_tokens": len({r["tokens"] for r in rows}) == 1,
            "neural_vs_ngram": ff_ppl / ngram_ppl,
            "transformer_vs_ngram": dec_ppl / ngram_ppl,
        },
        "step1": {"ngram": {"order": n, "perplexity": ngram_ppl, "table_size": ngram_table_size(kn)}},
        "step2": {
            "neural": {
                "parameters": count_parameters(ff),
                "perplexity_before": ff_before,
                "perplexity": ff_ppl,
                "perplexity_vs_ngram": ff_ppl / ngram_ppl,
                "loss_first": ff_log[0]["loss"],
                "loss_last": ff_log[-1]["loss"],
            }
        },
        "step3": step3,
        "step4": {
            "decoder": {
                "parameters": count_parameters(decoder),
                "perplexity_before": dec_before,
                "perplexity": dec_ppl,
                "perplexity_vs_ngram": dec_ppl / ngram_ppl,
                "train_loss_last": dec_log[-1]["loss"],
                "attention": maps["decoder"],
            },
            "encoder": {
                "parameters": count_parameters(encoder),
                "masked_accuracy_before": acc_before["accuracy"],
                "masked_accuracy": acc["accuracy"],
                "masked_tokens": acc["masked"],
                "masked_correct": acc["correct"],
                "train_loss_last": enc_log[-1]["loss"],
                "attention": maps["encoder"],
            },
            "generation": {"samples": samples, "complete_fraction": sum(s["complete"] for s in samples) / len(samples)},
        },
        "cpu_threads": torch.get_num_threads(),
        "memory": {"peak_gib": round(peak_memory_bytes(device) / 2**30, 3)},
    }


@torch.no_grad()
def masked_accuracy(
    model, tokenizer, rows: list[dict], probability: float, seed: int, device: str, batch: int = 256
) -> dict:
    """Held-out masked-token accuracy: the collator masks the held-out sentences the same way every
    time (its own seeded generator); the share of masked positions whose argmax is the original word."""
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability, seed=seed + 1)
    model.eval()
    right = total = 0
    for i in range(0, len(rows), batch):
        b = {k: v.to(device) for k, v in collate(rows[i : i + batch]).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        scored = b["labels"] != -100
        right += int((logits.argmax(-1)[scored] == b["labels"][scored]).sum())
        total += int(scored.sum())
    return {"accuracy": right / max(total, 1), "masked": total, "correct": right}


if __name__ == "__main__":
    raise SystemExit(main("lm-foundations", run))
