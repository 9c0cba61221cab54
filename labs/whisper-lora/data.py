"""Step 1, data (course chapter 7, "数据准备"): load Common Voice zh-CN, resample, tokenize, collate.

Two sources, chosen by the profile's ``data.source``:

* ``common_voice_dir``: a Common Voice release folder as Mozilla distributes it (``train.tsv``,
  ``dev.tsv``, ``test.tsv`` and ``clips/*.mp3``). Common Voice 11.0 left the Hugging Face Hub in
  2025, so the course's ``load_dataset("mozilla-foundation/common_voice_11_0", "zh-CN")`` fails; the
  smoke profile's bundled clips use this same layout.
* ``hub``: a Hub dataset with an audio column and a transcript column (``data.hub_dataset``).

As in the course: train on train + validation, evaluate on test, sub-sample for the demo
(``train_samples``/``eval_samples`` after a shuffle with ``shuffle_seed``), resample to 16 kHz, drop
unused columns. The course decodes with ``cast_column("audio", Audio(sampling_rate=16000))``, which in
``datasets`` >= 4 needs torchcodec and FFmpeg's system libraries; here ``labkit.lab.audio`` decodes
(soundfile + soxr, wheels only) and the ``audio`` column holds the file (path or bytes) until then.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Audio, Dataset, DatasetDict, Features, Value, concatenate_datasets, load_dataset

from labkit.errors import LabError
from labkit.lab.audio import decode
from labkit.lab.data import CSV_KEEP_TEXT, check_texts, require_columns, sampling_part, subsample
from labkit.verify import fingerprint

CV_REQUIRED = ("path", "sentence")


def tsv_columns(tsv: Path) -> list[str]:
    """Header of a Common Voice TSV; :class:`LabError` naming the file if it is missing."""
    if not tsv.is_file():
        there = sorted(p.name for p in tsv.parent.iterdir()) if tsv.parent.is_dir() else []
        raise LabError(
            f"{tsv} not found (folder holds: {', '.join(there) or 'nothing'}). data.path must be the "
            "locale folder of a Common Voice release (the one holding train.tsv, dev.tsv, test.tsv, clips/)."
        )
    with tsv.open(encoding="utf-8") as f:
        return next(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), [])


def load_common_voice_dir(root: Path, splits: list[str], bad_text: str = "fail") -> tuple[Dataset, dict]:
    """Rows of ``<root>/<split>.tsv`` for each split, with ``audio`` = absolute path of the clip.

    Every field is read as text (a sentence that is literally "NA" or "null" stays one); a row whose
    ``sentence`` is empty fails naming the TSV and its line, or is dropped with ``bad_text: drop``.

    Returns:
        ``(rows, {TSV split: {"sentence": rows dropped}})`` (empty unless ``bad_text: drop`` dropped some).

    Raises:
        LabError: a TSV is missing or lacks ``path``/``sentence`` (lists its columns), a sentence is
            empty (under ``bad_text: fail``), or a clip named in it does not exist (names the first
            missing files).
    """
    root = Path(root)
    if not root.is_dir():
        raise LabError(
            f"Common Voice folder {root} does not exist. Download the zh-CN release from the Mozilla "
            "Data Collective, unpack it, and pass its locale folder: CV_DIR=/path/to/cv-corpus-*/zh-CN "
            "(or SET=data.path=...), or use SET=data.source=hub."
        )
    parts, dropped = [], {}
    for split in splits:
        tsv = root / f"{split}.tsv"
        columns = tsv_columns(tsv)
        missing = [c for c in CV_REQUIRED if c not in columns]
        if missing:
            raise LabError(f"{tsv} lacks column(s) {', '.join(missing)}; it has: {', '.join(columns)}")
        features = Features({c: Value("string") for c in columns})
        ds = load_dataset(
            "csv",
            data_files=str(tsv),
            delimiter="\t",
            quoting=csv.QUOTE_NONE,
            features=features,
            split="train",
            **CSV_KEEP_TEXT,
        )
        ds, counts = check_texts(ds, ("sentence",), bad_text, str(tsv), first_line=2)
        dropped.update({split: counts} if counts else {})
        parts.append(ds)
    ds = concatenate_datasets(parts)
    clips = root / "clips"
    absent = [p for p in ds["path"] if not (clips / p).is_file()]
    if absent:
        raise LabError(
            f"{len(absent)} audio file(s) named in {root}/*.tsv are missing from {clips}: "
            f"{', '.join(absent[:5])}. Re-download or re-extract the release."
        )
    return ds.map(lambda row: {"audio": str(clips / row["path"])}), dropped


def load_hub(dataset_id: str, config: str | None, splits: list[str], revision: str | None) -> Dataset:
    """Concatenate ``splits`` of a Hub dataset (honours ``HF_ENDPOINT`` and ``HF_TOKEN``)."""
    return concatenate_datasets([load_dataset(dataset_id, config, split=s, revision=revision) for s in splits])


def load_splits(cfg: dict, repo_root: Path) -> tuple[DatasetDict, dict]:
    """``DatasetDict(train=..., test=...)`` with ``audio`` (the clip's path, or ``{"path", "bytes"}``),
    ``sentence`` and ``path``, and ``{source split: {column: rows dropped for bad text}}``.

    Raises:
        LabError: unknown source, the dataset lacks the audio or text column (lists its columns), or
            a transcript is null/empty under ``bad_text: fail`` (names the file and line).
    """
    policy = cfg.get("bad_text", "fail")
    if cfg["source"] == "common_voice_dir":
        root = Path(cfg["path"]) if Path(cfg["path"]).is_absolute() else repo_root / cfg["path"]
        load = lambda splits: load_common_voice_dir(root, splits, policy)  # noqa: E731
        audio_col, text_col = "audio", "sentence"
    elif cfg["source"] == "hub":
        audio_col, text_col = cfg["audio_column"], cfg["text_column"]

        def load(splits):
            ds = load_hub(cfg["hub_dataset"], cfg["hub_config"], splits, cfg["hub_revision"])
            require_columns(DatasetDict(data=ds), (audio_col, text_col), "Set data.audio_column / data.text_column")
            where = f"{cfg['hub_dataset']} ({cfg['hub_config']}) splits {'+'.join(splits)}"
            ds, counts = check_texts(ds, (text_col,), policy, where)
            return ds, {"+".join(splits): counts} if counts else {}

    else:
        raise LabError(f"data.source {cfg['source']!r} is not one of common_voice_dir, hub")
    (train, train_dropped), (test, test_dropped) = load(cfg["train_splits"]), load(cfg["eval_splits"])
    dsd = DatasetDict(train=train, test=test)
    dropped = {**train_dropped, **test_dropped}
    require_columns(dsd, (audio_col, text_col), "Set data.audio_column / data.text_column to the right names")
    dsd = dsd.rename_columns({old: new for old, new in ((audio_col, "audio"), (text_col, "sentence")) if old != new})
    dsd = subsample(dsd, {"train": cfg["train_samples"], "test": cfg["eval_samples"]}, cfg["shuffle_seed"])
    keep = {"audio", "sentence", "path"}
    dsd = dsd.remove_columns([c for c in dsd["train"].column_names if c not in keep])
    if cfg["source"] == "hub":  # keep the encoded file; labkit.lab.audio decodes it
        dsd = dsd.cast_column("audio", Audio(decode=False))
        if "path" not in dsd["train"].column_names:  # name clips in errors and predictions
            dsd = dsd.map(lambda row, i: {"path": (row["audio"] or {}).get("path") or f"row {i}"}, with_indices=True)
    return dsd, dropped


def data_fingerprint(cfg: dict, repo_root: Path) -> str:
    """``labkit.verify.fingerprint`` of the data ``cfg`` names: a Common Voice folder's TSVs of the
    used splits (they name every clip; clips are not hashed: a release holds gigabytes), or the Hub
    dataset's id, config and revision; with the splits and sub-sampling settings."""
    layout = f"train={cfg['train_splits']}|eval={cfg['eval_splits']}|{sampling_part(cfg)}"
    if cfg["source"] == "common_voice_dir":
        root = Path(cfg["path"]) if Path(cfg["path"]).is_absolute() else repo_root / cfg["path"]
        splits = sorted(set(cfg["train_splits"]) | set(cfg["eval_splits"]))
        return fingerprint({**{f"{s}.tsv": root / f"{s}.tsv" for s in splits}, "layout": layout})
    hub = f"hub:{cfg['hub_dataset']}/{cfg['hub_config']}@{cfg['hub_revision']}"
    return fingerprint({"hub": hub, "layout": layout})


def check_label_lengths(ds: Dataset, max_tokens: int, policy: str) -> tuple[Dataset, int]:
    """Keep clips whose token ``labels`` fit Whisper's decoder (``max_target_positions``: 448 in
    every released Whisper config).

    Returns:
        ``(dataset, clips dropped)``; under ``bad_text: drop`` over-long transcripts are dropped.

    Raises:
        LabError: under ``bad_text: fail``, naming the first clip, its token count and the limit.
    """
    lengths = [len(labels) for labels in ds["labels"]]
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
    if not too_long:
        return ds, 0
    first = too_long[0]
    if policy == "fail":
        raise LabError(
            f"the transcript of {ds[first]['path']} is {lengths[first]} tokens; Whisper's decoder holds "
            f"{max_tokens} (config max_target_positions). {len(too_long)} clip(s) are too long: shorten "
            "them, or set data.bad_text=drop to drop them (counted in metrics.json)."
        )
    print(f"dropped {len(too_long)} clip(s) whose transcript exceeds {max_tokens} tokens", flush=True)
    drop = set(too_long)
    return ds.select([i for i in range(len(ds)) if i not in drop]), len(too_long)


def prepare_example(example: dict, processor: Any, sampling_rate: int) -> dict:
    """Course ``prepare_dataset``: log-mel ``input_features`` (80 x 3000 float32) and token ``labels``.

    Also returns the clip's ``source_rate`` (Hz) and ``duration_s`` for the data report.

    Raises:
        LabError: the audio cannot be decoded (names the file and why).
    """
    clip = decode(example["audio"], sampling_rate)
    features = processor.feature_extractor(clip.array, sampling_rate=clip.sampling_rate).input_features[0]
    return {
        "input_features": features,
        "labels": processor.tokenizer(example["sentence"]).input_ids,
        "source_rate": clip.source_rate,
        "duration_s": clip.duration_s,
    }


@dataclass
class DataCollatorSpeechSeq2SeqWithPadding:
    """Batch ``input_features`` and ``labels`` for Whisper (course chapter 7's collator).

    Input features are padded by the feature extractor to ``(batch, n_mels, 3000)``. Labels are
    padded by the tokenizer and the padding replaced by -100, which the cross-entropy loss ignores.
    If every sequence starts with the decoder-start token it is dropped, since the model prepends it
    again when it shifts labels right into ``decoder_input_ids``.
    """

    processor: Any
    decoder_start_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.processor.feature_extractor.pad(
            [{"input_features": f["input_features"]} for f in features], return_tensors="pt"
        )
        labels_batch = self.processor.tokenizer.pad([{"input_ids": f["labels"]} for f in features], return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch["attention_mask"].ne(1), -100)
        if (labels[:, 0] == self.decoder_start_token_id).all():
            labels = labels[:, 1:]
        batch["labels"] = labels
        return batch
