"""Step 0: preference pairs, read in either of TRL's two text formats, checked, and tokenized exactly.

* **Explicit prompt**: columns ``prompt``, ``chosen``, ``rejected``; ``prompt + chosen`` is the whole
  text (the bundled smoke pairs).
* **Implicit prompt**: columns ``chosen`` and ``rejected`` only, each the whole conversation; the
  prompt is their shared beginning, up to and including the last assistant marker
  (``data.assistant_marker``, Anthropic HH-RLHF's ``"\\n\\nAssistant:"``), as in HH-RLHF itself.

Every pair becomes ``{prompt, chosen, rejected}`` with the completions alone. A pair teaches nothing,
or the wrong thing, when: a column is missing; a side is empty; both sides are the same text; in the
implicit format, the two sides do not share the conversation before the last marker (they answer
different prompts) or have no marker at all. Each stops the run in one line naming the file, the
line (record) and what to do, or, under ``data.bad_text: drop``, is dropped and counted.

Tokenized as the trainers see it (:func:`encode_pair`): the prompt's ids (with the tokenizer's BOS),
then each completion's ids tokenized on their own, then EOS. The reward model is trained on exactly
the ids PPO later scores (the query, then the response up to its EOS).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from labkit.errors import LabError
from labkit.lab.data import check_texts, read_local_file, row_place
from labkit.verify import fingerprint

#: Why a pair is unusable (counts under ``bad_text: drop``), in words for messages.
DEFECTS = {
    "same_text": "chosen and rejected are the same text: the pair prefers nothing",
    "empty_side": "a side has no completion after its prompt",
    "no_marker": "no assistant marker, so there is no prompt to split off",
    "prompt_differs": "chosen and rejected do not share the prompt",
}
SPLITS = ("train", "test")


def split_implicit(chosen: str, rejected: str, marker: str) -> tuple[str, str, str] | str:
    """``(prompt, chosen completion, rejected completion)`` of an implicit-prompt pair, or the defect
    (a key of :data:`DEFECTS`). The prompt is each side up to and including its last ``marker``; the
    two must be the same text."""
    cut_c, cut_r = chosen.rfind(marker), rejected.rfind(marker)
    if cut_c < 0 or cut_r < 0:
        return "no_marker"
    prompt_c, prompt_r = chosen[: cut_c + len(marker)], rejected[: cut_r + len(marker)]
    if prompt_c != prompt_r:
        return "prompt_differs"
    return prompt_c, chosen[len(prompt_c) :], rejected[len(prompt_r) :]


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def normalize(rows: Dataset, where: str, place, marker: str, policy: str) -> tuple[list[dict], Counter]:
    """Rows as ``{prompt, chosen, rejected}`` (completions alone), checked for the defects of
    :data:`DEFECTS`; ``place(i)`` says where row ``i`` sits (``line 3``, ``record 2 (line 5)``).

    Raises:
        LabError: under ``policy == "fail"``, the first defective pair (file, place, defect, what to do).
    """
    explicit = "prompt" in rows.column_names
    out, dropped = [], Counter()
    for i, row in enumerate(rows):
        if explicit:
            parts = (row["prompt"], row["chosen"], row["rejected"])
        else:
            parts = split_implicit(row["chosen"], row["rejected"], marker)
        defect = parts if isinstance(parts, str) else None
        if defect is None:
            _, chosen, rejected = parts
            if not chosen.strip() or not rejected.strip():
                defect = "empty_side"
            elif chosen.strip() == rejected.strip():
                defect = "same_text"
        if defect is None:
            out.append({"prompt": parts[0], "chosen": parts[1], "rejected": parts[2]})
            continue
        if policy == "fail":
            detail = ""
            if defect == "prompt_differs":
                at = first_difference(row["chosen"], row["rejected"])
                shown = row["chosen"][max(0, at - 20) : at + 20].replace("\n", "\\n")
                detail = (
                    f" (they part at character {at}: ...{shown}...): in the implicit-prompt format both sides hold "
                    f"the whole conversation and must be the same text up to the last {marker.strip()!r}; give them "
                    "the same prompt, or use the explicit format (a prompt column)"
                )
            elif defect == "no_marker":
                detail = (
                    f": in the implicit-prompt format each side is a whole conversation ending in an answer after "
                    f"{marker.strip()!r} (data.assistant_marker); add a prompt column for other texts"
                )
            raise LabError(
                f"{where}: {place(i)}: {DEFECTS[defect]}{detail}. Fix the data, or set data.bad_text=drop to "
                "drop such pairs (they are counted in metrics.json)."
            )
        dropped[defect] += 1
    if dropped:
        print(f"{where}: dropped {sum(dropped.values())} pair(s): {dict(dropped)}", flush=True)
    return out, dropped


def load_preferences(cfg: dict, repo_root: Path) -> tuple[dict[str, list[dict]], dict]:
    """``{"train": pairs, "test": pairs}`` and ``{split: {reason: pairs dropped}}``.

    ``cfg`` is the profile's ``data``: ``source`` (``files``: local files ``files.train`` / ``files.test``
    read by extension, JSON lines, JSON, CSV, TSV or Parquet; ``hub``: ``hub_dataset`` at
    ``hub_revision``, ``hub_data_dir``, its ``train`` and ``test`` splits), ``assistant_marker``,
    ``bad_text``, ``train_samples`` / ``eval_samples`` (``None``: all; else the first n after a shuffle
    with ``shuffle_seed``).

    Raises:
        LabError: a missing file or column (names the columns it has and the two formats), empty
            text, or a defective pair under ``bad_text: fail`` (:func:`normalize`).
    """
    policy = cfg["bad_text"]
    pairs, dropped = {}, {}
    for split in SPLITS:
        if cfg["source"] == "hub":
            rows = load_dataset(
                cfg["hub_dataset"], data_dir=cfg["hub_data_dir"], revision=cfg["hub_revision"], split=split
            )
            where, places = f"{cfg['hub_dataset']} ({cfg['hub_data_dir']}) split {split}", {}
        elif cfg["source"] == "files":
            path = repo_root / cfg["files"][split]
            rows, places = read_local_file(path)
            where = str(path)
        else:
            raise LabError(f"data.source={cfg['source']!r}: use files (local files) or hub")
        missing = [c for c in ("chosen", "rejected") if c not in rows.column_names]
        if missing:
            raise LabError(
                f"{where} has no column(s) {', '.join(missing)}; it has: {', '.join(rows.column_names)}. Preference "
                "pairs need chosen and rejected (the whole texts, implicit prompt) or prompt, chosen and rejected "
                "(explicit prompt)"
            )
        columns = ("prompt", "chosen", "rejected") if "prompt" in rows.column_names else ("chosen", "rejected")
        rows, empty = check_texts(rows, columns, policy, where, **places)

        def place(i: int, places=places) -> str:
            return row_place(i, places.get("first_line"), places.get("records"))

        if empty:  # rows were dropped: places no longer match line numbers, so number the kept rows
            place = lambda i: f"row {i} of the rows kept"  # noqa: E731
        kept, defects = normalize(rows, where, place, cfg["assistant_marker"], policy)
        n = cfg["train_samples"] if split == "train" else cfg["eval_samples"]
        if n is not None and n < len(kept):
            kept = Dataset.from_list(kept).shuffle(seed=cfg["shuffle_seed"]).select(range(n)).to_list()
        if not kept:
            raise LabError(f"{where}: no usable preference pair left")
        pairs[split] = kept
        if empty or defects:
            dropped[split] = {**empty, **defects}
    return pairs, dropped


def data_fingerprint(cfg: dict, repo_root: Path) -> str:
    """``labkit.verify.fingerprint`` of the pairs' source: the files (or the Hub id, folder and revision)
    and the sub-sampling settings."""
    if cfg["source"] == "files":
        parts = {split: repo_root / cfg["files"][split] for split in SPLITS}
    else:
        parts = {split: f"hub:{cfg['hub_dataset']}/{cfg['hub_data_dir']}@{cfg['hub_revision']}" for split in SPLITS}
    sampling = "|".join(f"{k}={cfg[k]}" for k in ("train_samples", "eval_samples", "shuffle_seed"))
    return fingerprint({**parts, "sampling": sampling})


def swapped(pairs: list[dict]) -> list[dict]:
    """The pairs with chosen and rejected exchanged (the broken pipeline: a reward model taught backwards)."""
    return [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs]


def completion_ids(tokenizer, completion: str) -> list[int]:
    """A completion's ids, tokenized on its own (no special tokens), then EOS."""
    return tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A prompt's ids with the tokenizer's own special tokens (Llama's ``<s>``)."""
    return tokenizer(prompt)["input_ids"]


def encode_pair(tokenizer, pair: dict, max_length: int) -> dict | None:
    """``{"chosen_ids", "rejected_ids"}`` (prompt ids + completion ids + EOS) for ``RewardTrainer``;
    ``None`` when a side does not fit ``max_length`` (the pair is dropped and counted, as TRL does)."""
    head = prompt_ids(tokenizer, pair["prompt"])
    chosen = head + completion_ids(tokenizer, pair["chosen"])
    rejected = head + completion_ids(tokenizer, pair["rejected"])
    if max(len(chosen), len(rejected)) > max_length:
        return None
    return {"chosen_ids": chosen, "rejected_ids": rejected}


def reward_dataset(tokenizer, pairs: list[dict], max_length: int) -> tuple[Dataset, int]:
    """``(Dataset of chosen_ids / rejected_ids, pairs too long)`` for ``RewardTrainer``."""
    encoded = [encode_pair(tokenizer, p, max_length) for p in pairs]
    kept = [e for e in encoded if e is not None]
    return Dataset.from_list(kept), len(encoded) - len(kept)


def sft_dataset(tokenizer, pairs: list[dict], sides: str, max_length: int) -> tuple[Dataset, int]:
    """``(Dataset of input_ids / labels, rows too long)`` for ``SFTTrainer``: prompt + completion + EOS
    with the loss on the completion and its EOS only (labels -100 on the prompt).

    ``sides``: ``chosen`` (the preferred answers, as TRL's and the DPO paper's recipes) or ``both``
    (every answer: the smoke's random tiny model then writes both kinds, as a pretrained model would).

    Raises:
        LabError: ``sides`` is neither.
    """
    if sides not in ("chosen", "both"):
        raise LabError(f"sft.completions={sides!r}: use chosen or both")
    rows, too_long = [], 0
    for pair in pairs:
        head = prompt_ids(tokenizer, pair["prompt"])
        for side in ("chosen", "rejected") if sides == "both" else ("chosen",):
            tail = completion_ids(tokenizer, pair[side])
            if len(head) + len(tail) > max_length:
                too_long += 1
                continue
            rows.append({"input_ids": head + tail, "labels": [-100] * len(head) + tail})
    return Dataset.from_list(rows), too_long


def prompt_dataset(tokenizer, prompts: list[str]) -> Dataset:
    """``Dataset`` of ``input_ids`` (prompt ids, unpadded) for ``PPOTrainer`` (it pads them on the left)."""
    return Dataset.from_dict({"input_ids": [prompt_ids(tokenizer, p) for p in prompts]})


def as_datasetdict(pairs: dict[str, list[dict]]) -> DatasetDict:
    return DatasetDict({split: Dataset.from_list(rows) for split, rows in pairs.items()})
