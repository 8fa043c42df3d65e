"""The run-directory layout every stage shares.

    RUN/
      config.yaml              the resolved config of the last `stepdpo run`
      problems/<name>.jsonl    problems each stage was given (train / test)
      sft/model/               the SFT checkpoint (when the run starts with SFT)
      samples.jsonl            stepdpo sample
      located.jsonl            stepdpo locate (located_failed.jsonl: judge calls to retry)
      rectified.jsonl          stepdpo rectify (with --confirm also rectify_candidates.jsonl,
                               rectify_verdicts.jsonl, rectify_judge_failed.jsonl)
      scdpo/                   stepdpo scdpo: branches.jsonl, judge_free.jsonl (rollout checks)
      pairs/                   stepdpo pairs: step_pairs.{jsonl,parquet}, dpo_pairs.*, hf/;
                               stepdpo scdpo: scdpo_pairs.*, judge_free_pairs.*
      train/<name>/            stepdpo train: checkpoints, metrics.jsonl, final model
                               (<method>@<n>: trained on n of the method's pairs, `run --pair_budgets`)
      eval/<name>/             stepdpo eval: results.json, samples.jsonl (same names as train/)
      funnel/<stage>.json      records in, out, and dropped by reason, per stage
      compare_<method>.json    stepdpo compare of each trained model against the start
      timings.json             wall seconds per stage of `stepdpo run`
      rounds/r<r>/             `stepdpo run --rounds N`: round r >= 2, a run directory of this layout of its own
                               (from round r-1's model; compare_<method>_previous.json against it)
      report/                  report.html, report.md, plots
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from stepdpo.records import atomic_write_json

_BUDGET_NAME = re.compile(r"(?P<method>.+)@(?P<pairs>[1-9][0-9]*)")


def budget_run_name(method: str, pairs: int) -> str:
    """The train/eval name of a method trained on ``pairs`` of its pairs: ``step-dpo@300``."""
    return f"{method}@{pairs}"


def parse_budget_run_name(name: str) -> tuple[str, int] | None:
    """(method, pairs) of a :func:`budget_run_name`; None for any other name."""
    match = _BUDGET_NAME.fullmatch(name)
    return (match["method"], int(match["pairs"])) if match else None


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    def ensure(self) -> "RunDir":
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def problems(self, name: str) -> Path:
        return self.root / "problems" / f"{name}.jsonl"

    @property
    def sft(self) -> Path:
        return self.root / "sft"

    @property
    def samples(self) -> Path:
        return self.root / "samples.jsonl"

    @property
    def located(self) -> Path:
        return self.root / "located.jsonl"

    @property
    def rectified(self) -> Path:
        return self.root / "rectified.jsonl"

    @property
    def pairs(self) -> Path:
        return self.root / "pairs"

    def train(self, name: str) -> Path:
        return self.root / "train" / name

    def eval(self, name: str) -> Path:
        return self.root / "eval" / name

    def funnel(self, stage: str) -> Path:
        return self.root / "funnel" / f"{stage}.json"

    @property
    def report(self) -> Path:
        return self.root / "report"


@dataclass
class Funnel:
    """What a stage took in, gave out, and dropped (by reason). Printed by the CLI, saved as JSON."""

    stage: str
    records_in: int = 0
    records_out: int = 0
    dropped: dict[str, int] | None = None
    extra: dict[str, float | int | str] | None = None

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped = self.dropped or {}
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def save(self, run_dir: RunDir) -> None:
        atomic_write_json(run_dir.funnel(self.stage), self.__dict__)

    def render(self) -> str:
        lines = [f"[{self.stage}] in: {self.records_in}  out: {self.records_out}"]
        for reason, count in sorted((self.dropped or {}).items(), key=lambda kv: -kv[1]):
            lines.append(f"  dropped {count:>6}  {reason}")
        for key, value in (self.extra or {}).items():
            lines.append(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
        return "\n".join(lines)
