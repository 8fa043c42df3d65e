"""Answer extraction and equivalence: a table of real cases, time limits off the main thread, hostile inputs."""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from stepdpo.grading import answers_match, brace_fractions, extract_answer, grade_many, is_correct, normalize_answer, states_final_answer

sys.path.insert(0, str(Path(__file__).parent))
from grading_cases import MATCH_CASES  # noqa: E402


def test_case_table_is_large_and_mixed():
    assert len(MATCH_CASES) >= 60
    assert sum(expected for _, _, expected in MATCH_CASES) >= 30
    assert sum(not expected for _, _, expected in MATCH_CASES) >= 20


@pytest.mark.parametrize(("pred", "gold", "expected"), MATCH_CASES, ids=[f"{p!r}~{g!r}" for p, g, _ in MATCH_CASES])
def test_answers_match_table(pred, gold, expected):
    # A generous deadline: the CPU is shared, and an overrun would read as "no match".
    assert answers_match(pred, gold, timeout_s=60.0) is expected


def test_grade_many_agrees_with_answers_match_in_order():
    pairs = [(pred, gold) for pred, gold, _ in MATCH_CASES] * 2
    assert grade_many(pairs, timeout_s=60.0) == [expected for _, _, expected in MATCH_CASES] * 2


def test_none_prediction_never_matches():
    assert answers_match(None, "5") is False
    assert grade_many([(None, "5"), ("5", "5")]) == [False, True]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Step 1: 2+3=5.\nThe answer is \\boxed{5}.", "5"),
        ("So the result is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("first \\boxed{3}, but actually \\boxed{4}.", "4"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\fbox{7}", "7"),
        ("\\boxed {12}", "12"),
        ("ok \\boxed{3} then a truncated \\boxed{\\frac{1}{", "3"),
        ("The answer is \\boxed{5} and the answer is: 6", "5"),
        ("The answer is: 42", "42"),
        ("The answer is 42.", "42"),
        ("the final answer is $3.5$. Done.", "3.5"),
        ("I thought the answer is 3. The answer is: 4\nBye", "4"),
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
        ("#### 1,000", "1,000"),
        ("#### 5\n#### 6", "6"),
        ("She has 3 apples and buys 4.5 more, 7.5 in all.", "7.5"),
        ("-4 is the value", "-4"),
        ("it is (-4)", "-4"),
        ("10-5 leaves 10-5", "5"),
        ("costs 1,250 dollars", "1,250"),
        ("half: 3/4", "3/4"),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize("response", ["", "no numbers at all", "\\boxed{}", "\\boxed{unclosed"])
def test_extract_answer_none(response):
    assert extract_answer(response) is None


def test_last_number_fallback_off():
    assert extract_answer("She has 3 apples and buys 4 more, 7 in all.", last_number_fallback=False) is None
    assert extract_answer("so \\boxed{7}", last_number_fallback=False) == "7"


def test_normalize_answer():
    assert normalize_answer("$\\boxed{ 1,000 }$.") == "1000"
    assert normalize_answer("\\dfrac{1}{2}") == "\\frac{1}{2}"
    assert normalize_answer("\\left( 1, 2 \\right)") == "(1,2)"
    assert normalize_answer("90^\\circ") == "90"
    assert normalize_answer("\\boxed{1}+\\boxed{2}") == "\\boxed{1}+\\boxed{2}"


def test_is_correct():
    assert is_correct("Step 1: 1/2 of 1 is 0.5.\nThe answer is \\boxed{0.5}", "\\frac{1}{2}")
    assert is_correct("#### 1,000", "1000")
    assert not is_correct("#### 999", "1000")
    assert not is_correct("no answer here", "5", last_number_fallback=False)


def test_match_from_threads():
    """math-verify's own timeout uses signals and fails off the main thread; ours must not.

    Fresh symbolic pairs (not in the result cache) so every call reaches a worker process.
    """
    cases = [(f"x^2+{2 * k}x+{k * k}", f"(x+{k})^2", True) for k in range(11, 23)]
    cases += [(f"x^2+{2 * k}x+{k * k + 1}", f"(x+{k})^2", False) for k in range(11, 23)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: answers_match(case[0], case[1], timeout_s=60.0), cases))
    assert results == [expected for _, _, expected in cases]


def test_deadline_kills_the_worker_and_the_next_call_recovers():
    # Expanding a cube symbolically takes the worker far longer than a microsecond,
    # so this call overruns its deadline, its worker is killed and it counts as wrong.
    with ThreadPoolExecutor(max_workers=1) as pool:
        overrun = pool.submit(answers_match, "x^3+21x^2+147x+343", "(x+7)^3", timeout_s=1e-6).result()
    assert overrun is False
    assert answers_match("x^3+21x^2+147x+343", "(x+7)^3", timeout_s=60.0) is True


