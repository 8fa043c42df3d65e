"""Step-Controlled DPO pairs and judge-free Step-DPO pairs (``stepdpo scdpo``), from correct samples.

SCDPO (arXiv 2407.00782): take a correct self-generated solution ``y = s_1 … s_n``,
keep its first ``k`` steps (the *branch point*, ``1 <= k <= n-1``) and let the same
model continue from there, one step at a time, with a temperature that rises with
every generated step::

    T_i = min(start + increment · i, cap)        i = 0, 1, 2, …  (i-th generated step)

(the paper: start 1.1, increment 0.05, cap 1.4). A continuation ends when a step
states a final answer, when the model ends it (end-of-sequence, or one of the extra stop
strings) without one, when a step hits the per-step token limit, or after ``max_steps``
steps. Only a continuation that states its final answer and ends by itself is graded
(:func:`stepdpo.grading.grade_for_data`). Continuations are regenerated until one states
a *wrong* final answer or the retry budget of the branch point runs out; each problem
yields at most ``max_negatives_per_problem`` negatives.

Generating one step per call is what makes the temperature per step exact: every call
stops at ``"\\nStep "`` and the next call continues ``prefix + generated steps`` at the
next temperature. Only a call that stopped there (the model began its next step) is
continued; one the model ended is not (an OpenAI-compatible server other than vLLM's
cannot say which of the two happened when stop strings are set: such a stop is taken
as the step boundary, with a warning). All live continuations at the same step index share one
temperature, so each round is one batched generator call over all of them.

Pairs built from a negative ``y'`` (identical to ``y`` up to step ``k``):

- ``kind="scdpo"``: ``initial_reason_steps`` = header + ``s_1 … s_k``; ``chosen`` /
  ``full_chosen`` = ``s_{k+1} … s_n``; ``rejected`` / ``full_rejected`` = the rest of
  ``y'``. The shared prefix is checked token by token: the ids of
  ``context(header + prefix)`` must be the first ids of both ``context(header + y)``
  and ``context(header + y')`` (no token merges across the branch point), else the
  continuation is not accepted.
- ``kind="judge-free"`` (Step-DPO without a judge): same context, ``chosen`` = ``s_{k+1}``,
  ``rejected`` = the first generated step of ``y'``, ``full_*`` the whole continuations.
  Kept only when Monte-Carlo rollouts from ``prefix + rejected step`` confirm that
  prefix is dead (fewer than ``alive_threshold`` of ``m`` rollouts reach gold), using
  :class:`stepdpo.localizers.rollout.RolloutLocalizer`.
- optionally ``kind="dpo"``: naive whole-solution pairs (:func:`stepdpo.pairing.dpo_pairs`)
  in the same output, for the paper's mixed loss (naive DPO + step-controlled DPO).

Resumable: every finished branch point is appended to ``RUN/scdpo/branches.jsonl``
(keyed ``<sample_id>@<k>``) and every rollout confirmation to
``RUN/scdpo/judge_free.jsonl``; pairs are rebuilt from those stores and written whole to
``RUN/pairs/scdpo_pairs.*`` and ``RUN/pairs/judge_free_pairs.*``.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence

from stepdpo.config import OptionCheck, validate_config
from stepdpo.errors import InputError
from stepdpo.generation.base import FINISH_EOS, FINISH_STOP, Generator, GeneratorConfig, SamplingParams, close_generator, prompt_format
from stepdpo.generation.registry import build_generator
from stepdpo.grading import FINISHED_REASONS, extract_answer, grade_for_data, states_final_answer
from stepdpo.localizers.rollout import RolloutConfig, RolloutLocalizer
from stepdpo.records import Problem, RecordStore, Sample, StepPair
from stepdpo.pairing import check_pair, dpo_pairs
from stepdpo.rundir import Funnel, RunDir
from stepdpo.seeding import derive_seed
from stepdpo.stages.keyed import run_keyed
from stepdpo.stages.pairs import write_pairs
from stepdpo.stages.sample import read_problems, read_samples
from stepdpo.steps import STEP_HEADER, PromptFormat, next_marker, normalize_ws, split_steps

log = logging.getLogger(__name__)

STEP_STOP = "\nStep "
"""Stop string that ends a call after one step (the next step's marker is not generated)."""


@dataclass
class SCDPOConfig:
    """Step-controlled negatives from correct samples, and the pairs built from them."""

    branch: Literal["random", "every"] = field(default="every", metadata={"help": "Branch points per correct sample: every (each k in 1..n-1, as the release) or random (one seeded k per sample)."})
    temperature_start: float = field(default=1.1, metadata={"help": "Temperature of the first generated step (the paper: 1.1)."})
    temperature_increment: float = field(default=0.05, metadata={"help": "Added per generated step (the paper: 0.05)."})
    temperature_cap: float = field(default=1.4, metadata={"help": "Upper bound of the per-step temperature (the paper: 1.4)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of the continuations (1.0: none, so the temperature alone controls the drift)."})
    max_attempts: int = field(default=4, metadata={"help": "Continuations tried per branch point before giving up (the retry budget)."})
    max_negatives_per_problem: int = field(default=2, metadata={"help": "Cap on negatives (SCDPO pairs) per problem (the release: 2 for GSM8K, 3 for MATH)."})
    max_steps: int = field(default=12, metadata={"help": "Most steps a continuation may generate after the branch point."})
    max_step_tokens: int = field(default=128, metadata={"help": "Token limit of one generated step; a step that hits it ends the continuation."})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "Extra stop strings (besides the step boundary '\\nStep ')."})
    seed: int = field(default=0, metadata={"help": "Seed for branch points, branch order and sampling."})
    limit: Optional[int] = field(default=None, metadata={"help": "Use at most this many correct samples (in file order)."})
    chunk_size: int = field(default=8, metadata={"help": "Problems per batch of work; finished branch points are saved after each chunk."})
    dpo: bool = field(default=True, metadata={"help": "Also put naive whole-solution pairs (kind=dpo: a right vs a wrong sample) into scdpo_pairs.* (the paper trains on both)."})
    max_dpo_pairs_per_problem: int = field(default=1, metadata={"help": "Naive DPO pairs per problem."})
    judge_free: bool = field(default=True, metadata={"help": "Also build judge-free Step-DPO pairs (first wrong step vs the correct next step), confirmed dead by rollouts."})
    rollouts: int = field(default=8, metadata={"help": "Judge-free: rollouts from prefix + rejected step (m)."})
    alive_threshold: float = field(default=0.1, metadata={"help": "Judge-free: the prefix is alive (pair dropped) when at least this share of rollouts reaches gold."})
    rollout_temperature: float = field(default=0.8, metadata={"help": "Judge-free: rollout temperature."})
    rollout_top_p: float = field(default=0.95, metadata={"help": "Judge-free: rollout nucleus sampling."})
    rollout_max_new_tokens: int = field(default=512, metadata={"help": "Judge-free: token limit of each rollout."})
    tokenizer: Optional[str] = field(default=None, metadata={"help": "Tokenizer for the prefix token check (default: generator.model)."})
    dataset: Optional[str] = field(default=None, metadata={"help": "Value of the 'dataset' column (default: each problem's source)."})
    run_dir: str = field(default="runs/default", metadata={"help": "Run directory: reads samples.jsonl, problems/train.jsonl; writes scdpo/ and pairs/."})
    generator: GeneratorConfig = field(default_factory=GeneratorConfig, metadata={"help": "The policy that continues (the model that wrote the correct samples)."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.at_least(1, "max_attempts", "max_steps", "max_step_tokens", "limit", "chunk_size", "rollouts", "rollout_max_new_tokens")
        check.at_least(0, "max_negatives_per_problem", "max_dpo_pairs_per_problem", "temperature_increment", "rollout_temperature")
        check.above(0, "temperature_start")
        check.require(self.temperature_cap >= self.temperature_start, "temperature_cap", f"must be >= temperature_start ({self.temperature_start})")
        check.share("top_p", "rollout_top_p", zero=False)
        check.share("alive_threshold", zero=False)
        check.no_empty_strings("stop")
        validate_config(self.generator, prefix + "generator.")


@dataclass
class Branch:
    """One branch point of one correct sample, after its attempts: the negative found, if any."""

    key: str
    """'<sample_id>@<k>'."""
    sample_id: str
    problem_id: str
    branch_step: int
    """k: steps of the correct sample kept before the model continues."""
    attempts: int
    negative: Optional[str] = None
    """The whole wrong response (the shared prefix included), when one was accepted."""
    predicted: Optional[str] = None
    temperatures: list[float] = field(default_factory=list)
    """Temperature of each generated step of the negative, in order."""
    outcomes: dict[str, int] = field(default_factory=dict)
    """Attempts by outcome: 'wrong', 'right', 'no answer', 'prefix text differs', 'prefix tokens differ'."""
    tokens: int = 0
    """Tokens generated over all attempts."""


@dataclass
class JudgeFreeCheck:
    """Rollouts from the correct prefix plus a negative's first generated step."""

    key: str
    dead: bool
    successes: int
    trials: int
    rollout_tokens: int = 0


def step_temperature(index: int, start: float, increment: float, cap: float) -> float:
    """``min(start + increment · index, cap)`` for the ``index``-th generated step (0-based), rounded to 1e-9."""
    return round(min(start + increment * index, cap), 9)


def branch_points(sample: Sample, mode: str, seed: int) -> list[int]:
    """Branch points k (steps kept) of a correct sample: all of 1..n-1, or one seeded by (seed, sample id)."""
    candidates = list(range(1, len(sample.steps)))
    if mode == "every" or not candidates:
        return candidates
    return [random.Random(derive_seed(seed, "scdpo-branch-point", sample.id)).choice(candidates)]


class PrefixChecker:
    """Whether two responses share the first k steps exactly, as text and as token ids."""

    def __init__(self, fmt: PromptFormat, tokenizer: Any):
        self.fmt = fmt
        self.tokenizer = tokenizer

    def ids(self, question: str, response_part: str) -> list[int]:
        return list(self.tokenizer(self.fmt.context(question, STEP_HEADER + response_part), add_special_tokens=False)["input_ids"])

    def tokens_shared(self, question: str, prefix: str, response: str) -> bool:
        """The ids of ``context(header + prefix)`` are the first ids of ``context(header + response)``."""
        head = self.ids(question, prefix)
        return self.ids(question, response)[: len(head)] == head


@dataclass
class _Job:
    problem: Problem
    sample: Sample
    k: int
    prefix: str
    attempts: int = 0
    outcomes: Counter = field(default_factory=Counter)
    tokens: int = 0
    negative: str | None = None
    predicted: str | None = None
    temperatures: list[float] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.sample.id}@{self.k}"

    def record(self) -> Branch:
        return Branch(key=self.key, sample_id=self.sample.id, problem_id=self.problem.id, branch_step=self.k,
                      attempts=self.attempts, negative=self.negative, predicted=self.predicted,
                      temperatures=self.temperatures, outcomes=dict(self.outcomes), tokens=self.tokens)


@dataclass
class _Continuation:
    job: _Job
    steps: list[str] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)
    end: str = ""
    """'' while generating; then 'answer', 'eos' (ended by the model without an answer), 'stop string'
    (an extra stop string), 'length' (a step hit the token limit), 'max steps', 'error', or another
    finish reason a server gave (e.g. 'content_filter')."""
    finish_reason: str = ""
    """The finish reason of the last generated step."""

    @property
    def response(self) -> str:
        return self.job.prefix + "".join(self.steps)


