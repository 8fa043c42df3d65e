"""Preference pair records (:class:`stepdpo.records.StepPair`): what makes one valid, and whole-solution pairs.

Every pair-building stage (``stepdpo pairs``, ``stepdpo scdpo``) checks its pairs with
:func:`check_pair` and builds the plain-DPO baseline with :func:`dpo_pairs`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from stepdpo.errors import InputError
from stepdpo.records import Problem, Sample, StepPair
from stepdpo.steps import STEP_HEADER, normalize_ws


def check_pair(pair: StepPair, rejected_response: str, rejected_id: str) -> None:
    """Raise ValueError unless ``pair`` is a valid pair: its context is the step header plus an exact prefix of the
    rejected response (``rejected_id`` names it in the error) followed by ``pair.rejected``, and chosen != rejected
    (whitespace aside)."""
    if not pair.initial_reason_steps.startswith(STEP_HEADER):
        raise ValueError(f"pair {pair.id}: initial_reason_steps does not start with the step header")
    prefix = pair.initial_reason_steps[len(STEP_HEADER):]
    if not rejected_response.startswith(prefix + pair.rejected):
        raise ValueError(f"pair {pair.id}: prefix + rejected is not the start of {rejected_id}")
    if normalize_ws(pair.chosen) == normalize_ws(pair.rejected):
        raise ValueError(f"pair {pair.id}: chosen equals rejected")


def right_wrong_order(right: int, wrong: int) -> list[tuple[int, int]]:
    """Every (right index, wrong index) combination, the diagonal first: the i-th right against the i-th wrong,
    then the other combinations, so a cap of n pairs per problem uses n different samples on each side when it can."""
    diagonal = [(i, i) for i in range(min(right, wrong))]
    return diagonal + [(i, j) for i in range(right) for j in range(wrong) if i != j]


def dpo_pairs(problems: dict[str, Problem], samples: Sequence[Sample], per_problem: int, dataset: str | None = None) -> list[StepPair]:
    """Plain-DPO pairs: right against wrong samples of the same problem in :func:`right_wrong_order`, at most
    ``per_problem`` per problem (0 = every combination); ``dataset`` fills the column (default: each problem's source)."""
    by_problem: dict[str, tuple[list[Sample], list[Sample]]] = defaultdict(lambda: ([], []))
    for sample in samples:
        by_problem[sample.problem_id][0 if sample.correct else 1].append(sample)
    out = []
    for problem_id, (right, wrong) in by_problem.items():
        problem = problems.get(problem_id)
        if problem is None:
            raise InputError("samples.jsonl", f"no problem {problem_id!r} in problems/train.jsonl", None, "problem_id")
        made = 0
        for i, j in right_wrong_order(len(right), len(wrong)):
            if per_problem and made >= per_problem:
                break
            good, bad = right[i], wrong[j]
            if normalize_ws(good.response) == normalize_ws(bad.response):
                continue
            made += 1
            out.append(StepPair(
                id=f"{good.id}>{bad.id}", dataset=dataset or problem.source or "unknown", prompt=problem.question,
                initial_reason_steps=STEP_HEADER, chosen=good.response, rejected=bad.response, full_chosen=good.response,
                full_rejected=bad.response, answer=problem.answer, kind="dpo", problem_id=problem_id, sample_id=bad.id,
                step_index=None, localizer="", provenance={"chosen_sample_id": good.id, "rejected_sample_id": bad.id, "model": bad.model}))
    return out
