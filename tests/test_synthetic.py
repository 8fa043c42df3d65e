import re
from collections import Counter

import pytest

from stepdpo.errors import ConfigError
from stepdpo.problems import load_problems
from stepdpo.problems.synthetic import computation_key, parse_synthetic_spec
from stepdpo.steps import split_steps, step_body


def test_same_seed_same_problems_and_index_independent_of_n():
    a = load_problems("synthetic:train?n=50&seed=7")
    b = load_problems("synthetic:train?n=50&seed=7")
    assert a == b
    c = load_problems("synthetic:train?n=50&seed=8")
    assert [p.question for p in a] != [p.question for p in c]
    assert load_problems("synthetic:train?n=20&seed=7") == a[:20]


def test_train_and_test_are_disjoint():
    train = load_problems("synthetic:train?n=3000&max_steps=4")
    test = load_problems("synthetic:test?n=1000&max_steps=4")
    assert not {p.question for p in train} & {p.question for p in test}
    assert not {p.id for p in train} & {p.id for p in test}
    # A computation (numbers and operations) never crosses splits, whatever the wording.
    def computation(problem):
        return computation_key(problem.question, problem.metadata["step_values"])

    assert not {computation(p) for p in train} & {computation(p) for p in test}
    # and the key is the arithmetic, not the wording: two problems differing only in names share it
    assert computation_key("Mia has 5 and buys 3.", ["8"]) == computation_key("Leo buys 3 after having 5.", [8])


@pytest.mark.parametrize("spec", ["synthetic:train?n=300", "synthetic:test?n=300&difficulty=2", "synthetic:train?n=200&difficulty=3&min_steps=5"])
def test_step_values_match_the_solution(spec):
    options = parse_synthetic_spec(spec)
    for problem in load_problems(spec):
        values = problem.metadata["step_values"]
        steps = split_steps(problem.solution)
        assert len(steps) == len(values) == problem.metadata["num_steps"] == len(problem.metadata["templates"])
        assert options.min_steps <= len(values) <= options.max_steps
        for number, (step, value) in enumerate(zip(steps, values), start=1):
            assert step.startswith(f"Step {number}: ")
            body = step_body(step)
            # the step states an operation and its exact result
            assert re.search(r"\d+ [-+*/] \$?\d+", body), body
            assert re.search(rf"= \$?{value}\b", body), (body, value)
        assert values[-1] == problem.answer
        assert steps[-1].endswith(f"\nThe answer is: \\boxed{{{problem.answer}}}")
        assert all(int(v) > 0 for v in values)
        assert problem.question.endswith("?")


def test_difficulty_one_keeps_numbers_moderate():
    problems = load_problems("synthetic:test?n=1000&difficulty=1")
    values = [int(v) for p in problems for v in p.metadata["step_values"]]
    assert max(values) < 1000
    numbers = [int(n) for p in problems for n in re.findall(r"\d+", p.question)]
    assert sum(n < 100 for n in numbers) / len(numbers) > 0.9
    harder = load_problems("synthetic:test?n=300&difficulty=3")
    assert max(int(p.answer) for p in harder) > 1000


def test_variety():
    problems = load_problems("synthetic:train?n=1000")
    assert len({p.question for p in problems}) >= 900
    templates = Counter(t.split(".")[0] for p in problems for t in p.metadata["templates"])
    for kind in ("gain", "lose", "times", "share", "sell", "more_than", "fewer_than", "times_as_many", "fraction_as_many", "difference", "together", "buy", "total", "change", "groups"):
        assert templates[kind] >= 10, (kind, templates)
    operators = Counter(op for p in problems for op in re.findall(r"\d (\+|-|\*|/) \$?\d", p.solution))
    assert set(operators) == {"+", "-", "*", "/"}
    assert Counter(p.metadata["num_steps"] for p in problems).keys() == {2, 3, 4, 5, 6}
    first_words = Counter(p.question.split(" ", 1)[0] for p in problems)
    assert len(first_words) >= 40  # many different people open the problems


@pytest.mark.parametrize(
    "spec, match",
    [
        ("synthetic:dev", "synthetic:train or synthetic:test"),
        ("synthetic:train?colour=red", "unknown option"),
        ("synthetic:train?n=ten", "must be an integer"),
        ("synthetic:train?min_steps=1", "min_steps"),
        ("synthetic:train?min_steps=5&max_steps=3", "min_steps"),
        ("synthetic:train?max_steps=7", "max_steps"),
        ("synthetic:train?difficulty=9", "difficulty"),
    ],
)
def test_bad_synthetic_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        load_problems(spec)


def test_limit_subsets_synthetic():
    subset = load_problems("synthetic:test?n=100", limit=10, seed=1)
    assert len(subset) == 10
    assert {p.id for p in subset} <= {p.id for p in load_problems("synthetic:test?n=100")}
