"""Course chapter 11 lab: RLHF's three stages with TRL (SFT, reward model, PPO), beside DPO and RLAIF.

ChatGPT's recipe (Ouyang et al. 2022, "Training language models to follow instructions with human
feedback", arXiv:2203.02155), on today's TRL (pinned exactly: ``requirements.in``):

1. **SFT** (``SFTTrainer``): the policy learns to answer; loss on the answer's tokens only.
2. **Reward model** (``RewardTrainer``): a sequence-classification head with one output, trained on
   preference pairs with the Bradley-Terry loss ``-log sigmoid(r(chosen) - r(rejected))``; accuracy on
   held-out pairs before and after.
3. **PPO** (``trl.experimental.ppo.PPOTrainer``): policy, frozen reference, value model and reward
   model; reward = score - kl_coef x KL(policy || reference) per token; objective/kl,
   objective/rlhf_reward, loss/value_avg per update.
4. **DPO** (``DPOTrainer``): the same preference pairs, no reward model, no sampling: the closed-form
   optimum of stage 3's objective turned into a classification loss (Rafailov et al. 2023).
5. **RLAIF**: an AI judge behind any OpenAI-compatible chat API (:mod:`judge`) labels the pairs (a
   reward model trained on its labels), and scores completions as ``GRPOTrainer``'s reward function.
6. Held-out prompts: each stage's greedy answers scored by stage 2's reward model and, against the
   SFT policy's, by the judge (win rate).

    python labs/rlhf/run.py --profile smoke [--set reward.swap_preferences=true]

The smoke profile runs every stage on tiny Llama models built here (policy, reference, value and
reward of one architecture) and bundled preference pairs, on a CPU, with a local replay server as
the judge; the full profile on Qwen2.5-0.5B-Instruct and Anthropic HH-RLHF, with LoRA, on one GPU.

Outputs (``outputs/rlhf/<profile>/<UTC time>/``): ``sft/``, ``reward_model/``, ``ppo/``, ``dpo/``,
``reward_model_ai/``, ``grpo/`` (each stage's model), ``logs/<stage>.jsonl``, one PNG per stage,
``predictions.jsonl`` (held-out prompts: each stage's answer, its reward, whether it stopped),
``ai_preferences.jsonl`` (the judge's labels, in the lab's data format), ``judge_report.json``,
``metrics.json``, ``manifest.json``.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this lab's modules
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # labkit, when run as a script
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard; labkit/lab/__init__.py)

# isort: split

from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer
from trl.experimental.ppo import PPOConfig, PPOTrainer

from labkit.errors import LabError
from labkit.lab.llm.loading import attention
from labkit.lab.llm.training import release
from labkit.lab.metrics import JsonlLogger
from labkit.lab.runner import RunContext, main
from labkit.lab.tiny import build_tiny_llama
from labkit.rundir import remove_if_empty

from curves import ends, plot, plot_bars
from judge import Judge, endpoint, label_pairs, reward_function, win_rate
from policy import (
    check_batches,
    check_ppo_settings,
    check_same_vocabulary,
    check_single_output,
    dtype_of,
    load_tokenizer,
    preference_accuracy,
    rates_left_out,
    rm_scores,
    sample_completions,
)
from preferences import (
    data_fingerprint,
    load_preferences,
    prompt_dataset,
    prompt_ids,
    reward_dataset,
    sft_dataset,
    swapped,
)

#: Each stage's logged keys, drawn in one PNG per stage (panel title -> keys).
PANELS = {
    "sft": {"loss": ["loss", "eval_loss"]},
    "reward": {"loss": ["loss"], "accuracy (batch)": ["accuracy"], "margin (batch)": ["margin"]},
    "ppo": {
        "reward": ["objective/rlhf_reward", "objective/scores"],
        "KL to the reference": ["objective/kl"],
        "losses": ["loss/value_avg", "loss/policy_avg"],
    },
    "dpo": {"loss": ["loss"], "implicit rewards": ["rewards/margins", "rewards/chosen", "rewards/rejected"]},
    "grpo": {"judge's reward (0-1)": ["reward"], "KL to the reference": ["kl"], "length": ["completions/mean_length"]},
}


def lora_config(cfg: dict, task_type: str) -> LoraConfig | None:
    """The profile's ``lora`` as a ``LoraConfig`` for ``task_type`` (a reward model's ``score`` head is
    trained whole: ``modules_to_save``), or ``None`` when ``lora.enabled`` is false."""
    lora = dict(cfg["lora"])
    if not lora.pop("enabled"):
        return None
    if task_type == "SEQ_CLS":
        lora["modules_to_save"] = ["score"]
    return LoraConfig(task_type=task_type, **lora)


def trainer_args(cfg: dict, stage: str, out: Path, **drop) -> dict:
    """The shared ``trainer`` settings, then the stage's own (minus the lab's keys in ``drop``)."""
    own = {k: v for k, v in cfg[stage].items() if k not in drop}
    return {"output_dir": str(out / "checkpoints" / stage), "seed": cfg["seed"], **cfg["trainer"], **own}


def load_policy(path: str, cfg: dict, attn: str, revision: str | None = None):
    """A causal LM (the policy, its reference) in the profile's ``model.dtype``."""
    return AutoModelForCausalLM.from_pretrained(
        path, revision=revision, dtype=dtype_of(cfg["model"]["dtype"]), attn_implementation=attn
    )


