"""Tiny models of the course's architectures, built locally for the smoke profiles.

A tiny model has the real architecture (same classes, same special tokens and generation config),
random weights and a small vocabulary trained on the lab's bundled text. It is saved to a folder
and loaded back through the same ``from_pretrained`` calls the full profile makes with a Hub id,
so the smoke run exercises the same code path offline on a CPU in seconds. It learns the mechanics
(loss falls, adapters save and reload), not the task.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES, TASK_IDS

#: Whisper's special tokens after the BPE vocabulary, in the order of the released checkpoints
#: (openai/whisper tokenizer.py; timestamp tokens omitted since the labs decode without timestamps).
WHISPER_SPECIALS = (
    ["<|endoftext|>", "<|startoftranscript|>"]
    + [f"<|{code}|>" for code in LANGUAGES]
    + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
)


def train_byte_level_bpe(texts: list[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A GPT-2 style byte-level BPE (the scheme Whisper's tokenizer uses) trained on ``texts``.

    Returns ``(vocab, merges)`` for ``WhisperTokenizer(vocab=..., merges=...)``.
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(texts, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def build_tiny_whisper(
    out_dir: Path,
    texts: list[str],
    seed: int = 0,
    d_model: int = 64,
    layers: int = 2,
    heads: int = 4,
    ffn_dim: int = 128,
    num_mel_bins: int = 80,
    bpe_vocab_size: int = 512,
) -> Path:
    """Build and save a tiny multilingual Whisper (model, tokenizer, feature extractor) to ``out_dir``.

    Same classes and special tokens as ``openai/whisper-large-v2`` (80 mel bins, 30 s windows of
    3000 frames, 1500 encoder positions), with ``d_model`` 64 and 2+2 layers instead of 1280 and
    32+32. Weights are random but deterministic for a given ``seed``.

    Args:
        out_dir: folder to write (created); loadable with ``from_pretrained(out_dir)``.
        texts: transcripts the byte-level BPE vocabulary is trained on.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    vocab, merges = train_byte_level_bpe(texts, bpe_vocab_size)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>")  # as the released ones
    tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_SPECIALS})
    tokenizer.save_pretrained(out_dir)
    tokenizer = WhisperTokenizer.from_pretrained(out_dir)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in WHISPER_SPECIALS}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]

    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=num_mel_bins), tokenizer)
    processor.save_pretrained(out_dir)

    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=num_mel_bins,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=[],
        begin_suppress_tokens=[eot],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    generation = GenerationConfig.from_model_config(config)
    whisper_fields = dict(  # GenerationConfig.update() ignores fields it does not know yet
        is_multilingual=True,
        forced_decoder_ids=None,
        max_length=448,
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES},
        task_to_id={task: ids[f"<|{task}|>"] for task in TASK_IDS},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
    )
    generation._from_model_config = False  # else from_pretrained drops the Whisper fields
    for key, value in whisper_fields.items():
        setattr(generation, key, value)
    model.generation_config = generation
    model.save_pretrained(out_dir)
    return out_dir


def train_wordpiece(texts: list[str], vocab_size: int, lowercase: bool) -> list[str]:
    """A BERT WordPiece vocabulary (with ``[PAD] [UNK] [CLS] [SEP] [MASK]``) trained on ``texts``, the
    same every run.

    Tokenizers' WordPiece trainer gives each continuation symbol (``##a``) its id in the order it meets
    it while iterating over a hash map of the words, and breaks ties between equally frequent merges by
    those ids: the same texts gave a different vocabulary (and model) from run to run
    (huggingface/tokenizers#1794). Here every ``##c`` of the texts' alphabet is registered first, in
    sorted order, beside the special tokens, so no id depends on hash order; the vocabulary returned is
    the trained one in id order (no token in it is marked special).
    """
    from tokenizers import normalizers

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    alphabet = sorted({c for t in texts for c in wp.normalizer.normalize_str(t) if not c.isspace()})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, show_progress=False, special_tokens=specials + [f"##{c}" for c in alphabet]
    )
    wp.train_from_iterator(texts, trainer)
    return [token for token, _ in sorted(wp.get_vocab().items(), key=lambda item: item[1])]


