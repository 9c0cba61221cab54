"""Unit tests of the lm-foundations lab: each hand-written piece against hand-computed values and
against the library; a piece written wrong (no 1/sqrt(d) scale, no causal mask, the wrong norm
order or GELU) makes the equivalence checks of expected/smoke.yaml FAIL; the shared units behind the
perplexity table; every bad input the issue names."""

from __future__ import annotations

import math
import re
import shlex

import pytest
import torch

from labkit.config import REPO_ROOT, get_lab, load_profile
from labkit.errors import LabError
from labkit.verify import load_expected

import attention
import run
from attention import (
    TransformerBlock,
    causal_mask,
    first_output,
    gelu_erf,
    gpt2_config,
    randomize_,
    scaled_dot_product_attention,
    sinusoidal_positions,
    to_bert_layer,
    to_gpt2_block,
)
from corpus import EOS, check_context, data_fingerprint, load_corpus, word_tokenizer
from language_models import (
    additive_mask,
    context_windows,
    eval_ngrams,
    fit_kneser_ney,
    ngram_perplexity,
    sentence_batch,
)

LAB = get_lab("lm-foundations")
SMOKE = load_profile(LAB, "smoke")[0]
EXPECTED = load_expected(LAB.expected_path("smoke"))["metrics"]
TOL = SMOKE["equivalence"]["tolerance"]
STEP3_CHECKS = [name for name in EXPECTED if name.startswith("step3.") and name.endswith("diff")]


def lookup(metrics: dict, dotted: str):
    for part in dotted.split("."):
        metrics = metrics[part]
    return metrics


def failing_step3_checks(step3: dict) -> set[str]:
    """The step-3 checks of expected/smoke.yaml (max bounds) a step-3 result fails."""
    return {name for name in STEP3_CHECKS if not lookup({"step3": step3}, name) <= EXPECTED[name]["max"]}


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(SMOKE["data"], REPO_ROOT)


# --- step 3, piece by piece --------------------------------------------------------------------------


def test_attention_by_hand_on_numbers():
    """One query, two keys, d_k = 4: scores (q.k1, q.k2) / 2 = (1, 0); weights softmax(1, 0)."""
    q = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    k = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]])
    v = torch.tensor([[[10.0], [20.0]]])
    out, w = scaled_dot_product_attention(q, k, v)
    e = math.e
    assert w[0, 0].tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)])
    assert out.item() == pytest.approx(10 * e / (e + 1) + 20 / (e + 1))


def test_causal_mask_and_weights_on_the_future_are_exactly_zero():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    out, w = scaled_dot_product_attention(q, k, v, causal_mask(6))
    assert (w.triu(1) == 0).all() and w[..., 0, 0].eq(1).all()  # the first token sees only itself
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_sinusoidal_positions_values_and_relative_shift():
    """Vaswani et al. sec. 3.5 on numbers, and its stated property: PE(pos + k) is a linear function of
    PE(pos) (a rotation by k x frequency in each (sin, cos) pair), the same for every pos."""
    pe = sinusoidal_positions(50, 8)
    assert pe[0].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert pe[1, 0].item() == pytest.approx(math.sin(1)) and pe[1, 1].item() == pytest.approx(math.cos(1))
    assert pe[3, 2].item() == pytest.approx(math.sin(3 / 10000 ** (2 / 8)))
    k = 5
    freq = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    c, s = torch.cos(k * freq), torch.sin(k * freq)
    sin, cos = pe[:-k, 0::2].double(), pe[:-k, 1::2].double()
    torch.testing.assert_close(pe[k:, 0::2].double(), sin * c + cos * s, atol=1e-6, rtol=0)
    torch.testing.assert_close(pe[k:, 1::2].double(), cos * c - sin * s, atol=1e-6, rtol=0)


def _block_diff(pre_norm: bool, scale=None, mask=None, act=None) -> float:
    g = torch.Generator().manual_seed(1)
    d, h, t = 32, 4, 10
    block = randomize_(TransformerBlock(d, h, 4 * d, pre_norm=pre_norm, scale=scale), g).eval()
    if act is not None:
        block.act = act
    x = torch.randn(2, t, d, generator=g)
    with torch.no_grad():
        if pre_norm:
            library = to_gpt2_block(block, gpt2_config(d, h, 1, 50, t))
            return float((block(x, causal_mask(t) if mask is None else mask) - first_output(library(x))).abs().max())
        library = to_bert_layer(block, d, h, 4 * d, 1e-5)
        return float((block(x, mask) - first_output(library(x))).abs().max())