def load_scorer(path: str, cfg: dict, attn: str, pad_id: int, num_labels: int | None = 1):
    """A sequence-classification model, its padding id set (it finds each sequence's last token by it):
    with ``num_labels`` 1 a new one-output ``score`` head on a causal LM's checkpoint (or a reward
    model's own); ``None`` keeps the checkpoint's head as it is (a reward model you bring: checked by
    :func:`policy.check_single_output`, not silently replaced)."""
    extra = {} if num_labels is None else {"num_labels": num_labels}
    model = AutoModelForSequenceClassification.from_pretrained(
        path, dtype=dtype_of(cfg["model"]["dtype"]), attn_implementation=attn, **extra
    )
    model.config.pad_token_id = pad_id
    return model


def merged(trainer):
    """The trained model, a LoRA adapter merged into its base (later stages load it as a plain model)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def save(model, tokenizer, folder: Path) -> str:
    """``save_pretrained`` of the model (a PEFT model: its adapter) and the tokenizer; no training
    arguments beside them (``training_args.bin`` holds the run's paths: no two runs would match)."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def run(ctx: RunContext) -> dict:
    """The chapter's steps (module docstring); returns ``metrics.json``'s content.

    Raises:
        LabError: a setting PPO cannot run with, defective preference pairs, fewer pairs than a stage's
            batch, a tokenizer without its own padding token, a reward or value model with several outputs
            or another vocabulary, the judge's endpoint or key (each one line naming the file, record or setting).
    """
    cfg, out, device = ctx.config, ctx.run_dir, ctx.device
    (out / "logs").mkdir()
    metrics: dict = {}
    times, start = {}, [time.monotonic()]

    def lap(step: str) -> None:
        """Record and print the seconds ``step`` took (``metrics.json`` ``time_s``)."""
        now = time.monotonic()
        times[step] = round(now - start[0], 1)
        start[0] = now
        print(f"[rlhf] {step}: {times[step]} s", flush=True)

    # 0. Settings PPO cannot run without, refused before any work; the preference pairs, checked.
    check_ppo_settings(cfg["ppo"])
    pairs, dropped = load_preferences(cfg["data"], ctx.repo_root)
    train, test = pairs["train"], pairs["test"]
    check_batches(cfg, len(train), len(test))  # a stage with no full batch would hang or train on nothing
    held_out = test[: cfg["generation"]["prompts"]]
    print(f"data: {len(train)} train / {len(test)} held-out preference pairs", flush=True)

    model_path, revision = cfg["model"]["name_or_path"], cfg["model"]["revision"]
    if cfg["model"]["build_tiny"]:  # one tiny Llama: policy, reference, value and reward models all start here
        texts = [p["prompt"] + p[side] for split in pairs.values() for p in split for side in ("chosen", "rejected")]
        model_path, revision = (
            str(build_tiny_llama(out / "tiny-model", texts, seed=cfg["seed"], **cfg["model"]["tiny"])),
            None,
        )
    tok = load_tokenizer(model_path, revision, cfg["model"]["pad_token"])
    attn = attention(cfg["attn_implementation"], device)
    gen = cfg["generation"]
    heads = [prompt_ids(tok, p["prompt"]) for p in held_out]
    answers: dict[str, list[dict]] = {}  # stage -> samples_per_prompt answers to each held-out prompt, in order

    def answer(model) -> list[dict]:
        return sample_completions(
            model, tok, heads, gen["max_new_tokens"], gen["samples_per_prompt"], gen["temperature"], cfg["seed"]
        )

    lap("data and models")

    # 1. Stage 1, SFT: prompt + answer, the loss on the answer and its EOS only (labels -100 on the prompt).
    sft_train, sft_long = sft_dataset(tok, train, cfg["sft"]["completions"], cfg["sft"]["max_length"])
    sft_test, _ = sft_dataset(tok, test, "chosen", cfg["sft"]["max_length"])
    policy = load_policy(model_path, cfg, attn, revision)
    answers["base"] = answer(policy.to(device))
    trainer = SFTTrainer(
        model=policy,
        args=SFTConfig(**trainer_args(cfg, "sft", out, completions=0)),
        train_dataset=sft_train,
        eval_dataset=sft_test,
        processing_class=tok,
        peft_config=lora_config(cfg, "CAUSAL_LM"),
        callbacks=[JsonlLogger(out / "logs" / "sft.jsonl")],
    )
    sft_before = trainer.evaluate()["eval_loss"]
    result = trainer.train()
    sft_after = trainer.evaluate()["eval_loss"]
    policy = merged(trainer)
    sft_dir = save(policy, tok, out / "sft")
    answers["sft"] = answer(policy)
    plot(out / "logs" / "sft.jsonl", PANELS["sft"], out / "stage1_sft.png", "stage 1: SFT")
    metrics["sft"] = {
        "rows": len(sft_train),
        "rows_too_long": sft_long,
        "eval_loss_before": sft_before,
        "eval_loss_after": sft_after,
        "eval_loss_drop_ratio": 1 - sft_after / sft_before,
        "steps": result.global_step,
        "runtime_s": result.metrics["train_runtime"],
    }
    del trainer, policy
    release(device)

    lap("stage 1 SFT")

    # 2. Stage 2, the reward model: the SFT model with a one-output score head, Bradley-Terry loss on pairs.
    rm_pairs = swapped(train) if cfg["reward"]["swap_preferences"] else train  # the broken pipeline: taught backwards
    reward_model, rm_metrics = train_reward_model(cfg, out, "reward", sft_dir, tok, attn, rm_pairs, test, device)
    rm_dir = save(reward_model, tok, out / "reward_model")
    metrics["reward"] = {**rm_metrics, "swap_preferences": cfg["reward"]["swap_preferences"]}
    plot(out / "logs" / "reward.jsonl", PANELS["reward"], out / "stage2_reward_model.png", "stage 2: reward model")

    lap("stage 2 reward model")

    # 3. Stage 3, PPO: policy (SFT), reference (SFT, frozen), value model (from the reward model), reward model.
    ptok = load_tokenizer(sft_dir, None, cfg["model"]["pad_token"], padding_side="left")  # PPO pads queries left
    ppo_cfg = cfg["ppo"]
    scorer_path = ppo_cfg["reward_model"] or rm_dir
    value_path = ppo_cfg["value_model"] or rm_dir
    for what, path in (("reward model", scorer_path), ("value model", value_path)):
        check_same_vocabulary(ptok, load_tokenizer(path, None, cfg["model"]["pad_token"]), what)
    ppo_reward = load_scorer(scorer_path, cfg, attn, ptok.pad_token_id, num_labels=None)
    value_model = load_scorer(value_path, cfg, attn, ptok.pad_token_id, num_labels=None)
    check_single_output(ppo_reward, "reward model")
    check_single_output(value_model, "value model")
    peft = lora_config(cfg, "CAUSAL_LM")
    policy = load_policy(sft_dir, cfg, attn)
    trainer = PPOTrainer(
        args=PPOConfig(**trainer_args(cfg, "ppo", out, reward_model=0, value_model=0)),
        processing_class=ptok,
        model=policy,
        ref_model=None if peft else load_policy(sft_dir, cfg, attn),  # with LoRA: the adapter switched off
        reward_model=ppo_reward,
        train_dataset=prompt_dataset(ptok, [p["prompt"] for p in train]),
        value_model=value_model,
        eval_dataset=prompt_dataset(ptok, [p["prompt"] for p in test]),
        peft_config=peft,
        callbacks=[JsonlLogger(out / "logs" / "ppo.jsonl")],
    )
    gc.freeze()  # TRL's PPO loop runs gc.collect() twice per update: objects made so far are left out (0.3 s each here)
    trainer.train()
    gc.unfreeze()
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    save(policy, tok, out / "ppo")  # the policy alone (an adapter with LoRA); not the value model
    answers["ppo"] = answer(policy)
    log = out / "logs" / "ppo.jsonl"
    plot(log, PANELS["ppo"], out / "stage3_ppo.png", "stage 3: PPO")
    metrics["ppo"] = {
        "updates": trainer.state.global_step,
        "episodes": trainer.state.episode,
        "objective": {key.split("/")[1]: ends(log, key) for key in PANELS["ppo"]["reward"] + ["objective/kl"]},
        "loss": {key.split("/")[1]: ends(log, key) for key in PANELS["ppo"]["losses"]},
    }
    del trainer, policy, ppo_reward, value_model
    release(device)

    lap("stage 3 PPO")

    # 4. DPO: the same pairs, the SFT model against a frozen copy of itself; no reward model, no sampling.
    peft = lora_config(cfg, "CAUSAL_LM")
    trainer = DPOTrainer(
        model=load_policy(sft_dir, cfg, attn),
        ref_model=None if peft else load_policy(sft_dir, cfg, attn),
        args=DPOConfig(**trainer_args(cfg, "dpo", out)),
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(test),
        processing_class=tok,
        peft_config=peft,
        callbacks=[JsonlLogger(out / "logs" / "dpo.jsonl")],
    )
    before = trainer.evaluate()
    result = trainer.train()
    after = trainer.evaluate()
    policy = trainer.accelerator.unwrap_model(trainer.model)
    save(policy, tok, out / "dpo")
    answers["dpo"] = answer(policy)
    plot(out / "logs" / "dpo.jsonl", PANELS["dpo"], out / "stage4_dpo.png", "DPO")
    metrics["dpo"] = {
        "steps": result.global_step,
        "eval_loss_before": before["eval_loss"],
        "eval_loss_after": after["eval_loss"],
        "eval_reward_margin_after": after["eval_rewards/margins"],
        "eval_reward_accuracy_after": after["eval_rewards/accuracies"],
        "runtime_s": result.metrics["train_runtime"],
    }
    del trainer
    release(device)

    lap("DPO")

    # 5. RLAIF: the AI judge labels the pairs (a reward model on its labels) and is GRPO's reward function.
    judge_cfg = cfg["judge"]
    cache = (
        ctx.repo_root / judge_cfg["cache"] if judge_cfg["cache"] else out.parents[1] / "cache"
    )  # <output root>/rlhf/cache
    with endpoint(judge_cfg, ctx.repo_root) as url:
        if judge_cfg["base_url"] == "replay":
            print("judge: the lab's local replay server answering by a fixed rule (rule_judge.py), not a model")
        judge = Judge(judge_cfg, url, cache)
        to_label = train[: judge_cfg["label_pairs"]] if judge_cfg["label_pairs"] else train
        try:
            ai_pairs, labels = label_pairs(judge, to_label, cfg["seed"])
        finally:  # what the judge answered, also when it answered nothing usable
            (out / "judge_report.json").write_text(json.dumps(judge.report.as_dict(), indent=2) + "\n", "utf-8")
        with (out / "ai_preferences.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in ai_pairs)
        agree = labels["agreement_with_human_labels"]
        print(f"judge: {labels['labelled']} pairs labelled, agreement with the human labels {agree:.3f}", flush=True)
        ai_rm, ai_rm_metrics = train_reward_model(cfg, out, "reward_ai", sft_dir, tok, attn, ai_pairs, test, device)
        save(ai_rm, tok, out / "reward_model_ai")
        plot(
            out / "logs" / "reward_ai.jsonl",
            PANELS["reward"],
            out / "stage5_rlaif_reward_model.png",
            "RLAIF: reward model on AI labels",
        )
        trainer = GRPOTrainer(
            model=load_policy(sft_dir, cfg, attn),
            reward_funcs=[reward_function(judge)],
            args=GRPOConfig(**trainer_args(cfg, "grpo", out)),
            train_dataset=Dataset.from_dict({"prompt": [p["prompt"] for p in train]}),
            processing_class=load_tokenizer(sft_dir, None, cfg["model"]["pad_token"], padding_side="left"),
            peft_config=lora_config(cfg, "CAUSAL_LM"),
            callbacks=[JsonlLogger(out / "logs" / "grpo.jsonl")],
        )
        result = trainer.train()
        policy = trainer.accelerator.unwrap_model(trainer.model)
        save(policy, tok, out / "grpo")
        answers["grpo"] = answer(policy)
        log = out / "logs" / "grpo.jsonl"
        plot(log, PANELS["grpo"], out / "stage5_rlaif_grpo.png", "RLAIF: GRPO with the AI judge as reward")
        del trainer
        release(device)

        lap("RLAIF")

        # 6. Held-out prompts: each stage's sampled answers against the SFT policy's (the same prompt and
        #    sample), judged pairwise; and scored by stage 2's reward model (the one PPO optimized) and by
        #    the reward model on the judge's labels (a second opinion PPO never saw, as Gao et al. 2022's gold RM).
        n = gen["samples_per_prompt"]
        prompts = [p["prompt"] for p in held_out for _ in range(n)]
        texts = {stage: [a["text"] for a in got] for stage, got in answers.items()}
        wins = {s: win_rate(judge, prompts, texts["sft"], texts[s], cfg["seed"]) for s in ("ppo", "dpo", "grpo")}
    (out / "judge_report.json").write_text(json.dumps(judge.report.as_dict(), indent=2) + "\n", encoding="utf-8")
    metrics["rlaif"] = {
        "labels": labels,
        "reward_model": ai_rm_metrics,
        "grpo": {"steps": result.global_step, "reward": ends(log, "reward"), "kl": ends(log, "kl")},
    }
    metrics["judge"] = {k: v for k, v in judge.report.as_dict().items() if k in ("asked", "replies_rejected")}
    heads_n = [h for h in heads for _ in range(n)]
    scores, mean, second = {}, {}, {}
    for stage, got in answers.items():
        scores[stage] = rm_scores(reward_model.to(device), tok, heads_n, [a["ids"] for a in got])
        mean[stage] = sum(scores[stage]) / len(scores[stage])
        ai = rm_scores(ai_rm.to(device), tok, heads_n, [a["ids"] for a in got])
        second[stage] = sum(ai) / len(ai)
    for stage in ("ppo", "dpo", "grpo"):
        gains = {
            "reward_model_score_gain": mean[stage] - mean["sft"],
            "ai_reward_model_score_gain": second[stage] - second["sft"],
            "judge_win_rate": wins[stage]["win_rate"],
        }
        (metrics["rlaif"]["grpo"] if stage == "grpo" else metrics[stage]).update(gains)
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for i, pair in enumerate(held_out):
            row = {"prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"]}
            for stage, got in answers.items():
                row[stage] = [
                    {"text": got[k]["text"], "stopped": got[k]["stopped"], "reward": scores[stage][k]}
                    for k in range(i * n, i * n + n)
                ]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    plot_bars(mean, out / "held_out_rewards.png", "held-out answers: mean reward (stage 2's model)", "mean reward")
    plot_bars(
        {
            "stage 2 (human labels)": metrics["reward"]["accuracy_after"],
            "RLAIF (AI labels)": ai_rm_metrics["accuracy_after"],
        },
        out / "reward_model_accuracy.png",
        "held-out preference accuracy (human labels)",
        "accuracy",
    )
    metrics["generation"] = {
        "prompts": len(held_out),
        "samples_per_prompt": n,
        "reward_model_score": mean,
        "ai_reward_model_score": second,
        "stopped": {stage: sum(a["stopped"] for a in got) / len(got) for stage, got in answers.items()},
        "judge_win_rate_vs_sft": {stage: w["win_rate"] for stage, w in wins.items()},
        "judge_comparisons": wins,
    }
    metrics["data"] = {
        "train_pairs": len(train),
        "test_pairs": len(test),
        "dropped": dropped,
        "fingerprint": data_fingerprint(cfg["data"], ctx.repo_root),
    }
    metrics["attn_implementation"] = attn
    if left_out := rates_left_out(len(test), len(held_out)):  # a rate on a handful of pairs is noise
        metrics["not_run"] = left_out
    for folder in sorted((out / "checkpoints").glob("*")):  # the trainers' output_dir: nothing is saved there
        remove_if_empty(folder)
    remove_if_empty(out / "checkpoints")
    lap("held-out comparison")
    metrics["time_s"] = times
    return metrics


def train_reward_model(cfg, out, stage, sft_dir, tok, attn, pairs, test, device):
    """``RewardTrainer`` on ``pairs`` from the SFT model with a new one-output head (InstructGPT starts its
    reward model from the SFT model); accuracy and mean margin on the held-out ``test`` pairs (their
    human labels) before and after. Returns the trained model (an adapter merged) and its metrics."""
    model = load_scorer(sft_dir, cfg, attn, tok.pad_token_id)
    check_single_output(model, "reward model")
    before = preference_accuracy(model.to(device), tok, test)
    data, too_long = reward_dataset(tok, pairs, cfg["reward"]["max_length"])
    if len(data) == 0:
        raise LabError(f"no preference pair fits reward.max_length={cfg['reward']['max_length']}: raise it")
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(**trainer_args(cfg, "reward", out, swap_preferences=0)),
        train_dataset=data,
        processing_class=tok,
        peft_config=lora_config(cfg, "SEQ_CLS"),
        callbacks=[JsonlLogger(out / "logs" / f"{stage}.jsonl")],
    )
    result = trainer.train()
    model = merged(trainer)
    after = preference_accuracy(model, tok, test)
    return model, {
        "pairs": len(data),
        "pairs_too_long": too_long,
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "margin_before": before["margin"],
        "margin_after": after["margin"],
        "steps": result.global_step,
        "runtime_s": result.metrics["train_runtime"],
    }


if __name__ == "__main__":
    raise SystemExit(main("rlhf", run))
