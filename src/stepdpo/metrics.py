"""Evaluation metrics as small pure functions: pass@k, maj@k, accuracy intervals, paired tests.

Conventions: a run's outcome on a problem is a bool (right / wrong); two runs are
compared on the same problems, in the same order, and a difference is always
``B - A`` (the second run minus the first).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy import stats

AnswerMatch = Callable[[str, str], bool]


def _exact(a: str, b: str) -> bool:
    return a == b


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem (Chen et al. 2021) from ``n`` samples of which ``c`` are right.

        pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k / i)

    The product form avoids the huge binomial coefficients. It is the probability
    that a random k-subset of the n samples holds at least one right one; 1 when
    ``n - c < k`` (every k-subset does).
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_vote(answers: Sequence[str | None], match: AnswerMatch = _exact) -> tuple[int | None, int]:
    """Majority vote over extracted answers: ``(index of the winning cluster's first member, votes)``.

    Answers are grouped into clusters greedily in order: an answer joins the first
    cluster whose first member (its representative) it matches, else starts a new
    cluster. ``None`` (no answer) does not vote. Tie rule: among clusters with the
    most votes, the one whose representative came first wins. ``(None, 0)`` when
    no answer votes.
    """
    representatives: list[int] = []
    votes: list[int] = []
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        for slot, rep in enumerate(representatives):
            if match(answer, answers[rep]):  # type: ignore[arg-type]
                votes[slot] += 1
                break
        else:
            representatives.append(index)
            votes.append(1)
    if not votes:
        return None, 0
    best = max(range(len(votes)), key=lambda slot: (votes[slot], -slot))
    return representatives[best], votes[best]


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int, match: AnswerMatch = _exact) -> bool:
    """maj@k of one problem: whether the majority answer of the first ``k`` samples is right.

    ``correct[i]`` is sample i's grade; the vote's winner is right when its
    representative sample is (so the gold answer is compared exactly as in grading).
    No answer among the k samples counts as wrong.
    """
    if len(answers) != len(correct):
        raise ValueError(f"maj_at_k: {len(answers)} answers but {len(correct)} grades")
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k: need 1 <= k <= {len(answers)}, got k={k}")
    winner, _ = majority_vote(answers[:k], match)
    return winner is not None and bool(correct[winner])


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion p = successes / n.

        centre = (p + z²/2n) / (1 + z²/n),  half = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)

    with z the two-sided normal quantile of ``confidence``. Unlike the normal
    approximation it stays inside [0, 1] and is sensible at p = 0 or 1 and small n.
    """
    if n <= 0:
        raise ValueError("wilson_interval: n must be positive")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got {successes}, {n}")
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(outcomes: Sequence[bool], confidence: float = 0.95) -> dict[str, float | int]:
    """Share of right outcomes with its Wilson interval: ``{accuracy, correct, total, ci_low, ci_high}``."""
    total = len(outcomes)
    correct = int(sum(bool(o) for o in outcomes))
    low, high = wilson_interval(correct, total, confidence)
    return {"accuracy": correct / total, "correct": correct, "total": total, "ci_low": low, "ci_high": high}


def _paired(a: Sequence[bool], b: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length: {len(a)} vs {len(b)}")
    if not a:
        raise ValueError("paired outcomes are empty")
    return np.asarray(a, dtype=float), np.asarray(b, dtype=float)


def paired_bootstrap(
    a: Sequence[bool], b: Sequence[bool], samples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float]:
    """Paired bootstrap over problems for the accuracy difference ``mean(b) - mean(a)``.

    Each of ``samples`` replicates draws the N problems with replacement (the same
    draw for both runs, which keeps the pairing) and records the replicate's
    difference; the interval is the percentile interval of those differences.
    Returns ``{diff, ci_low, ci_high}``. Deterministic for a given ``seed``.
    """
    x, y = _paired(a, b)
    delta = y - x  # per-problem difference in {-1, 0, 1}
    rng = np.random.default_rng(seed)
    replicates = np.empty(samples)
    # Chunks bound memory at about 8 MB of indices whatever N and the sample count.
    chunk = max(1, 1_000_000 // len(delta))
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        idx = rng.integers(0, len(delta), size=(stop - start, len(delta)))
        replicates[start:stop] = delta[idx].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return {"diff": float(delta.mean()), "ci_low": float(low), "ci_high": float(high)}


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float | int]:
    """McNemar's exact test on paired outcomes: ``{a_only, b_only, p_value}``.

    Only discordant problems carry information: ``a_only`` (right in A, wrong in
    B) and ``b_only`` (the reverse). Under the null of equal accuracy each
    discordant problem is a fair coin, so the two-sided p-value is that of a
    binomial test of ``b_only`` successes in ``a_only + b_only`` trials at p = 1/2;
    1.0 when there are no discordant problems.
    """
    x, y = _paired(a, b)
    a_only = int(((x == 1) & (y == 0)).sum())
    b_only = int(((x == 0) & (y == 1)).sum())
    p_value = 1.0 if a_only + b_only == 0 else float(stats.binomtest(b_only, a_only + b_only, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": p_value}