def continue_stepwise(jobs: Sequence[_Job], config: SCDPOConfig, generator: Generator, fmt: PromptFormat) -> list[_Continuation]:
    """One continuation per job, generated one step per call; call ``i`` samples at ``step_temperature(i)``.

    Step ``i`` of a job's attempt ``a`` is seeded by ``(config.seed, "scdpo", job key, a, i)``,
    so a branch point's continuations do not depend on the chunk or round it runs in.

    Each round prompts ``fmt.prompt(question, prefix + steps so far)`` (ending in the next
    ``Step j:`` marker) for every live continuation at once and stops at ``"\\nStep "``.
    A step is ``marker + completion`` (plus the newline the stop string began with, unless
    the step ends the continuation). Only a step that stopped at ``"\\nStep "`` is followed
    by another: one the model ended (EOS, an extra stop string) ends the continuation there.
    """
    live = [_Continuation(job) for job in jobs]
    stop = (STEP_STOP, *config.stop)
    unknown_stops = 0
    for index in range(config.max_steps):
        todo = [c for c in live if not c.end]
        if not todo:
            break
        temperature = step_temperature(index, config.temperature_start, config.temperature_increment, config.temperature_cap)
        texts = [c.response for c in todo]
        prompts = [fmt.prompt(c.job.problem.question, text) for c, text in zip(todo, texts)]
        params = SamplingParams(n=1, temperature=temperature, top_p=config.top_p, max_new_tokens=config.max_step_tokens,
                                stop=stop)
        seeds = [derive_seed(config.seed, "scdpo", c.job.key, c.job.attempts, index) for c in todo]
        outputs = generator.generate(prompts, params, seeds=seeds)
        for c, text, completions in zip(todo, texts, outputs):
            completion = completions[0]
            step = next_marker(text) + completion.text
            finish = completion.finish_reason
            c.job.tokens += completion.num_tokens
            c.temperatures.append(temperature)
            c.finish_reason = finish
            if finish.startswith("error"):
                c.end = "error"
            elif finish not in FINISHED_REASONS:
                c.end = finish  # 'length' (the token limit), or a server's own reason such as 'content_filter'
            elif states_final_answer(step):
                c.end = "answer"
            elif finish == FINISH_STOP and completion.stop_string in (STEP_STOP, None):
                unknown_stops += completion.stop_string is None
                step += "\n"  # the model began its next step: the stop string took this newline
                if index + 1 == config.max_steps:
                    c.end = "max steps"
            else:
                c.end = "eos" if finish == FINISH_EOS else "stop string"
            c.steps.append(step)
    if unknown_stops:
        log.warning("%d step(s) stopped at an unnamed stop string (the backend does not tell EOS from a stop string): "
                    "taken as the step boundary '\\nStep ', so a solution the model ended may have been continued", unknown_stops)
    return live


