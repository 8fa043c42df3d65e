import math

import pytest

from stepdpo.metrics import accuracy, maj_at_k, majority_vote, mcnemar_exact, paired_bootstrap, pass_at_k, wilson_interval


def test_pass_at_k_hand_computed():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k: every 3-subset holds a right sample
    assert pass_at_k(1, 1, 1) == 1.0


def test_pass_at_k_matches_binomials_at_large_n():
    n, c, k = 200, 10, 100
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_bad_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_majority_vote_tie_goes_to_earliest_cluster():
    assert majority_vote(["3", "4", "4", "3"]) == (0, 2)
    assert majority_vote(["4", "3", "3", "4"]) == (0, 2)
    assert majority_vote(["1", "2", "2"]) == (1, 2)


def test_majority_vote_ignores_missing_answers_and_uses_match():
    assert majority_vote([None, None, "5"]) == (2, 1)
    assert majority_vote([None, None]) == (None, 0)
    same_value = lambda a, b: float(parse_fraction(a)) == float(parse_fraction(b))  # noqa: E731
    assert majority_vote(["0.5", "2", "1/2", "2"], same_value) == (0, 2)


def parse_fraction(text: str) -> float:
    num, _, den = text.partition("/")
    return float(num) / float(den or 1)


def test_maj_at_k_uses_grade_of_winner_and_first_k_only():
    answers = ["7", "8", "8", "7", "7"]
    correct = [True, False, False, True, True]
    assert maj_at_k(answers, correct, 1) is True
    assert maj_at_k(answers, correct, 3) is False  # "8" wins 2 to 1
    assert maj_at_k(answers, correct, 4) is True  # 2-2 tie: "7" came first
    assert maj_at_k([None, None], [False, False], 2) is False
    with pytest.raises(ValueError):
        maj_at_k(answers, correct, 6)


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_accuracy_summary():
    summary = accuracy([True, False, True, True])
    assert summary["accuracy"] == 0.75 and summary["correct"] == 3 and summary["total"] == 4
    assert summary["ci_low"] < 0.75 < summary["ci_high"]


def test_paired_bootstrap_identical_runs_is_exactly_zero():
    runs = [True, False, True, False, True]
    assert paired_bootstrap(runs, runs, samples=500) == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}


def test_paired_bootstrap_known_cases_and_seed():
    assert paired_bootstrap([False] * 6, [True] * 6, samples=200) == {"diff": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    a = [True] * 10 + [False] * 10
    b = [True] * 15 + [False] * 5
    first = paired_bootstrap(a, b, samples=2000, seed=3)
    assert first == paired_bootstrap(a, b, samples=2000, seed=3)
    assert first["diff"] == pytest.approx(0.25)
    # Only 5 discordant problems, all in B's favour: the difference can never go below 0.
    assert 0.0 <= first["ci_low"] < 0.25 < first["ci_high"] <= 0.5
    with pytest.raises(ValueError):
        paired_bootstrap([True], [True, False])


def test_mcnemar_exact_known_table():
    # A right only on 1 problem, B right only on 9: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    a = [True] * 1 + [False] * 9 + [True] * 5 + [False] * 3
    b = [False] * 1 + [True] * 9 + [True] * 5 + [False] * 3
    result = mcnemar_exact(a, b)
    assert result["a_only"] == 1 and result["b_only"] == 9
    assert result["p_value"] == pytest.approx(22 / 1024)
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0
