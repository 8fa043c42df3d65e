"""Accuracy of the grader on the test case table and time per call, written to bench/results/grading.json.

    .venv/bin/python bench/grading.py

Timings are per ``answers_match`` call in one fresh process. "cheap" pairs are
settled in-process (equal strings or plain numbers); "math-verify" pairs go to
the worker process, each pair new (nothing cached); "pathological" pairs are
refused before parsing; "overrun" is a call that hits its deadline, plus the
next call, which pays for a fresh worker. The CPU is shared with other work:
the load average is recorded beside the numbers.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from grading_cases import MATCH_CASES  # noqa: E402

from stepdpo import grading  # noqa: E402
from stepdpo.grading import answers_match  # noqa: E402


def timed(pairs: list[tuple[str, str]], timeout_s: float = 5.0) -> tuple[list[bool], list[float]]:
    results, seconds = [], []
    for pred, gold in pairs:
        start = time.perf_counter()
        results.append(answers_match(pred, gold, timeout_s=timeout_s))
        seconds.append(time.perf_counter() - start)
    return results, seconds


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "calls": len(seconds),
        "mean_ms": 1000 * statistics.fmean(seconds),
        "median_ms": 1000 * statistics.median(seconds),
        "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max_ms": 1000 * ordered[-1],
    }


def main() -> None:
    load_before = os.getloadavg()
    start = time.perf_counter()
    grading._POOL.close()
    worker = grading._Worker()
    worker_start_s = time.perf_counter() - start
    worker.kill()

    # The table, cold (the first math-verify call also starts the worker).
    table_pairs = [(pred, gold) for pred, gold, _ in MATCH_CASES]
    results, table_seconds = timed(table_pairs)
    right = sum(result == expected for result, (_, _, expected) in zip(results, MATCH_CASES))
    wrong_cases = [{"pred": p, "gold": g, "expected": e} for r, (p, g, e) in zip(results, MATCH_CASES) if r != e]

    cheap = [(f"{n:,}", str(n)) for n in range(1000, 1400)] + [(str(n), str(n + 1)) for n in range(400)]
    _, cheap_seconds = timed(cheap)
    heavy = [(f"{k}\\sqrt{{2}}", f"\\sqrt{{{2 * k * k}}}") for k in range(2, 42)]
    heavy += [(f"x^2+{2 * k}x+{k * k}", f"(x+{k})^2") for k in range(30, 70)]
    heavy_results, heavy_seconds = timed(heavy)
    pathological = [
        ("10^{10^{10^{10}}}", "5"),
        ("(" * 5000 + "1" + ")" * 5000, "5"),
        ("x" * 100_000, "5"),
        ("".join(chr(33 + (i * 7919) % 90) for i in range(100_000)), "5"),
        ("10^{9999}^{9999}", "5"),
    ]
    pathological_results, pathological_seconds = timed(pathological)
    overrun_results, overrun_seconds = timed([("x^3+27x^2+243x+729", "(x+9)^3"), ("x^3+30x^2+300x+1000", "(x+10)^3")], timeout_s=1e-6)
    after_results, after_seconds = timed([("x^3+33x^2+363x+1331", "(x+11)^3")])

    report = {
        "command": ".venv/bin/python bench/grading.py",
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "table": {"cases": len(MATCH_CASES), "agree": right, "accuracy": right / len(MATCH_CASES), "disagreements": wrong_cases, **summary(table_seconds)},
        "worker_start_s": worker_start_s,
        "cheap": summary(cheap_seconds),
        "math_verify_uncached": {**summary(heavy_seconds), "all_true": all(heavy_results)},
        "pathological": {**summary(pathological_seconds), "all_false": not any(pathological_results)},
        "overrun_1us_deadline": {**summary(overrun_seconds), "all_false": not any(overrun_results)},
        "first_call_after_overrun": {**summary(after_seconds), "result": after_results[0]},
    }
    target = ROOT / "bench" / "results" / "grading.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
