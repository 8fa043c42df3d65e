"""Run the reliability and security corpora (pytest with --junitxml) and summarise them in bench/results/reliability.md.

Usage: .venv/bin/python bench/reliability.py [--fast]   (--fast leaves out the slow kill-and-resume tests)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = {
    "tests/test_reliability_kill.py": "killed runs lose nothing (SIGKILL + resume)",
    "tests/test_bad_input.py": "bad input gets a one-line error / skip mode counts",
    "tests/test_judge_faults.py": "judge API faults: bounded retries, failures recorded, rerun redoes only failures",
    "tests/test_untrusted_text.py": "model text is data (no code runs, pathological math, adversarial steps, no unpickling)",
    "tests/test_secrets.py": "API key never written or printed",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="leave out tests marked slow")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "reliability.md"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *CATEGORIES]
        if args.fast:
            cmd += ["-m", "not slow"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        tree = ET.parse(junit)
    load_after = os.getloadavg()
    tried: dict[str, int] = defaultdict(int)
    passed: dict[str, int] = defaultdict(int)
    seconds: dict[str, float] = defaultdict(float)
    failures: list[str] = []
    for case in tree.iter("testcase"):
        module = "tests/" + case.get("classname", "").split(".")[-1] + ".py"
        if case.find("skipped") is not None:
            continue
        tried[module] += 1
        seconds[module] += float(case.get("time", 0))
        if case.find("failure") is None and case.find("error") is None:
            passed[module] += 1
        else:
            failures.append(f"{module}::{case.get('name')}")
    lines = ["# Reliability and security corpora", "",
             f"Command: `{' '.join(['.venv/bin/python', 'bench/reliability.py'] + (['--fast'] if args.fast else []))}` "
             f"(pytest exit {proc.returncode}, {wall:.0f} s wall; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
             f"on {os.cpu_count()} CPUs shared with other work).", "",
             "| category | file | cases tried | cases passed | test seconds |", "|---|---|---|---|---|"]
    for module, label in CATEGORIES.items():
        lines.append(f"| {label} | `{module}` | {tried[module]} | {passed[module]} | {seconds[module]:.1f} |")
    lines.append(f"| **all** | | {sum(tried.values())} | {sum(passed.values())} | {sum(seconds.values()):.1f} |")
    if failures:
        lines += ["", "Failed:", *[f"- `{name}`" for name in failures]]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0 if not failures and proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
