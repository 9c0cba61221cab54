"""Helpers the LLM fine-tuning labs share (llama2-sft, chatglm-qlora, chatglm-private-data), one concern
per module: :mod:`~labkit.lab.llm.checks` (what a device refuses, quantization counts),
:mod:`~labkit.lab.llm.loading` (a causal LM in 4-bit / 8-bit / bf16, prepared for LoRA),
:mod:`~labkit.lab.llm.prompts` (exact prompt/completion masks, chat-template prompts),
:mod:`~labkit.lab.llm.generation` (greedy answers, logits) and :mod:`~labkit.lab.llm.training`
(losses before and after ``Trainer``, saving an adapter). The steps themselves are in each lab's
``run.py``.
"""
