"""Step localization (``stepdpo locate``): the first wrong step of every wrong sample.

Reads ``samples.jsonl`` and ``problems/train.jsonl`` of the run directory,
runs the chosen localizer on the wrong samples in chunks and appends each
chunk's decisions to ``located.jsonl`` (keyed by sample id, so a rerun skips
decided samples). Attempts that *failed* (an API error) are not decisions:
they go to ``located_failed.jsonl`` with the reason and are tried again on
the next run.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

from stepdpo.config import OptionCheck, validate_config
from stepdpo.errors import ConfigError, InputError
from stepdpo.generation.base import Generator, GeneratorConfig, close_generator, prompt_format
from stepdpo.generation.registry import build_generator
from stepdpo.localizers.base import STATUS_OK, Localizer, is_failure
from stepdpo.localizers.exact import ExactLocalizer
from stepdpo.localizers.file import FileLocalizer
from stepdpo.localizers.judge import JudgeConfig, JudgeLocalizer
from stepdpo.localizers.rollout import RolloutConfig, RolloutLocalizer
from stepdpo.records import LocatedError, Problem, RecordStore, Sample, append_failures
from stepdpo.rundir import Funnel, RunDir
from stepdpo.stages.keyed import run_keyed
from stepdpo.stages.sample import read_problems, read_samples
from stepdpo.steps import PromptFormat


@dataclass
class LocateConfig:
    """Find the first wrong step of each wrong sample."""

    localizer: Literal["rollout", "judge", "exact", "file"] = field(default="rollout", metadata={"help": "rollout: Monte-Carlo completions with the policy (linear or binary search); judge: an LLM judge (openai backend) with the paper's protocol; exact: known intermediate values of synthetic problems; file: labels from --labels."})
    rollout: RolloutConfig = field(default_factory=RolloutConfig, metadata={"help": "Rollout localizer options."})
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata={"help": "Judge localizer options."})
    labels: Optional[str] = field(default=None, metadata={"help": "JSONL of {sample_id, first_wrong_step} (file localizer)."})
    limit: Optional[int] = field(default=None, metadata={"help": "Locate at most this many wrong samples (in file order)."})
    chunk_size: int = field(default=16, metadata={"help": "Wrong samples per batch; decisions are saved after each batch."})
    run_dir: str = field(default="runs/default", metadata={"help": "Run directory: reads samples.jsonl, writes located.jsonl."})
    generator: GeneratorConfig = field(default_factory=GeneratorConfig, metadata={"help": "The model the localizer runs: the policy (rollout) or the judge (judge, backend openai)."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.at_least(1, "limit", "chunk_size")
        check.require(self.localizer != "file" or bool(self.labels), "labels", "must name a JSONL file for localizer 'file'")
        if self.localizer == "rollout":
            validate_config(self.rollout, prefix + "rollout.")
        if self.localizer == "judge":
            validate_config(self.judge, prefix + "judge.")
        if self.localizer in ("rollout", "judge"):
            validate_config(self.generator, prefix + "generator.")


def build_localizer(config: LocateConfig, generator: Generator | None, fmt: PromptFormat | None = None) -> Localizer:
    """The configured localizer; rollout and judge need ``generator`` (judge: one with ``chat``)."""
    if config.localizer == "exact":
        return ExactLocalizer()
    if config.localizer == "file":
        if not config.labels:
            raise ConfigError("localizer 'file' needs --labels PATH.jsonl")
        return FileLocalizer(config.labels)
    if generator is None:
        raise ConfigError(f"localizer {config.localizer!r} needs a generator")
    if config.localizer == "judge":
        return JudgeLocalizer(config.judge, generator)  # type: ignore[arg-type]
    return RolloutLocalizer(config.rollout, generator, fmt or prompt_format(config.generator))


def run(config: LocateConfig, problems: dict[str, Problem], samples: Sequence[Sample], localizer: Localizer,
        store: RecordStore[LocatedError] | None = None, failures_path: Path | None = None) -> list[LocatedError]:
    """Locate the wrong samples not yet decided in ``store``; returns decisions (stored and new) plus this run's failures."""
    wrong = [s for s in samples if not s.correct]
    if config.limit is not None:
        wrong = wrong[: config.limit]
    for sample in wrong:
        if sample.problem_id not in problems:
            raise InputError("problems/train.jsonl", f"no problem {sample.problem_id!r} for sample {sample.id!r}", None, "problem_id")
    decided_before = store.keys() if store is not None else set()
    failed: list[LocatedError] = []

    def make(chunk: list[Sample], seeds: list[int]) -> list[LocatedError]:
        return localizer.locate_many([(problems[s.problem_id], s) for s in chunk])

    def save(located: list[LocatedError]) -> None:
        # A failed attempt (an API error) is no decision: logged, tried again on the next run.
        if store is not None:
            store.append([x for x in located if not is_failure(x)])
        if failures_path is not None:
            append_failures(failures_path, [x for x in located if is_failure(x)])
        failed.extend(x for x in located if is_failure(x))

    made = run_keyed(wrong, make, stage="locate", seed=None,  # the rollout localizer seeds per (sample, prefix)
                     key=lambda s: s.id, done=lambda s: s.id in decided_before, save=save,
                     chunk_size=config.chunk_size, unit="sample", desc=f"locate ({localizer.name})")
    decided = [x for x in made.new if not is_failure(x)]
    if store is not None:
        wanted = {s.id for s in wrong}
        decided = [x for x in store.records() if x.sample_id in wanted]
    return decided + failed


