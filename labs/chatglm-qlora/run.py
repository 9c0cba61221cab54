"""Course chapter 9 lab: QLoRA fine-tuning of a GLM chat model on AdvertiseGen ("实战 QLoRA 微调 ChatGLM3-6B").

The course loads ``THUDM/chatglm3-6b`` (remote code) in 4-bit NF4 with double quantization, puts a
LoRA adapter (r=4, lora_alpha=32, dropout 0.05) on its attention projection, and trains 100 steps
(batch 16 x 4, learning rate 1e-3, linear schedule) on AdvertiseGen: garment attributes
(``content``, e.g. ``类型#裙*颜色#蓝色``) in, Chinese ad copy (``summary``) out, the prompt masked
from the loss. The maintained variant does the same on GLM-4-9B-chat in Transformers' own
``GlmForCausalLM`` (no remote code); the smoke profile on a tiny GLM and bundled rows, on a CPU.

    python labs/chatglm-qlora/run.py --profile smoke [--set learning_rate=0]
    python labs/chatglm-qlora/run.py --profile course-full    # ChatGLM3-6B, course libraries (own image)

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
from labkit.errors import LabError
from labkit.qlora import chat_qlora
from labkit.runner import RunContext, main

from adgen import load_adgen


def run(ctx: RunContext) -> dict:
    cfg = ctx.config

    # 1. Data: AdvertiseGen rows (content -> summary), text columns checked.
    dsd, dropped = load_adgen(cfg["data"], ctx.repo_root)

    data = {
        "train_examples": len(dsd["train"]),
        "eval_examples": len(dsd["validation"]),
        "dropped_rows": dropped,
        "fingerprint": hub_or_json_fingerprint(cfg["data"], ctx.repo_root, ("train", "validation")),
    }
    columns = ("content", "summary")

    # The course variant (ChatGLM3-6B's remote code, course libraries): its own tokenizer and model.
    recipe = None
    if cfg["model"]["trust_remote_code"]:
        from course import ChatGLM3Recipe, course_stack, tokenize_check

        recipe, stack = ChatGLM3Recipe(), course_stack()
        if not cfg["run_training"]:  # course-smoke: what runs offline on a CPU, the rest said and skipped
            return {"data": data, "course_stack": stack, **course_smoke(cfg, dsd, columns, recipe, tokenize_check)}

    # 2-6. Prompts with the exact mask, the 4-bit model with LoRA, Trainer, save and reload, answers
    #      with the adapter disabled and enabled (labkit.qlora.chat_qlora, shared with the private-data
    #      lab of chapter 10; maintained: the chat template, course: ChatGLM3's remote code).
    steps = chat_qlora(ctx, dsd, columns, (cfg["max_input_length"], cfg["max_output_length"]), recipe)
    data.update(train_examples=steps.pop("train_examples"), eval_examples=steps.pop("eval_examples"))
    data["lengths"] = steps.pop("lengths")
    return {"data": data, **steps}


def course_smoke(cfg: dict, dsd, columns, recipe, tokenize_check) -> dict:
    """The course variant's smoke: step 2 with the remote tokenizer when the cache holds it; steps
    3-6 need a CUDA GPU with these libraries (bitsandbytes 0.43) and the 6B model: course-full."""
    later = "needs a CUDA GPU (bitsandbytes 0.43 has no CPU backend) and the 6B model: PROFILE=course-full"
    not_run = {prefix: later for prefix in ("lora.", "quantization.", "train.", "eval.", "generation.", "reload.")}
    try:
        return {"tokenize": tokenize_check(recipe, cfg, dsd, columns), "not_run": not_run}
    except LabError as exc:
        print(f"step 2 skipped: {exc}", flush=True)
        model = f"{cfg['model']['name_or_path']}@{cfg['model']['revision']}"
        return {"not_run": {"tokenize.": f"needs the Hub (remote code {model}, not in the cache)", **not_run}}


if __name__ == "__main__":
    raise SystemExit(main("chatglm-qlora", run))
