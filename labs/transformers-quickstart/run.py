"""Course chapter 3 lab: the Transformers library — pipelines, tokenizers, models, environment.

Four steps, each recorded in the run directory:

1. ``pipeline()`` for sentiment, named entities (aggregated into words), text generation and speech
   recognition, and extractive question answering (whose pipeline Transformers 5 removed) with
   ``AutoModelForQuestionAnswering`` directly; the structure of each output.
2. ``AutoTokenizer`` taken apart: encode/decode round trip (Chinese included), special tokens,
   batch padding and truncation, attention masks, character offsets.
3. ``AutoModel*``: load, forward, ``save_pretrained``, ``from_pretrained``, identical logits.
4. An environment report (torch, CUDA or NPU, device name and memory), like the course's check.

The full profile uses the course's public checkpoints; the smoke profile builds a tiny model of each
architecture locally (random weights: outputs have the right structure, not the right answers).
The inputs are a profile value (``data.inputs``, :func:`load_inputs`): the bundled
``data/inputs.yaml``, or your own file of the same shape.

    python labs/transformers-quickstart/run.py --profile smoke [--set save_dtype=float16]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard, a quiet bitsandbytes; labkit/lab/__init__.py)

# isort: split

import torch
import yaml
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForSpeechSeq2Seq,
    AutoModelForTokenClassification,
    AutoProcessor,
    AutoTokenizer,
    GPT2LMHeadModel,
    pipeline,
)

from labkit.errors import LabError
from labkit.lab.audio import WHISPER_RATE, decode
from labkit.lab.device import accelerator_info
from labkit.lab.runner import RunContext, main
from labkit.lab.tiny import build_tiny_encoder, build_tiny_gpt2, build_tiny_whisper
from labkit.verify import fingerprint

DATA = Path(__file__).resolve().parent / "data"
#: Keys of an inputs file whose value is a list of texts (NER and generation use the first one).
TEXT_LISTS = ("sentiment", "ner", "generation", "tokenizer")
MODEL_CLASSES = {
    "text-classification": AutoModelForSequenceClassification,
    "token-classification": AutoModelForTokenClassification,
    "question-answering": AutoModelForQuestionAnswering,
    "text-generation": GPT2LMHeadModel,
    "automatic-speech-recognition": AutoModelForSpeechSeq2Seq,
}


def load_inputs(path: Path) -> dict:
    """The pipelines' and the tokenizer step's inputs: ``data/inputs.yaml`` or a file of its shape.

    Keys: ``sentiment``, ``ner``, ``generation``, ``tokenizer``: lists of texts (NER and generation
    use the first); ``qa``: ``{question, context}``; ``asr``: an audio file (any format
    ``labkit.lab.audio.decode`` reads), relative to the YAML file's folder or absolute.

    Returns:
        The mapping, with ``asr`` resolved to the audio file's path.

    Raises:
        LabError: the file is missing, not YAML or not a mapping, a key is missing, a text is null,
            empty or not a string (names the file and the key), or the audio file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise LabError(f"inputs file {path} not found (data.inputs)")
    try:
        inputs = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LabError(f"{path} is not valid YAML: {' '.join(str(exc).split())[:300]}") from None
    if not isinstance(inputs, dict):
        raise LabError(f"{path}: expected a mapping with keys {', '.join(TEXT_LISTS)}, qa, asr")
    missing = [k for k in (*TEXT_LISTS, "qa", "asr") if k not in inputs]
    if missing:
        raise LabError(f"{path} lacks key(s) {', '.join(missing)}; it has: {', '.join(map(str, inputs))}")
    bad = []
    for key in TEXT_LISTS:
        texts = inputs[key]
        if not isinstance(texts, list) or not texts:
            bad.append(f"{key} (not a list of texts)")
        else:
            bad += [f"{key}[{i}]" for i, text in enumerate(texts) if not _is_text(text)]
    qa = inputs["qa"] if isinstance(inputs["qa"], dict) else {}
    bad += [f"qa.{key}" for key in ("question", "context") if not _is_text(qa.get(key))]
    if bad:
        raise LabError(f"{path}: {', '.join(bad)}: each must be a non-empty text")
    audio = path.parent / str(inputs["asr"])
    if not audio.is_file():
        raise LabError(f"{path}: asr audio file {audio} not found")
    return {**inputs, "asr": audio}


