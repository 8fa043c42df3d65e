"""Error collection (``stepdpo sample``): k step-wise samples per problem, every one kept and graded.

The prompt primes the assistant with ``Let's think step by step.\\nStep 1:``;
a sample's response is ``"Step 1:" + continuation``. Wrong samples feed
localization; right ones feed rectification checks and the plain-DPO baseline.
A sample is right only when it states a final answer that matches gold and the
model ended it itself (:func:`stepdpo.grading.grade_for_data`: a response cut off
at the token limit is wrong, whatever its last number). Work proceeds in chunks of problems, appended to ``samples.jsonl`` after each
chunk, so a rerun only generates for problems that have fewer than k samples.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Literal, Optional, Sequence

from stepdpo.config import OptionCheck, validate_config
from stepdpo.generation.base import Generator, GeneratorConfig, SamplingParams, close_generator, prompt_format
from stepdpo.generation.registry import build_generator
from stepdpo.generation.graded import Continue, Graded, generate_graded
from stepdpo.grading import extract_answer
from stepdpo.metrics import pass_at_k
from stepdpo.errors import InputError
from stepdpo.records import Problem, RecordStore, Sample, atomic_write_text, record_to_dict
from stepdpo.rundir import Funnel, RunDir
from stepdpo.stages.keyed import run_keyed
from stepdpo.steps import FIRST_MARKER, PromptFormat, split_steps

log = logging.getLogger(__name__)


@dataclass
class SampleConfig:
    """Sample k step-wise solutions per problem with the policy and grade them."""

    data: str = field(default="gsm8k:train", metadata={"help": "Problem set spec: gsm8k:train, math:train, synthetic:..., or a JSONL path (see `stepdpo data show`)."})
    limit: Optional[int] = field(default=None, metadata={"help": "Use at most this many problems (a seeded subset)."})
    seed: int = field(default=0, metadata={"help": "Seed for the problem subset and for sampling (each problem's samples are seeded by (seed, problem id))."})
    k: int = field(default=4, metadata={"help": "Samples per problem."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (the paper: 0.8)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling (the paper: 0.95)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token limit of each sample."})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "Extra stop strings (end-of-sequence always stops)."})
    on_bad_row: Literal["error", "skip"] = field(default="error", metadata={"help": "A problem row that cannot be used: stop with an error naming file, line and field, or skip it and count it in the funnel."})
    chunk_size: int = field(default=16, metadata={"help": "Problems per generation call; results are saved after each chunk."})
    run_dir: str = field(default="runs/default", metadata={"help": "Run directory: reads/writes problems/train.jsonl and samples.jsonl."})
    generator: GeneratorConfig = field(default_factory=GeneratorConfig, metadata={"help": "The policy that samples."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.not_empty("data")
        check.at_least(1, "limit", "k", "max_new_tokens", "chunk_size")
        check.at_least(0, "temperature")
        check.share("top_p", zero=False)
        check.no_empty_strings("stop")
        validate_config(self.generator, prefix + "generator.")


def summarize(samples: Iterable[Sample], k: int) -> dict[str, float | int]:
    """Accuracy over samples, mean pass@k over problems, and how many problems have right/wrong samples."""
    by_problem: dict[str, list[bool]] = defaultdict(list)
    for sample in samples:
        by_problem[sample.problem_id].append(sample.correct)
    total = sum(len(v) for v in by_problem.values())
    right = sum(sum(v) for v in by_problem.values())
    usable = [v for v in by_problem.values() if len(v) >= k]
    return {
        "samples": total,
        "accuracy": right / total if total else 0.0,
        f"pass@{k}": sum(pass_at_k(len(v), sum(v), k) for v in usable) / len(usable) if usable else 0.0,
        "problems_with_wrong": sum(1 for v in by_problem.values() if not all(v)),
        "problems_with_right_and_wrong": sum(1 for v in by_problem.values() if any(v) and not all(v)),
    }


def make_samples(problem: Problem, prompt: str, graded: Sequence[Graded], temperature: float, model: str) -> list[Sample]:
    """Samples ``<problem_id>#<j>`` from the graded responses (``"Step 1:"`` + continuation) of one problem."""
    return [Sample(id=f"{problem.id}#{j}", problem_id=problem.id, prompt=prompt, response=g.response, steps=split_steps(g.response),
                   predicted=extract_answer(g.response, last_number_fallback=False), correct=g.correct,
                   num_tokens=g.completion.num_tokens, finish_reason=g.completion.finish_reason, temperature=temperature, model=model)
            for j, g in enumerate(graded)]


