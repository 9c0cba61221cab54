"""Steps 1-2 (course chapters 13-14): Dolly rows as prompt/completion pairs, tokenized with an exact loss mask.

The course formats each row with an Alpaca-style template and lets ``SFTTrainer`` learn the whole
text. It **inverts** the task: the model reads a *response* and writes the *instruction* that could
have produced it. ``task: inverted`` (default) keeps that; ``task: standard`` is the usual direction
(instruction and context in, response out).

Loss only on the completion, exactly: the prompt and the completion are tokenized **separately** and
concatenated, ``completion_mask`` marking the completion's tokens and the final ``</s>``. Tokenizing
the joined text and searching for a response template instead fails when the template is tokenized
differently after a newline than on its own (SentencePiece merges across the boundary); here the
boundary is a token boundary by construction, and generation sees the same prompt tokens as training.

Padding is a token of its own (``<unk>``, never a target), not ``</s>``: the collator masks padding by
position, and ``</s>`` at the end of every completion carries a label, so the tuned model learns to stop.
"""

from __future__ import annotations

from labkit.errors import LabError
from labkit.lab.data import row_place
from labkit.lab.llm.prompts import Encoded
from labkit.lab.llm.prompts import encode as encode_prompt_completion

#: databricks-dolly-15k's categories (its dataset card).
CATEGORIES = (
    "open_qa",
    "general_qa",
    "classification",
    "closed_qa",
    "brainstorming",
    "information_extraction",
    "summarization",
    "creative_writing",
)

#: The course's instruction for the inverted task (llama2_instruction_tuning.ipynb, format_instruction).
INVERTED_INSTRUCTION = (
    "Use the Input below to create an instruction, which could have been used to generate the input using an LLM."
)


def prompt_parts(row: dict, task: str) -> tuple[str, str, str]:
    """``(head, input_text, tail)`` of a row's prompt: the variable ``input_text`` may be cut to fit.

    ``inverted`` (the course): ``### Instruction:`` the fixed sentence, ``### Input:`` the response,
    ``### Response:`` (the completion is the instruction). ``standard``: ``### Instruction:`` the
    instruction, ``### Input:`` the context (omitted when empty), ``### Response:``.

    Raises:
        LabError: an unknown ``task``.
    """
    if task == "inverted":
        return f"### Instruction:\n{INVERTED_INSTRUCTION}\n\n### Input:\n", row["response"], "\n\n### Response:\n"
    if task == "standard":
        if row.get("context"):
            return f"### Instruction:\n{row['instruction']}\n\n### Input:\n", row["context"], "\n\n### Response:\n"
        return f"### Instruction:\n{row['instruction']}", "", "\n\n### Response:\n"
    raise LabError(f"task={task!r}: use inverted (the course's: response in, instruction out) or standard")


def completion_of(row: dict, task: str) -> str:
    """What the model learns to write: the instruction (inverted) or the response (standard)."""
    return row["instruction"] if task == "inverted" else row["response"]


def prompt_text(row: dict, task: str) -> str:
    head, text, tail = prompt_parts(row, task)
    return head + text + tail


def encode(row: dict, task: str, tokenizer, max_length: int) -> Encoded | None:
    """Token ids of prompt + completion + ``</s>`` and the mask of the completion tokens
    (``labkit.lab.llm.prompts.encode``: tokenized separately; the prompt's input text, the response or the
    context, is cut to fit ``max_length``, the completion never). ``None`` when the completion alone
    does not fit."""
    head, text, tail = prompt_parts(row, task)
    return encode_prompt_completion(lambda t: head + t + tail, text, completion_of(row, task), tokenizer, max_length)


def check_categories(rows, policy: str, where: str, first_line: int | None = 1):
    """Rows whose ``category`` is one of Dolly's eight; others fail (naming the line) or are dropped.

    Returns:
        ``(rows, number dropped)``.

    Raises:
        LabError: under ``fail``, the first unknown category with its line and the valid ones.
    """
    bad = [i for i, c in enumerate(rows["category"]) if c not in CATEGORIES]
    if not bad:
        return rows, 0
    line = row_place(bad[0], first_line)
    if policy == "fail":
        raise LabError(
            f"{where}: column 'category' is {rows[bad[0]]['category']!r} at {line}, not one of Dolly's "
            f"{', '.join(CATEGORIES)}. Fix it, or set data.bad_text=drop to drop such rows (counted)."
        )
    drop = set(bad)
    print(f"{where}: dropped {len(bad)} row(s) with an unknown category", flush=True)
    return rows.select([i for i in range(len(rows)) if i not in drop]), len(bad)
