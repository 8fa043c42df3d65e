"""bench/organism.py: count-matched DPO pairs, pooled (seed, problem) comparisons, where errors start, the rendered table."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from stepdpo.problems import load_problems
from stepdpo.stages.evaluate import EvalSample


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("organism")


def _args(tmp_path: Path, bench) -> argparse.Namespace:
    return argparse.Namespace(work=str(tmp_path), seeds=[1, 2], test_n=4, transfer_n=2, problems=8, budgets=[100], rounds=2,
                              knobs={"step-dpo": {"lr": 1e-5}}, phases=list(bench.PHASES), stop_mismatch="drop")


def _wrong(solution: str) -> str:
    """The solution with step 2's result changed: its first wrong step is 2."""
    lines = solution.splitlines()
    lines[1] = re.sub(r"(\d+)(\D*)$", lambda m: f"{int(m.group(1)) + 1}{m.group(2)}", lines[1])
    return "\n".join(lines)


def _write_eval(folder: Path, specs: list[str], right: dict[str, list[bool]]) -> None:
    """An evaluation of ``specs`` whose i-th problem is right when ``right[spec][i]`` (wrong ones err at step 2)."""
    folder.mkdir(parents=True)
    sets, lines = {}, []
    for spec in specs:
        problems = load_problems(spec)
        outcomes = dict(zip((p.id for p in problems), right[spec]))
        sets[spec] = {"accuracy": sum(outcomes.values()) / len(outcomes), "per_problem": outcomes}
        for problem, ok in zip(problems, right[spec]):
            response = problem.solution if ok else _wrong(problem.solution)
            lines.append(json.dumps(asdict(EvalSample(id=f"{spec}|{problem.id}#0", set=spec, problem_id=problem.id, index=0, prompt="", response=response,
                                                      predicted=None, gold=problem.answer, correct=ok, has_final_answer=True, num_tokens=10, finish_reason="eos"))))
    (folder / "results.json").write_text(json.dumps({"sets": sets, "settings": {"model": str(folder)}}))
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")


def test_matched_dpo_pairs_come_from_the_step_pairs_problems(tmp_path, bench):
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    row = {"prompt": "q", "initial_reason_steps": "Let's think step by step.\n", "chosen": "a", "rejected": "b", "answer": "1"}
    (pairs / "step_pairs.jsonl").write_text("".join(json.dumps({**row, "id": f"s{i}", "problem_id": p}) + "\n" for i, p in enumerate("AAB")))
    (pairs / "dpo_pairs.jsonl").write_text("".join(json.dumps({**row, "id": f"d{i}", "problem_id": p}) + "\n" for i, p in enumerate("ABCCA")))
    path, step_count = bench.matched_dpo_file(tmp_path)
    assert step_count == 3
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["d0", "d1", "d4"]  # C has no Step-DPO pair


def test_analysis_pools_seeds_and_locates_first_wrong_steps(tmp_path, bench):
    args = _args(tmp_path, bench)
    outcomes = {  # seed -> name -> (3-4 steps, 5-6 steps)
        1: {"base": ([True, False, False, True], [False, False]), "step-dpo": ([True, True, False, True], [True, False]),
            "dpo-matched": ([True, False, False, False], [False, False])},
        2: {"base": ([False, False, True, True], [False, True]), "step-dpo": ([True, False, True, True], [False, True]),
            "dpo-matched": ([False, False, True, True], [False, True])},
    }
    for seed, evals in outcomes.items():
        specs = bench.test_specs(args, seed)
        for name, (in_dist, transfer) in evals.items():
            _write_eval(tmp_path / f"seed{seed}" / "eval" / name, specs, {specs[0]: in_dist, specs[1]: transfer})
    result = bench.analysis(args, bench.Clock(tmp_path))
    assert set(result["arms"]) == {"step-dpo", "dpo"}  # the other arms were never evaluated
    step = result["arms"]["step-dpo"]["pooled"]["in_distribution"]
    assert step["problems"] == 8 and step["accuracy_a"] == 4 / 8 and step["accuracy_b"] == 6 / 8
    assert step["diff"] == pytest.approx(2 / 8) and (step["a_only_right"], step["b_only_right"]) == (0, 2)
    assert result["arms"]["dpo"]["pooled"]["in_distribution"]["diff"] == pytest.approx(-1 / 8)
    assert result["arms"]["step-dpo"]["pooled"]["transfer"]["diff"] == pytest.approx(1 / 4)
    assert result["step_dpo_vs_dpo"]["in_distribution"]["diff"] == pytest.approx(3 / 8)
    # Seed 1's base: 2 right, 2 wrong at step 2; Step-DPO: 3 right, 1 wrong at step 2.
    assert result["flawed_steps"]["base"]["right"] == 2 and result["flawed_steps"]["base"]["first_wrong"] == {"2": 2}
    assert result["flawed_steps"]["step-dpo"]["first_wrong"] == {"2": 1}
    assert [row["round"] for row in result["rounds"]] == [0, 1]  # round 2 never ran
    markdown = bench.render(result)
    assert "| Step-DPO (exact localizer) | 2 | None, None | 75.0 % (base 50.0) | +25.0 [" in markdown
    assert "| base | 50.0 | 0.0 | 50.0 | 0.0 | 2.0 |" in markdown  # right, step 1, step 2, unlocated, mean position
    assert result["whole_run"] is None and "The whole experiment" not in markdown
    # bench/organism_2cores.sh leaves the whole run's wall time in the work folder; the result file reports it.
    (tmp_path / "wall.json").write_text(json.dumps({"wall_s": 5130, "started": "s", "ended": "e", "load_average_end": "2.0 2.0 1.9",
                                                    "cores": 2, "processes": 2}))
    assert "The whole experiment: **85.5 min** of wall time on 2 cores as 2 1-thread processes" in bench.render(bench.analysis(args, bench.Clock(tmp_path)))
    # Seeds run into the same folder later were not part of that time, and the file says which were.
    (tmp_path / "wall.json").write_text(json.dumps({"wall_s": 5130, "started": "s", "ended": "e", "load_average_end": "2.0 2.0 1.9",
                                                    "cores": 2, "processes": 2, "seeds": [1]}))
    assert "The experiment on seeds [1] (the others ran later" in bench.render(bench.analysis(args, bench.Clock(tmp_path)))


