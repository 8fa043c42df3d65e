"""The step format: how prompts prime step-wise answers, and how answers are cut into steps.

A solution is a sequence of steps, each starting on its own line with
``Step i:``. The assistant turn is primed with ``Let's think step by step.``
followed by ``Step 1:``; the *response* of a sample is everything from
``Step 1:`` on, so ``split_steps(response)[k-1]`` is step k and
``"".join(split_steps(response)[:k-1])`` is the exact prefix before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

STEP_HEADER = "Let's think step by step.\n"
FIRST_MARKER = "Step 1:"
DEFAULT_INSTRUCTION = (
    "Solve the problem step by step. Start each step on a new line with 'Step i:'. "
    "End with 'The answer is: \\boxed{ANSWER}'."
)

# A marker counts only at the start of a line; the number is checked separately so that a
# back-reference such as "Step 2: as above" inside step 5 does not start a new step.
_MARKER = re.compile(r"(?m)^[ \t]*Step[ \t]+(\d{1,4})[ \t]*:")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")


def split_steps(text: str) -> list[str]:
    """Cut a solution into steps so that ``"".join(split_steps(text)) == text``.

    Steps begin at line-start ``Step N:`` markers numbered 1, 2, 3, ... in order
    (a marker whose number is not the next one stays inside the current step).
    Text before the first marker, if any, is its own first element. Each step
    keeps its trailing newline(s); a final-answer line after the last step belongs
    to the last step. Text with no ``Step 1:`` marker falls back to paragraphs
    (blank-line separated). Linear in the length of the text.
    """
    if not text:
        return []
    cuts: list[int] = []
    expected = 1
    for match in _MARKER.finditer(text):
        if int(match.group(1)) == expected:
            cuts.append(match.start())
            expected += 1
    if not cuts:
        cuts = [0] + [m.end() for m in _PARAGRAPH_BREAK.finditer(text) if m.end() < len(text)]
    elif cuts[0] != 0:
        cuts.insert(0, 0)
    bounds = cuts + [len(text)]
    return [text[start:end] for start, end in zip(bounds, bounds[1:]) if end > start]


def join_steps(steps: list[str]) -> str:
    """Inverse of :func:`split_steps`: ``join_steps(split_steps(t)) == t``."""
    return "".join(steps)


def prefix_before(steps: list[str], step_number: int) -> str:
    """Exact text of steps 1..step_number-1 (step_number is 1-based)."""
    if not 1 <= step_number <= len(steps):
        raise IndexError(f"step {step_number} out of range 1..{len(steps)}")
    return "".join(steps[: step_number - 1])


def next_marker(prefix: str) -> str:
    """The marker the next step should start with, given the prefix steps' text."""
    return f"Step {len(split_steps(prefix)) + 1}:" if prefix else FIRST_MARKER


def step_body(step: str) -> str:
    """A step's text without its ``Step N:`` marker and surrounding whitespace."""
    match = _MARKER.match(step)
    return (step[match.end():] if match else step).strip()


@dataclass(frozen=True)
class PromptFormat:
    """Turns a question (and optionally a partial solution) into the exact text a model continues.

    ``chat`` uses the tokenizer's chat template with the assistant turn opened and
    primed; ``plain`` is for base models without a template.
    """

    style: Literal["chat", "plain"] = "chat"
    instruction: str = DEFAULT_INSTRUCTION
    system: str | None = None
    chat_template_owner: Any = None
    """A tokenizer with ``apply_chat_template`` (required for ``chat``)."""

    def opened(self, question: str) -> str:
        """Everything before the assistant's first word (the assistant turn opened, nothing in it)."""
        user = f"{question.strip()}\n\n{self.instruction}" if self.instruction else question.strip()
        if self.style == "plain":
            return f"Question: {user}\nAnswer: "
        if self.chat_template_owner is None:
            raise ValueError("PromptFormat(style='chat') needs chat_template_owner (a tokenizer)")
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [{"role": "user", "content": user}]
        return self.chat_template_owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def head(self, question: str) -> str:
        """The opened assistant turn plus the priming header."""
        return self.opened(question) + STEP_HEADER

    def context(self, question: str, initial_reason_steps: str) -> str:
        """Training context of a pair: the opened turn plus ``initial_reason_steps`` (header included)."""
        return self.opened(question) + initial_reason_steps

    def prompt(self, question: str, prefix: str = "") -> str:
        """The text to continue: question, header, prefix steps and the next step's marker.

        The generated continuation ``c`` completes the response ``prefix + marker + c``.
        """
        return self.head(question) + prefix + next_marker(prefix)


def normalize_ws(text: str) -> str:
    """Whitespace-insensitive form used for deduplication: runs of whitespace become one space, ends trimmed."""
    return " ".join(text.split())
