"""A chat model as the GLM labs load and prompt it: a native Transformers model with a chat template
(GLM-4-9B-chat ``-hf``), in the precision its profile sets.

The course variant of ``labs/chatglm-qlora`` (ChatGLM3-6B's remote code) has a class with the same
four methods (``course.py``), so the lab's steps read the same for both.
"""

from __future__ import annotations

from labkit.lab.llm.generation import generate
from labkit.lab.llm.loading import load_causal_lm
from labkit.lab.llm.prompts import chat_prompt, tokenize_chat


class ChatTemplateModel:
    """Loading and prompting through ``AutoTokenizer`` / ``AutoModelForCausalLM`` and the chat template."""

    def tokenizer(self, path: str, revision: str | None):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, revision=revision)

    def tokenize(self, rows, columns, tokenizer, max_input: int, max_output: int, policy: str):
        """``(Dataset of input_ids / attention_mask / labels, counts)``: :func:`.prompts.tokenize_chat`."""
        return tokenize_chat(rows, columns, tokenizer, max_input, max_output, policy)

    def model(self, path: str, quantization: dict, device: str, attn: str, revision: str | None):
        """The model as ``quantization`` says (:func:`~labkit.lab.llm.loading.load_causal_lm`)."""
        return load_causal_lm(path, quantization, device, attn, revision)

    def answer(self, model, tokenizer, contents: list[str], max_new_tokens: int) -> list[dict]:
        """Greedy answers to ``contents`` as one user turn each, through the chat template."""
        prompts = [chat_prompt(tokenizer, c) for c in contents]
        return generate(model, tokenizer, prompts, max_new_tokens, prompt_special_tokens=False)