def test_blocks_equal_gpt2_and_bert_and_fail_when_a_piece_is_wrong():
    assert _block_diff(True) < TOL and _block_diff(False) < TOL
    assert _block_diff(True, scale=1.0) > 100 * TOL  # the 1/sqrt(d_head) scale dropped
    assert _block_diff(False, scale=1.0) > 100 * TOL
    assert _block_diff(True, mask=attention.full_mask(10)) > 100 * TOL  # no causal mask
    assert _block_diff(False, mask=causal_mask(10)) > 100 * TOL  # BERT is bidirectional
    assert _block_diff(True, act=gelu_erf) > 10 * TOL  # GPT-2 uses the tanh GELU, BERT the exact one


def test_step3_passes_its_checks_and_fails_them_without_the_scale(monkeypatch):
    """The run's own step 3 against expected/smoke.yaml: every check passes; with the scale dropped
    inside the hand-written attention (the function every block calls), the block and model checks FAIL."""
    good = run.step3_by_hand(SMOKE, True, "cpu", 42)
    assert not failing_step3_checks(good)
    assert good["causal"]["future_influence"] == 0.0

    def unscaled(q, k, v, mask=None, scale=None):
        return scaled_dot_product_attention(q, k, v, mask, 1.0)

    monkeypatch.setattr(attention, "scaled_dot_product_attention", unscaled)
    bad = run.step3_by_hand(SMOKE, True, "cpu", 42)
    assert {
        "step3.gpt2_block.max_abs_diff",
        "step3.bert_layer.max_abs_diff",
        "step3.gpt2_model.max_abs_logit_diff",
    } <= failing_step3_checks(bad)


def test_step3_without_the_causal_mask_fails_and_lets_the_future_in():
    bad = run.step3_by_hand(SMOKE, False, "cpu", 42)
    assert {"step3.gpt2_block.max_abs_diff", "step3.gpt2_model.max_abs_logit_diff"} <= failing_step3_checks(bad)
    assert bad["bert_layer"]["max_abs_diff"] < TOL  # the encoder has no mask to lose
    assert bad["causal"]["future_influence"] > EXPECTED["step3.causal.future_influence"]["max"]


