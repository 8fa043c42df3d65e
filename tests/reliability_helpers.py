"""Helpers of the reliability tests: run a CLI stage as a child process, kill it at a chosen moment, read outputs strictly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from stepdpo.records import Problem, atomic_write_text, record_to_dict

CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
             "PYTHONUNBUFFERED": "1"}


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **CHILD_ENV, **(extra or {})}


def stepdpo_argv(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "stepdpo.cli", *args]


def run_stepdpo(args: Sequence[str], env: dict[str, str] | None = None, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """Run ``stepdpo ARGS`` to completion in a child process, capturing text output."""
    return subprocess.run(stepdpo_argv(args), env=child_env(env), capture_output=True, text=True, timeout=timeout_s)


def complete_lines(path: Path) -> int:
    """Newline-terminated lines in ``path`` (0 when it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_when(args: Sequence[str], ready: Callable[[], bool], env: dict[str, str] | None = None, timeout_s: float = 300,
              log_path: Path | None = None) -> bool:
    """Start ``stepdpo ARGS``; SIGKILL it as soon as ``ready()`` holds. Returns True if killed, False if it finished first."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        child = subprocess.Popen(stepdpo_argv(args), env=child_env(env), stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while child.poll() is None:
            if ready():
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                return True
            if time.monotonic() > deadline:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                raise TimeoutError(f"stepdpo {' '.join(args[:1])} neither finished nor reached the kill point in {timeout_s} s")
            time.sleep(0.005)
        assert child.returncode == 0, f"stepdpo {args[0]} failed with exit {child.returncode}"
        return False
    finally:
        if log_path:
            log.close()


def strict_lines(path: Path) -> list[dict]:
    """Every line of a finished JSONL file, parsed; fails on a torn or blank line."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), f"{path}: last line is not terminated"
    return [json.loads(line) for line in raw.decode("utf-8").split("\n")[:-1]]


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def toy_problems(count: int) -> list[Problem]:
    return [Problem(id=f"toy-{i}", question=f"Take {i} + 3, then multiply by 4.", answer=str((i + 3) * 4), source="toy:train",
                    solution=f"Step 1: {i} + 3 = {i + 3}\nStep 2: {i + 3} * 4 = {(i + 3) * 4}\nThe answer is: \\boxed{{{(i + 3) * 4}}}")
            for i in range(count)]


def wrong_sample_rows(problems: Sequence[Problem], prompt: str = "q") -> list[dict]:
    """One sample per problem, wrong at step 2, as samples.jsonl rows."""
    rows = []
    for p in problems:
        a = int(p.answer) // 4
        steps = [f"Step 1: {a - 3} + 3 = {a}\n", f"Step 2: {a} * 4 = {a * 4 + 1}\n", f"Step 3: The answer is: \\boxed{{{a * 4 + 1}}}"]
        rows.append({"id": f"{p.id}#0", "problem_id": p.id, "prompt": prompt, "response": "".join(steps), "steps": steps,
                     "predicted": str(a * 4 + 1), "correct": False})
    return rows


def problem_rows(problems: Sequence[Problem]) -> list[dict]:
    return [record_to_dict(p) for p in problems]
