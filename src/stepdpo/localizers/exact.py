"""Ground-truth localization for synthetic problems whose intermediate values are known.

A ``synthetic:`` problem carries ``metadata["step_values"]``: the value each
reference step computes, in order. Step ``i`` of a sample *states* the last
number written in it (after its ``Step i:`` marker); the first step whose
stated number differs from the true value ``step_values[i-1]`` is the first
wrong step. Steps beyond the reference's count are compared with the gold
final answer. A step that states no number at all counts as wrong. A solution
that concludes with fewer steps than the reference, every one of them right, is
wrong at its last step: that step gives an intermediate value as the answer
(the 135M model's most common mistake after SFT: a third of its wrong samples),
which is also where a rollout localizer puts it. A solution cut off by the
token limit concluded nothing, so no step is blamed for that. Numbers are
compared exactly as fractions (``1,200`` = ``1200.0`` = ``1200``), parsed from
digits only; model text is never evaluated.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Sequence

from stepdpo.localizers.base import STATUS_NO_WRONG_STEP, STATUS_OK, STATUS_UNLABELED, empty_response
from stepdpo.records import LocatedError, Problem, Sample
from stepdpo.steps import step_body

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def parse_number(text: str) -> Fraction | None:
    """'1,200' -> 1200, '-3.5' -> -7/2, '3/4' -> 3/4; None when the text is not such a number."""
    cleaned = text.strip().replace(",", "")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def stated_value(step: str) -> Fraction | None:
    """The last number written in a step's body (its marker excluded)."""
    numbers = [parse_number(m.group(0)) for m in _NUMBER.finditer(step_body(step))]
    numbers = [n for n in numbers if n is not None]
    return numbers[-1] if numbers else None


def first_mismatch(steps: Sequence[str], step_values: Sequence[str], final_answer: str, concluded: bool = True) -> int | None:
    """1-based index of the first wrong step, None when every step is right.

    A step is wrong when its stated value is not the true one; when ``concluded`` (the
    solution ends with its answer rather than at the token limit) and every step is right
    but there are fewer than the reference's, the last step, which stopped too early, is.
    """
    final = parse_number(final_answer)
    for i, step in enumerate(steps, start=1):
        expected = parse_number(step_values[i - 1]) if i <= len(step_values) else final
        if stated_value(step) is None or stated_value(step) != expected:
            return i
    if concluded and steps and len(steps) < len(step_values):
        return len(steps)
    return None


class ExactLocalizer:
    """Compares each step with the problem's known intermediate values."""

    name = "exact"

    def locate_many(self, items: Sequence[tuple[Problem, Sample]]) -> list[LocatedError]:
        out = []
        for problem, sample in items:
            empty = empty_response(problem, sample, self.name)
            if empty is not None:
                out.append(empty)
                continue
            values = problem.metadata.get("step_values")
            if not isinstance(values, list) or not values:
                out.append(LocatedError(sample_id=sample.id, problem_id=problem.id, first_wrong_step=None, localizer=self.name,
                                        status=STATUS_UNLABELED, evidence={"reason": "problem has no metadata['step_values']"}))
                continue
            k = first_mismatch(sample.steps, [str(v) for v in values], problem.answer, concluded=sample.finish_reason != "length")
            stated = [stated_value(step) for step in sample.steps]
            out.append(LocatedError(
                sample_id=sample.id, problem_id=problem.id, first_wrong_step=k, localizer=self.name,
                confidence=1.0 if k is not None else None, status=STATUS_OK if k is not None else STATUS_NO_WRONG_STEP,
                evidence={"stated": [None if v is None else str(v) for v in stated], "expected": [str(v) for v in values]}))
        return out
