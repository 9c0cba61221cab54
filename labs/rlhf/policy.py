"""The models of the three stages and what PPO needs of them, checked before any training step.

* :func:`load_tokenizer`: a padding token of its own. PPO finds where a response ends by its first
  padding token and masks padding out of attention; with padding = EOS every EOS would be taken for
  padding (the answer's end is lost, and SFT masks the EOS it should learn). The lab refuses a
  tokenizer without a padding token, or with EOS as its padding, and names the setting.
* :func:`check_single_output`: a reward (or value) model has one output. TRL's PPOTrainer reads
  ``score(hidden)[..., last token]`` and squeezes the last dimension: a classifier head with two
  labels gives two numbers per sequence and fails deep in the rollout, or is misread.
* :func:`check_same_vocabulary`: PPO hands the policy's token ids to the value and reward models as
  they are: their tokenizers must map every token to the same id.
* :func:`check_ppo_settings`: a stop token (``stop_token: eos``) and a ``missing_eos_penalty``.
  Without a stop token TRL truncates nothing: every response runs to ``response_length`` and the
  reward model scores whatever follows the answer. Without the penalty nothing discourages a policy
  from never ending (TRL's documented PPO recipe sets both: ``stop_token eos``,
  ``missing_eos_penalty 1.0``).

Scoring and generation for the before/after comparisons: :func:`rm_scores` (the reward model on a
prompt's ids + a completion's ids, as RewardTrainer trained it and PPO reads it),
:func:`preference_accuracy`, :func:`sample_completions` (sampled as PPO samples, the ids kept).
"""

from __future__ import annotations

import torch

