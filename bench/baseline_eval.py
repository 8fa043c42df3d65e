"""Baseline accuracy of the embedded model (smollm2-135m), greedy, before any training.

Runs ``stepdpo eval`` (the "boxed" prompt of the paper) on subsets of the
synthetic test set (2 to 5 steps), MultiArith and GSM8K, and writes
bench/results/baseline_eval.json and .md with the command, the settings, the
wall time and the load average (the CPU is shared, so times vary).

    .venv/bin/python bench/baseline_eval.py --limit 100 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from stepdpo.generation.base import GeneratorConfig
from stepdpo.records import atomic_write_json, atomic_write_text
from stepdpo.stages.evaluate import EvalConfig, command, output_dir

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=100, help="problems per set")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prompt", choices=["boxed", "step"], default="boxed")
    parser.add_argument("--run-dir", default="/tmp/stepdpo-bench/baseline_eval", help="where samples.jsonl goes (resumable)")
    args = parser.parse_args()

    # The synthetic spec holds exactly the problems we want (n = limit, 2 to 5 steps); the others are subset by limit.
    data = [f"synthetic:test?n={args.limit}&min_steps=2&max_steps=5", "multiarith:test", "gsm8k:test"]
    config = EvalConfig(
        model="smollm2-135m",
        data=data,
        limit=args.limit,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        run_dir=args.run_dir,
        name=f"smollm2-135m-{args.prompt}-{args.max_new_tokens}",
        generator=GeneratorConfig(batch_size=args.batch_size),
    )
    load_before = os.getloadavg()
    started = time.perf_counter()
    command(config)
    wall = time.perf_counter() - started
    results = json.loads((output_dir(config) / "results.json").read_text(encoding="utf-8"))
    for summary in results["sets"].values():
        summary.pop("per_problem")
    record = {
        "command": " ".join([".venv/bin/python", "bench/baseline_eval.py", *sys.argv[1:]]),
        "wall_time_s": wall,
        "cpu_threads": os.cpu_count(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "baseline_eval.json", record)
    lines = [
        "# Baseline: smollm2-135m, greedy, before training",
        "",
        f"Command: `{record['command']}`  ",
        f"Prompt: {args.prompt}; max_new_tokens {args.max_new_tokens}; up to {args.limit} problems per set (seeded subset, seed 0).  ",
        f"Wall time {wall:.0f} s on {os.cpu_count()} shared CPU threads; load average before {load_before[0]:.2f}, after {record['load_average_after'][0]:.2f}.",
        "",
        "| set | problems | accuracy (95% Wilson CI) | final answer stated | truncated | mean tokens | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in results["sets"].items():
        lines.append(
            f"| {name} | {s['problems']} | {100 * s['accuracy']:.1f}% [{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}] ({s['correct']}/{s['total']}) "
            f"| {100 * s['final_answer_rate']:.0f}% | {100 * s['truncated_rate']:.0f}% | {s['mean_response_tokens']:.0f} | {s['wall_time_s']:.0f} |"
        )
    atomic_write_text(RESULTS / "baseline_eval.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
