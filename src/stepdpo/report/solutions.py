"""What training changed in the solutions themselves: flips, length and completeness, and a sample of pairs.

Reads ``eval/<name>/samples.jsonl`` (written by ``stepdpo eval``) of the starting
model and of every trained one, and the pair files under ``pairs/``:

- *flips*: per trained model and test set, the problems it gets right that the
  starting model got wrong (``fixed``) and the reverse (``broken``), both first
  responses judged step by step where the problems' intermediate values are known
  (:mod:`stepdpo.step_truth`); the test problems are loaded again from the eval's
  spec, limit and seed (local sources only, never a hub);
- *completeness*: per evaluation and set, the share of responses that state a
  final answer, that hit the token limit, and their lengths;
- *pairs*: a seeded sample of each pair file, each pair with why its rejected
  step was located there (``located.jsonl``) and whether its chosen continuation
  reaches the gold answer.
"""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from stepdpo.errors import InputError, StepdpoError
from stepdpo.grading import answers_match, extract_answer
from stepdpo.records import LocatedError, Problem, StepPair, read_jsonl_dicts
from stepdpo.rundir import RunDir
from stepdpo.step_truth import JudgedSolution, judge_solution, step_values_of

START_EVALS = ("base", "sft")
"""Evaluation names of the starting model, in order of preference; the first evaluation otherwise."""


@dataclass
class EvalResponse:
    """The fields of an ``eval/<name>/samples.jsonl`` line the report uses."""

    set: str
    problem_id: str
    index: int
    response: str
    predicted: str | None
    gold: str
    correct: bool
    has_final_answer: bool
    num_tokens: int
    finish_reason: str


_RESPONSE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "set": str, "problem_id": str, "index": int, "response": str, "predicted": (str, type(None)), "gold": str,
    "correct": bool, "has_final_answer": bool, "num_tokens": int, "finish_reason": str,
}


def read_responses(path: Path) -> list[EvalResponse]:
    """Every line of a samples.jsonl; a line without a needed field is an InputError naming file, line and field.

    Read loosely (other keys are ignored): the eval schema may grow.
    """
    out = []
    for number, row in read_jsonl_dicts(path, allow_torn_tail=True):
        for name, kind in _RESPONSE_FIELDS.items():
            value = row.get(name)
            if name not in row or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise InputError(str(path), f"expected {kind.__name__ if isinstance(kind, type) else 'str or null'}, got {type(value).__name__ if name in row else 'nothing'}", number, name)
        out.append(EvalResponse(**{name: row[name] for name in _RESPONSE_FIELDS}))
    return out


# --------------------------------------------------------------------------- flips


@dataclass
class Flip:
    """One test problem whose outcome differs between the starting model and a trained one (a line of flips JSONL)."""

    evaluation: str
    start: str
    set: str
    problem_id: str
    kind: Literal["fixed", "broken"]
    """'fixed': the trained model is right and the starting one was wrong; 'broken': the reverse."""
    question: str
    gold: str
    start_solution: JudgedSolution
    trained_solution: JudgedSolution


@dataclass
class FlipSet:
    """The flips of one trained model on one test set."""

    evaluation: str
    start: str
    test_set: str
    problems: int
    """Problems both evaluations answered."""
    fixed: list[Flip]
    broken: list[Flip]
    step_truth: bool
    """Whether the set's problems carry intermediate values (steps are judged)."""


def start_eval(names: list[str]) -> str | None:
    """The evaluation of the starting model: 'base', else 'sft', else the first one."""
    for name in START_EVALS:
        if name in names:
            return name
    return names[0] if names else None


def load_test_problems(spec: str, settings: dict[str, Any]) -> dict[str, Problem]:
    """The problems of a test set as the eval chose them (its limit and seed); empty for a hub set or when loading fails."""
    if spec.startswith("hf:"):
        return {}
    from stepdpo.problems import load_problems

    limit = settings.get("limit") if isinstance(settings.get("limit"), int) else None
    seed = settings.get("seed") if isinstance(settings.get("seed"), int) else 0
    try:
        return {p.id: p for p in load_problems(spec, limit=limit, seed=seed, on_bad_row="skip")}
    except (StepdpoError, OSError, ValueError):
        return {}


def _judge(response: EvalResponse, problem: Problem | None) -> JudgedSolution:
    return judge_solution(response.response, response.gold, step_values_of(problem.metadata) if problem else None,
                          finish_reason=response.finish_reason, num_tokens=response.num_tokens)


