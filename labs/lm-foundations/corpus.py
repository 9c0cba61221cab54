"""The one tokenization every model of the lab shares: sentences, words, a vocabulary with ``<UNK>``.

Perplexities of different models are comparable only when they predict the same units from the same
vocabulary (Jurafsky & Martin, *Speech and Language Processing*, 3rd ed., ch. 3.2.1). So:

* a corpus file is UTF-8 text, **one sentence per line** (blank lines skipped);
* words are NLTK's ``wordpunct_tokenize`` (the regex ``\\w+|[^\\w\\s]+``, no data download) of the
  line, lower-cased when ``data.lowercase`` is true;
* the vocabulary is NLTK's :class:`nltk.lm.Vocabulary` of the **training** words with
  ``data.unk_cutoff``: a word seen fewer times than that in training (and any held-out word never
  seen) becomes ``<UNK>``, a token every model predicts like any other;
* every model predicts each held-out word and one end-of-sentence ``</s>`` per sentence, from the
  words before it **in the same sentence** (``<s>`` marks the start and is never predicted).
  Perplexity = ``exp(total negative log-likelihood / predicted tokens)`` over exactly these tokens.

The neural models read the same vocabulary through a word-level Hugging Face tokenizer
(:func:`word_tokenizer`; ``tokenizers.models.WordLevel``), with ``<pad>`` and ``<mask>`` added.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nltk.lm import Vocabulary
from nltk.lm.preprocessing import pad_both_ends
from nltk.tokenize import wordpunct_tokenize

from labkit.errors import LabError
from labkit.verify import fingerprint

SPLITS = ("train", "test")
BOS, EOS, UNK, PAD, MASK = "<s>", "</s>", "<UNK>", "<pad>", "<mask>"
SPECIALS = (PAD, BOS, EOS, UNK, MASK)


@dataclass
class Corpus:
    """Sentences as word lists (``<UNK>`` already substituted) and the shared vocabulary.

    Attributes:
        train, test: lists of sentences, each a list of words (no ``<s>``/``</s>``).
        vocab: the NLTK vocabulary of the training words (``unk_cutoff`` applied).
        words: the model vocabulary, specials first (``SPECIALS``) then the words in sorted order;
            a word's index is its token id in every neural model.
        unk_rate: the fraction of held-out words that became ``<UNK>``.
    """

    train: list[list[str]]
    test: list[list[str]]
    vocab: Vocabulary
    words: list[str]
    unk_rate: float

    def predicted_tokens(self, split: str = "test") -> int:
        """Tokens a model predicts on ``split``: every word plus one ``</s>`` per sentence."""
        return sum(len(s) + 1 for s in getattr(self, split))


def read_sentences(path: Path, lowercase: bool, setting: str) -> list[list[str]]:
    """Words of each non-blank line of a UTF-8 text file.

    Raises:
        LabError: the file is missing, is not UTF-8 (naming the line and byte column), or holds
            no words.
    """
    if not path.is_file():
        raise LabError(f"{setting}={path}: no such file; give a UTF-8 text file, one sentence per line")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise LabError(
            f"{path}: line {line}, byte column {column}: not UTF-8 ({exc.reason}); save the file as UTF-8 ({setting})"
        ) from None
    sentences = []
    for line in text.splitlines():
        words = wordpunct_tokenize(line.lower() if lowercase else line)
        if words:
            sentences.append(words)
    if not sentences:
        raise LabError(f"{path}: the file holds no words ({setting}); give one sentence per line")
    return sentences


def load_corpus(data_cfg: dict, repo_root: Path) -> Corpus:
    """Read ``data.files.train`` and ``data.files.test`` and build the shared vocabulary.

    Raises:
        LabError: see :func:`read_sentences`.
    """
    sentences = {
        split: read_sentences(_path(data_cfg, split, repo_root), data_cfg["lowercase"], f"data.files.{split}")
        for split in SPLITS
    }
    # <s> and </s> belong to the vocabulary (NLTK's models look every padded n-gram up in it).
    padded = (w for s in sentences["train"] for w in pad_both_ends(s, n=2))
    vocab = Vocabulary(padded, unk_cutoff=data_cfg["unk_cutoff"])
    mapped = {split: [list(vocab.lookup(s)) for s in sents] for split, sents in sentences.items()}
    words = list(SPECIALS) + sorted(w for w in vocab if w not in SPECIALS)
    test_words = sum(len(s) for s in mapped["test"])
    unk = sum(w == UNK for s in mapped["test"] for w in s)
    return Corpus(mapped["train"], mapped["test"], vocab, words, unk / test_words)


def check_context(corpus: Corpus, n: int, n_positions: int, data_cfg: dict, repo_root: Path) -> None:
    """Refuse an n-gram order or a context the corpus cannot fill, in one line each.

    Raises:
        LabError: ``ngram.order`` below 2 or above the longest training sentence + 1 (no n-gram of
            that order would have a full context of words); the training text holding fewer tokens
            than one context of ``model.n_positions``; a sentence (with ``<s>`` and ``</s>``) longer
            than ``model.n_positions`` (naming its file and sentence number).
    """
    longest = max(len(s) for s in corpus.train)
    if n < 2:
        raise LabError(f"ngram.order={n}: give at least 2 (a bigram model)")
    if n - 1 > longest:
        raise LabError(
            f"ngram.order={n} is larger than the corpus allows: its longest training sentence has {longest} "
            f"words, so no {n}-gram has {n - 1} words of context; give ngram.order <= {longest + 1} or longer text"
        )
    tokens = corpus.predicted_tokens("train")
    if tokens < n_positions:
        raise LabError(
            f"{_path(data_cfg, 'train', repo_root)}: {tokens} tokens, shorter than the context of "
            f"model.n_positions={n_positions}; give more text or a smaller model.n_positions"
        )
    for split in SPLITS:
        for i, s in enumerate(getattr(corpus, split), start=1):
            if len(s) + 2 > n_positions:
                raise LabError(
                    f"{_path(data_cfg, split, repo_root)}: sentence {i} has {len(s)} words, longer than the context "
                    f"(model.n_positions={n_positions} with <s> and </s>); split it or raise model.n_positions"
                )


def word_tokenizer(words: list[str]):
    """A word-level ``PreTrainedTokenizerFast`` over ``words`` (ids = positions in ``words``), splitting
    on whitespace only: the corpus is tokenized already, so ids come from the word lists as they are."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    model = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    model.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=model, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK, mask_token=MASK
    )


def data_fingerprint(data_cfg: dict, repo_root: Path) -> str:
    """``labkit.verify.fingerprint`` of the two files and of how they are read (case, unk cutoff)."""
    parts = {split: _path(data_cfg, split, repo_root) for split in SPLITS}
    return fingerprint({**parts, "reading": f"lowercase={data_cfg['lowercase']}|unk_cutoff={data_cfg['unk_cutoff']}"})


def _path(data_cfg: dict, split: str, repo_root: Path) -> Path:
    path = Path(data_cfg["files"][split])
    return path if path.is_absolute() else repo_root / path