def _is_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def load_for_task(spec: dict, revision: str | None, tiny_dir: Path, texts: list[str], seed: int):
    """``(model, tokenizer_or_processor)`` for a pipeline: the Hub checkpoint, or a tiny one built here."""
    path, head = spec["model"], {}
    if spec["tiny"] in ("bert", "distilbert"):
        path = build_tiny_encoder(tiny_dir, texts, spec["tiny"], seed=seed, lowercase=spec["tiny"] == "distilbert")
        if spec["labels"]:
            head = {
                "id2label": dict(enumerate(spec["labels"])),
                "label2id": {n: i for i, n in enumerate(spec["labels"])},
            }
    elif spec["tiny"] == "gpt2":
        path = build_tiny_gpt2(tiny_dir, texts, seed=seed)
    elif spec["tiny"] == "whisper":
        path = build_tiny_whisper(tiny_dir, texts, seed=seed)
    model = MODEL_CLASSES[spec["task"]].from_pretrained(path, revision=revision, **head)
    loader = AutoProcessor if spec["task"] == "automatic-speech-recognition" else AutoTokenizer
    return model, loader.from_pretrained(path, revision=revision)


def extractive_qa(model, tok, question: str, context: str) -> dict:
    """The answer span with the highest start + end logit, as the former question-answering pipeline gave it.

    Transformers 5 removed ``pipeline("question-answering")``; this is its core in a few lines: the
    model scores every token as answer start and end, the best valid span (inside the context, start
    <= end) is mapped back to context characters through the offsets. Returns ``{"score", "start",
    "end", "answer"}`` with ``score`` the softmax probability of that start times that end.
    """
    enc = tok(question, context, return_offsets_mapping=True, truncation="only_second", return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0].tolist()
    in_context = torch.tensor([s == 1 for s in enc.sequence_ids(0)])
    with torch.no_grad():
        out = model(**{k: v.to(model.device) for k, v in enc.items()})
    start = out.start_logits[0].cpu().masked_fill(~in_context, -1e9).softmax(-1)
    end = out.end_logits[0].cpu().masked_fill(~in_context, -1e9).softmax(-1)
    scores = torch.triu(start[:, None] * end[None, :])  # only start <= end
    s, e = divmod(int(scores.argmax()), scores.shape[1])
    begin, finish = offsets[s][0], offsets[e][1]
    return {"score": float(scores[s, e]), "start": begin, "end": finish, "answer": context[begin:finish]}


def run_pipelines(cfg: dict, inputs: dict, out: Path, device: str) -> dict:
    """Step 1: every task's pipeline on the bundled inputs; returns their raw outputs."""
    texts = [t for key in ("sentiment", "ner", "generation", "tokenizer") for t in inputs[key]]
    texts += [inputs["qa"]["question"], inputs["qa"]["context"], "谢谢你的帮助。"]
    results = {}
    for name, spec in cfg["pipelines"].items():
        model, tok = load_for_task(spec, cfg["revision"], out / "tiny-models" / name, texts, cfg["seed"])
        if spec["task"] == "automatic-speech-recognition":
            pipe = pipeline(
                spec["task"],
                model=model,
                tokenizer=tok.tokenizer,
                feature_extractor=tok.feature_extractor,
                device=device,
            )
            clip = decode(inputs["asr"], WHISPER_RATE)  # soundfile + soxr (labkit.lab.audio)
            results[name] = pipe(
                {"raw": clip.array, "sampling_rate": clip.sampling_rate},
                generate_kwargs={"max_new_tokens": cfg["max_new_tokens"]},
            )
            continue
        if spec["task"] == "question-answering":
            results[name] = extractive_qa(model.to(device), tok, inputs["qa"]["question"], inputs["qa"]["context"])
            continue
        pipe = pipeline(spec["task"], model=model, tokenizer=tok, device=device)
        if name == "ner":
            results[name] = pipe(inputs["ner"][0], aggregation_strategy=cfg["aggregation_strategy"])
        elif name == "generation":
            results[name] = pipe(inputs["generation"][0], max_new_tokens=cfg["max_new_tokens"], do_sample=False)
        else:
            results[name] = pipe(inputs[name])
    return json.loads(json.dumps(results, default=float))  # numpy scalars -> JSON numbers