def build_tiny_encoder(
    out_dir: Path,
    texts: list[str],
    model_type: str,
    seed: int = 0,
    lowercase: bool = False,
    vocab_size: int = 1000,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    initializer_range: float = 0.02,
) -> Path:
    """Build and save a tiny ``bert``, ``distilbert`` or ``roberta`` (config, random weights, tokenizer).

    ``bert`` / ``distilbert``: a WordPiece vocabulary trained on ``texts`` (``lowercase`` as in
    ``bert-base-cased`` = False or ``distilbert-base-uncased`` = True). ``roberta``: see
    :func:`build_tiny_roberta` (byte-level BPE of ``vocab_size`` tokens; ``lowercase`` is ignored).
    ``initializer_range``: the standard deviation of the random weights (the configs' default 0.02).
    The saved folder loads with any ``AutoModelFor*`` of that architecture: the task head is added,
    as with a Hub checkpoint, by ``from_pretrained``.

    Returns:
        ``out_dir``.
    """
    from transformers import AutoModel, BertConfig, BertTokenizer, DistilBertConfig, DistilBertTokenizer

    if model_type == "roberta":
        return build_tiny_roberta(
            out_dir,
            texts,
            seed=seed,
            bpe_vocab_size=vocab_size,
            hidden_size=hidden_size,
            layers=layers,
            heads=heads,
            intermediate_size=intermediate_size,
            max_positions=max_position_embeddings,
            initializer_range=initializer_range,
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(train_wordpiece(texts, vocab_size, lowercase))}
    if model_type == "bert":
        tokenizer = BertTokenizer(vocab=vocab, do_lower_case=lowercase)
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            initializer_range=initializer_range,
        )
    elif model_type == "distilbert":
        tokenizer = DistilBertTokenizer(vocab=vocab, do_lower_case=lowercase)
        config = DistilBertConfig(
            vocab_size=len(tokenizer),
            dim=hidden_size,
            n_layers=layers,
            n_heads=heads,
            hidden_dim=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            initializer_range=initializer_range,
        )
    else:
        raise ValueError(f"model_type must be bert, distilbert or roberta, not {model_type!r}")
    tokenizer.model_max_length = max_position_embeddings
    tokenizer.save_pretrained(out_dir)
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(out_dir)
    return out_dir


#: RoBERTa's special tokens and their ids in ``FacebookAI/roberta-base``'s vocabulary; ``<mask>`` is its last id.
ROBERTA_SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}