def funnel_for(located: Sequence[LocatedError], wrong_samples: int, wall_s: float) -> Funnel:
    """in: wrong samples; out: samples with a first wrong step; dropped: by status."""
    funnel = Funnel("locate", records_in=wrong_samples, records_out=sum(x.status == STATUS_OK for x in located))
    counts = Counter(("failed" if is_failure(x) else x.status) for x in located if x.status != STATUS_OK)
    for reason, count in counts.items():
        funnel.drop(reason, count)
    not_reached = wrong_samples - len(located)
    if not_reached > 0:
        funnel.drop("not attempted (limit)", not_reached)
    ok = [x for x in located if x.status == STATUS_OK]
    funnel.extra = {"rollouts": sum(x.rollouts for x in located), "localizer_tokens": sum(x.localizer_tokens for x in located),
                    "rollouts_per_located": sum(x.rollouts for x in ok) / len(ok) if ok else 0.0,
                    "wall_s": round(wall_s, 2)}
    return funnel


def agreement_with_exact(located: Sequence[LocatedError], problems: dict[str, Problem], samples: Sequence[Sample]) -> dict[str, float] | None:
    """How often a localizer's first wrong step equals the ground truth, on problems that carry it.

    Synthetic problems know every intermediate value, so :class:`ExactLocalizer` is free to
    run beside any other localizer: this is the localizer's accuracy on the run's own
    samples (``exact``: same step; ``within_one``: off by at most one step). None when no
    decided sample has ground truth.
    """
    by_id = {s.id: s for s in samples}
    decided = [x for x in located if x.status == STATUS_OK and x.sample_id in by_id
               and problems[x.problem_id].metadata.get("step_values")]
    truth = ExactLocalizer().locate_many([(problems[x.problem_id], by_id[x.sample_id]) for x in decided])
    pairs = [(x.first_wrong_step, t.first_wrong_step) for x, t in zip(decided, truth) if t.status == STATUS_OK]
    if not pairs:
        return None
    return {"compared": len(pairs), "exact": sum(a == b for a, b in pairs) / len(pairs),
            "within_one": sum(abs(a - b) <= 1 for a, b in pairs) / len(pairs),
            "earlier": sum(a < b for a, b in pairs) / len(pairs), "later": sum(a > b for a, b in pairs) / len(pairs)}


def command(config: LocateConfig) -> int:
    started = time.perf_counter()
    rd = RunDir(config.run_dir)
    samples = read_samples(rd)
    problems = read_problems(rd)
    generator = build_generator(config.generator) if config.localizer in ("rollout", "judge") else None
    try:
        localizer = build_localizer(config, generator)
        located = run(config, problems, samples, localizer, RecordStore(rd.located, LocatedError, key="sample_id"),
                      rd.root / "located_failed.jsonl")
    finally:
        close_generator(generator)  # the next stage (or training) in this process gets the GPU memory back
    funnel = funnel_for(located, sum(not s.correct for s in samples), time.perf_counter() - started)
    funnel.extra = {**(funnel.extra or {}), "localizer": localizer.name}
    if localizer.name != "exact":
        agreement = agreement_with_exact(located, problems, samples)
        if agreement is not None:
            funnel.extra.update({f"vs_exact_{key}": round(value, 4) for key, value in agreement.items()})
    funnel.save(rd)
    print(funnel.render())
    return 0