def test_seed_config_starts_from_the_given_model_or_the_organism(tmp_path, bench):
    args = argparse.Namespace(work=str(tmp_path), problems=8, test_n=4, transfer_n=2, dtype="float32", stop_mismatch="drop",
                              knobs={"step-dpo": {"lr": 1e-5}}, model="")
    default = bench.seed_config(args, 3)
    assert default.model == "organism" and default.seed == 3 and "seed=103" in default.sample.data
    other = bench.seed_config(argparse.Namespace(**{**vars(args), "model": str(tmp_path / "org-kv1")}), 3)
    assert other.model == str(tmp_path / "org-kv1") and other.sample == default.sample and other.generator.dtype == "float32"


def test_figure_draws_each_methods_curve_and_the_rounds_as_differences_with_the_base(bench):
    def point(pairs, diff):
        return {"pairs": pairs, "diff": diff, "ci_low": diff - 0.01, "ci_high": diff + 0.02}

    result = {"seeds": [1],
              "data_efficiency": {"step-dpo": [point(100, 0.005), point(1110, 0.009), point(None, 0.5)], "dpo": [point(100, 0.006)]},
              "rounds": [{"round": 0, "diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}, {"round": 1, "diff": 0.009, "ci_low": -0.01, "ci_high": 0.028},
                         {"round": 2, "diff": 0.036, "ci_low": 0.016, "ci_high": 0.056}]}
    curve_ax, rounds_ax = bench.figure(result).axes
    curves = {container.get_label(): container.lines[0] for container in curve_ax.containers}
    step, dpo = curves["Step-DPO (exact localizer)"], curves["DPO (count-matched)"]
    assert list(step.get_ydata()) == pytest.approx([0.5, 0.9])  # points, in percent; the one without a pair count is left out
    assert step.get_xdata()[1] / step.get_xdata()[0] == pytest.approx(11.1) and len(dpo.get_xdata()) == 1
    assert [int(t) for t in curve_ax.get_xticks()] == [100, 1110]
    (rounds,) = rounds_ax.containers
    drawn = rounds.lines[0]
    assert list(drawn.get_xdata()) == [1, 2] and list(drawn.get_ydata()) == pytest.approx([0.9, 3.6])  # round 0 is the base itself


def test_clock_sums_a_phase_over_invocations_and_keeps_the_working_runs_load(tmp_path, bench, monkeypatch):
    (tmp_path / "phases.json").write_text(json.dumps({"seed 5: dpo": 241.0}))
    (tmp_path / "phase_loads.json").write_text(json.dumps({"seed 5: dpo": 1.68}))
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (0.23, 0.5, 0.9))
    clock = bench.Clock(tmp_path)
    assert clock.run("seed 5: dpo", lambda: "resumed") == "resumed"  # a resume that found the work done
    clock.run("seed 7: dpo", lambda: None)
    phases, loads = (json.loads((tmp_path / name).read_text()) for name in ("phases.json", "phase_loads.json"))
    assert 241.0 <= phases["seed 5: dpo"] < 241.0 + 60 and loads["seed 5: dpo"] == 1.68
    assert loads["seed 7: dpo"] == 0.23