def init_weights_portably(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Initialise ``model`` as BERT/RoBERTa's ``_init_weights`` does (Linear and Embedding weights
    normal(0, ``std``) with ``std`` = ``initializer_range`` 0.02, biases 0, LayerNorm 1 and 0,
    embedding padding rows 0), from one ``torch.Generator`` seeded with ``seed``, parameter by
    parameter in name order.

    Transformers' own initialisation draws from the global generator in an order that changed between
    releases (4.57 and 5.x give different weights for the same seed); this one depends only on the
    parameter names and shapes, so two environments with different Transformers build the same tiny
    model, byte for byte (the peft-methods lab compares methods trained in both).
    """
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            owner = modules[name.rsplit(".", 1)[0]] if "." in name else model
            if isinstance(owner, torch.nn.LayerNorm):
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=g) * std)
                if isinstance(owner, torch.nn.Embedding) and owner.padding_idx is not None:
                    param[owner.padding_idx].zero_()


def build_tiny_roberta(
    out_dir: Path,
    texts: list[str],
    seed: int = 0,
    bpe_vocab_size: int = 1000,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate_size: int = 128,
    max_positions: int = 512,
    initializer_range: float = 0.02,
) -> Path:
    """Build and save a tiny RoBERTa (``FacebookAI/roberta-base``'s architecture, random weights).

    The tokenizer is RoBERTa's scheme, a GPT-2 byte-level BPE (:func:`train_byte_level_bpe`, trained
    on ``texts``) with ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3 and ``<mask>`` last, written as
    ``vocab.json`` + ``merges.txt`` (the files Transformers 4 and 5 both read), so ``<s> A </s>`` and
    pairs ``<s> A </s></s> B </s>``. The model is ``RobertaModel`` with roberta-base's settings
    (padding id 1, one token type, LayerNorm eps 1e-5, GELU) at ``hidden_size`` 64 and 2 layers
    instead of 768 and 12, and ``max_positions`` + 2 position embeddings (RoBERTa numbers positions
    from ``padding_idx + 1`` = 2: roberta-base has 514 for 512 tokens). Weights come from
    :func:`init_weights_portably` with standard deviation ``initializer_range`` (roberta-base's 0.02
    by default): the same ``seed`` gives the same weights with any Transformers.

    Returns:
        ``out_dir`` (loadable with ``AutoModelFor*.from_pretrained`` and ``AutoTokenizer``).
    """
    from transformers import RobertaConfig, RobertaModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained, merges = train_byte_level_bpe(texts, bpe_vocab_size)
    vocab = dict(ROBERTA_SPECIALS)
    for token, _ in sorted(trained.items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    vocab["<mask>"] = len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), "utf-8")
    settings = {
        "tokenizer_class": "RobertaTokenizer",
        "model_max_length": max_positions,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "add_prefix_space": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions + ROBERTA_SPECIALS["<pad>"] + 1,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        initializer_range=initializer_range,
        pad_token_id=ROBERTA_SPECIALS["<pad>"],
        bos_token_id=ROBERTA_SPECIALS["<s>"],
        eos_token_id=ROBERTA_SPECIALS["</s>"],
    )
    model = RobertaModel(config, add_pooling_layer=False)
    init_weights_portably(model, seed, config.initializer_range)
    model.save_pretrained(out_dir)
    return out_dir


def build_tiny_gpt2(
    out_dir: Path,
    texts: list[str],
    seed: int = 0,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_positions: int = 256,
    bpe_vocab_size: int = 512,
) -> Path:
    """Build and save a tiny GPT-2 (byte-level BPE tokenizer trained on ``texts``, random weights).

    Byte-level BPE encodes any text, Chinese included, and decodes it back unchanged.

    Returns:
        ``out_dir``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    vocab, merges = train_byte_level_bpe(texts, bpe_vocab_size)
    eos = "<|endoftext|>"
    vocab.setdefault(eos, len(vocab))
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, unk_token=eos, bos_token=eos, eos_token=eos)
    tokenizer.model_max_length = n_positions
    tokenizer.save_pretrained(out_dir)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_positions=n_positions,
        bos_token_id=vocab[eos],
        eos_token_id=vocab[eos],
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_opt(
    out_dir: Path,
    texts: list[str],
    seed: int = 0,
    hidden_size: int = 128,
    num_hidden_layers: int = 2,
    ffn_dim: int = 512,
    num_attention_heads: int = 4,
    max_position_embeddings: int = 512,
    bpe_vocab_size: int = 512,
) -> Path:
    """Build and save a tiny OPT (``facebook/opt-*`` architecture, random weights, byte-level BPE on ``texts``).

    OPT's tokenizer is GPT-2's byte-level BPE with ``</s>`` as BOS/EOS and ``<pad>`` for padding, as on
    the Hub checkpoints. Defaults keep every linear layer's input a multiple of 128 (GPTQ/AWQ group size
    128 in the course) and every output a multiple of 32 (4-bit packing into int32).

    Returns:
        ``out_dir``.
    """
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = train_byte_level_bpe(texts, bpe_vocab_size)
    for token in ("</s>", "<pad>", "<unk>"):
        vocab.setdefault(token, len(vocab))
    # The slow tokenizer's files (vocab.json, merges.txt) load in Transformers 4 and 5 alike, so the
    # same builder serves the course's pinned stack and the current one.
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), "utf-8")
    special = {"bos_token": "</s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    settings = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_position_embeddings, **special}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        ffn_dim=ffn_dim,
        num_attention_heads=num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        word_embed_proj_dim=hidden_size,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["</s>"],
        eos_token_id=vocab["</s>"],
    )
    torch.manual_seed(seed)
    OPTForCausalLM(config).save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_llama(
    out_dir: Path,
    texts: list[str],
    seed: int = 0,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
    bpe_vocab_size: int = 600,
) -> Path:
    """Build and save a tiny Llama 2 (tokenizer and random weights) to ``out_dir``.

    The tokenizer is Llama 2's scheme, trained on ``texts``: BPE over Metaspace pieces (``▁`` marks a
    space, one is prepended) with byte fallback (the 256 ``<0xNN>`` tokens, so any text encodes), and
    ``<unk>``, ``<s>``, ``</s>`` as ids 0, 1, 2, as in ``meta-llama/Llama-2-7b-hf``; like the released
    tokenizer it has no padding token (the lab chooses one). The model is ``LlamaForCausalLM`` with
    ``hidden_size`` 64 and 2 layers instead of 4096 and 32, RMSNorm eps 1e-5 and 4,096 positions as
    Llama 2's config.json.

    Returns:
        ``out_dir`` (loadable with ``from_pretrained``).
    """
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size + len(specials), special_tokens=specials, show_progress=False
    )
    bpe.train_from_iterator(texts, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = LlamaTokenizer(vocab=model["vocab"], merges=merges, add_bos_token=True)  # as Llama 2's config
    tokenizer.model_max_length = max_position_embeddings
    tokenizer.save_pretrained(out_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id).save_pretrained(out_dir)
    return Path(out_dir)


#: GLM-4's special tokens (THUDM/glm-4-9b-chat-hf tokenizer_config.json), in their order after the BPE
#: vocabulary; the chat template below writes its prompts with them.
GLM_SPECIALS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]
#: A chat template in GLM-4's layout: "[gMASK]<sop>", then "<|role|>\n" before each message, and
#: "<|assistant|>\n" when a reply is to be generated.
GLM_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_glm(
    out_dir: Path,
    texts: list[str],
    seed: int = 0,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    bpe_vocab_size: int = 1500,
) -> Path:
    """Build and save a tiny GLM-4 (``GlmForCausalLM``, tokenizer with GLM-4's special tokens and a
    chat template in its layout) to ``out_dir``.

    The architecture is Transformers' native GLM (the ``-hf`` checkpoints, no remote code):
    grouped-query attention (2 key/value heads), partial rotary embeddings, fused gate/up MLP, with
    ``hidden_size`` 64 and 2 layers instead of 4096 and 40. The tokenizer is a byte-level BPE (GLM-4's
    scheme; any text, Chinese included, encodes) trained on ``texts``; as GLM-4, it pads with
    ``<|endoftext|>``, its end-of-text token, and generation also stops at ``<|user|>`` and
    ``<|observation|>``.

    Returns:
        ``out_dir`` (loadable with ``from_pretrained``).
    """
    from transformers import GlmConfig, GlmForCausalLM, PreTrainedTokenizerFast

    vocab, merges = train_byte_level_bpe(texts, bpe_vocab_size)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": GLM_SPECIALS[1:]})
    tokenizer.chat_template = GLM_CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    stop = [tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    config = GlmConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=hidden_size // num_attention_heads,
        max_position_embeddings=8192,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    GlmForCausalLM(config).save_pretrained(out_dir)
    GenerationConfig(eos_token_id=stop, pad_token_id=tokenizer.pad_token_id).save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_t5(
    out_dir: Path,
    texts: list[str],
    seed: int = 0,
    d_model: int = 32,
    d_kv: int = 8,
    d_ff: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 400,
) -> Path:
    """Build and save a tiny T5 (``T5ForConditionalGeneration`` + ``T5Tokenizer``) to ``out_dir``.

    The architecture is t5-large's (google-t5/t5-large config.json: relative position buckets 32,
    ReLU feed-forward, tied input/output embeddings, ``decoder_start_token_id`` = pad = 0, eos = 1),
    with ``d_model`` 32 and 2 + 2 layers instead of 1024 and 24 + 24. The tokenizer is a
    SentencePiece-style Unigram (T5's scheme: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, metaspace
    pre-tokenization) trained on ``texts``, without the 100 ``<extra_id_N>`` sentinels (only
    pre-training uses them).

    Returns:
        ``out_dir`` (loadable with ``from_pretrained``).
    """
    from tokenizers import normalizers
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    unigram.train_from_iterator(texts, trainer)
    # The trainer sums scores in parallel: they differ in the last bits from run to run. Rounded and
    # ordered, the vocabulary is the same on every build (and every node of a multi-node run).
    trained = [(piece, round(score, 6)) for piece, score in json.loads(unigram.to_str())["model"]["vocab"]]
    pieces = trained[:3] + sorted(trained[3:], key=lambda p: (-p[1], p[0]))
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    tokenizer.save_pretrained(out_dir)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_granitemoe(
    out_dir: Path,
    texts: list[str],
    seed: int = 0,
    hidden_size: int = 64,
    intermediate_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    num_local_experts: int = 8,
    num_experts_per_tok: int = 2,
    max_position_embeddings: int = 4096,
    bpe_vocab_size: int = 512,
    embedding_multiplier: float = 1.0,
    residual_multiplier: float = 1.0,
    logits_scaling: float = 1.0,
    attention_multiplier: float | None = None,
) -> Path:
    """Build and save a tiny sparse Mixture-of-Experts Granite (``GraniteMoeForCausalLM``) to ``out_dir``.

    The architecture of ``ibm-granite/granite-3.0-1b-a400m-base`` (its config.json: hidden 1024, 24
    layers, 16 query / 8 key-value heads, 32 experts of intermediate size 512, top-8 routing, router
    aux-loss coefficient 0.001, tied embeddings, embedding multiplier 12, residual multiplier 0.22,
    logits scaling 6, attention multiplier 1/head_dim) at tiny size: hidden 64, 2 layers, 8 experts of
    intermediate size 32, top-2 (the same quarter of the experts active per token). Experts are stored
    as Transformers 5 packs them: ``experts.gate_up_proj`` (E, 2I, H) and ``experts.down_proj``
    (E, H, I). The tokenizer is a GPT-2 style byte-level BPE trained on ``texts`` (Granite 3.0's
    scheme) with ``<|endoftext|>`` as id 0 and as its BOS, EOS and padding token, as Granite's.
    Weights are random but the same for a given ``seed``.

    Granite's scaling multipliers default to 1.0 here (``attention_multiplier`` None: 1/sqrt(head_dim)):
    with the checkpoint's (12, 0.22, logits divided by 6, 1/head_dim) a random tiny model's outputs
    stay near uniform and LoRA moves its loss little in a smoke run (measured on the moe lab's bundled
    text, 200 steps: a 1.2 % loss drop against 8 %). Pass them to build the checkpoint's exact scaling.

    Returns:
        ``out_dir`` (loadable with ``from_pretrained``).
    """
    from transformers import GPT2Tokenizer, GraniteMoeConfig, GraniteMoeForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained, merges = train_byte_level_bpe(texts, bpe_vocab_size)
    eos = "<|endoftext|>"
    vocab = {eos: 0, **{token: i + 1 for token, i in sorted(trained.items(), key=lambda item: item[1])}}
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, unk_token=eos, bos_token=eos, eos_token=eos, pad_token=eos)
    tokenizer.model_max_length = max_position_embeddings
    tokenizer.save_pretrained(out_dir)
    head_dim = hidden_size // num_attention_heads
    config = GraniteMoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        num_local_experts=num_local_experts,
        num_experts_per_tok=num_experts_per_tok,
        max_position_embeddings=max_position_embeddings,
        router_aux_loss_coef=0.001,
        embedding_multiplier=embedding_multiplier,
        residual_multiplier=residual_multiplier,
        logits_scaling=logits_scaling,
        attention_multiplier=attention_multiplier if attention_multiplier is not None else head_dim**-0.5,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    GraniteMoeForCausalLM(config).save_pretrained(out_dir)
    GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0).save_pretrained(out_dir)
    return out_dir
