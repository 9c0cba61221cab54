"""The course variant: ChatGLM3-6B through its remote code, as chapter 9's notebooks load it.

The course loads ``THUDM/chatglm3-6b`` with ``trust_remote_code=True`` at revision ``b098244``
(``peft/peft_qlora_chatglm.ipynb``), builds each example with the remote tokenizer's
``build_inputs_with_special_tokens`` (``[gMASK] sop`` + prompt + answer + eos, the prompt masked
with -100) and trains LoRA on the fused ``query_key_value`` projection. :class:`ChatGLM3Model` gives
``run.py`` those four calls (tokenizer, tokenize, model, answer); training, saving, reloading and the
before/after comparison are the maintained variant's steps. The comparison asks both columns through
ChatGLM3's own chat format (``build_chat_input``, what its ``chat()`` uses), with the adapter
disabled and enabled.

The remote code runs only with the libraries of ``requirements-course.txt`` (Transformers < 4.42:
see that file) and only where the Hub, or a cache filled from it, holds it.
"""

from __future__ import annotations

import importlib.metadata

import torch

from labkit.errors import LabError

#: The remote code's first two ids of every example: ``[gMASK]``, ``sop`` (the course's printed
#: ``input_ids`` begin ``[64790, 64792, 30910, ...]``).
PREFIX_IDS = [64790, 64792]


def course_stack() -> dict:
    """Versions of the libraries the remote code depends on, and whether Transformers is one it runs on.

    ChatGLM3's remote code breaks on Transformers 4.42 (generation hands it the new cache objects:
    ``'str' object has no attribute 'shape'``, huggingface/transformers#31678), 4.45 (``_pad()`` gets
    a ``padding_side`` argument it lacks, THUDM/ChatGLM3#1324) and 4.49 (``_extract_past_from_model_output``
    removed).
    """
    versions = {name: importlib.metadata.version(name) for name in ("transformers", "peft", "bitsandbytes", "torch")}
    return {**versions, "remote_code_ok": remote_code_runs_on(versions["transformers"])}


def remote_code_runs_on(transformers_version: str) -> bool:
    """Whether ChatGLM3's remote code runs on this Transformers release (before 4.42)."""
    major, minor = (int(x) for x in transformers_version.split(".")[:2])
    return (major, minor) < (4, 42)


class ChatGLM3Model:
    """How the lab loads and prompts ChatGLM3-6B (remote code, pinned revision); the same four calls as
    :class:`labkit.lab.llm.chat.ChatTemplateModel`."""

    def tokenizer(self, path: str, revision: str | None):
        """The remote tokenizer (``tokenization_chatglm.py`` at ``revision``).

        Raises:
            LabError: the remote code is neither reachable nor cached (names the model and revision).
        """
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=True)
        except OSError as exc:
            raise LabError(
                f"{path}@{revision}: its remote code is not reachable and not cached ({str(exc).splitlines()[0]}). "
                "The course variant needs the Hub (HF_ENDPOINT for a mirror) once; later runs use the cache."
            ) from None

    def tokenize(self, rows, columns, tokenizer, max_input: int, max_output: int, policy: str):
        """The course's ``tokenize_func``: prompt ids cut to ``max_input - 2`` (room for ``[gMASK] sop``),
        answer ids to ``max_output - 1`` (room for eos), ``build_inputs_with_special_tokens``, the
        prompt and its two special tokens masked with -100.

        Returns:
            ``(datasets.Dataset of input_ids / attention_mask / labels, {"answers_cut", "prompts_cut",
            "dropped_no_room"})``; the course's cut always leaves room, so nothing is dropped.
        """
        from datasets import Dataset

        prompt_col, answer_col = columns
        ids, masks, labels = [], [], []
        counts = {"answers_cut": 0, "prompts_cut": 0, "dropped_no_room": 0}
        for row in rows:
            q_ids = tokenizer.encode(row[prompt_col], add_special_tokens=False)
            a_ids = tokenizer.encode(row[answer_col], add_special_tokens=False)
            counts["prompts_cut"] += len(q_ids) > max_input - 2
            counts["answers_cut"] += len(a_ids) > max_output - 1
            q_ids, a_ids = q_ids[: max_input - 2], a_ids[: max_output - 1]
            input_ids = tokenizer.build_inputs_with_special_tokens(q_ids, a_ids)
            prompt_length = len(q_ids) + 2
            ids.append(input_ids)
            masks.append([1] * len(input_ids))
            labels.append([-100] * prompt_length + input_ids[prompt_length:])
        return Dataset.from_dict({"input_ids": ids, "attention_mask": masks, "labels": labels}), counts

    def model(self, path: str, quantization: dict, device: str, attn: str, revision: str | None):
        """``AutoModel`` (``ChatGLMForConditionalGeneration``) in 4-bit, as the course loads it.

        ``attn`` is not passed: the remote code has one attention implementation of its own.

        Raises:
            LabError: not on CUDA (bitsandbytes 0.43 has no CPU backend).
        """
        from transformers import AutoModel, BitsAndBytesConfig

        if device != "cuda":
            raise LabError(f"the course variant needs a CUDA GPU (bitsandbytes 0.43 has no {device} backend)")
        q = dict(quantization)
        q["bnb_4bit_compute_dtype"] = getattr(torch, q["bnb_4bit_compute_dtype"])
        model = AutoModel.from_pretrained(
            path,
            revision=revision,
            trust_remote_code=True,
            quantization_config=BitsAndBytesConfig(**q),
            torch_dtype=q["bnb_4bit_compute_dtype"],
            device_map="auto",
        )
        model.supports_gradient_checkpointing = True  # as the course sets it before preparing the model
        model.config.use_cache = False
        return model

    @torch.no_grad()
    def answer(self, model, tokenizer, contents: list[str], max_new_tokens: int) -> list[dict]:
        """Greedy answers through ChatGLM3's chat format (``build_chat_input``; its ``chat()`` stops at
        eos, ``<|user|>`` or ``<|observation|>``, and so does this)."""
        model.eval()
        device = next(model.parameters()).device
        stops = [tokenizer.eos_token_id, tokenizer.get_command("<|user|>"), tokenizer.get_command("<|observation|>")]
        out = []
        for content in contents:
            inputs = tokenizer.build_chat_input(content, history=[], role="user").to(device)
            seq = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, use_cache=True
            )[0, inputs["input_ids"].shape[1] :]
            out.append(
                {
                    "text": tokenizer.decode(seq, skip_special_tokens=True).strip(),
                    "stopped": any(int(t) in stops for t in seq),
                }
            )
        return out


def tokenize_check(chat: ChatGLM3Model, cfg: dict, dsd, columns) -> dict:
    """Step 2 alone (the course-smoke profile): the remote tokenizer from the cache, every row
    tokenized the course's way; ``prefix_ids`` are the first example's first two ids."""
    tokenizer = chat.tokenizer(cfg["model"]["name_or_path"], cfg["model"]["revision"])
    lengths, first = {}, None
    for split in dsd:
        data, lengths[split] = chat.tokenize(
            dsd[split], columns, tokenizer, cfg["max_input_length"], cfg["max_output_length"], cfg["data"]["bad_text"]
        )
        first = first or data[0]["input_ids"][:2]
    return {"prefix_ids": first, "lengths": lengths}
