"""`stepdpo run` end to end: every stage chained in one run directory, then rerun as a resume.

Generation is scripted (the tiny random model cannot answer arithmetic), training is real
(the tiny model), so this checks the orchestration: each stage finds the previous one's
output, trained models are evaluated and compared, and the report is written.
"""

from __future__ import annotations

import json
import re

import pytest

from stepdpo.cli import main
from stepdpo.generation.scripted import ScriptedGenerator
from stepdpo.problems import load_problems

TRAIN_SPEC = "synthetic:train?n=6&min_steps=2&max_steps=3&seed=1"
TEST_SPEC = "synthetic:test?n=6&min_steps=2&max_steps=3"


def _answers() -> dict[str, str]:
    problems = load_problems(TRAIN_SPEC) + load_problems(TEST_SPEC)
    return {p.question.strip(): p.answer for p in problems}


def _script(answers: dict[str, str]):
    """Even-numbered samples solve the problem in two steps, odd ones give gold + 1 after a wrong step.

    A prompt that already holds a wrong step never recovers, so rollouts confirm it is dead,
    and sampling above temperature 1 always goes wrong, so every SCDPO branch finds a negative.
    """

    def script(prompt: str, params, index: int) -> str:
        gold = next((a for q, a in answers.items() if q in prompt), "0")
        step = int(re.findall(r"Step (\d+):", prompt)[-1]) if "Step" in prompt else 1
        drifted = params.temperature > 1.0  # SCDPO's rising temperature always derails here
        if index % 2 == 0 and "slipped" not in prompt and not drifted:
            if step == 1:  # correct solutions have two steps, so they have a branch point
                return f" Start from the numbers given.\nStep 2: {gold} is the result.\nThe answer is: \\boxed{{{gold}}}"
            return f" {gold} is the result.\nThe answer is: \\boxed{{{gold}}}"
        wrong = int(gold) + 1
        return f" {wrong} is the result (step {step} slipped).\nThe answer is: \\boxed{{{wrong}}}"

    return script


@pytest.fixture
def scripted(monkeypatch):
    generator = ScriptedGenerator(_script(_answers()))
    from stepdpo.generation import registry
    from stepdpo.stages import locate, rectify, sample, scdpo

    for module in (registry, locate, rectify, sample, scdpo):
        monkeypatch.setattr(module, "build_generator", lambda config: generator)
    return generator


def _argv(run_dir, model_dir) -> list[str]:
    return [
        "run", "--run-dir", str(run_dir), "--model", str(model_dir), "--do-sft", "False",
        "--generator.prompt-style", "plain",
        "--sample.data", TRAIN_SPEC, "--sample.k", "2",
        "--locate.rollout.rollouts-per-prefix", "2",
        "--rectify.r", "2",
        "--train.optim.batch-size", "2", "--train.optim.epochs", "1", "--train.logging-steps", "1", "--train.report-to", "none",
        "--eval.data", TEST_SPEC, "--eval.limit", "6",
    ]


def test_run_chains_every_stage_and_resumes(tmp_path, tiny_model_dir, scripted):
    run_dir = tmp_path / "run"
    argv = _argv(run_dir, tiny_model_dir) + ["--methods", "step-dpo", "dpo"]
    assert main(argv) == 0
    for path in ["config.yaml", "samples.jsonl", "located.jsonl", "rectified.jsonl", "pairs/step_pairs.jsonl",
                 "pairs/dpo_pairs.jsonl", "train/step-dpo/final/config.json", "train/dpo/final/config.json",
                 "eval/base/results.json", "eval/step-dpo/results.json", "eval/dpo/results.json",
                 "compare_step-dpo.json", "report/report.html", "timings.json"]:
        assert (run_dir / path).exists(), path
    pairs = [json.loads(line) for line in (run_dir / "pairs/step_pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)
    samples_before = (run_dir / "samples.jsonl").read_text()
    calls_before = len(scripted.calls)
    timings_before = json.loads((run_dir / "timings.json").read_text())
    assert {"sample", "rectify", "train-step-dpo", "train-dpo", "eval-base", "report"} <= set(timings_before)

    # A second invocation finds everything done: no new samples, no retraining, same outputs.
    assert main(argv) == 0
    assert (run_dir / "samples.jsonl").read_text() == samples_before
    assert len(scripted.calls) == calls_before  # nothing was generated again
    # The work's times survive the skip: training is not entered again, the other stages add their skip.
    timings = json.loads((run_dir / "timings.json").read_text())
    assert {name: timings[name] for name in timings if name.startswith("train-")} == \
        {name: timings_before[name] for name in timings_before if name.startswith("train-")}
    assert all(timings[name] >= timings_before[name] for name in timings_before)


def test_run_trains_scdpo_and_judge_free_from_correct_samples(tmp_path, tiny_model_dir, scripted):
    run_dir = tmp_path / "run"
    argv = _argv(run_dir, tiny_model_dir) + [
        "--methods", "scdpo", "judge-free", "--scdpo.branch", "every", "--scdpo.max-attempts", "2", "--scdpo.rollouts", "2",
    ]
    assert main(argv) == 0
    for method in ("scdpo", "judge-free"):
        assert (run_dir / f"train/{method}/final/config.json").is_file(), method
        assert (run_dir / f"eval/{method}/results.json").is_file(), method
        assert (run_dir / f"compare_{method}.json").is_file(), method
    assert not (run_dir / "train/step-dpo").exists()
    scdpo_pairs = [json.loads(line) for line in (run_dir / "pairs/scdpo_pairs.jsonl").read_text().splitlines()]
    assert {p["kind"] for p in scdpo_pairs} == {"scdpo", "dpo"}
    judge_free = [json.loads(line) for line in (run_dir / "pairs/judge_free_pairs.jsonl").read_text().splitlines()]
    assert judge_free and all("slipped" in p["rejected"] and "slipped" not in p["chosen"] for p in judge_free)
    train_config = (run_dir / "train/judge-free/train_config.yaml").read_text()
    assert "mode: step-dpo" in train_config and "judge_free_pairs.jsonl" in train_config
    report = (run_dir / "report/report.html").read_text()
    assert "judge-free" in report and "scdpo" in report


def test_presets_and_the_shipped_config_compose(tmp_path):
    from pathlib import Path

    from stepdpo.config import parse_cli
    from stepdpo.stages.pipeline import RunConfig

    shipped = str(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")
    default = parse_cli(RunConfig, ["--config", shipped], prog="stepdpo run")
    quick = parse_cli(RunConfig, ["--config", shipped, "--preset", "quick", "--sample.k", "3"], prog="stepdpo run")
    assert default.methods == ["step-dpo", "dpo", "scdpo", "judge-free"] and default.do_sft
    # The shipped YAML names the run only, so it must not undo the quick preset's sizes.
    assert quick.preset == "quick" and quick.sample.k == 3
    assert quick.sample.data != default.sample.data and quick.eval.limit < default.eval.limit
    assert quick.sft.data != default.sft.data and quick.rectify.r < default.rectify.r
    # Problems for SFT, error collection and the test set never share a computation or a seed.
    assert "synthetic:train" in default.sft.data[0] and "seed=0" in default.sft.data[0]
    assert "synthetic:train" in default.sample.data and "seed=1" in default.sample.data
    assert default.eval.data[0].startswith("synthetic:test")