def grade_continuations(continuations: Sequence[_Continuation], checker: PrefixChecker) -> None:
    """Grade finished continuations against gold (no judge: the data rule); the first wrong one of a job
    whose prefix checks pass becomes its negative. One that ends without a final answer is 'no answer'."""
    graded = grade_for_data([(c.response, c.finish_reason, c.job.problem.answer) for c in continuations])
    for c, right in zip(continuations, graded):
        job = c.job
        job.attempts += 1
        if c.end != "answer":
            job.outcomes["no answer"] += 1
        elif right:
            job.outcomes["right"] += 1
        elif split_steps(c.response)[: job.k] != job.sample.steps[: job.k]:
            job.outcomes["prefix text differs"] += 1
        elif not checker.tokens_shared(job.problem.question, job.prefix, c.response):
            job.outcomes["prefix tokens differ"] += 1
        else:
            job.outcomes["wrong"] += 1
            job.negative, job.predicted, job.temperatures = c.response, extract_answer(c.response, last_number_fallback=False), c.temperatures


def scdpo_pair(problem: Problem, sample: Sample, branch: Branch, dataset: str | None) -> StepPair:
    """Correct solution vs the negative after their shared first k steps (``step_index`` = k+1, the first differing step)."""
    k = branch.branch_step
    assert branch.negative is not None
    prefix = "".join(sample.steps[:k])
    chosen, rejected = "".join(sample.steps[k:]), branch.negative[len(prefix):]
    pair = StepPair(id=f"{branch.key}:scdpo", dataset=dataset or problem.source or "unknown", prompt=problem.question,
                    initial_reason_steps=STEP_HEADER + prefix, chosen=chosen, rejected=rejected, full_chosen=chosen,
                    full_rejected=rejected, answer=problem.answer, kind="scdpo", problem_id=problem.id, sample_id=sample.id,
                    step_index=k + 1, provenance=_provenance(sample, branch))
    check_pair(pair, branch.negative, f"negative {branch.key}")
    return pair


