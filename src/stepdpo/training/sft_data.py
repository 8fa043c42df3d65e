"""Supervised fine-tuning examples: a prompt the model reads and a solution it learns to write.

One example is the token sequence ``prompt ‖ response`` where

    prompt   = tokens(PromptFormat.head(question))      (chat turn opened + "Let's think step by step.\\n")
    response = tokens(solution) + [eos]

and the labels are ``-100`` on every prompt token and the token ids on the
response, so the loss is the mean negative log-likelihood of the response only:

    L = -(1/|R|) Σ_{t ∈ R} log p(x_t | x_<t),   R = response positions.

With ``score_prompt`` (language-model pretraining from scratch, where the
question's own text teaches the model to read and copy from it) the labels are
the token ids everywhere but the first position, and R is every position.

Prompt and response are tokenized separately and concatenated, so the prompt /
response boundary is a token boundary by construction (the same split the
generator sees: it is given the head and continues from there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from stepdpo.steps import PromptFormat

IGNORE_INDEX = -100


@dataclass
class SFTExample:
    """One tokenized training example. ``len(input_ids) == len(labels)``."""

    id: str
    input_ids: list[int]
    labels: list[int]
    """``IGNORE_INDEX`` on the prompt tokens, the token id on the response tokens."""
    prompt_length: int


@dataclass
class BuildStats:
    """What :func:`build_examples` kept and why it dropped the rest."""

    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def tokenize_example(tokenizer: Any, fmt: PromptFormat, question: str, solution: str, example_id: str = "", score_prompt: bool = False) -> SFTExample:
    """Tokenize ``head(question)`` and ``solution + eos`` separately; mask the prompt in the labels unless ``score_prompt``."""
    prompt_ids = tokenizer(fmt.head(question), add_special_tokens=False)["input_ids"]
    # The eos id is appended as an id: tokenizing the eos *string* could split or merge it.
    response_ids = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return SFTExample(
        id=example_id,
        input_ids=list(prompt_ids) + list(response_ids),
        labels=([IGNORE_INDEX] + list(prompt_ids[1:]) if score_prompt else [IGNORE_INDEX] * len(prompt_ids)) + list(response_ids),
        prompt_length=len(prompt_ids),
    )


def build_examples(
    pairs: Iterable[tuple[str, str, str]],
    tokenizer: Any,
    fmt: PromptFormat,
    max_length: int,
    score_prompt: bool = False,
) -> tuple[list[SFTExample], BuildStats]:
    """Tokenize ``(id, question, solution)`` triples; drop empty solutions and those longer than ``max_length``.

    A too-long example is dropped rather than truncated: a cut solution would
    teach the model to stop mid-step without an answer.
    """
    stats = BuildStats()
    examples: list[SFTExample] = []
    for example_id, question, solution in pairs:
        if not solution or not solution.strip():
            stats.drop("no solution")
            continue
        example = tokenize_example(tokenizer, fmt, question, solution, example_id, score_prompt)
        if len(example.input_ids) > max_length:
            stats.drop(f"longer than max_length={max_length}")
            continue
        examples.append(example)
    stats.kept = len(examples)
    return examples, stats


@dataclass
class SFTCollator:
    """Right-pads a list of examples into tensors.

    Returns ``input_ids`` (B, L) padded with ``pad_token_id``, ``attention_mask``
    (B, L) with 1 on real tokens, and ``labels`` (B, L) padded with ``IGNORE_INDEX``,
    where L is the longest example in the batch.
    """

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
