"""One solution, judged step by step where the truth is known, else by its final answer.

The report's flips and ``stepdpo try`` show solutions side by side; both need the
same judgement of each step. A problem whose ``metadata["step_values"]`` holds the
value of every reference step (``synthetic:`` problems) gets a verdict per step
from the exact localizer's rules (:mod:`stepdpo.localizers.exact`): a step is right
when the number it states is the true one, and the first wrong step is where the
exact localizer would put it (which can be a right-valued last step of a solution
that concluded too early). Any other problem gets only its final answer graded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from stepdpo.grading import answers_match, extract_answer
from stepdpo.localizers.exact import first_mismatch, parse_number, stated_value
from stepdpo.steps import split_steps

StepStatus = Literal["right", "wrong", "unchecked"]


@dataclass
class JudgedStep:
    """One step of a solution and what is known about it."""

    number: int
    """1-based."""
    text: str
    status: StepStatus
    """'unchecked' when the problem has no step truth."""
    stated: str | None = None
    """The last number the step writes (what the exact localizer compares)."""
    expected: str | None = None
    """The true value of this step, when known."""


@dataclass
class JudgedSolution:
    """A graded solution: its steps, the first wrong one when step truth is known, and the final answer."""

    response: str
    steps: list[JudgedStep]
    step_truth: bool
    """Whether the steps were checked against known intermediate values."""
    first_wrong_step: int | None
    """1-based; None when every step is right or nothing is known about the steps."""
    predicted: str | None
    correct: bool
    has_final_answer: bool
    """The response states an answer (box, 'The answer is', '####'), not just a last number."""
    finish_reason: str = ""
    num_tokens: int = 0
    notes: list[str] = field(default_factory=list)


def step_values_of(metadata: dict[str, Any] | None) -> list[str] | None:
    """The known value of every reference step (``metadata['step_values']``), or None."""
    values = (metadata or {}).get("step_values")
    if isinstance(values, list) and values and all(isinstance(v, (int, float, str)) for v in values):
        return [str(v) for v in values]
    return None


def judge_solution(
    response: str,
    gold: str | None,
    step_values: Sequence[str] | None = None,
    *,
    finish_reason: str = "",
    num_tokens: int = 0,
    last_number_fallback: bool = True,
) -> JudgedSolution:
    """Cut ``response`` into steps and judge them (see the module docstring).

    ``gold`` None (a typed problem without an answer) grades nothing: every step is
    unchecked and ``correct`` is False. Step truth needs the step format: a response
    without ``Step i:`` markers is a single block and only its final answer is graded.
    """
    texts = split_steps(response)
    predicted = extract_answer(response, last_number_fallback=last_number_fallback)
    has_final = extract_answer(response, last_number_fallback=False) is not None
    correct = gold is not None and answers_match(predicted, gold)
    notes: list[str] = []
    stepwise = bool(step_values) and gold is not None and len(texts) > 0 and texts[0].lstrip().startswith("Step")
    if not stepwise:
        steps = [JudgedStep(i, text, "unchecked", _text(stated_value(text))) for i, text in enumerate(texts, start=1)]
        return JudgedSolution(response, steps, False, None, predicted, correct, has_final, finish_reason, num_tokens, notes)
    values = list(step_values or [])
    first = first_mismatch(texts, values, gold or "", concluded=finish_reason != "length")
    steps = []
    for i, text in enumerate(texts, start=1):
        expected = values[i - 1] if i <= len(values) else gold
        stated = stated_value(text)
        value_right = stated is not None and stated == parse_number(expected or "")
        status: StepStatus = "wrong" if i == first or not value_right else "right"
        steps.append(JudgedStep(i, text, status, _text(stated), expected))
    if first is not None and steps[first - 1].stated is not None and steps[first - 1].stated == _text(parse_number(steps[first - 1].expected or "")):
        notes.append(f"step {first} states a right intermediate value but ends the solution there ({len(values)} steps needed)")
    if finish_reason == "length":
        notes.append("cut off at the token limit")
    return JudgedSolution(response, steps, True, first, predicted, correct, has_final, finish_reason, num_tokens, notes)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
