"""The data rule: every stage that builds data counts a response as right only when it states a final answer
and the model ended it itself. Responses cut off at the token limit, and ones the model ended without stating an
answer, are what a small model writes most; the scripted generator produces both, as a real backend does."""

from __future__ import annotations

import pytest

from stepdpo.generation.base import Completion, SamplingParams
from stepdpo.generation.scripted import ScriptedGenerator, end_like_a_backend
from stepdpo.grading import data_answer, grade_for_data
from stepdpo.localizers.base import locate
from stepdpo.localizers.rollout import RolloutConfig, RolloutLocalizer
from stepdpo.records import LocatedError, Problem, Sample
from stepdpo.stages.rectify import RectifyConfig, run as rectify_run
from stepdpo.stages.sample import SampleConfig, run as sample_run
from stepdpo.steps import PromptFormat, split_steps

FMT = PromptFormat(style="plain")
PROBLEM = Problem(id="p", question="Compute 2*3+1.", answer="7")


def test_scripted_generator_ends_text_as_a_backend_does():
    params = SamplingParams(max_new_tokens=4, stop=("\nStep ",))
    assert end_like_a_backend(" a b c", params) == Completion(" a b c", 3, "eos")
    assert end_like_a_backend(" a b c d e f", params) == Completion(" a b c d", 4, "length")
    assert end_like_a_backend(" a\nStep 2: b c d e", params) == Completion(" a", 1, "stop", stop_string="\nStep ")
    # A stop string beyond the token limit is never reached.
    assert end_like_a_backend(" a b c d e\nStep 2:", params) == Completion(" a b c d", 4, "length")
    error = Completion("", 0, "error: HTTP 500")
    [[passed]] = ScriptedGenerator(lambda *_: error).generate(["q"], params)
    assert passed == error and passed is not error


@pytest.mark.parametrize(
    ("response", "finish", "right"),
    [
        ("Step 1: 3 + 4 = 7\nThe answer is: \\boxed{7}", "eos", True),
        ("Step 1: 3 + 4 = 7\nThe answer is: \\boxed{7}", "stop", True),
        ("Step 1: 3 + 4 = 7\n#### 7", "eos", True),
        # Stated and right, but cut at the token limit (the model was still writing) or failed: not data.
        ("Step 1: 3 + 4 = 7\nThe answer is: \\boxed{7} and also", "length", False),
        ("Step 1: 3 + 4 = 7\nThe answer is 7", "error: HTTP 500", False),
        # No stated answer: the last number is never taken, the marker's number even less.
        ("Step 1: 3 + 4 = 7", "eos", False),
        ("Step 1: 3 + 4 = 7\nStep 2: then", "length", False),
        ("Step 1: 3 + 4 = 5\nStep 7:", "length", False),
    ],
)
def test_grade_for_data(response, finish, right):
    assert grade_for_data([(response, finish, "7")]) == [right]
    assert (data_answer(response, finish) == "7") == right


def cut_and_ended(prompt, params, index):
    """What a small model writes: index 0 states gold and stops; 1 is cut at the limit after stating gold;
    2 ends (EOS) with gold as its last number but no stated answer; 3 is cut mid-step right after a marker."""
    return [
        Completion(" 2 * 3 = 6\nStep 2: 6 + 1 = 7\nThe answer is: \\boxed{7}", 12, "eos"),
        Completion(" 2 * 3 = 6\nStep 2: 6 + 1 = 7\nThe answer is: \\boxed{7}\nStep 3: and then", 16, "length"),
        Completion(" 2 * 3 = 6\nStep 2: 6 + 1 = 7", 10, "eos"),
        Completion(" 2 * 3 = 7\nStep 7:", 6, "length"),
    ][index]


def test_sample_grades_cut_off_and_unanswered_responses_wrong():
    samples = sample_run(SampleConfig(k=4), [PROBLEM], ScriptedGenerator(cut_and_ended), FMT)
    assert [s.correct for s in samples] == [True, False, False, False]
    assert [s.finish_reason for s in samples] == ["eos", "length", "eos", "length"]
    assert [s.predicted for s in samples] == ["7", "7", None, None]  # what the response states, never a last number


def test_rollouts_cut_off_or_unanswered_do_not_keep_a_prefix_alive():
    """Only the rollouts that state gold and end by themselves count: with the threshold at 2 of 4, every prefix
    is dead, so the first step is blamed; one more finished right rollout per prefix keeps them alive."""
    response = "Step 1: 2 * 3 = 6\nStep 2: 6 + 1 = 8\nStep 3: so 8\nThe answer is: \\boxed{8}"
    sample = Sample(id="p#0", problem_id="p", prompt="", response=response, steps=split_steps(response), predicted="8", correct=False)
    config = RolloutConfig(search="linear", rollouts_per_prefix=4, alive_threshold=0.5)
    located = locate(RolloutLocalizer(config, ScriptedGenerator(cut_and_ended), FMT), PROBLEM, sample)
    assert located.first_wrong_step == 1 and located.evidence["prefix_stats"] == {"1": [1, 4]}

    def one_more(prompt, params, index):
        return cut_and_ended(prompt, params, 0 if index == 3 else index)

    located = locate(RolloutLocalizer(config, ScriptedGenerator(one_more), FMT), PROBLEM, sample)
    assert located.first_wrong_step == 3 and located.evidence["prefix_stats"] == {"1": [2, 4], "2": [2, 4]}


def test_rectify_takes_no_chosen_step_from_a_cut_off_continuation():
    wrong = "Step 1: 2 * 3 = 6\nStep 2: 6 + 1 = 8\nThe answer is: \\boxed{8}"
    sample = Sample(id="p#0", problem_id="p", prompt="", response=wrong, steps=split_steps(wrong), predicted="8", correct=False)
    located = [LocatedError(sample_id="p#0", problem_id="p", first_wrong_step=2, localizer="exact")]

    def script(prompt, params, index):
        return [Completion(" 6 + 1 = 7, cut here\nThe answer is: \\boxed{7} and", 9, "length"),
                Completion(" 6 + 1 = 7", 4, "eos"),
                Completion(" 6 + 1 = 7 indeed\nThe answer is: \\boxed{7}", 7, "eos")][index]

    [rect] = rectify_run(RectifyConfig(r=3), {"p": PROBLEM}, {"p#0": sample}, located, ScriptedGenerator(script), FMT)
    assert (rect.tried, rect.reached_gold) == (3, 1)
    assert rect.chosen == ["Step 2: 6 + 1 = 7 indeed\nThe answer is: \\boxed{7}"]
