"""Gold answers and reference solutions as the shipped data sets write them.

MATH: the final answer is the content of the last ``\\boxed{...}`` of the
solution, nested braces included. GSM8K: the worked solution ends in
``#### N`` (N may carry thousands separators), and its lines carry calculator
notes ``<<48/2=24>>`` that are not part of the prose.
"""

from __future__ import annotations

import math
import re

from stepdpo.steps import split_steps

_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_BOXED = re.compile(r"\\(?:boxed|fbox)(?:\s*\{|\s+([^\s${}]+))")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; None if absent or unclosed.

    The brace-less form ``\\boxed 2`` (a few MATH solutions) gives the token after the space.
    """
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    if matches[-1].group(1) is not None:
        return matches[-1].group(1)
    start = matches[-1].end()
    depth = 1
    for position in range(start, len(text)):
        char = text[position]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:position].strip()
    return None


def format_number(value: int | float) -> str:
    """A number as a gold answer: integral values without a decimal point (43.0 -> '43'), others as Python writes them."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value}")
        if value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)


def gsm8k_final(answer_text: str) -> str | None:
    """The text after the last ``####`` with thousands separators removed; None when there is no ``####`` or nothing after it."""
    if "####" not in answer_text:
        return None
    final = answer_text.rsplit("####", 1)[1].strip().replace(",", "")
    return final or None


def gsm8k_to_steps(answer_text: str) -> str:
    """Rewrite a GSM8K worked solution in the step format.

    Each non-empty line before ``####`` becomes ``Step i: <line>`` with its
    calculator notes removed; the line ``The answer is: \\boxed{N}`` follows
    the last step (so :func:`stepdpo.steps.split_steps` keeps it inside that
    step). Example: ``"A = <<2*3=6>>6\\n#### 6"`` ->
    ``"Step 1: A = 6\\nThe answer is: \\boxed{6}"``.
    """
    final = gsm8k_final(answer_text)
    if final is None:
        raise ValueError("a GSM8K solution must end in '#### N'")
    body = answer_text.rsplit("####", 1)[0]
    lines = [" ".join(_CALCULATOR_NOTE.sub("", line).split()) for line in body.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError("a GSM8K solution needs at least one line before '####'")
    steps = [f"Step {number}: {line}" for number, line in enumerate(lines, start=1)]
    text = "\n".join(steps) + f"\nThe answer is: \\boxed{{{final}}}"
    # A line that itself starts with 'Step k:' would shift the numbering; refuse rather than mis-split.
    if len(split_steps(text)) != len(steps):
        raise ValueError("a line of the solution looks like a step marker")
    return text