def check_pipelines(results: dict, inputs: dict, labels: list[str] | None) -> dict:
    """Structure of each task's output, as the course explains it (all booleans must be true)."""
    sentiment, ner, qa, gen, asr = (results[k] for k in ("sentiment", "ner", "qa", "generation", "asr"))
    ner_text, context = inputs["ner"][0], inputs["qa"]["context"]
    return {
        "sentiment_ok": len(sentiment) == len(inputs["sentiment"])
        and all(
            set(r) == {"label", "score"} and 0 <= r["score"] <= 1 and (labels is None or r["label"] in labels)
            for r in sentiment
        ),
        "ner_ok": isinstance(ner, list)
        and all(
            {"entity_group", "score", "word", "start", "end"} <= set(e) and 0 <= e["start"] < e["end"] <= len(ner_text)
            for e in ner
        ),
        "qa_ok": {"score", "start", "end", "answer"} <= set(qa) and context[qa["start"] : qa["end"]] == qa["answer"],
        "generation_ok": len(gen) == 1 and gen[0]["generated_text"].startswith(inputs["generation"][0]),
        "asr_ok": isinstance(asr, dict) and isinstance(asr.get("text"), str),
        "ner_entities": len(ner),
    }


def tokenizer_demo(bert_tok, bpe_tok, texts: list[str]) -> tuple[dict, dict]:
    """Step 2: what a tokenizer does, as (checks, a record of examples for the learner)."""
    round_trip = [bpe_tok.decode(bpe_tok(t)["input_ids"]) == t for t in texts]
    enc = bert_tok(texts[0])
    tokens = bert_tok.convert_ids_to_tokens(enc["input_ids"])
    batch = bert_tok(texts, padding=True)
    lengths = [len(bert_tok(t)["input_ids"]) for t in texts]
    short = bert_tok(texts, truncation=True, max_length=8)
    offsets = bert_tok(texts[0], return_offsets_mapping=True)["offset_mapping"]
    word_offsets = [(s, e) for s, e in offsets if e > s]
    checks = {
        "round_trip_identical": sum(round_trip) / len(round_trip),
        "special_tokens_ok": tokens[0] == bert_tok.cls_token and tokens[-1] == bert_tok.sep_token,
        "padding_ok": len({len(ids) for ids in batch["input_ids"]}) == 1
        and [sum(m) for m in batch["attention_mask"]] == lengths,
        "truncation_ok": all(len(ids) <= 8 and ids[-1] == bert_tok.sep_token_id for ids in short["input_ids"]),
        "offsets_ok": bool(word_offsets) and all(0 <= s < e <= len(texts[0]) for s, e in word_offsets),
    }
    record = {
        "text": texts[0],
        "tokens": tokens,
        "input_ids": enc["input_ids"],
        "decoded": bert_tok.decode(enc["input_ids"]),
        "padded_batch": dict(batch),
        "offsets": offsets,
        "byte_level_round_trip": dict(zip(texts, round_trip)),
    }
    return checks, record


def model_round_trip(model, tok, text: str, out: Path, save_dtype: str) -> float:
    """Step 3: forward, ``save_pretrained`` (in ``save_dtype``), ``from_pretrained``, forward again.

    Returns the largest absolute difference between the two sets of logits (0.0 for float32).
    """
    batch = tok([text], return_tensors="pt")
    model = model.float().cpu().eval()
    with torch.no_grad():
        before = model(**batch).logits
    model.to(getattr(torch, save_dtype)).save_pretrained(out)
    tok.save_pretrained(out)
    reloaded = type(model).from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        after = reloaded(**batch).logits
    return float((after - before).abs().max())


def run(ctx: RunContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir
    inputs_path = ctx.repo_root / cfg["data"]["inputs"]
    inputs = load_inputs(inputs_path)

    results = run_pipelines(cfg, inputs, out, ctx.device)
    (out / "pipelines.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    structure = check_pipelines(results, inputs, cfg["pipelines"]["sentiment"]["labels"])

    texts = [t for key in ("sentiment", "ner", "generation", "tokenizer") for t in inputs[key]]
    sentiment_model, bert_tok = load_for_task(
        cfg["pipelines"]["sentiment"], cfg["revision"], out / "tiny-models" / "sentiment", texts, cfg["seed"]
    )
    _, bpe_tok = load_for_task(
        cfg["pipelines"]["generation"], cfg["revision"], out / "tiny-models" / "generation", texts, cfg["seed"]
    )
    tok_checks, record = tokenizer_demo(bert_tok, bpe_tok, inputs["tokenizer"])
    (out / "tokenizer_demo.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    diff = model_round_trip(
        sentiment_model, bert_tok, inputs["sentiment"][0], out / "saved-model", cfg["roundtrip"]["save_dtype"]
    )
    env = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        **accelerator_info(ctx.device),
    }
    return {
        "data": {"fingerprint": fingerprint({"inputs": inputs_path, "asr": inputs["asr"]})},
        "pipelines": structure,
        "tokenizer": tok_checks,
        "roundtrip": {"max_abs_logit_diff": diff},
        "environment": env,
    }


if __name__ == "__main__":
    raise SystemExit(main("transformers-quickstart", run))
