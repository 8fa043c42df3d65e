"""Step-controlled negatives on a real model: correct samples in, SCDPO / judge-free pairs out, attempts and wall time.

Correct samples are the synthetic problems' reference solutions in the step format
(the model that would have written them right, an SFT'd one, is not ready here; the
reference solutions are what such a model produces when it is right). The policy
continues them from a seeded branch point with the paper's rising temperature; the
bench reports what came out, the attempts spent (one attempt = one continuation
generated step by step until it states an answer or runs out of steps), generated
tokens, judge-free rollouts and wall time, with ``os.getloadavg()`` (the CPU is shared).

    .venv/bin/python bench/scdpo.py --model smollm2-135m --problems 4

Writes bench/results/scdpo.{json,md}.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stepdpo.config import parse_cli
from stepdpo.generation.base import GeneratorConfig, prompt_format
from stepdpo.generation.registry import build_generator
from stepdpo.models import load_tokenizer
from stepdpo.problems import load_problems
from stepdpo.records import RecordStore, Sample, atomic_write_json, atomic_write_text
from stepdpo.stages import scdpo
from stepdpo.steps import split_steps


@dataclass
class BenchConfig:
    model: str = field(default="smollm2-135m", metadata={"help": "Policy: the SFT'd model folder when there is one, else the embedded model."})
    data: str = field(default="synthetic:train?n=200&min_steps=2&max_steps=4&seed=0", metadata={"help": "Synthetic problem spec (reference solutions become the correct samples)."})
    problems: int = field(default=4, metadata={"help": "Problems (one correct sample each)."})
    branch: str = field(default="random", metadata={"help": "Branch points: random (one per sample) or every."})
    max_attempts: int = field(default=2, metadata={"help": "Retry budget per branch point."})
    max_steps: int = field(default=3, metadata={"help": "Steps a continuation may generate."})
    max_step_tokens: int = field(default=40, metadata={"help": "Token limit of one generated step."})
    rollouts: int = field(default=2, metadata={"help": "Judge-free rollouts per negative."})
    rollout_max_new_tokens: int = field(default=64, metadata={"help": "Token limit of each rollout."})
    batch_size: int = field(default=32, metadata={"help": "Generator batch size."})
    threads: int = field(default=2, metadata={"help": "torch threads."})
    out: str = field(default="bench/results", metadata={"help": "Where the result files go."})


def main(argv: list[str]) -> int:
    import torch

    bench = parse_cli(BenchConfig, argv, prog="bench/scdpo.py")
    torch.set_num_threads(bench.threads)
    command_line = ".venv/bin/python bench/scdpo.py " + " ".join(argv)
    load_before = os.getloadavg()
    problems = load_problems(bench.data, limit=bench.problems, seed=0)
    samples = [Sample(id=f"{p.id}#ref", problem_id=p.id, prompt="", response=p.solution or "", steps=split_steps(p.solution or ""),
                      predicted=p.answer, correct=True, model="reference") for p in problems]
    gen_config = GeneratorConfig(model=bench.model, dtype="float32", device="cpu", batch_size=bench.batch_size)
    config = scdpo.SCDPOConfig(branch=bench.branch, max_attempts=bench.max_attempts, max_steps=bench.max_steps,  # type: ignore[arg-type]
                               max_step_tokens=bench.max_step_tokens, rollouts=bench.rollouts,
                               rollout_max_new_tokens=bench.rollout_max_new_tokens, dpo=False, generator=gen_config)
    started = time.perf_counter()
    generator = build_generator(gen_config)
    fmt, tokenizer = prompt_format(gen_config), load_tokenizer(bench.model)
    load_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        out = scdpo.run(config, {p.id: p for p in problems}, samples, generator, fmt, tokenizer,
                        branch_store=RecordStore(Path(tmp) / "branches.jsonl", scdpo.Branch, key="key"))
        run_s = time.perf_counter() - started
    extra = out.funnel.extra or {}
    result = {
        "command": command_line, "model": bench.model, "data": bench.data, "config": asdict(bench),
        "correct_samples_in": out.funnel.records_in, "scdpo_pairs": len(out.scdpo), "judge_free_pairs": len(out.judge_free),
        "correct_samples_with_pair": extra.get("correct_samples_with_pair"), "branch_points_tried": extra.get("branch_points_tried"),
        "attempts": extra.get("attempts"), "retries": extra.get("retries"),
        "attempt_outcomes": {k.removeprefix("attempts_"): v for k, v in extra.items() if k.startswith("attempts_")},
        "generated_tokens": extra.get("generated_tokens"), "judge_free_rollouts": extra.get("judge_free_rollouts"),
        "dropped": out.funnel.dropped or {}, "model_load_s": round(load_s, 1), "wall_s": round(run_s, 1),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "negatives": [{"key": b.key, "temperatures": b.temperatures, "predicted": b.predicted,
                       "rejected": b.negative[len("".join(next(s for s in samples if s.id == b.sample_id).steps[: b.branch_step])):]}
                      for b in out.branches if b.negative is not None],
    }
    out_dir = Path(bench.out)
    atomic_write_json(out_dir / "scdpo.json", result)
    lines = [
        f"# stepdpo scdpo on {bench.model}", "",
        f"Command: `{command_line}`  ",
        "Correct samples: the reference solutions of synthetic problems (no SFT'd model available when this ran).  ",
        f"Branch {bench.branch}, temperature min(1.1 + 0.05 i, 1.4), retry budget {bench.max_attempts}, "
        f"at most {bench.max_steps} steps of {bench.max_step_tokens} tokens; judge-free rollouts m={bench.rollouts}.  ",
        f"Load average before {result['loadavg_before'][0]}, after {result['loadavg_after'][0]} (2 shared CPU cores).", "",
        "| correct samples in | branch points | attempts | retries | SCDPO pairs | judge-free pairs | samples with a pair | tokens | rollouts | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {result['correct_samples_in']} | {result['branch_points_tried']} | {result['attempts']} | {result['retries']} | "
        f"{result['scdpo_pairs']} | {result['judge_free_pairs']} | {result['correct_samples_with_pair']} | "
        f"{result['generated_tokens']} | {result['judge_free_rollouts']} | {result['wall_s']} |", "",
        f"Attempt outcomes: {result['attempt_outcomes']}  ",
        f"Dropped: {result['dropped']}  ",
        f"Model load {result['model_load_s']} s (not in wall s).",
    ]
    atomic_write_text(out_dir / "scdpo.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
