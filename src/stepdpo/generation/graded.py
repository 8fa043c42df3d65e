"""Generate and grade: the one loop of every stage that samples continuations and checks them against gold.

Sampling (``stepdpo sample``), rectification, rollout localization and SCDPO's
judge-free rollouts all prompt the policy, glue each completion onto the response it
continues, and grade the whole response by the data rule
(:func:`stepdpo.grading.grade_for_data`: it states gold and the model ended it itself).
:func:`generate_graded` does that in one batched generator call and one batched grading
call, and hands back each prompt's completions with their grades (no offsets to slice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from stepdpo.generation.base import Completion, Generator, SamplingParams
from stepdpo.grading import grade_for_data


@dataclass(frozen=True)
class Continue:
    """One prompt to continue: the prompt text, the response text the completion continues, and the gold answer."""

    prompt: str
    head: str
    """What the graded response starts with before the completion (e.g. ``"Step 1:"``, or a prefix and its next marker)."""
    gold: str


@dataclass(frozen=True)
class Graded:
    """One completion and whether its whole response (head + completion) reaches gold."""

    completion: Completion
    response: str
    correct: bool


def generate_graded(generator: Generator, jobs: Sequence[Continue], params: SamplingParams, seeds: Sequence[int]) -> list[list[Graded]]:
    """``params.n`` graded completions per job, in job order (one generator call, one grading call)."""
    outputs = generator.generate([job.prompt for job in jobs], params, seeds=list(seeds))
    responses = [[job.head + c.text for c in completions] for job, completions in zip(jobs, outputs)]
    flat = grade_for_data([(response, c.finish_reason, job.gold)
                           for job, completions, texts in zip(jobs, outputs, responses) for c, response in zip(completions, texts)])
    graded, at = [], 0
    for completions, texts in zip(outputs, responses):
        graded.append([Graded(c, response, correct) for c, response, correct in zip(completions, texts, flat[at: at + len(completions)])])
        at += len(completions)
    return graded
