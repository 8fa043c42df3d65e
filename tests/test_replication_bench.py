"""bench/replication.py: the table pools (seed, problem) pairs and reads each seed's own base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest



@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("replication")


def _write_eval(run_dir: Path, name: str, outcomes: dict[str, bool]) -> None:
    folder = run_dir / "eval" / name
    folder.mkdir(parents=True)
    n, correct = len(outcomes), sum(outcomes.values())
    sets = {"toy": {"problems": n, "correct": correct, "accuracy": correct / n, "ci_low": 0.0, "ci_high": 1.0, "per_problem": outcomes}}
    (folder / "results.json").write_text(json.dumps({"sets": sets}))


def test_table_pools_seed_problem_pairs(tmp_path, bench):
    for seed, (base, step_dpo) in {0: ([1, 0, 0, 0], [1, 1, 0, 0]), 1: ([0, 0, 1, 0], [1, 0, 1, 1])}.items():
        run = tmp_path / f"seed{seed}"
        _write_eval(run, "base", {f"p{i}": bool(v) for i, v in enumerate(base)})
        _write_eval(run, "step-dpo", {f"p{i}": bool(v) for i, v in enumerate(step_dpo)})
    result = bench.table(tmp_path, [0, 1], ["step-dpo", "dpo"])
    assert set(result["methods"]) == {"step-dpo"}  # dpo was never evaluated
    pooled = result["methods"]["step-dpo"]["pooled"]["toy"]
    assert pooled["problems"] == 8 and pooled["accuracy_a"] == 2 / 8 and pooled["accuracy_b"] == 5 / 8
    assert pooled["diff"] == pytest.approx(3 / 8)
    per_seed = result["methods"]["step-dpo"]["per_seed"]
    assert per_seed[0]["toy"]["diff"] == pytest.approx(1 / 4) and per_seed[1]["toy"]["diff"] == pytest.approx(2 / 4)
    assert result["base"][1]["toy"]["accuracy"] == 1 / 4
    markdown = bench.render(result, "python bench/replication.py")
    assert "| + step-dpo |" in markdown and "+37.5" in markdown