def judge_free_pair(problem: Problem, sample: Sample, branch: Branch, check: JudgeFreeCheck, localizer: str, dataset: str | None) -> StepPair | None:
    """Step k+1 of the correct solution vs the negative's first generated step; None when they are the same step."""
    k = branch.branch_step
    assert branch.negative is not None
    negative_steps = split_steps(branch.negative)
    chosen, rejected = sample.steps[k], negative_steps[k]
    if normalize_ws(chosen) == normalize_ws(rejected):
        return None
    pair = StepPair(id=f"{branch.key}:judge-free", dataset=dataset or problem.source or "unknown", prompt=problem.question,
                    initial_reason_steps=STEP_HEADER + "".join(sample.steps[:k]), chosen=chosen, rejected=rejected,
                    full_chosen="".join(sample.steps[k:]), full_rejected="".join(negative_steps[k:]), answer=problem.answer,
                    kind="judge-free", problem_id=problem.id, sample_id=sample.id, step_index=k + 1, localizer=localizer,
                    provenance={**_provenance(sample, branch), "rollout_successes": check.successes, "rollout_trials": check.trials,
                                "rollout_tokens": check.rollout_tokens})
    check_pair(pair, branch.negative, f"negative {branch.key}")
    return pair


def _provenance(sample: Sample, branch: Branch) -> dict[str, Any]:
    return {"chosen_sample_id": sample.id, "branch_step": branch.branch_step, "temperatures": list(branch.temperatures),
            "attempts": branch.attempts, "outcomes": dict(branch.outcomes), "rejected_predicted": branch.predicted, "model": sample.model}


