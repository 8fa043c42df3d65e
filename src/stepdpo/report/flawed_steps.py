"""The process metric: where a model's wrong solutions first go wrong, by step position.

For every problem whose intermediate values are known (``synthetic:`` problems carry
``metadata["step_values"]``), the first response of an evaluation falls in exactly one class:

- *right*: its final answer is graded correct (as the accuracy counts it);
- *first wrong step j*: wrong, and the exact localizer (:mod:`stepdpo.localizers.exact`) puts its
  first wrong step at position j (1-based);
- *no step located*: wrong, but the exact localizer blames no step: an empty response, or one cut
  off at the token limit while every step so far was right.

Shares are of all judged problems, so right + every position + no step located = 1. Comparing a
trained model's shares with the base's says whether training removed errors at the step kind it
was trained on, moved them later, or only moved them elsewhere. Cheap: no model runs, only the
localizer's number comparisons. :func:`flawed_step_rates` takes any evaluation records with the
fields of a ``samples.jsonl`` line (``stepdpo eval``'s ``EvalSample``, the report's
``EvalResponse``), so bench scripts use it as the report does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

from stepdpo.localizers.base import STATUS_OK
from stepdpo.localizers.exact import ExactLocalizer
from stepdpo.records import Problem, Sample
from stepdpo.report.solutions import EvalResponse, load_test_problems
from stepdpo.step_truth import step_values_of
from stepdpo.steps import split_steps

UNLOCATED_EMPTY = "empty response"
UNLOCATED_CUT_OFF = "cut off at the token limit, no wrong step before"
UNLOCATED_OTHER = "every step right, final answer wrong"


class EvalOutput(Protocol):
    """What :func:`flawed_step_rates` reads of one graded response (a ``samples.jsonl`` line)."""

    problem_id: str
    index: int
    response: str
    correct: bool
    finish_reason: str
    num_tokens: int


@dataclass
class FlawedStepRates:
    """Counts of one evaluation on one test set; shares via :meth:`share`, :meth:`shares`."""

    problems: int
    """Problems judged: with known intermediate values and a response."""
    right: int
    first_wrong: dict[int, int] = field(default_factory=dict)
    """Position of the first wrong step (1-based) -> problems, in position order."""
    unlocated: int = 0
    """Wrong, no step located."""
    unlocated_reasons: dict[str, int] = field(default_factory=dict)
    not_judged: int = 0
    """Responses left out: their problem is not among those given or has no known intermediate values."""

    @property
    def wrong(self) -> int:
        return self.problems - self.right

    @property
    def max_position(self) -> int:
        return max(self.first_wrong, default=0)

    def share(self, count: int) -> float:
        """``count`` as a share of the judged problems (0 when there are none)."""
        return count / self.problems if self.problems else 0.0

    def shares(self) -> dict[str, float]:
        """{'right', '1', ..., str(max_position), 'unlocated'} -> share of the judged problems (summing to 1);
        positions below the largest without errors are given as 0."""
        positions = {str(j): self.share(self.first_wrong.get(j, 0)) for j in range(1, self.max_position + 1)}
        return {"right": self.share(self.right), **positions, "unlocated": self.share(self.unlocated)}

    def mean_position(self) -> float | None:
        """Mean position of the located first wrong steps (None when there are none)."""
        located = sum(self.first_wrong.values())
        return sum(j * n for j, n in self.first_wrong.items()) / located if located else None

    def as_json(self) -> dict[str, object]:
        """A JSON-ready summary (string keys): counts, shares and the mean position."""
        return {
            "problems": self.problems, "right": self.right, "wrong": self.wrong,
            "first_wrong": {str(j): n for j, n in self.first_wrong.items()},
            "unlocated": self.unlocated, "unlocated_reasons": dict(self.unlocated_reasons), "not_judged": self.not_judged,
            "shares": {k: round(v, 4) for k, v in self.shares().items()},
            "mean_first_wrong_step": None if self.mean_position() is None else round(self.mean_position() or 0.0, 3),
        }


def locate_outputs(items: Iterable[tuple[Problem, EvalOutput]]) -> list[tuple[int | None, str]]:
    """(first wrong step or None, why none) of each (problem, response), from the exact localizer.

    Responses are judged as they are: cut into steps as the pipeline cuts samples, and a response
    that stopped at the token limit blames no unfinished solution for stopping early.
    """
    pairs = list(items)
    samples = [(problem, Sample(id=f"{problem.id}#{output.index}", problem_id=problem.id, prompt="", response=output.response,
                                steps=split_steps(output.response), predicted=None, correct=output.correct,
                                num_tokens=output.num_tokens, finish_reason=output.finish_reason)) for problem, output in pairs]
    out = []
    for (_, sample), located in zip(samples, ExactLocalizer().locate_many(samples)):
        if located.status == STATUS_OK and located.first_wrong_step is not None:
            out.append((located.first_wrong_step, ""))
        elif not sample.steps:
            out.append((None, UNLOCATED_EMPTY))
        else:
            out.append((None, UNLOCATED_CUT_OFF if sample.finish_reason == "length" else UNLOCATED_OTHER))
    return out


def flawed_step_rates(problems: Iterable[Problem] | Mapping[str, Problem], responses: Iterable[EvalOutput]) -> FlawedStepRates:
    """Where the first response to each problem is right, first wrong at step j, or wrong with no step located.

    ``responses`` are one test set's graded responses (e.g. ``eval/<name>/samples.jsonl`` lines of one
    ``set``); of several per problem only the first (lowest ``index``) counts, as for pass@1. Responses
    whose problem is not in ``problems`` or has no ``metadata['step_values']`` are counted in ``not_judged``.
    """
    by_id = dict(problems) if isinstance(problems, Mapping) else {p.id: p for p in problems}
    first: dict[str, EvalOutput] = {}
    for output in responses:
        kept = first.get(output.problem_id)
        if kept is None or output.index < kept.index:
            first[output.problem_id] = output
    judged = [(by_id[pid], output) for pid, output in first.items() if pid in by_id and step_values_of(by_id[pid].metadata)]
    rates = FlawedStepRates(problems=len(judged), right=sum(output.correct for _, output in judged), not_judged=len(first) - len(judged))
    positions: dict[int, int] = {}
    for position, reason in locate_outputs((problem, output) for problem, output in judged if not output.correct):
        if position is None:
            rates.unlocated += 1
            rates.unlocated_reasons[reason] = rates.unlocated_reasons.get(reason, 0) + 1
        else:
            positions[position] = positions.get(position, 0) + 1
    rates.first_wrong = dict(sorted(positions.items()))
    return rates


@dataclass
class FlawedStepRow:
    """The report's rates of one evaluation on one test set."""

    evaluation: str
    test_set: str
    rates: FlawedStepRates


def read_flawed_steps(responses: dict[str, list[EvalResponse]], settings: dict[str, dict[str, Any]]) -> list[FlawedStepRow]:
    """Rates of every evaluation (in ``responses``' order) on every test set whose problems carry intermediate
    values, each set loaded as that evaluation chose it (its limit and seed; local sources only)."""
    loaded: dict[tuple[str, Any, Any], dict[str, Problem]] = {}
    rows = []
    for name, outputs in responses.items():
        chosen = settings.get(name, {})
        for test_set in dict.fromkeys(r.set for r in outputs):
            key = (test_set, chosen.get("limit"), chosen.get("seed"))
            if key not in loaded:
                loaded[key] = load_test_problems(test_set, chosen)
            problems = loaded[key]
            if not any(step_values_of(p.metadata) for p in problems.values()):
                continue
            rates = flawed_step_rates(problems, [r for r in outputs if r.set == test_set])
            if rates.problems:
                rows.append(FlawedStepRow(name, test_set, rates))
    return rows