def run(config: SampleConfig, problems: Sequence[Problem], generator: Generator, fmt: PromptFormat | None = None,
        store: RecordStore[Sample] | None = None) -> list[Sample]:
    """Sample ``config.k`` responses for every problem not yet complete in ``store``; returns all samples of ``problems``."""
    fmt = fmt or prompt_format(config.generator)
    if config.k < 1:
        raise ValueError("k must be >= 1")
    stored = store.keys() if store is not None else set()
    params = SamplingParams(n=config.k, temperature=config.temperature, top_p=config.top_p,
                            max_new_tokens=config.max_new_tokens, stop=tuple(config.stop))

    def make(chunk: list[Problem], seeds: list[int]) -> list[Sample]:
        jobs = [Continue(fmt.prompt(p.question), FIRST_MARKER, p.answer) for p in chunk]
        # A problem cut short by a crash gets all k again; the store keeps the ones it already has.
        return [s for p, job, graded in zip(chunk, jobs, generate_graded(generator, jobs, params, seeds))
                for s in make_samples(p, job.prompt, graded, config.temperature, generator.name)]

    made = run_keyed(problems, make, stage="sample", seed=config.seed, key=lambda p: p.id, chunk_size=config.chunk_size, unit="problem",
                     done=lambda p: all(f"{p.id}#{j}" in stored for j in range(config.k)), save=store.append if store is not None else None)
    if store is None:
        return made.new
    wanted = {p.id for p in problems}
    return [s for s in store.records() if s.problem_id in wanted]


def save_problems(path: str | os.PathLike, problems: Sequence[Problem]) -> None:
    """Write the problems a run uses as JSONL (whole file, atomically)."""
    atomic_write_text(path, "".join(json.dumps(record_to_dict(p), ensure_ascii=False) + "\n" for p in problems))


def read_problems(run_dir: RunDir, name: str = "train") -> dict[str, Problem]:
    """The run's problems by id (written by ``stepdpo sample``)."""
    return {p.id: p for p in RecordStore(run_dir.problems(name), Problem).records()}


def read_samples(run_dir: RunDir) -> list[Sample]:
    """The run's samples (written by ``stepdpo sample``); a clear error when there are none yet."""
    if not run_dir.samples.is_file():
        raise InputError(str(run_dir.samples), "not found: run `stepdpo sample` first")
    return RecordStore(run_dir.samples, Sample).records()


def command(config: SampleConfig) -> int:
    from stepdpo.problems import load_problems_with_report

    started = time.perf_counter()
    rd = RunDir(config.run_dir).ensure()
    problems, report = load_problems_with_report(config.data, limit=config.limit, seed=config.seed, on_bad_row=config.on_bad_row)
    save_problems(rd.problems("train"), problems)
    generator = build_generator(config.generator)
    try:
        samples = run(config, problems, generator, prompt_format(config.generator), RecordStore(rd.samples, Sample))
    finally:
        close_generator(generator)  # the next stage (or training) in this process gets the GPU memory back
    stats = summarize(samples, config.k)
    funnel = Funnel("sample", records_in=len(problems), records_out=len(samples),
                    extra={**stats, "wrong_samples": sum(not s.correct for s in samples),
                           "no_answer": sum(s.predicted is None for s in samples),
                           "truncated": sum(s.finish_reason == "length" for s in samples),
                           "wall_s": round(time.perf_counter() - started, 2)})
    for reason, count in report.reasons.items():
        funnel.drop(f"bad problem row: {reason}", count)
    funnel.save(rd)
    print(funnel.render())
    return 0