def test_the_training_mask_is_the_library_s_causal_mask():
    """Step 4 trains GPT-2 under the hand-written mask (a custom 4-D mask) and evaluates it with the
    library's own: the logits are equal; the full mask gives others."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(gpt2_config(32, 4, 2, 40, 16)).eval()
    ids = torch.randint(40, (2, 9))
    with torch.no_grad():
        own = model(input_ids=ids).logits
        ours = model(input_ids=ids, attention_mask=additive_mask(causal_mask(9), 2, torch.float32)).logits
        leaky = model(input_ids=ids, attention_mask=additive_mask(attention.full_mask(9), 2, torch.float32)).logits
    torch.testing.assert_close(ours, own, atol=1e-5, rtol=0)
    assert (leaky - own).abs().max() > 1e-2


# --- the same units for every perplexity ------------------------------------------------------------


def test_every_model_predicts_the_same_tokens(corpus):
    tok = word_tokenizer(corpus.words)
    ids = [tok.convert_tokens_to_ids(s) for s in corpus.test]
    want = corpus.predicted_tokens("test")
    assert want == sum(len(s) for s in corpus.test) + len(corpus.test)
    assert len(eval_ngrams(corpus.test, 3)) == want
    assert len(context_windows(ids, 2, tok.bos_token_id, tok.eos_token_id)[1]) == want
    labels = sentence_batch(ids, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)["labels"]
    assert int((labels != -100).sum()) == want
    assert eval_ngrams([["a", "b"]], 3) == [("<s>", "<s>", "a"), ("<s>", "a", "b"), ("a", "b", EOS)]


def test_kneser_ney_is_a_distribution_and_perplexity_is_exp_mean_nll(corpus):
    lm = fit_kneser_ney(corpus, 3, 0.1)
    for context in (("the", "miller"), ("<s>", "<s>"), ("never", "seen")):
        # NLTK's interpolation leaks a few parts per million here (measured 1 + 4.2e-6)
        assert sum(lm.score(w, context) for w in corpus.vocab) == pytest.approx(1.0, abs=1e-4)
    sents = corpus.test[:20]
    ppl, n = ngram_perplexity(lm, sents)
    nll = -sum(math.log(lm.score(g[-1], g[:-1])) for g in eval_ngrams(sents, 3))
    assert ppl == pytest.approx(math.exp(nll / n), rel=1e-9)


def test_tokenizer_ids_are_the_vocabulary_and_unknown_words_are_unk(corpus):
    tok = word_tokenizer(corpus.words)
    assert tok.convert_tokens_to_ids(["the", "miller"]) == [corpus.words.index("the"), corpus.words.index("miller")]
    assert tok.convert_tokens_to_ids(["zyzzyva"]) == [tok.unk_token_id]
    assert tok.decode(tok("the miller grinds")["input_ids"]) == "the miller grinds"
    assert 0 < corpus.unk_rate < 0.05  # the rare visitors' names


# --- bad input, one line each -------------------------------------------------------------------------


def _data(tmp_path, train: bytes, test: bytes = b"a b c d\n") -> dict:
    (tmp_path / "train.txt").write_bytes(train)
    (tmp_path / "test.txt").write_bytes(test)
    return dict(SMOKE["data"], files={"train": str(tmp_path / "train.txt"), "test": str(tmp_path / "test.txt")})


def test_empty_file_is_refused(tmp_path):
    with pytest.raises(LabError, match=r"train.txt: the file holds no words \(data.files.train\)"):
        load_corpus(_data(tmp_path, b"\n  \n"), REPO_ROOT)


def test_not_utf8_names_line_and_column(tmp_path):
    with pytest.raises(LabError, match=r"test.txt: line 2, byte column 4: not UTF-8"):
        load_corpus(_data(tmp_path, b"a b\n", b"ok\nabc\xff def\n"), REPO_ROOT)


def test_missing_file_is_refused(tmp_path):
    data = dict(SMOKE["data"], files={"train": str(tmp_path / "nope.txt"), "test": str(tmp_path / "nope.txt")})
    with pytest.raises(LabError, match=r"data.files.train=.*nope.txt: no such file"):
        load_corpus(data, REPO_ROOT)


def test_text_shorter_than_the_context_is_refused(tmp_path):
    data = _data(tmp_path, b"one short line\n")
    with pytest.raises(LabError, match=r"train.txt: 4 tokens, shorter than the context of model.n_positions=48"):
        check_context(load_corpus(data, REPO_ROOT), 3, 48, data, REPO_ROOT)


def test_an_n_larger_than_the_corpus_allows_is_refused(tmp_path):
    data = _data(tmp_path, b"a b c\n" * 30)
    with pytest.raises(LabError, match=r"ngram.order=5 is larger than the corpus allows: .* 3 words"):
        check_context(load_corpus(data, REPO_ROOT), 5, 16, data, REPO_ROOT)
    check_context(load_corpus(data, REPO_ROOT), 4, 16, data, REPO_ROOT)  # 3 words of context: allowed


def test_a_sentence_longer_than_the_context_is_refused(tmp_path):
    data = _data(tmp_path, b"a b c\n" * 30, b"a b\n" + b"w " * 20 + b"\n")
    with pytest.raises(LabError, match=r"test.txt: sentence 2 has 20 words, longer than the context"):
        check_context(load_corpus(data, REPO_ROOT), 3, 16, data, REPO_ROOT)


def test_bad_shapes_are_refused_before_any_text():
    with pytest.raises(LabError, match="model.hidden_size=66 must be a multiple of model.num_attention_heads=4"):
        run.check_settings(dict(SMOKE, model=dict(SMOKE["model"], hidden_size=66)))
    with pytest.raises(LabError, match="equivalence.hidden_size=5: the sinusoidal positions need an even width"):
        run.check_settings(dict(SMOKE, equivalence=dict(SMOKE["equivalence"], hidden_size=5, num_attention_heads=1)))
    with pytest.raises(LabError, match="encoder.mlm_probability=1.5"):
        run.check_settings(dict(SMOKE, encoder=dict(SMOKE["encoder"], mlm_probability=1.5)))


# --- the bundled and the second text set, the README ----------------------------------------------


def test_bundled_and_foreign_texts_are_what_the_expected_file_counts(corpus):
    assert (len(corpus.train), len(corpus.test)) == (2400, 240)
    bundled = load_expected(LAB.expected_path("smoke"))["data"]["fingerprint"]
    assert data_fingerprint(SMOKE["data"], REPO_ROOT) == bundled
    foreign = load_profile(LAB, "smoke", shlex.split(LAB.meta["foreign_data"]))[0]["data"]
    other = load_corpus(foreign, REPO_ROOT)
    assert (len(other.train), len(other.test)) == (360, 48)
    assert data_fingerprint(foreign, REPO_ROOT) != bundled


def test_readme_your_own_text_command_is_the_tested_one():
    """The README's command runs in tests/test_labs.py (the foreign-data smoke run): same overrides."""
    readme = (LAB.dir / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r'make lab-lm-foundations PROFILE=smoke SET="([^"]+)"', readme)
    assert shlex.split(LAB.meta["foreign_data"]) in [shlex.split(c) for c in commands]
    assert f"SET={LAB.broken_override}" in readme.replace('"', "")