from labkit.errors import LabError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_of(name: str) -> torch.dtype:
    """``torch`` dtype for a profile's ``model.dtype``.

    Raises:
        LabError: an unknown name.
    """
    if name not in DTYPES:
        raise LabError(f"model.dtype={name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_pad_token(tokenizer, where: str) -> None:
    """The tokenizer pads with a token of its own, not its EOS.

    Raises:
        LabError: no padding token, or padding = EOS (names the tokenizer and the setting).
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise LabError(
            f"the tokenizer of {where} has no padding token: batches of preference pairs and PPO's rollouts are "
            f"padded. Set model.pad_token to a token of its vocabulary that is not its end of sequence ({eos!r}); "
            "Llama's <unk>, Qwen2.5's <|endoftext|>"
        )
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise LabError(
            f"the tokenizer of {where} pads with its end-of-sequence token {eos!r}: PPO takes the first padding token "
            "for the end of a response and masks padding out of attention, and SFT would mask the EOS the policy must "
            "learn, so responses would never end. Set model.pad_token to another token of its vocabulary "
            "(Llama's <unk>, Qwen2.5's <|endoftext|>)"
        )


def load_tokenizer(path: str, revision: str | None, pad_token: str | None, padding_side: str = "right"):
    """``AutoTokenizer`` of ``path`` with ``pad_token`` (the profile's ``model.pad_token``; ``None``
    keeps the tokenizer's own) and ``padding_side``; checked by :func:`check_pad_token`.

    Raises:
        LabError: ``pad_token`` is not in the vocabulary, or :func:`check_pad_token` refuses it.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, padding_side=padding_side)
    if pad_token is not None:
        if pad_token not in tokenizer.get_vocab():
            raise LabError(f"model.pad_token={pad_token!r} is not a token of {path}'s tokenizer")
        tokenizer.pad_token = pad_token
    check_pad_token(tokenizer, path)
    return tokenizer


def check_single_output(model, what: str) -> None:
    """``model`` (a reward or value model) has a head with one output.

    Raises:
        LabError: ``num_labels`` or the head's output size is not 1 (names the model and the fix).
    """
    head = getattr(model, "score", None)
    outputs = getattr(head, "out_features", None) if isinstance(head, torch.nn.Linear) else None
    labels = getattr(model.config, "num_labels", None)
    if labels != 1 or (outputs is not None and outputs != 1):
        raise LabError(
            f"the {what} has a head with {outputs or labels} outputs (num_labels={labels}): PPO reads one score per "
            "sequence (TRL's get_reward takes score(hidden)[..., last token] and squeezes the last dimension). A "
            "classifier with several labels is not a reward model: train one with one output (RewardTrainer sets "
            f"num_labels=1), or set ppo.{what.replace(' ', '_')}=null to use stage 2's"
        )


def check_same_vocabulary(policy_tokenizer, other_tokenizer, what: str) -> None:
    """The policy's and ``what``'s tokenizers map every token to the same id.

    Raises:
        LabError: they differ (names how: sizes, and a token whose id differs).
    """
    mine, theirs = policy_tokenizer.get_vocab(), other_tokenizer.get_vocab()
    if mine == theirs:
        return
    differ = next((t for t in sorted(mine) if theirs.get(t) != mine[t]), None) or next(iter(set(theirs) - set(mine)))
    raise LabError(
        f"the {what} has another vocabulary than the policy ({len(theirs)} tokens against {len(mine)}; {differ!r} is "
        f"{theirs.get(differ)} there, {mine.get(differ)} in the policy's): PPO passes the policy's token ids to it "
        "unchanged, so it would read other words. Use a model with the policy's tokenizer (initialize it from the "
        "policy or from stage 2's reward model)"
    )


def check_ppo_settings(ppo: dict) -> None:
    """PPO stops responses at EOS and penalizes responses that never stop.

    Raises:
        LabError: ``stop_token`` is not ``eos`` (and no ``stop_token_id``), or ``missing_eos_penalty`` is
            not a positive number; each explains what TRL would do instead.
    """
    if ppo.get("stop_token") != "eos" and ppo.get("stop_token_id") is None:
        raise LabError(
            f"ppo.stop_token={ppo.get('stop_token')!r} and no stop_token_id: TRL's PPOTrainer then truncates nothing, "
            f"so every response runs {ppo['response_length']} tokens and the reward model scores the words after the "
            "answer's end as part of it. Set ppo.stop_token=eos (TRL's PPO recipe)"
        )
    penalty = ppo.get("missing_eos_penalty")
    if penalty is None or isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or penalty <= 0:
        raise LabError(
            f"ppo.missing_eos_penalty={penalty!r}: without a positive penalty a response that never ends (cut at "
            f"{ppo['response_length']} tokens) is scored like one that ends, and PPO learns to ramble (TRL's PPO "
            "recipe subtracts 1.0 from such responses' scores). Set ppo.missing_eos_penalty=1.0"
        )


#: Held-out rates (accuracies, win rates) move in steps of 1/n pairs: below this many held-out pairs one
#: pair moves a rate by more than 6 points, as much as the margins of the bounds in expected/*.yaml, so
#: their checks are left out (metrics.json ``not_run``) rather than judged on noise. The bundled and
#: foreign held-out sets have 32 and 24 pairs.
MIN_HELD_OUT_FOR_RATES = 16
#: The checks on held-out rates (reward models' accuracy, DPO's implicit-reward accuracy, the judge's
#: win rates over held-out prompts).
HELD_OUT_RATES = (
    "reward.accuracy_after",
    "dpo.eval_reward_accuracy_after",
    "rlaif.reward_model.accuracy_after",
    "ppo.judge_win_rate",
    "dpo.judge_win_rate",
    "rlaif.grpo.judge_win_rate",
)


def rates_left_out(test_pairs: int, prompts: int) -> dict[str, str]:
    """``metrics.json`` ``not_run`` entries for :data:`HELD_OUT_RATES` when the held-out set is too small
    to judge a rate (:data:`MIN_HELD_OUT_FOR_RATES`): ``{}`` otherwise. ``prompts``: how many held-out
    prompts the win rates use (``generation.prompts``, at most ``test_pairs``)."""
    reasons = {}
    for name in HELD_OUT_RATES:
        n = prompts if name.endswith("judge_win_rate") else test_pairs
        if n < MIN_HELD_OUT_FOR_RATES:
            what = "held-out prompts" if name.endswith("judge_win_rate") else "held-out pairs"
            reasons[name] = f"{n} {what}, too few to judge a rate ({MIN_HELD_OUT_FOR_RATES} or more)"
    return reasons


def check_batches(cfg: dict, train_pairs: int, test_pairs: int) -> None:
    """Every stage gets at least one batch from the pairs it trains on, checked before any training.

    PPO and GRPO sample whole batches of prompts and drop an incomplete one: with fewer prompts than one
    batch their loaders are empty and the run waits forever without a word (TRL's ``PPOTrainer``: a
    ``DataLoader(batch_size=local_batch_size, drop_last=True)`` behind an endless ``repeat_generator``,
    ``local_batch_size = per_device_train_batch_size x gradient_accumulation_steps``; ``GRPOTrainer``:
    ``RepeatSampler`` keeps only full chunks of ``generation_batch_size / num_generations`` prompts).
    SFT, the reward models and DPO batch with the Transformers ``Trainer``, whose loaders keep a
    partial batch unless ``dataloader_drop_last`` is set. One process (the lab runs one).

    Args:
        cfg: the profile (``sft``, ``reward``, ``ppo``, ``dpo``, ``grpo``, ``trainer``, ``judge``).
        train_pairs, test_pairs: the preference pairs loaded (after ``data.train_samples`` and dropping).

    Raises:
        LabError: a stage would get no batch (names the count, the setting and what to do).
    """

    def refuse(n: int, what: str, stage: str, batch: int, how: str, why: str, setting: str) -> None:
        if n < batch:
            raise LabError(
                f"{n} {what}, fewer than {stage}'s batch of {batch} ({how}): {why}. Lower {setting} to {n} or less, "
                "or bring more pairs"
            )

    ppo, grpo, trainer = cfg["ppo"], cfg["grpo"], cfg["trainer"]
    size, accumulation = ppo["per_device_train_batch_size"], ppo.get("gradient_accumulation_steps", 1)
    refuse(
        train_pairs,
        "training pairs (PPO's prompts)",
        "PPO",
        size * accumulation,
        f"ppo.per_device_train_batch_size {size} x ppo.gradient_accumulation_steps {accumulation}",
        "TRL's PPOTrainer drops an incomplete batch and would wait forever for a full one",
        "ppo.per_device_train_batch_size x gradient_accumulation_steps",
    )
    steps = grpo.get("steps_per_generation") or grpo.get("gradient_accumulation_steps", 1)
    generation = grpo.get("generation_batch_size") or grpo["per_device_train_batch_size"] * steps
    refuse(
        train_pairs,
        "training pairs (GRPO's prompts)",
        "GRPO",
        generation // grpo["num_generations"],
        f"{generation} completions per generation / grpo.num_generations {grpo['num_generations']}",
        "TRL's GRPOTrainer samples only full batches of prompts and would train on none",
        "grpo.per_device_train_batch_size / num_generations",
    )
    rows = {  # stage: (training rows, held-out rows or None when it evaluates none)
        "sft": (train_pairs * (2 if cfg["sft"]["completions"] == "both" else 1), test_pairs),
        "reward": (min(train_pairs, cfg["judge"].get("label_pairs") or train_pairs), None),  # the AI's: at most these
        "dpo": (train_pairs, test_pairs),
    }
    for stage, (train, test) in rows.items():
        if not cfg[stage].get("dataloader_drop_last", trainer.get("dataloader_drop_last", False)):
            continue  # the Trainer keeps a partial batch
        for n, split, key in (
            (train, "training", "per_device_train_batch_size"),
            (test, "held-out", "per_device_eval_batch_size"),
        ):
            if n is not None:
                batch = cfg[stage].get(key, trainer.get(key, 8))  # 8: TrainingArguments' default
                refuse(
                    n,
                    f"{split} rows",
                    stage,
                    batch,
                    f"{stage}.{key} {batch}",
                    "with dataloader_drop_last the Trainer drops an incomplete batch and would get none",
                    f"{stage}.{key}",
                )


@torch.no_grad()
def rm_scores(model, tokenizer, prompts: list[list[int]], completions: list[list[int]], batch_size: int = 16):
    """The reward model's score (float) of each prompt + completion (token ids, the completion as
    generated or with its EOS), right-padded as ``RewardTrainer`` trained it: the score is read at the
    last real token (the EOS when there is one)."""
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for i in range(0, len(prompts), batch_size):
        seqs = [p + c for p, c in zip(prompts[i : i + batch_size], completions[i : i + batch_size])]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        scores += logits[:, 0].float().cpu().tolist()
    return scores


def preference_accuracy(model, tokenizer, pairs: list[dict]) -> dict:
    """``{"accuracy", "margin", "pairs"}`` of a reward model on preference ``pairs``: the share where it
    scores chosen above rejected, and the mean score difference."""
    from preferences import completion_ids, prompt_ids

    heads = [prompt_ids(tokenizer, p["prompt"]) for p in pairs]
    chosen = rm_scores(model, tokenizer, heads, [completion_ids(tokenizer, p["chosen"]) for p in pairs])
    rejected = rm_scores(model, tokenizer, heads, [completion_ids(tokenizer, p["rejected"]) for p in pairs])
    diffs = [c - r for c, r in zip(chosen, rejected)]
    return {
        "accuracy": sum(d > 0 for d in diffs) / len(diffs),
        "margin": sum(diffs) / len(diffs),
        "pairs": len(diffs),
    }


@torch.no_grad()
def sample_completions(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, n: int, temperature: float, seed: int
) -> list[dict]:
    """``n`` sampled completions of each of ``prompts`` (token ids), in prompt order (prompt ``i``'s are
    items ``i * n`` to ``i * n + n - 1``): ``{"ids", "text", "stopped"}``, ``ids`` up to and including
    the first EOS (as PPO truncates them), ``text`` decoded without special tokens.

    Sampled as PPO samples (temperature, no top-k or top-p cut; the prompts left-padded in one
    batch), from the random stream of ``seed``: every stage's answers are drawn with the same stream
    (common random numbers), so two stages' answers differ by their models rather than by luck.
    """
    model.eval()
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    seqs = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        num_return_sequences=n,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )[:, width:].tolist()
    torch.random.set_rng_state(state)
    out = []
    for seq in seqs:
        stopped = tokenizer.eos_token_id in seq
        seq = seq[: seq.index(tokenizer.eos_token_id) + 1] if stopped else seq
        out.append({"ids": seq, "text": tokenizer.decode(seq, skip_special_tokens=True).strip(), "stopped": stopped})
    return out
