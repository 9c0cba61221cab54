"""Benchmark each stage's training step at the full profile's settings on random weights
(``invoke bench --lab rlhf``).

``Qwen/Qwen2.5-0.5B-Instruct``'s architecture (its config.json: hidden 896, 24 layers, 14 query / 2
key-value heads, MLP 4,864, vocabulary 151,936, tied embeddings) with random weights, saved in bf16
and loaded as the lab loads it (``model.dtype``, LoRA as ``lora``), one row per stage (the variants):

* ``sft``: ``SFTTrainer`` steps on rows of ``sft.max_length`` tokens;
* ``reward``: ``RewardTrainer`` steps on pairs of ``reward.max_length`` tokens each;
* ``ppo``: ``trl.experimental.ppo.PPOTrainer`` updates (rollout of ``ppo.response_length`` tokens after
  prompts of half ``sft.max_length``, reference, value and reward forwards, ``num_ppo_epochs`` passes),
  the value and reward models of the same architecture with a one-output head;
* ``dpo``: ``DPOTrainer`` steps on pairs (prompt half ``dpo.max_length``, each answer a quarter);
* ``grpo``: ``GRPOTrainer`` steps, ``num_generations`` completions per prompt, a random reward in
  place of the judge (the API's latency is not the GPU's; ``judge_report.json`` counts the calls).

The texts are random words of a placeholder word-level tokenizer with the architecture's vocabulary
size, so nothing is downloaded. A row's time is one optimizer step (``ppo``: one update, its rollout
included). Tokens and MFU are not reported: the stages read different numbers of tokens per sample
(a pair, a rollout, a group of completions); compare the stages by step time and peak memory.

    python labs/rlhf/bench.py --batch-sizes 2,4,8 --steps 3
    python labs/rlhf/bench.py --arch tiny --device cpu --steps 1   # the CPU self-test
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
import labkit.lab  # noqa: F401  (first, before torch: the torch_npu guard; labkit/lab/__init__.py)

# isort: split

import random

import torch
from datasets import Dataset
from transformers import Qwen2Config, Qwen2ForCausalLM, TrainerCallback

from labkit.config import get_lab, load_profile
from labkit.lab.bench import Bench, main, scratch_dir
from labkit.lab.timing import synchronize

from run import load_policy, load_scorer, lora_config

#: Qwen/Qwen2.5-0.5B-Instruct config.json (the full profile's model); ``tiny`` is the CPU self-test's.
ARCHS = {
    "full": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        tie_word_embeddings=True,
    ),
}
STAGES = ("sft", "reward", "ppo", "dpo", "grpo")
SPECIALS = ["<unk>", "<pad>", "</s>"]


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer of ``vocab_size`` tokens (``<unk>`` 0, ``<pad>`` 1, ``</s>`` 2, then
    ``w3`` ...): random texts of its words tokenize to known lengths."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


class StepClock(TrainerCallback):
    """Each step's wall time (s), from the end of the previous one (the first from the start of
    training): PPOTrainer calls ``on_step_end`` only, once per update."""

    def __init__(self, device: str):
        self.device, self.times, self._last = device, [], 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        synchronize(self.device)
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.device)
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def make(arch: str, device: str) -> Bench:
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    cfg = load_profile(get_lab("rlhf"), "full")[0]
    cfg["model"]["dtype"] = "bfloat16" if device == "cuda" else "float32"
    vocab = ARCHS[arch]["vocab_size"]
    seq = cfg["sft"]["max_length"] if arch == "full" else 32
    response = cfg["ppo"]["response_length"] if arch == "full" else 8
    folder = scratch_dir()
    torch.manual_seed(0)
    config = Qwen2Config(pad_token_id=1, eos_token_id=2, bos_token_id=None, **ARCHS[arch])
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tok = word_tokenizer(vocab)
    tok.save_pretrained(folder)
    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(len(SPECIALS), vocab)}" for _ in range(n))

    def ids(n: int) -> list[int]:
        return [rng.randrange(len(SPECIALS), vocab) for _ in range(n)]

    def args_for(stage: str, batch: int, n: int) -> dict:
        drop = {"completions", "swap_preferences", "reward_model", "value_model"}
        own = {k: v for k, v in cfg[stage].items() if k not in drop}
        common = {**cfg["trainer"], "use_cpu": device == "cpu", "bf16": device == "cuda", "report_to": "none"}
        common.update(logging_steps=1, dataloader_num_workers=0, output_dir=scratch_dir())
        own.update(per_device_train_batch_size=batch, gradient_accumulation_steps=1)
        if stage == "ppo":
            own.update(total_episodes=batch * n, response_length=response, local_rollout_forward_batch_size=batch)
        else:
            own.update(max_steps=n)
        if stage == "grpo":  # batch = prompts x completions: at least one group
            own.update(per_device_train_batch_size=max(batch, 2) * cfg["grpo"]["num_generations"] // 2)
            own.update(num_generations=cfg["grpo"]["num_generations"], max_completion_length=response)
        for key in ("max_length", "max_completion_length"):
            if key in own and arch == "tiny":
                own[key] = min(own[key], 2 * seq)
        return {**common, **own}

    def step(batch: int, n: int, stage: str) -> tuple[list[float], dict]:
        clock = StepClock(device)
        policy = load_policy(folder, cfg, "sdpa")
        args = args_for(stage, batch, n)
        rows = batch * n
        if stage == "sft":
            data = Dataset.from_list([{"input_ids": ids(seq), "labels": ids(seq)} for _ in range(rows)])
            trainer = SFTTrainer(model=policy, args=SFTConfig(**args), train_dataset=data, processing_class=tok,
                                 peft_config=lora_config(cfg, "CAUSAL_LM"), callbacks=[clock])  # fmt: skip
        elif stage == "reward":
            data = Dataset.from_list([{"chosen_ids": ids(seq), "rejected_ids": ids(seq)} for _ in range(rows)])
            trainer = RewardTrainer(model=load_scorer(folder, cfg, "sdpa", tok.pad_token_id), args=RewardConfig(**args),
                                    train_dataset=data, processing_class=tok, peft_config=lora_config(cfg, "SEQ_CLS"),
                                    callbacks=[clock])  # fmt: skip
        elif stage == "ppo":
            left = word_tokenizer(vocab)
            left.padding_side = "left"
            peft = lora_config(cfg, "CAUSAL_LM")
            prompts = Dataset.from_dict({"input_ids": [ids(seq // 2) for _ in range(rows)]})
            trainer = PPOTrainer(
                args=PPOConfig(**args),
                processing_class=left,
                model=policy,
                ref_model=None if peft else load_policy(folder, cfg, "sdpa"),
                reward_model=load_scorer(folder, cfg, "sdpa", tok.pad_token_id),
                train_dataset=prompts,
                value_model=load_scorer(folder, cfg, "sdpa", tok.pad_token_id),
                eval_dataset=prompts,
                peft_config=peft,
                callbacks=[clock],
            )
        elif stage == "dpo":
            pairs = [{"prompt": words(seq // 2), "chosen": " " + words(seq // 4), "rejected": " " + words(seq // 4)}
                     for _ in range(rows)]  # fmt: skip
            peft = lora_config(cfg, "CAUSAL_LM")
            trainer = DPOTrainer(model=policy, ref_model=None if peft else load_policy(folder, cfg, "sdpa"),
                                 args=DPOConfig(**args), train_dataset=Dataset.from_list(pairs), processing_class=tok,
                                 peft_config=peft, callbacks=[clock])  # fmt: skip
        else:
            prompts = Dataset.from_dict({"prompt": [words(seq // 2) for _ in range(rows)]})

            def random_reward(prompts, completions, **kwargs):  # the judge's latency is not the GPU's
                return [rng.random() for _ in completions]

            left = word_tokenizer(vocab)
            left.padding_side = "left"
            trainer = GRPOTrainer(model=policy, reward_funcs=[random_reward], args=GRPOConfig(**args),
                                  train_dataset=prompts, processing_class=left,
                                  peft_config=lora_config(cfg, "CAUSAL_LM"), callbacks=[clock])  # fmt: skip
        trainer.train()
        return clock.times, {}

    return Bench(
        what=f"Qwen2.5-0.5B-Instruct architecture ({arch}), random weights, LoRA "
        f"{'r=' + str(cfg['lora']['r']) if cfg['lora']['enabled'] else 'off'}; one row per stage (TRL trainers)",
        setting="per_device_train_batch_size",
        default_batch=cfg["sft"]["per_device_train_batch_size"],
        tokens_per_sample=0,
        flops_per_token=None,
        flops_note="not reported: the stages read different tokens per sample (a row, a pair, a rollout, a group); "
        "compare them by step time and peak memory",
        step=step,
        variants=STAGES,
    )


if __name__ == "__main__":
    main("rlhf", make)