def confirm_dead(items: Sequence[tuple[Problem, Branch]], localizer: RolloutLocalizer) -> list[JudgeFreeCheck]:
    """Whether each negative's prefix through its first generated step (``s_1 … s_k + r``) is dead, by rollouts.

    The rollouts of a branch are keyed (branch key, 1): the prefix one generated step past the
    branch point. A negative whose first generated step is also its last is dead by definition
    (its final answer is wrong): it needs no rollouts.
    """
    heads = ["".join(split_steps(branch.negative or "")[: branch.branch_step + 1]) for _, branch in items]
    asked = [j for j, ((_, branch), head) in enumerate(zip(items, heads)) if head != branch.negative]
    answers = dict(zip(asked, localizer.roll_out([(items[j][0], items[j][1].key, heads[j], 1) for j in asked]) if asked else []))
    out = []
    for j, (_, branch) in enumerate(items):
        rollouts = answers.get(j)
        out.append(JudgeFreeCheck(key=branch.key, dead=rollouts is None or not localizer.alive(rollouts),
                                  successes=rollouts.successes if rollouts else 0, trials=rollouts.trials if rollouts else 0,
                                  rollout_tokens=rollouts.tokens if rollouts else 0))
    return out


@dataclass
class Outputs:
    """What one run produced: the pairs, and the stage records they were built from."""

    scdpo: list[StepPair]
    judge_free: list[StepPair]
    dpo: list[StepPair]
    branches: list[Branch]
    checks: list[JudgeFreeCheck]
    funnel: Funnel


def _correct_samples(samples: Sequence[Sample], problems: dict[str, Problem], limit: int | None) -> list[Sample]:
    correct = [s for s in samples if s.correct]
    for s in correct:
        if s.problem_id not in problems:
            raise InputError("samples.jsonl", f"no problem {s.problem_id!r} in problems/train.jsonl", None, "problem_id")
        if "".join(s.steps) != s.response:
            raise InputError("samples.jsonl", f"sample {s.id!r}: steps do not join to the response", None, "steps")
    return correct if limit is None else correct[:limit]


def branch_order(job: _Job, seed: int) -> tuple[str, int]:
    """A keyed order of a problem's branch points rather than a shuffle: any subset (what a resumed run has left)
    keeps the same relative order."""
    return job.problem.id, derive_seed(seed, "scdpo-branch-order", job.key)


def queue_branch_points(config: SCDPOConfig, problems: dict[str, Problem], correct: Sequence[Sample], checker: PrefixChecker,
                        stored: set[str], funnel: Funnel) -> dict[str, list[_Job]]:
    """The branch points not yet in ``stored``, per problem in branch order; those whose correct sample merges
    tokens across the point are dropped (and counted in ``funnel``)."""
    queue: dict[str, list[_Job]] = defaultdict(list)
    for s in correct:
        points = branch_points(s, config.branch, config.seed)
        if not points:
            funnel.drop("single-step solution (no branch point)")
        problem = problems[s.problem_id]
        for k in points:
            prefix = "".join(s.steps[:k])
            if f"{s.id}@{k}" in stored:
                continue
            if not checker.tokens_shared(problem.question, prefix, s.response):
                funnel.drop("branch point splits a token of the correct sample")
                continue
            queue[s.problem_id].append(_Job(problem, s, k, prefix))
    for jobs in queue.values():
        jobs.sort(key=lambda job: branch_order(job, config.seed))
    return queue


