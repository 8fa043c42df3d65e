"""Monte-Carlo rollout localization: a prefix is alive if the policy can still finish it correctly.

Prefix ``i`` of a sample with steps ``s_1 … s_n`` is the text of steps ``1..i``.
From it the policy samples ``m`` completions; with ``c_i`` of them reaching the
gold answer the prefix is *alive* when ``c_i / m >= threshold``. A rollout reaches gold
only when it states the gold answer and ends by itself (:func:`stepdpo.grading.grade_for_data`):
one cut off at the token limit never does. The first wrong
step is the ``k`` whose prefix ``k`` is dead while prefix ``k-1`` is alive.

Two boundary facts need no rollouts: prefix 0 (the question alone) is taken as
alive, and prefix ``n`` (the whole sample, whose final answer is wrong) as dead.
So the search only ever queries ``1 <= i <= n-1`` and always returns some
``k`` in ``1..n``.

- Linear scan (Math-Shepherd): query ``1, 2, …`` and stop at the first dead
  prefix; ``k-1`` queries (``n-1`` when the error is in the last step).
- Binary search (OmegaPRM): keep ``lo`` alive and ``hi`` dead (start ``0, n``),
  query ``mid = (lo+hi)//2``; ``ceil(log2 n)`` queries at most. It finds *a*
  boundary ``alive(k-1), dead(k)``; when aliveness is not monotone in ``i``
  it may differ from the first such boundary, which the linear scan finds.

The searches are written as coroutines that yield the prefix they want
answered and receive ``True`` (alive) / ``False`` (dead), so the same code runs
both behind a plain ``is_alive(i)`` oracle (:func:`first_dead_linear`,
:func:`first_dead_binary`) and in lockstep over many samples whose queries are
answered by one batched generator call per round (:class:`RolloutLocalizer`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generator as Coroutine, Literal, Sequence

from stepdpo.config import OptionCheck
from stepdpo.generation.base import Generator, SamplingParams
from stepdpo.generation.graded import Continue, generate_graded
from stepdpo.localizers.base import STATUS_OK, empty_response
from stepdpo.records import LocatedError, Problem, Sample
from stepdpo.seeding import derive_seed
from stepdpo.steps import PromptFormat, next_marker

Search = Coroutine[int, bool, int]
"""Yields prefix lengths to test, is sent their aliveness, returns the first wrong step."""


def linear_queries(num_steps: int) -> Search:
    """Math-Shepherd scan: test prefixes 1, 2, … n-1; return the first dead one, else n."""
    for i in range(1, num_steps):
        alive = yield i
        if not alive:
            return i
    return num_steps


def binary_queries(num_steps: int) -> Search:
    """OmegaPRM bisection with invariant alive(lo), dead(hi), from lo=0, hi=n; returns hi when hi = lo+1."""
    lo, hi = 0, num_steps
    while hi - lo > 1:
        mid = (lo + hi) // 2
        alive = yield mid
        if alive:
            lo = mid
        else:
            hi = mid
    return hi


SEARCHES: dict[str, Callable[[int], Search]] = {"linear": linear_queries, "binary": binary_queries}


def drive(search: Search, is_alive: Callable[[int], bool]) -> tuple[int, list[int]]:
    """Run a search against an oracle; returns (first wrong step, prefixes queried in order)."""
    queried: list[int] = []
    try:
        query = next(search)
        while True:
            queried.append(query)
            query = search.send(is_alive(query))
    except StopIteration as stop:
        return int(stop.value), queried


def first_dead_linear(num_steps: int, is_alive: Callable[[int], bool]) -> int:
    """First ``i`` in ``1..n-1`` with ``is_alive(i)`` false, else ``n``."""
    return drive(linear_queries(num_steps), is_alive)[0]


def first_dead_binary(num_steps: int, is_alive: Callable[[int], bool]) -> int:
    """A ``k`` in ``1..n`` with prefix ``k-1`` alive and prefix ``k`` dead (0 alive and n dead by assumption)."""
    return drive(binary_queries(num_steps), is_alive)[0]


def boundary_confidence(stats: dict[int, tuple[int, int]], k: int, num_steps: int) -> float | None:
    """Mean of the measured evidence at the boundary: success share of prefix k-1, failure share of prefix k.

    Sides fixed by assumption (prefix 0, prefix n) contribute nothing; None when both are.
    """
    parts = []
    if k - 1 >= 1 and k - 1 in stats:
        successes, trials = stats[k - 1]
        parts.append(successes / trials)
    if k < num_steps and k in stats:
        successes, trials = stats[k]
        parts.append(1 - successes / trials)
    return sum(parts) / len(parts) if parts else None


@dataclass
class RolloutConfig:
    """Options of the rollout localizer."""

    search: Literal["linear", "binary"] = field(default="binary", metadata={"help": "linear: test every prefix in order until one is dead (Math-Shepherd); binary: bisect (OmegaPRM), ~log2(steps) prefixes tested."})
    rollouts_per_prefix: int = field(default=8, metadata={"help": "Completions sampled from each tested prefix (m)."})
    alive_threshold: float = field(default=0.1, metadata={"help": "A prefix is alive when at least this share of its rollouts reaches the gold answer (0.1 with m=8: one success suffices)."})
    temperature: float = field(default=0.8, metadata={"help": "Rollout sampling temperature."})
    top_p: float = field(default=0.95, metadata={"help": "Rollout nucleus sampling."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token limit of each rollout."})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "Extra stop strings for rollouts."})
    seed: int = field(default=0, metadata={"help": "Run seed; the rollouts from prefix i of a sample are seeded by (seed, stage, sample id, i)."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.at_least(1, "rollouts_per_prefix", "max_new_tokens")
        check.share("alive_threshold", zero=False)
        check.at_least(0, "temperature")
        check.share("top_p", zero=False)
        check.no_empty_strings("stop")


@dataclass
class PrefixRollouts:
    """Rollouts from one prefix: how many reached gold, of how many, and the tokens they took."""

    successes: int
    trials: int
    tokens: int


@dataclass
class _State:
    problem: Problem
    sample: Sample
    search: Search
    query: int | None = None
    result: int | None = None
    stats: dict[int, tuple[int, int]] = field(default_factory=dict)
    queried: list[int] = field(default_factory=list)
    rollouts: int = 0
    tokens: int = 0

    def advance(self, answer: bool | None) -> None:
        """Start (answer None) or answer the pending query; records the result when the search ends."""
        try:
            self.query = next(self.search) if answer is None else self.search.send(answer)
            self.queried.append(self.query)
        except StopIteration as stop:
            self.query, self.result = None, int(stop.value)


class RolloutLocalizer:
    """Batched rollout localization: every round answers the pending query of all unfinished samples at once."""

    def __init__(self, config: RolloutConfig, generator: Generator, fmt: PromptFormat, stage: str = "locate"):
        if config.rollouts_per_prefix < 1:
            raise ValueError("rollouts_per_prefix must be >= 1")
        self.config = config
        self.generator = generator
        self.fmt = fmt
        self.stage = stage
        """The stage name in the rollouts' seeds, so that two stages rolling out one sample draw independently."""
        self.name = f"rollout-{config.search}"

    def alive(self, rollouts: PrefixRollouts) -> bool:
        """The prefix is alive when at least ``alive_threshold`` of its rollouts reached gold."""
        return rollouts.successes / rollouts.trials >= self.config.alive_threshold

    def roll_out(self, queries: Sequence[tuple[Problem, str, str, int]]) -> list[PrefixRollouts]:
        """``rollouts_per_prefix`` graded rollouts from each ``(problem, key, prefix, index)``, in one batched call.

        Rollouts are seeded by (seed, stage, key, index): a prefix's rollouts do not depend on the
        chunk, round or search that asks (``key``: the record, ``index``: which of its prefixes).
        """
        cfg = self.config
        params = SamplingParams(n=cfg.rollouts_per_prefix, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_new_tokens=cfg.max_new_tokens, stop=tuple(cfg.stop))
        jobs = [Continue(self.fmt.prompt(problem.question, prefix), prefix + next_marker(prefix), problem.answer)
                for problem, _, prefix, _ in queries]
        seeds = [derive_seed(cfg.seed, self.stage, key, index) for _, key, _, index in queries]
        return [PrefixRollouts(successes=sum(g.correct for g in graded), trials=len(graded), tokens=sum(g.completion.num_tokens for g in graded))
                for graded in generate_graded(self.generator, jobs, params, seeds)]

    def locate_many(self, items: Sequence[tuple[Problem, Sample]]) -> list[LocatedError]:
        cfg = self.config
        results: list[LocatedError | None] = [empty_response(p, s, self.name) for p, s in items]
        states = {j: _State(p, s, SEARCHES[cfg.search](len(s.steps))) for j, (p, s) in enumerate(items) if results[j] is None}
        for state in states.values():
            state.advance(None)
        while True:
            pending = [state for state in states.values() if state.query is not None]
            if not pending:
                break
            answers = self.roll_out([(state.problem, state.sample.id, "".join(state.sample.steps[: state.query]), state.query)
                                     for state in pending])
            for state, rollouts in zip(pending, answers):
                state.stats[state.query] = (rollouts.successes, rollouts.trials)
                state.rollouts += rollouts.trials
                state.tokens += rollouts.tokens
                state.advance(self.alive(rollouts))
        for j, state in states.items():
            k = state.result
            assert k is not None
            results[j] = LocatedError(
                sample_id=state.sample.id, problem_id=state.problem.id, first_wrong_step=k, localizer=self.name,
                confidence=boundary_confidence(state.stats, k, len(state.sample.steps)),
                rollouts=state.rollouts, localizer_tokens=state.tokens, status=STATUS_OK,
                evidence={"search": cfg.search, "num_steps": len(state.sample.steps), "queried": state.queried,
                          "prefix_stats": {str(i): list(v) for i, v in sorted(state.stats.items())},
                          "rollouts_per_prefix": cfg.rollouts_per_prefix, "alive_threshold": cfg.alive_threshold})
        return [r for r in results if r is not None]
