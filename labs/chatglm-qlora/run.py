"""Course chapter 9 lab: QLoRA fine-tuning of a GLM chat model on AdvertiseGen ("实战 QLoRA 微调 ChatGLM3-6B").

The course loads ``THUDM/chatglm3-6b`` (remote code) in 4-bit NF4 with double quantization, puts a
LoRA adapter (r=4, lora_alpha=32, dropout 0.05) on its attention projection, and trains 100 steps
(batch 16 x 4, learning rate 1e-3, linear schedule) on AdvertiseGen: garment attributes
(``content``, e.g. ``类型#裙*颜色#蓝色``) in, Chinese ad copy (``summary``) out, the prompt masked
from the loss. The maintained variant does the same on GLM-4-9B-chat in Transformers' own
``GlmForCausalLM`` (no remote code); the smoke profile on a tiny GLM and bundled rows, on a CPU.

    python labs/chatglm-qlora/run.py --profile smoke [--set learning_rate=0]

Steps: 1. data (here); 2. prompts through the chat template and the exact loss mask; 3. the 4-bit
model and LoRA; 4. Trainer, losses before and after; 5. save, reload, check the logits; 6. answers on
held-out attributes with the adapter disabled (the base model) and enabled, the same prompts
(2-6: ``labkit.qlora.chat_qlora``, shared with chapter 10's lab).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this lab's modules
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # labkit, when run as a script
import labkit  # noqa: F401  (first: it quiets a bitsandbytes start-up message)

# isort: split

from labkit.data import hub_or_json_fingerprint
from labkit.qlora import chat_qlora
from labkit.runner import RunContext, main

from adgen import load_adgen


def run(ctx: RunContext) -> dict:
    cfg = ctx.config

    # 1. Data: AdvertiseGen rows (content -> summary), text columns checked.
    dsd, dropped = load_adgen(cfg["data"], ctx.repo_root)

    # 2-6. Chat-template prompts with the exact mask, the 4-bit model with LoRA, Trainer, save and
    #      reload, answers with the adapter disabled and enabled (labkit.qlora.chat_qlora, shared with
    #      the private-data lab of chapter 10).
    steps = chat_qlora(ctx, dsd, ("content", "summary"), (cfg["max_input_length"], cfg["max_output_length"]))
    data = {
        "train_examples": steps.pop("train_examples"),
        "eval_examples": steps.pop("eval_examples"),
        "lengths": steps.pop("lengths"),
        "dropped_rows": dropped,
        "fingerprint": hub_or_json_fingerprint(cfg["data"], ctx.repo_root, ("train", "validation")),
    }
    return {"data": data, **steps}


if __name__ == "__main__":
    raise SystemExit(main("chatglm-qlora", run))
