"""Rectification (``stepdpo rectify``): resample from the correct prefix, keep first steps that reach gold.

For a located error at step k of a wrong sample, the policy continues
``question + steps 1..k-1`` (prompt ends with the ``Step k:`` marker) r times.
A continuation whose full response reaches the gold answer contributes its
step k as a *chosen* candidate, unless that step equals the rejected step or an
earlier candidate after whitespace normalisation. ``full_chosen`` keeps the
whole continuation from step k on. Records are appended per chunk to
``rectified.jsonl`` (keyed by sample id), including errors for which no
candidate survived, so a rerun does not redo them.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

from tqdm.auto import tqdm

from stepdpo.errors import InputError
from stepdpo.generation.base import Generator, GeneratorConfig, SamplingParams, build_generator, prompt_format
from stepdpo.grading import grade_responses
from stepdpo.localizers.base import STATUS_OK
from stepdpo.records import LocatedError, Problem, RecordStore, Rectification, Sample
from stepdpo.rundir import Funnel, RunDir
from stepdpo.stages.sample import read_problems, read_samples
from stepdpo.steps import PromptFormat, next_marker, prefix_before, split_steps


@dataclass
class RectifyConfig:
    """Resample from the correct prefix of each located error."""

    r: int = field(default=20, metadata={"help": "Continuations sampled per located error (the release: 20)."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (the release: 0.8)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling (the release: 0.95)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token limit of each continuation."})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "Extra stop strings."})
    seed: int = field(default=0, metadata={"help": "Sampling seed; chunk c uses seed + c."})
    limit: Optional[int] = field(default=None, metadata={"help": "Rectify at most this many located errors."})
    chunk_size: int = field(default=8, metadata={"help": "Located errors per generation call; saved after each chunk."})
    run_dir: str = field(default="runs/default", metadata={"help": "Run directory: reads located.jsonl, writes rectified.jsonl."})
    generator: GeneratorConfig = field(default_factory=GeneratorConfig, metadata={"help": "The policy that continues (the same model that sampled)."})


def normalize_ws(text: str) -> str:
    """Whitespace-insensitive form used for deduplication: runs of whitespace become one space, ends trimmed."""
    return " ".join(text.split())


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


def run(config: RectifyConfig, problems: dict[str, Problem], samples: dict[str, Sample], located: Sequence[LocatedError],
        generator: Generator, fmt: PromptFormat | None = None, store: RecordStore[Rectification] | None = None) -> list[Rectification]:
    """Rectify every located error (status ok) not yet in ``store``; returns all rectifications of ``located``."""
    fmt = fmt or prompt_format(config.generator)
    usable = [x for x in located if x.status == STATUS_OK and x.first_wrong_step is not None]
    if config.limit is not None:
        usable = usable[: config.limit]
    for x in usable:
        if x.sample_id not in samples:
            raise InputError("samples.jsonl", f"no sample {x.sample_id!r} for a located error", None, "sample_id")
    done = store.keys() if store is not None else set()
    todo = [x for x in usable if x.sample_id not in done]
    new: list[Rectification] = []
    chunk_size = max(1, config.chunk_size)
    with tqdm(total=len(usable), initial=len(usable) - len(todo), desc="rectify", unit="error") as bar:
        # Chunks are cut from all usable errors, not from what is left, so a resumed run seeds each chunk as an uninterrupted one does.
        for chunk_index, start in enumerate(range(0, len(usable), chunk_size)):
            chunk = [x for x in usable[start: start + chunk_size] if x.sample_id not in done]
            if not chunk:
                continue
            jobs = []
            for x in chunk:
                sample, problem = samples[x.sample_id], problems[x.problem_id]
                k = x.first_wrong_step
                assert k is not None
                prefix = prefix_before(sample.steps, k)
                jobs.append((x, sample, problem, k, prefix))
            prompts = [fmt.prompt(problem.question, prefix) for _, _, problem, _, prefix in jobs]
            params = SamplingParams(n=config.r, temperature=config.temperature, top_p=config.top_p,
                                    max_new_tokens=config.max_new_tokens, stop=tuple(config.stop), seed=config.seed + chunk_index)
            outputs = generator.generate(prompts, params)
            graded = grade_responses([(prefix + next_marker(prefix) + c.text, problem.answer)
                                 for (_, _, problem, _, prefix), cs in zip(jobs, outputs) for c in cs])
            at = 0
            chunk_out = []
            for (x, sample, problem, k, prefix), completions in zip(jobs, outputs):
                good = graded[at: at + len(completions)]
                at += len(completions)
                chosen, full = candidates(prefix, sample.steps[k - 1], k, [c.text for c in completions], good)
                chunk_out.append(Rectification(sample_id=x.sample_id, problem_id=x.problem_id, first_wrong_step=k, prefix=prefix,
                                               rejected=sample.steps[k - 1], chosen=chosen, full_chosen=full,
                                               tried=len(completions), reached_gold=sum(good)))
            if store is not None:
                store.append(chunk_out)
            new += chunk_out
            bar.update(len(chunk))
    if store is None:
        return new
    wanted = {x.sample_id for x in usable}
    return [r for r in store.records() if r.sample_id in wanted]


def funnel_for(rectified: Sequence[Rectification], located_ok: int, wall_s: float) -> Funnel:
    """in: located errors; out: errors with at least one chosen candidate; dropped by reason."""
    funnel = Funnel("rectify", records_in=located_ok, records_out=sum(bool(r.chosen) for r in rectified))
    reasons = Counter("no continuation reached gold" if r.reached_gold == 0 else "only the rejected step or duplicates"
                      for r in rectified if not r.chosen)
    for reason, count in reasons.items():
        funnel.drop(reason, count)
    if located_ok > len(rectified):
        funnel.drop("not attempted (limit)", located_ok - len(rectified))
    tried = sum(r.tried for r in rectified)
    funnel.extra = {"continuations": tried, "reached_gold_share": sum(r.reached_gold for r in rectified) / tried if tried else 0.0,
                    "chosen_candidates": sum(len(r.chosen) for r in rectified), "wall_s": round(wall_s, 2)}
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
    rectified = run(config, problems, samples, located, generator, prompt_format(config.generator),
                    RecordStore(rd.rectified, Rectification, key="sample_id"))
    funnel = funnel_for(rectified, sum(x.status == STATUS_OK for x in located), time.perf_counter() - started)
    funnel.save(rd)
    print(funnel.render())
    return 0