def find_negatives(config: SCDPOConfig, queue: dict[str, list[_Job]], found: Counter, generator: Generator, fmt: PromptFormat,
                   checker: PrefixChecker, branch_store: RecordStore[Branch] | None) -> list[Branch]:
    """Run the queued branch points (popped from ``queue``) until each finds a negative or spends its attempts.

    Per problem, branch points run ``max_negatives_per_problem - found`` at a time, one attempt
    each per round, so the cap is never exceeded; all problems of a chunk advance together,
    one batched generator call per generated step.
    """
    def make(chunk: list[str], seeds: list[int]) -> list[Branch]:
        active: dict[str, list[_Job]] = {p: [] for p in chunk}
        finished: list[_Job] = []
        while True:
            for p in chunk:  # refill: never more open branch points than negatives still allowed
                while queue[p] and len(active[p]) < config.max_negatives_per_problem - found[p]:
                    active[p].append(queue[p].pop(0))
            jobs = [job for p in chunk for job in active[p]]
            if not jobs:
                break
            grade_continuations(continue_stepwise(jobs, config, generator, fmt), checker)
            for p in chunk:
                for job in list(active[p]):
                    if job.negative is not None or job.attempts >= config.max_attempts:
                        active[p].remove(job)
                        finished.append(job)
                        found[p] += job.negative is not None
        # In branch order, not finishing order, so that the file does not depend on which problems shared the chunk.
        return [job.record() for job in sorted(finished, key=lambda job: branch_order(job, config.seed))]

    return run_keyed(sorted(queue), make, stage="scdpo", seed=None, key=str, chunk_size=config.chunk_size, unit="problem",
                     save=branch_store.append if branch_store is not None else None).new


def judge_free_checks(config: SCDPOConfig, problems: dict[str, Problem], with_negative: Sequence[Branch], localizer: RolloutLocalizer,
                      check_store: RecordStore[JudgeFreeCheck] | None) -> dict[str, JudgeFreeCheck]:
    """Rollout confirmations of every negative's first generated step (stored ones reused), by branch key."""
    checks = {c.key: c for c in (check_store.records() if check_store is not None else [])}
    made = run_keyed(list(with_negative), lambda chunk, seeds: confirm_dead([(problems[b.problem_id], b) for b in chunk], localizer),
                     stage="scdpo-judge-free", seed=None, key=lambda b: b.key, done=lambda b: b.key in checks, unit="branch",
                     save=check_store.append if check_store is not None else None, chunk_size=config.chunk_size * 4,
                     desc="judge-free rollouts")
    return {**checks, **{c.key: c for c in made.new}}


def build_pairs(config: SCDPOConfig, problems: dict[str, Problem], samples_by_id: dict[str, Sample], with_negative: Sequence[Branch],
                checks: dict[str, JudgeFreeCheck], localizer_name: str, funnel: Funnel) -> tuple[list[StepPair], list[StepPair]]:
    """(SCDPO pairs, judge-free pairs) from the branches with a negative; what is dropped is counted in ``funnel``."""
    scdpo, judge_free = [], []
    for b in with_negative:
        problem, sample = problems[b.problem_id], samples_by_id[b.sample_id]
        scdpo.append(scdpo_pair(problem, sample, b, config.dataset))
        if not config.judge_free:
            continue
        check = checks[b.key]
        if not check.dead:
            funnel.drop("judge-free: rejected step alive in rollouts")
            continue
        pair = judge_free_pair(problem, sample, b, check, localizer_name, config.dataset)
        if pair is None:
            funnel.drop("judge-free: first wrong step equals the correct step")
        else:
            judge_free.append(pair)
    return scdpo, judge_free