def find_flips(evaluation: str, start: str, start_responses: list[EvalResponse], trained: list[EvalResponse],
               problems_by_set: dict[str, dict[str, Problem]]) -> list[FlipSet]:
    """Per test set, the problems whose first response (index 0) is right in one evaluation and wrong in the other."""
    first_start = {(r.set, r.problem_id): r for r in start_responses if r.index == 0}
    first_trained = {(r.set, r.problem_id): r for r in trained if r.index == 0}
    sets = list(dict.fromkeys(s for s, _ in first_trained))
    out = []
    for test_set in sets:
        problems = problems_by_set.get(test_set, {})
        shared = [key for key in first_trained if key[0] == test_set and key in first_start]
        fixed: list[Flip] = []
        broken: list[Flip] = []
        for key in shared:
            before, after = first_start[key], first_trained[key]
            if before.correct == after.correct:
                continue
            problem = problems.get(key[1])
            flip = Flip(evaluation, start, test_set, key[1], "fixed" if after.correct else "broken",
                        problem.question if problem else "", before.gold, _judge(before, problem), _judge(after, problem))
            (fixed if after.correct else broken).append(flip)
        step_truth = any(step_values_of(p.metadata) for p in problems.values())
        if shared:
            out.append(FlipSet(evaluation, start, test_set, len(shared), fixed, broken, step_truth))
    return out


def flips_jsonl(flip_sets: list[FlipSet]) -> str:
    """Every flip of one trained model as JSON lines (the report's downloadable full list)."""
    return "".join(json.dumps(asdict(f), ensure_ascii=False) + "\n" for s in flip_sets for f in s.fixed + s.broken)


# --------------------------------------------------------------------------- completeness


@dataclass
class Completeness:
    """Whether responses reach a final answer, and how long they are, for one evaluation on one set."""

    evaluation: str
    test_set: str
    responses: int
    final_answer: float
    """Share of responses that state a final answer."""
    truncated: float | None
    """Share cut off at the token limit (None: not recorded)."""
    mean_tokens: float | None
    median_tokens: float | None = None
    mean_tokens_answered: float | None = None
    """Mean length of the responses that state a final answer."""


def completeness(evaluation: str, responses: list[EvalResponse]) -> list[Completeness]:
    rows = []
    for test_set in dict.fromkeys(r.set for r in responses):
        group = [r for r in responses if r.set == test_set]
        answered = [r.num_tokens for r in group if r.has_final_answer]
        tokens = [r.num_tokens for r in group]
        rows.append(Completeness(
            evaluation, test_set, len(group), len(answered) / len(group), sum(r.finish_reason == "length" for r in group) / len(group),
            statistics.mean(tokens), statistics.median(tokens), statistics.mean(answered) if answered else None))
    return rows


# --------------------------------------------------------------------------- pairs


@dataclass
class ShownPair:
    """A pair with what the report adds: why its rejected step is there, and whether its chosen continuation reaches gold."""

    pair: StepPair
    method: str
    """The pair file it comes from ('step-dpo', 'dpo', 'scdpo', 'judge-free', ...)."""
    located: LocatedError | None
    chosen_reaches_gold: bool


@dataclass
class PairSample:
    """A seeded sample of every pair file."""

    shown: list[ShownPair]
    totals: dict[str, int]
    """Pairs per method in the files."""
    errors: list[str] = field(default_factory=list)


def pair_files(run: RunDir) -> list[tuple[str, Path]]:
    """(method, path) of ``pairs/<method>_pairs.jsonl``; ``step_pairs`` is Step-DPO's."""
    out = []
    for path in sorted(run.pairs.glob("*_pairs.jsonl")):
        stem = path.name[: -len("_pairs.jsonl")]
        out.append(("step-dpo" if stem == "step" else stem.replace("_", "-"), path))
    return out


def sample_pairs(pairs: list[tuple[str, list[StepPair]]], located: list[LocatedError] | None, per_method: int, seed: int = 0) -> PairSample:
    """Up to ``per_method`` pairs of each method, a seeded random choice kept in file order."""
    by_sample = {r.sample_id: r for r in located or []}
    shown: list[ShownPair] = []
    totals: dict[str, int] = {}
    for method, records in pairs:
        totals[method] = len(records)
        chosen = sorted(random.Random(f"{seed}:{method}").sample(range(len(records)), min(per_method, len(records))))
        for index in chosen:
            pair = records[index]
            reaches = answers_match(extract_answer(pair.full_chosen, last_number_fallback=False), pair.answer)  # stated, as data is graded
            shown.append(ShownPair(pair, method, by_sample.get(pair.sample_id) if pair.sample_id else None, reaches))
    return PairSample(shown, totals)
