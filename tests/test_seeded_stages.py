"""Every sampling stage writes the same bytes whatever its chunk size, and when killed and resumed.

Each stage runs on the tiny random model (hf backend, batches of 4 rows) three ways: in chunks of 3, in
chunks of 1, and in chunks of 3 but stopped by an exception half-way (what a killed process leaves on
disk) and then run again. The record files must be byte-identical. A run with another seed must differ,
so that the records do depend on the samples. A wrapper turns a hash of each sampled text into a right
answer, a wrong answer or none, so grades, located steps, rectified steps and SCDPO negatives all follow
the samples.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable

import pytest

from reliability_helpers import toy_problems, wrong_sample_rows
from stepdpo.generation.base import Completion, GeneratorConfig, SamplingParams
from stepdpo.generation.registry import build_generator
from stepdpo.localizers.rollout import RolloutConfig, RolloutLocalizer
from stepdpo.records import LocatedError, Problem, RecordStore, Rectification, Sample
from stepdpo.stages import evaluate, locate, rectify, sample, scdpo
from stepdpo.steps import PromptFormat, split_steps

FMT = PromptFormat(style="plain")
PROBLEMS = toy_problems(5)


class Answering:
    """The inner generator, with an answer appended to each completion as a hash of its text decides:
    the gold answer, a wrong one, or none."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.calls = 0

    def generate(self, prompts: list[str], params: SamplingParams, seeds=None) -> list[list[Completion]]:
        self.calls += 1
        out = self.inner.generate(prompts, params, seeds)
        for prompt, completions in zip(prompts, out):
            gold = (int(re.search(r"Take (\d+) \+ 3", prompt).group(1)) + 3) * 4
            for i, c in enumerate(completions):
                choice = hashlib.blake2b(c.text.encode()).digest()[0] % 3
                if choice < 2:
                    completions[i] = Completion(text=f"{c.text}\nThe answer is: \\boxed{{{gold + choice}}}",
                                                num_tokens=c.num_tokens, finish_reason="stop")
        return out


class Crash(Exception):
    """Stands for the process being killed."""


class CrashAfter:
    """Delegates to a generator for ``calls`` calls, then raises :class:`Crash`."""

    def __init__(self, inner, calls: int):
        self.inner = inner
        self.name = inner.name
        self.left = calls

    def generate(self, prompts, params, seeds=None):
        if self.left == 0:
            raise Crash
        self.left -= 1
        return self.inner.generate(prompts, params, seeds)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return build_generator(GeneratorConfig(model=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=4))


def wrong_samples() -> list[Sample]:
    return [Sample(**row) for row in wrong_sample_rows(PROBLEMS)]


def correct_samples() -> list[Sample]:
    return [Sample(id=f"{p.id}#1", problem_id=p.id, prompt="", response=p.solution, steps=split_steps(p.solution),
                    predicted=p.answer, correct=True) for p in PROBLEMS]


def run_sample(gen, chunk: int, out: Path, seed: int) -> list[Path]:
    config = sample.SampleConfig(k=2, max_new_tokens=6, temperature=1.0, chunk_size=chunk, seed=seed)
    sample.run(config, PROBLEMS, gen, FMT, RecordStore(out / "samples.jsonl", Sample))
    return [out / "samples.jsonl"]


def run_locate(gen, chunk: int, out: Path, seed: int) -> list[Path]:
    rollout = RolloutConfig(search="linear", rollouts_per_prefix=3, max_new_tokens=6, seed=seed)
    config = locate.LocateConfig(chunk_size=chunk)
    localizer = RolloutLocalizer(rollout, gen, FMT)
    problems = {p.id: p for p in PROBLEMS}
    locate.run(config, problems, wrong_samples(), localizer, RecordStore(out / "located.jsonl", LocatedError, key="sample_id"))
    return [out / "located.jsonl"]


