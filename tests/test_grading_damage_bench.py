"""bench/grading_damage.py: both passes see the same model text, and only the grading rule differs between them."""

from __future__ import annotations

import pytest

from stepdpo.generation.base import Completion, SamplingParams
from stepdpo.generation.scripted import ScriptedGenerator
from stepdpo.records import Problem
from stepdpo.stages import sample
from stepdpo.steps import PromptFormat


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("grading_damage")


def test_replay_answers_the_nth_ask_of_a_prompt_with_its_nth_completion(bench):
    asked = []

    def script(prompt, params, index):
        asked.append(prompt)
        return f" answer {len(asked)}"

    replay = bench.ReplayGenerator(ScriptedGenerator(script))
    first = replay.generate(["a", "a", "b"], SamplingParams(seed=1))
    replay.start_pass()
    again = replay.generate(["b", "a"], SamplingParams(seed=7))  # another seed, another batch: the same text
    more = replay.generate(["a", "a"], SamplingParams(seed=7))  # the 2nd ask of 'a' is replayed, the 3rd is new
    assert [[c.text for c in cs] for cs in first] == [[" answer 1"], [" answer 2"], [" answer 3"]]
    assert [[c.text for c in cs] for cs in again] == [[" answer 3"], [" answer 1"]]
    assert [[c.text for c in cs] for cs in more] == [[" answer 2"], [" answer 4"]]
    assert (replay.generated_prompts, replay.replayed_prompts) == (4, 3)


def test_old_rule_takes_the_last_number_of_a_cut_off_response_and_is_undone(bench):
    problem = Problem(id="p", question="q", answer="2")
    cut = ScriptedGenerator(lambda *_: Completion(" 1 + 1 = 4\nStep 2:", 6, "length"))
    with bench.old_rule():
        [old] = sample.run(sample.SampleConfig(k=1), [problem], cut, PromptFormat(style="plain"))
    [new] = sample.run(sample.SampleConfig(k=1), [problem], cut, PromptFormat(style="plain"))
    assert old.correct and not new.correct  # the 2 of the trailing marker was the old rule's answer
    assert bench.old_extract_answer("Step 1: 1 + 1 = 4\nStep 2:") == "2"