def run(config: SCDPOConfig, problems: dict[str, Problem], samples: Sequence[Sample], generator: Generator,
        fmt: PromptFormat | None = None, tokenizer: Any = None, branch_store: RecordStore[Branch] | None = None,
        check_store: RecordStore[JudgeFreeCheck] | None = None) -> Outputs:
    """Negatives for the correct samples not yet in ``branch_store``, then every pair from all stored branches."""
    config.validate()
    fmt = fmt or prompt_format(config.generator)
    if tokenizer is None:
        from stepdpo.models import load_tokenizer

        tokenizer = load_tokenizer(config.tokenizer or config.generator.model)
    checker = PrefixChecker(fmt, tokenizer)
    stored: dict[str, Branch] = {b.key: b for b in branch_store.records()} if branch_store is not None else {}
    correct = _correct_samples(samples, problems, config.limit)
    funnel = Funnel("scdpo", records_in=len(correct))

    # 1. Branch points, 2. a negative for each (until the per-problem cap), 3. rollouts confirm judge-free steps dead, 4. pairs.
    queue = queue_branch_points(config, problems, correct, checker, set(stored), funnel)
    found = Counter(b.problem_id for b in stored.values() if b.negative is not None)
    new = find_negatives(config, queue, found, generator, fmt, checker, branch_store)
    for p in sorted(queue):
        if queue[p]:
            funnel.drop("branch point not tried (problem reached its cap)", len(queue[p]))
    samples_by_id = {s.id: s for s in correct}
    branches = [b for b in [*stored.values(), *new] if b.sample_id in samples_by_id]
    with_negative = [b for b in branches if b.negative is not None]
    localizer = RolloutLocalizer(RolloutConfig(search="linear", rollouts_per_prefix=config.rollouts, alive_threshold=config.alive_threshold,
                                               temperature=config.rollout_temperature, top_p=config.rollout_top_p,
                                               max_new_tokens=config.rollout_max_new_tokens, stop=tuple(config.stop), seed=config.seed),
                                 generator, fmt, stage="scdpo-judge-free")
    use_judge_free = config.judge_free and bool(with_negative)
    checks = judge_free_checks(config, problems, with_negative, localizer, check_store) if use_judge_free else {}
    scdpo, judge_free = build_pairs(config, problems, samples_by_id, with_negative, checks, localizer.name if use_judge_free else "", funnel)
    for b in branches:
        if b.negative is None:
            funnel.drop("retry budget spent without a wrong answer")
    with_correct = {c.problem_id for c in correct}
    dpo = dpo_pairs(problems, [s for s in samples if s.problem_id in with_correct], config.max_dpo_pairs_per_problem,
                    config.dataset) if config.dpo else []
    funnel.records_out = len(scdpo)
    funnel.extra = funnel_extra(branches, with_negative, checks, scdpo, judge_free, dpo)
    return Outputs(scdpo=scdpo, judge_free=judge_free, dpo=dpo, branches=branches, checks=list(checks.values()), funnel=funnel)


def funnel_extra(branches: Sequence[Branch], with_negative: Sequence[Branch], checks: dict[str, JudgeFreeCheck],
                 scdpo: Sequence[StepPair], judge_free: Sequence[StepPair], dpo: Sequence[StepPair]) -> dict[str, Any]:
    """The funnel's counts: pairs, branch points, attempts by outcome, tokens, rollouts."""
    outcomes: Counter = Counter()
    for b in branches:
        outcomes.update(b.outcomes)
    return {
        "correct_samples_with_pair": len({b.sample_id for b in with_negative}),
        "problems_with_pair": len({b.problem_id for b in with_negative}),
        "branch_points_tried": len(branches),
        "attempts": sum(b.attempts for b in branches),
        "retries": sum(b.attempts - 1 for b in branches),
        "generated_tokens": sum(b.tokens for b in branches),
        **{f"attempts_{reason.replace(' ', '_')}": count for reason, count in sorted(outcomes.items())},
        "scdpo_pairs": len(scdpo), "judge_free_pairs": len(judge_free), "dpo_pairs": len(dpo),
        "judge_free_rollouts": sum(checks[b.key].trials for b in with_negative if b.key in checks),
    }


def command(config: SCDPOConfig) -> int:
    started = time.perf_counter()
    rd = RunDir(config.run_dir)
    samples = read_samples(rd)
    problems = read_problems(rd)
    generator = build_generator(config.generator)
    try:
        out = run(config, problems, samples, generator, prompt_format(config.generator),
                  branch_store=RecordStore(rd.root / "scdpo" / "branches.jsonl", Branch, key="key"),
                  check_store=RecordStore(rd.root / "scdpo" / "judge_free.jsonl", JudgeFreeCheck, key="key"))
    finally:
        close_generator(generator)  # training in this process gets the GPU memory back
    write_pairs(out.scdpo + out.dpo, rd.pairs, "scdpo_pairs")
    if config.judge_free:
        write_pairs(out.judge_free, rd.pairs, "judge_free_pairs")
    out.funnel.extra = {**(out.funnel.extra or {}), "wall_s": round(time.perf_counter() - started, 2)}
    out.funnel.save(rd)
    print(out.funnel.render())
    return 0