def run_rectify(gen, chunk: int, out: Path, seed: int) -> list[Path]:
    config = rectify.RectifyConfig(r=3, max_new_tokens=6, chunk_size=chunk, seed=seed)
    samples = {s.id: s for s in wrong_samples()}
    located = [LocatedError(sample_id=s.id, problem_id=s.problem_id, first_wrong_step=2, localizer="file") for s in samples.values()]
    # Two errors of one problem at the same step: identical prompts, which must still get their own samples.
    twin = Sample(**{**wrong_sample_rows(PROBLEMS[:1])[0], "id": f"{PROBLEMS[0].id}#9"})
    samples[twin.id] = twin
    located.insert(1, LocatedError(sample_id=twin.id, problem_id=twin.problem_id, first_wrong_step=2, localizer="file"))
    store = RecordStore(out / "rectified.jsonl", Rectification, key="sample_id")
    rectify.run(config, {p.id: p for p in PROBLEMS}, samples, located, gen, FMT, store)
    return [out / "rectified.jsonl"]


def run_scdpo(gen, chunk: int, out: Path, seed: int) -> list[Path]:
    config = scdpo.SCDPOConfig(max_attempts=3, max_steps=2, max_step_tokens=6, rollouts=2, rollout_max_new_tokens=6,
                               chunk_size=chunk, seed=seed, dpo=False)
    branches = RecordStore(out / "branches.jsonl", scdpo.Branch, key="key")
    checks = RecordStore(out / "judge_free.jsonl", scdpo.JudgeFreeCheck, key="key")
    scdpo.run(config, {p.id: p for p in PROBLEMS}, correct_samples() + wrong_samples(), gen, FMT, gen_tokenizer(gen),
              branches, checks)
    return [out / "branches.jsonl", out / "judge_free.jsonl"]


def run_eval(gen, chunk: int, out: Path, seed: int, model: str = "") -> list[Path]:
    config = evaluate.EvalConfig(model=model, n=2, temperature=1.0, max_new_tokens=6, chunk_size=chunk, seed=seed,
                                 output_dir=str(out), generator=GeneratorConfig(model=model, prompt_style="plain"))
    evaluate.run(config, {"toy": PROBLEMS}, gen)
    return [out / "samples.jsonl"]


def gen_tokenizer(gen):
    while not hasattr(gen, "tokenizer"):
        gen = gen.inner
    return gen.tokenizer


STAGES: dict[str, tuple[Callable[..., list[Path]], str]] = {
    "sample": (run_sample, "samples.jsonl"), "locate": (run_locate, "located.jsonl"), "rectify": (run_rectify, "rectified.jsonl"),
    "scdpo": (run_scdpo, "branches.jsonl"), "eval": (run_eval, "samples.jsonl")}
"""Each stage's runner and the record file it appends to chunk by chunk."""


def contents(paths: list[Path]) -> list[bytes]:
    return [p.read_bytes() if p.exists() else b"" for p in paths]


@pytest.mark.parametrize("stage", list(STAGES))
def test_records_do_not_depend_on_chunk_size_or_a_resume(stage, tiny, tiny_model_dir, tmp_path):
    stage_run, records = STAGES[stage]

    def run(gen, chunk: int, out: Path, seed: int = 0) -> list[bytes]:
        extra = {"model": str(tiny_model_dir)} if stage == "eval" else {}
        return contents(stage_run(gen, chunk, out, seed, **extra))

    counting = Answering(tiny)
    reference = run(counting, 3, tmp_path / "chunks-of-3")
    assert reference[0].count(b"\n") >= len(PROBLEMS)
    assert run(Answering(tiny), 1, tmp_path / "chunks-of-1") == reference

    resumed = tmp_path / "resumed"
    with pytest.raises(Crash):
        run(CrashAfter(Answering(tiny), counting.calls // 2), 3, resumed)
    partial = contents([resumed / records])[0]
    assert 0 < partial.count(b"\n") < reference[0].count(b"\n"), "the crash left no partial output: nothing was resumed"
    assert run(Answering(tiny), 3, resumed) == reference

    # The records follow the samples: another run seed changes them.
    assert run(Answering(tiny), 3, tmp_path / "other-seed", seed=1) != reference
