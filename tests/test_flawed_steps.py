"""The process metric: first wrong step by position, on hand-made responses whose first wrong step is known."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import pytest

from stepdpo.problems.synthetic import synthetic_problems
from stepdpo.report.flawed_steps import UNLOCATED_CUT_OFF, UNLOCATED_EMPTY, flawed_step_rates
from stepdpo.stages.evaluate import EvalSample


@dataclass
class Output:
    """The fields of a samples.jsonl line the metric reads."""

    problem_id: str
    response: str
    correct: bool
    finish_reason: str = "stop"
    num_tokens: int = 20
    index: int = 0


@pytest.fixture(scope="module")
def problem():
    return synthetic_problems("synthetic:train?n=1&min_steps=3&max_steps=3&difficulty=0&seed=4")[0]


def _responses(values: list[str]) -> dict[str, tuple[str, bool, str]]:
    """problem id -> (response, graded correct, finish reason), each with a known first wrong step."""
    v1, v2, v3 = values
    return {
        "right": (f"Step 1: {v1}.\nStep 2: {v2}.\nStep 3: {v3}.\nThe answer is: \\boxed{{{v3}}}", True, "stop"),
        "wrong-at-2": (f"Step 1: {v1}.\nStep 2: {int(v2) + 1}.\nStep 3: 7.\nThe answer is: \\boxed{{7}}", False, "stop"),
        "wrong-at-3": (f"Step 1: {v1}.\nStep 2: {v2}.\nStep 3: {int(v3) + 2}.\nThe answer is: \\boxed{{{int(v3) + 2}}}", False, "stop"),
        # concludes after one right step: the early stop is wrong at its last step
        "stopped-early": (f"Step 1: {v1}.\nThe answer is: \\boxed{{{v1}}}", False, "stop"),
        # garbled first step: states no number
        "unreadable": ("Step 1: the the the", False, "stop"),
        # cut off inside step 3, which states no number yet: wrong at 3
        "cut-in-step-3": (f"Step 1: {v1}.\nStep 2: {v2}.\nStep 3: ", False, "length"),
        # cut off after two right steps: nothing is wrong yet, nothing concluded
        "cut-all-right": (f"Step 1: {v1}.\nStep 2: {v2}.\n", False, "length"),
        "empty": ("", False, "stop"),
    }


def test_first_wrong_step_of_every_kind_of_response(problem):
    responses = _responses([str(v) for v in problem.metadata["step_values"]])
    problems = [replace(problem, id=pid) for pid in responses]
    outputs = [Output(pid, text, correct, finish) for pid, (text, correct, finish) in responses.items()]
    rates = flawed_step_rates(problems, outputs)
    assert (rates.problems, rates.right, rates.wrong, rates.not_judged) == (8, 1, 7, 0)
    assert rates.first_wrong == {1: 2, 2: 1, 3: 2}
    assert rates.unlocated == 2 and rates.unlocated_reasons == {UNLOCATED_CUT_OFF: 1, UNLOCATED_EMPTY: 1}
    shares = rates.shares()
    assert shares == {"right": 1 / 8, "1": 2 / 8, "2": 1 / 8, "3": 2 / 8, "unlocated": 2 / 8}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert rates.mean_position() == pytest.approx((1 * 2 + 2 + 3 * 2) / 5)
    summary = json.loads(json.dumps(rates.as_json()))
    assert summary["first_wrong"] == {"1": 2, "2": 1, "3": 2} and summary["shares"]["unlocated"] == 0.25


def test_only_the_first_response_of_a_problem_and_only_problems_with_step_truth_count(problem):
    values = [str(v) for v in problem.metadata["step_values"]]
    right = _responses(values)["right"][0]
    wrong_at_2 = _responses(values)["wrong-at-2"][0]
    with_truth = replace(problem, id="a")
    without_truth = replace(problem, id="b", metadata={"num_steps": 3})
    outputs = [
        Output("a", right, True, index=1),  # a second sample: not pass@1
        Output("a", wrong_at_2, False, index=0),
        Output("b", wrong_at_2, False),  # no step values
        Output("c", wrong_at_2, False),  # a problem not given
    ]
    rates = flawed_step_rates({"a": with_truth, "b": without_truth}, outputs)
    assert (rates.problems, rates.right, rates.first_wrong, rates.unlocated, rates.not_judged) == (1, 0, {2: 1}, 0, 2)
    empty = flawed_step_rates([], outputs)
    assert (empty.problems, empty.not_judged, empty.shares()) == (0, 3, {"right": 0.0, "unlocated": 0.0})


def test_eval_records_are_accepted_as_they_are(problem):
    """`stepdpo eval`'s own records (what bench scripts hold) go in unchanged; a position without errors reads as 0."""
    values = [str(v) for v in problem.metadata["step_values"]]
    text, _, _ = _responses(values)["wrong-at-3"]
    sample = EvalSample(id="s|p#0", set="s", problem_id="p", index=0, prompt="", response=text, predicted=None, gold=problem.answer,
                        correct=False, has_final_answer=True, num_tokens=30, finish_reason="stop")
    rates = flawed_step_rates([replace(problem, id="p")], [sample])
    assert rates.first_wrong == {3: 1} and rates.shares() == {"right": 0.0, "1": 0.0, "2": 0.0, "3": 1.0, "unlocated": 0.0}
