"""Variety statistics of the synthetic generator: distinct questions, operation and story mix, number sizes.

Usage: python bench/synthetic_stats.py [SPEC ...]  (default: synthetic:train?n=1000 and synthetic:test?n=1000&max_steps=4)
Writes bench/results/synthetic_stats.json and prints it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

from stepdpo.problems import load_problems
from stepdpo.problems.synthetic import computation_key


def stats(spec: str) -> dict:
    started = time.perf_counter()
    problems = load_problems(spec)
    seconds = time.perf_counter() - started
    values = [int(v) for p in problems for v in p.metadata["step_values"]]
    numbers = [int(n) for p in problems for n in re.findall(r"\d+", p.question)]
    return {
        "spec": spec,
        "problems": len(problems),
        "generate_seconds": round(seconds, 3),
        "distinct_questions": len({p.question for p in problems}),
        "distinct_computations": len({computation_key(p.question, p.metadata["step_values"]) for p in problems}),
        "distinct_template_sequences": len({tuple(p.metadata["templates"]) for p in problems}),
        "distinct_first_names": len({p.question.split(" ", 1)[0] for p in problems}),
        "steps": dict(sorted(Counter(p.metadata["num_steps"] for p in problems).items())),
        "stories": dict(Counter(p.metadata["story"] for p in problems)),
        "operations": dict(Counter(t for p in problems for t in p.metadata["templates"]).most_common()),
        "operators": dict(Counter(op for p in problems for op in re.findall(r"\d (\+|-|\*|/) \$?\d", p.solution))),
        "question_numbers_below_100": round(sum(n < 100 for n in numbers) / len(numbers), 3),
        "max_step_value": max(values),
        "step_values_below_200": round(sum(v < 200 for v in values) / len(values), 3),
        "mean_question_words": round(sum(len(p.question.split()) for p in problems) / len(problems), 1),
    }


def main() -> None:
    specs = sys.argv[1:] or ["synthetic:train?n=1000", "synthetic:test?n=1000&max_steps=4"]
    result = {"loadavg": os.getloadavg(), "sets": [stats(spec) for spec in specs]}
    out = Path(__file__).resolve().parent / "results" / "synthetic_stats.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