def test_match_from_a_daemonic_pool_worker():
    """multiprocessing pool workers are daemonic and may not start child processes the usual way."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        results = pool.starmap(partial(answers_match, timeout_s=60.0), [("0.5", "\\frac{1}{2}"), ("(x+1)^2", "x^2+2x+1"), ("3", "4")])
    assert results == [True, True, False]


@pytest.mark.parametrize(
    "pred",
    [
        "10^{10^{10^{10}}}",
        "10^{10^{10^{10^{10}}}}",
        "10^{123456789}",
        "10^{(10^{10})}",
        "10^{9999}^{9999}",
        "9^9^9",
        "(" * 5000 + "1" + ")" * 5000,
        "{" * 5000 + "1" + "}" * 5000,
        "\\frac{" * 3000 + "1" + "}{2}" * 3000,
        "x" * 100_000,
        "1" * 100_000 + "x",
        "1" * 100_000,
        "1." * 50_000,
        "1,000" * 20_000,
        "".join(chr(33 + (i * 7919) % 90) for i in range(100_000)),
    ],
    ids=["tower4", "tower5", "huge-exponent", "paren-tower", "chained-braces", "chained-bare", "parens", "braces", "nested-fracs", "100kB-x",
         "100k-digits-x", "100k-digits", "1.-repeated", "commas-repeated", "100kB-garbage"],
)
def test_pathological_answers_are_wrong_not_hangs(pred):
    assert answers_match(pred, "5", timeout_s=10.0) is False
    assert answers_match("5", pred, timeout_s=10.0) is False
    assert is_correct(f"so \\boxed{{{pred}}}", "5", timeout_s=10.0) is False


def test_pathological_responses():
    garbage = "".join(chr(32 + (i * 7919) % 95) for i in range(100_000))
    assert is_correct(garbage, "5") in (True, False)  # it returns; any last number may be 5
    assert is_correct("\\boxed{" * 20_000, "5") is False
    assert is_correct("{" * 100_000, "5") is False
    assert is_correct("the answer is " * 10_000, "5") is False


def test_model_text_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"__import__(\"os\").system(\"touch {marker}\")",
        f"eval(\"__import__('os').system('touch {marker}')\")",
        f"exec('import os; os.system(\"touch {marker}\")')",
    ]
    for payload in payloads:
        assert answers_match(payload, "0") is False
        assert answers_match("0", payload) is False
        assert is_correct(f"The answer is {payload}", "0") is False
        assert is_correct(f"\\boxed{{{payload}}}", "5") is False
        assert is_correct(f"\\boxed{{{payload}}}", f"x+{payload}") is False
    assert not marker.exists()


def test_grade_responses_extracts_before_matching():
    from stepdpo.grading import grade_responses

    responses = [("Step 1: 2+3=5 so 7", "7"), ("Step 1: x\nThe answer is: 9", "9"), ("Step 1: \\boxed{4}", "5")]
    assert grade_responses(responses) == [True, True, False]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Step 1: 2+2=4\nStep 2:", "4"),  # the 2 of a trailing marker is no answer
        ("Step 1: He has 7 apples.\nStep 2: He buys", "7"),
        ("Step 1: 2+2=4\nStep 2", "4"),  # cut off before the marker's colon
        ("Step 1: 2+2=4. Step 2: then", "4"),  # a marker inside a line
        ("step 3:", None),
        ("Step 1: 3 apples\nStep 2: 5", "5"),  # a number after the colon is the step's own
    ],
)
def test_last_number_fallback_skips_step_markers(response, expected):
    assert extract_answer(response) == expected


def test_a_half_written_step_is_not_graded_by_its_marker():
    assert not is_correct("Step 1: He has 7 apples.\nStep 2: He buys", "2")
    assert not is_correct("Step 1: 2+2=4\nStep 2:", "2")


def test_frac_without_braces_takes_one_digit_per_argument():
    """TeX reads \\frac123 as \\frac{1}{2}3 (one half, then 3): not 12/3, and not math-verify's 1/23."""
    assert brace_fractions("\\frac123") == "\\frac{1}{2}3"
    assert brace_fractions("\\dfrac{\\frac12}3") == "\\dfrac{\\frac{1}{2}}{3}"
    assert brace_fractions("\\frac\\pi2 + \\frac{1}{") == "\\frac{\\pi}{2} + \\frac{1}{"
    assert not answers_match("\\frac123", "4")
    assert not answers_match("\\frac123", "1/23", timeout_s=60.0)
    assert answers_match("\\frac123", "3/2", timeout_s=60.0)
    assert answers_match("\\frac12", "0.5")


@pytest.mark.parametrize(
    ("text", "states"),
    [("Step 3: 4 + 3 = 7\n#### 7", True), ("Step 3: so the answer is: 7", True), ("Step 3: \\boxed{7}", True),
     ("Step 3: 4 + 3 = 7", False), ("Step 3: The answer is", False), ("Step 3: \\boxed{7", False)],
)
def test_states_final_answer(text, states):
    assert states_final_answer(text) is states
