"""Rectification (``stepdpo rectify``): resample from the correct prefix, keep first steps that reach gold.

For a located error at step k of a wrong sample, the policy continues
``question + steps 1..k-1`` (prompt ends with the ``Step k:`` marker) r times.
A continuation whose full response reaches the gold answer (states it and ends by
itself, not at the token limit: :func:`stepdpo.grading.grade_for_data`) contributes its
step k as a *chosen* candidate, unless that step equals the rejected step or an
earlier candidate after whitespace normalisation. ``full_chosen`` keeps the
whole continuation from step k on. Records are appended per chunk to
``rectified.jsonl`` (keyed by sample id), including errors for which no
candidate survived, so a rerun does not redo them.

Optional confirmation (``--confirm``, off by default): a judge is asked about every
surviving candidate and only confirmed ones are kept (:mod:`stepdpo.stages.confirmation`);
sampled candidates then wait in ``rectify_candidates.jsonl`` and verdicts in
``rectify_verdicts.jsonl``, so a rerun neither resamples nor asks the judge again.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from stepdpo.config import OptionCheck, validate_config
from stepdpo.errors import ConfigError, InputError
from stepdpo.generation.base import Generator, GeneratorConfig, SamplingParams, close_generator, prompt_format
from stepdpo.generation.registry import build_generator
from stepdpo.generation.graded import Continue, Graded, generate_graded
from stepdpo.localizers.base import STATUS_OK
from stepdpo.localizers.judge import JudgeConfig
from stepdpo.records import LocatedError, Problem, RecordStore, Rectification, Sample
from stepdpo.rundir import Funnel, RunDir
from stepdpo.stages.confirmation import (CONFIRMED, PREFIX_REJECTED, REJECTED, UNPARSEABLE, StepJudge, StepVerdict, confirm_all,
                                         is_pending)
from stepdpo.stages.keyed import run_keyed
from stepdpo.stages.sample import read_problems, read_samples
from stepdpo.steps import PromptFormat, next_marker, normalize_ws, prefix_before, split_steps

log = logging.getLogger(__name__)

@dataclass
class RectifyConfig:
    """Resample from the correct prefix of each located error."""

    r: int = field(default=20, metadata={"help": "Continuations sampled per located error (the release: 20)."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (the release: 0.8)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling (the release: 0.95)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token limit of each continuation."})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "Extra stop strings."})
    seed: int = field(default=0, metadata={"help": "Sampling seed; the continuations of a located error are seeded by (seed, its sample id)."})
    limit: Optional[int] = field(default=None, metadata={"help": "Rectify at most this many located errors."})
    chunk_size: int = field(default=8, metadata={"help": "Located errors per generation call; saved after each chunk."})
    run_dir: str = field(default="runs/default", metadata={"help": "Run directory: reads located.jsonl, writes rectified.jsonl."})
    generator: GeneratorConfig = field(default_factory=GeneratorConfig, metadata={"help": "The policy that continues (the same model that sampled)."})
    confirm: bool = field(default=False, metadata={"help": "Ask a judge whether each chosen candidate step is correct (given the problem and the prefix) and keep only confirmed ones; failed judge calls are retried on the next run."})
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata={"help": "Judge options for --confirm; --judge.template is a file with {problem}, {reference} and {response} (the partial solution ending in the candidate step); default: a built-in step-check prompt."})
    judge_generator: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(backend="openai"), metadata={"help": "The judge model for --confirm (default: an OpenAI-compatible server; its key only from the environment variable named by --judge-generator.api-key-env). A backend without chat gets the prompt through its model's chat template."})
    judgement_chars: int = field(default=4000, metadata={"help": "Longest judge answer kept in the records (--confirm); a longer one keeps its end, where the verdict is."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.at_least(1, "r", "max_new_tokens", "limit", "chunk_size", "judgement_chars")
        check.at_least(0, "temperature")
        check.share("top_p", zero=False)
        check.no_empty_strings("stop")
        validate_config(self.generator, prefix + "generator.")
        if self.confirm:
            validate_config(self.judge, prefix + "judge.")
            validate_config(self.judge_generator, prefix + "judge_generator.")


def candidates(prefix: str, rejected: str, step_number: int, continuations: Sequence[str], reached_gold: Sequence[bool]) -> tuple[list[str], list[str]]:
    """(chosen steps, full continuations) from continuations after ``prefix + "Step k:"``.

    A continuation counts when it reached gold and its full response (split from step 1)
    has a step k; its step k is kept unless it equals ``rejected`` or an earlier candidate
    (whitespace-normalised). The full continuation is the response from step k on.
    """
    marker = next_marker(prefix)
    seen = {normalize_ws(rejected)}
    chosen: list[str] = []
    full: list[str] = []
    for continuation, good in zip(continuations, reached_gold):
        if not good:
            continue
        steps = split_steps(prefix + marker + continuation)
        if len(steps) < step_number:
            continue
        step = steps[step_number - 1]
        key = normalize_ws(step)
        if key in seen:
            continue
        seen.add(key)
        chosen.append(step)
        full.append("".join(steps[step_number - 1:]))
    return chosen, full


def rectify(x: LocatedError, sample: Sample, graded: Sequence[Graded]) -> Rectification:
    """The rectification of located error ``x`` of ``sample`` from the graded continuations of its correct prefix."""
    k = x.first_wrong_step
    assert k is not None
    prefix = prefix_before(sample.steps, k)
    chosen, full = candidates(prefix, sample.steps[k - 1], k, [g.completion.text for g in graded], [g.correct for g in graded])
    return Rectification(sample_id=x.sample_id, problem_id=x.problem_id, first_wrong_step=k, prefix=prefix, rejected=sample.steps[k - 1],
                         chosen=chosen, full_chosen=full, tried=len(graded), reached_gold=sum(g.correct for g in graded))


def sample_candidates(config: RectifyConfig, problems: dict[str, Problem], samples: dict[str, Sample], usable: Sequence[LocatedError],
                      generator: Generator, fmt: PromptFormat, done: set[str],
                      save: Callable[[list[Rectification]], object] | None) -> list[Rectification]:
    """Sample continuations for the errors of ``usable`` not in ``done``; returns the new rectifications (``save`` gets each chunk)."""
    params = SamplingParams(n=config.r, temperature=config.temperature, top_p=config.top_p,
                            max_new_tokens=config.max_new_tokens, stop=tuple(config.stop))

    def make(chunk: list[LocatedError], seeds: list[int]) -> list[Rectification]:
        prefixes = [prefix_before(samples[x.sample_id].steps, x.first_wrong_step or 0) for x in chunk]
        jobs = [Continue(fmt.prompt(problems[x.problem_id].question, prefix), prefix + next_marker(prefix), problems[x.problem_id].answer)
                for x, prefix in zip(chunk, prefixes)]
        return [rectify(x, samples[x.sample_id], graded) for x, graded in zip(chunk, generate_graded(generator, jobs, params, seeds))]

    return run_keyed(usable, make, stage="rectify", seed=config.seed, key=lambda x: x.sample_id, done=lambda x: x.sample_id in done,
                     save=save, chunk_size=config.chunk_size, unit="error").new


def run(config: RectifyConfig, problems: dict[str, Problem], samples: dict[str, Sample], located: Sequence[LocatedError],
        generator: Generator, fmt: PromptFormat | None = None, store: RecordStore[Rectification] | None = None,
        judge: StepJudge | None = None, unconfirmed_store: RecordStore[Rectification] | None = None) -> list[Rectification]:
    """Rectify every located error (status ok) not yet in ``store``; returns all rectifications of ``located``.

    With ``config.confirm`` the candidates are sampled into ``unconfirmed_store`` first and then
    judged by ``judge``; the result then also holds this run's pending rectifications (a judge
    call failed, :func:`is_pending`), which are not in ``store``.
    """
    fmt = fmt or prompt_format(config.generator)
    usable = [x for x in located if x.status == STATUS_OK and x.first_wrong_step is not None][: config.limit]
    for x in usable:
        if x.sample_id not in samples:
            raise InputError("samples.jsonl", f"no sample {x.sample_id!r} for a located error", None, "sample_id")
    done = store.keys() if store is not None else set()
    wanted = {x.sample_id for x in usable}
    if not config.confirm:
        new = sample_candidates(config, problems, samples, usable, generator, fmt, done, store.append if store is not None else None)
        return new if store is None else [r for r in store.records() if r.sample_id in wanted]
    if judge is None:
        raise ConfigError("rectify --confirm needs a judge")
    warn_unjudged([r for r in (store.records() if store is not None else []) if r.sample_id in wanted], store)
    sampled = {r.sample_id: r for r in (unconfirmed_store.records() if unconfirmed_store is not None else [])}
    new = sample_candidates(config, problems, samples, usable, generator, fmt, done | set(sampled),
                            unconfirmed_store.append if unconfirmed_store is not None else None)
    sampled.update({r.sample_id: r for r in new})
    todo = [sampled[x.sample_id] for x in usable if x.sample_id not in done and x.sample_id in sampled]
    judged = confirm_all(todo, problems, judge, config.judge.setting, store, config.chunk_size)
    pending = [r for r in judged if is_pending(r)]
    if store is None:
        return judged
    return [r for r in store.records() if r.sample_id in wanted] + pending


def warn_unjudged(earlier: Sequence[Rectification], store: RecordStore[Rectification] | None) -> None:
    """Warn about rectifications stored without --confirm: a confirming run keeps them as they are."""
    unjudged = sum(not r.evidence for r in earlier)
    if unjudged:
        log.warning("%d error(s) were rectified without --confirm earlier and stay unconfirmed; remove %s to judge them",
                    unjudged, store.path if store is not None else "rectified.jsonl")


def funnel_for(rectified: Sequence[Rectification], located_ok: int, wall_s: float) -> Funnel:
    """in: located errors; out: errors with at least one chosen candidate; dropped by reason.

    With judge confirmation, an error whose candidates the judge turned all down is dropped as
    'judge rejected chosen step' (or 'judge verdict unparseable' when no verdict could be read),
    one with a failed judge call as 'judge call failed (retried on rerun)'; per-candidate counts
    of the verdicts are in ``extra``.
    """
    final = [r for r in rectified if not is_pending(r)]
    pending = len(rectified) - len(final)
    funnel = Funnel("rectify", records_in=located_ok, records_out=sum(bool(r.chosen) for r in final))
    verdicts = Counter(row["verdict"] for r in final for row in r.evidence.get("candidates", []))

    def reason(r: Rectification) -> str:
        if r.reached_gold == 0:
            return "no continuation reached gold"
        rows = r.evidence.get("candidates", [])
        if not rows:
            return "only the rejected step or duplicates"
        if all(row["verdict"] == UNPARSEABLE for row in rows):
            return "judge verdict unparseable"
        return "judge rejected chosen step"

    for why, count in Counter(reason(r) for r in final if not r.chosen).items():
        funnel.drop(why, count)
    if pending:
        funnel.drop("judge call failed (retried on rerun)", pending)
    if located_ok > len(rectified):
        funnel.drop("not attempted (limit)", located_ok - len(rectified))
    tried = sum(r.tried for r in rectified)
    funnel.extra = {"continuations": tried, "reached_gold_share": sum(r.reached_gold for r in rectified) / tried if tried else 0.0,
                    "chosen_candidates": sum(len(r.chosen) for r in final), "wall_s": round(wall_s, 2)}
    if verdicts:
        funnel.extra.update({"judge_confirmed_steps": verdicts[CONFIRMED], "judge_rejected_steps": verdicts[REJECTED],
                             "judge_prefix_rejected_steps": verdicts[PREFIX_REJECTED], "judge_unparseable_steps": verdicts[UNPARSEABLE]})
    if pending:
        funnel.extra["judge_failed_calls"] = sum(int(r.evidence.get("failed_calls", 0)) for r in rectified if is_pending(r))
    return funnel


def command(config: RectifyConfig) -> int:
    started = time.perf_counter()
    rd = RunDir(config.run_dir)
    if not rd.located.is_file():
        raise InputError(str(rd.located), "not found: run `stepdpo locate` first")
    problems = read_problems(rd)
    samples = {s.id: s for s in read_samples(rd)}
    located = RecordStore(rd.located, LocatedError, key="sample_id").records()
    generator = build_generator(config.generator)
    backend = None
    try:
        judge = None
        if config.confirm:
            backend = build_generator(config.judge_generator)
            judge_fmt = None if hasattr(backend, "chat") else prompt_format(config.judge_generator, instruction="")
            judge = StepJudge(config.judge, backend, judge_fmt, RecordStore(rd.root / "rectify_verdicts.jsonl", StepVerdict, key="key"),
                              rd.root / "rectify_judge_failed.jsonl", config.judgement_chars)
        rectified = run(config, problems, samples, located, generator, prompt_format(config.generator),
                        RecordStore(rd.rectified, Rectification, key="sample_id"), judge,
                        RecordStore(rd.root / "rectify_candidates.jsonl", Rectification, key="sample_id"))
    finally:
        # Both engines go before the next stage (or training) in this process needs the GPU memory.
        close_generator(backend)
        close_generator(generator)
    funnel = funnel_for(rectified, sum(x.status == STATUS_OK for x in located), time.perf_counter() - started)
    if judge is not None:
        funnel.extra = {**(funnel.extra or {}), "judge_calls": judge.asked}
    funnel.save(rd)
    print(funnel.render())
    return 0
