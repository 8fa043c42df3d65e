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
    # config.yaml shows each stage section as it ran (the run's model, generator and directory), and loads back as the same run.
    import yaml

    from stepdpo.config import load_config, parse_cli
    from stepdpo.stages.pipeline import STAGE_SECTIONS, RunConfig, stage_config

    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert recorded["sample"]["generator"]["model"] == recorded["eval"]["generator"]["model"] == str(tiny_model_dir)
    assert recorded["generator"]["model"] == str(tiny_model_dir)  # not the unused default, smollm2-135m
    assert recorded["pairs"]["run_dir"] == recorded["locate"]["run_dir"] == str(run_dir.resolve())
    given = parse_cli(RunConfig, argv[1:], prog="stepdpo run")
    reloaded = load_config(RunConfig, run_dir / "config.yaml")
    assert all(stage_config(reloaded, section) == stage_config(given, section) for section in STAGE_SECTIONS)
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
    quick = parse_cli(RunConfig, ["--config", shipped, "--preset", "quick-smollm2", "--sample.k", "3"], prog="stepdpo run")
    assert default.methods == ["step-dpo", "dpo", "scdpo", "judge-free"] and default.do_sft
    # The shipped YAML names the run only, so it must not undo the quick preset's sizes.
    assert quick.preset == "quick-smollm2" and quick.sample.k == 3 and quick.model == "smollm2-135m"
    assert quick.sample.data != default.sample.data and quick.eval.limit < default.eval.limit
    assert quick.sft.data != default.sft.data and quick.rectify.r < default.rectify.r
    # Problems for SFT, error collection and the test set never share a computation or a seed.
    assert "synthetic:train" in default.sft.data[0] and "seed=0" in default.sft.data[0]
    assert "synthetic:train" in default.sample.data and "seed=1" in default.sample.data
    assert default.eval.data[0].startswith("synthetic:test")
    # --preset quick is every method on the model organism (no SFT), with organism.yaml's training settings.
    organism = parse_cli(RunConfig, ["--preset", "quick"], prog="stepdpo run")
    shipped_organism = parse_cli(RunConfig, ["--config", str(Path(shipped).with_name("organism.yaml"))], prog="stepdpo run")
    assert (organism.model, organism.do_sft, organism.run_dir) == ("organism", False, "runs/quick")
    assert organism.methods == default.methods and organism.pairs == shipped_organism.pairs
    assert organism.generator == shipped_organism.generator and organism.generator.dtype == "auto"
    assert organism.train.optim.learning_rate == shipped_organism.train.optim.learning_rate
    assert organism.eval.limit is None and organism.sample.data != shipped_organism.sample.data


def test_pair_budgets_train_nested_subsets_and_the_report_plots_them(tmp_path, tiny_model_dir, scripted, capsys):
    from stepdpo.stages.train import pair_budget
    from stepdpo.training.data import read_pairs

    run_dir = tmp_path / "run"
    argv = _argv(run_dir, tiny_model_dir) + ["--methods", "step-dpo", "dpo", "--pair-budgets", "3", "1000", "2", "--budget-methods", "step-dpo"]
    assert main(argv) == 0
    pairs = read_pairs([run_dir / "pairs/step_pairs.jsonl"])
    assert len(pairs) > 3
    assert f"step-dpo@1000: skipped, step-dpo has {len(pairs)} pairs" in capsys.readouterr().out
    for budget in (2, 3):
        name = f"step-dpo@{budget}"
        assert f"max_pairs: {budget}" in (run_dir / f"train/{name}/train_config.yaml").read_text()
        assert json.loads((run_dir / f"funnel/train-{name}.json").read_text())["records_in"] == budget
        for path in (f"train/{name}/final/config.json", f"eval/{name}/results.json", f"compare_{name}.json"):
            assert (run_dir / path).is_file(), path
    # The budgets' pairs are nested: budget 2's are among budget 3's, both among all of them.
    two, three = ({p.id for p in pair_budget(pairs, n, 0)} for n in (2, 3))
    assert len(two) == 2 and two < three < {p.id for p in pairs}
    assert not (run_dir / "train/step-dpo@1000").exists() and not list(run_dir.glob("train/dpo@*"))
    assert json.loads((run_dir / "funnel/train-step-dpo.json").read_text())["records_in"] == len(pairs)

    page = (run_dir / "report/report.html").read_text()
    section = page[page.index('<section id="budgets">'):page.index('<section id="flips">')]
    assert section.count('<img src="data:image/png;base64,') == 1
    for cell in ('<td>step-dpo@2</td><td>step-dpo</td><td class="num">2</td>', '<td>step-dpo@3</td><td>step-dpo</td><td class="num">3</td>',
                 f"<td>step-dpo</td><td>step-dpo</td><td>{len(pairs)} (all)</td>"):
        assert cell in section, cell
    assert f"step-dpo@1000: not trained: step-dpo has {len(pairs)} pairs" in section
    md = (run_dir / "report/report.md").read_text()
    assert "## Accuracy by pair budget (data efficiency)" in md and "](budgets.png)" in md
    # flips, completeness and the first-wrong-step table are about the methods' full-data runs only
    assert "step-dpo@" not in page[page.index('<section id="flips">'):page.index('<section id="training">')]

    # A second invocation finds every budget's model trained and evaluated.
    calls = len(scripted.calls)
    timings = json.loads((run_dir / "timings.json").read_text())
    assert main(argv) == 0
    assert len(scripted.calls) == calls
    assert json.loads((run_dir / "timings.json").read_text())["train-step-dpo@2"] == timings["train-step-dpo@2"]


@pytest.mark.parametrize("options, option", [
    ("pair_budgets: [0]", "pair_budgets"),
    ("pair_budgets: [100, -3]", "pair_budgets"),
    ("pair_budgets: [100, 300, 100]", "pair_budgets"),
    ("pair_budgets: [100]\nmethods: [step-dpo]", "budget_methods"),  # dpo's curve would have no full-data run
    ("pair_budgets: [100]\nbudget_methods: []", "budget_methods"),
])
def test_pair_budget_options_are_checked_before_anything_runs(tmp_path, capsys, options, option):
    config = tmp_path / "run.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\n{options}\n")
    assert main(["run", "--config", str(config)]) == 2
    assert f"option {option} must" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_pair_budget_that_is_not_a_number_is_named_with_its_file(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("pair_budgets: [100, many]\n")
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "run.yaml:1: key 'pair_budgets' expects list" in err


def test_the_plan_lists_every_budget_run(capsys):
    import yaml

    assert main(["run", "--dry-run", "True", "--methods", "step-dpo", "dpo", "--pair-budgets", "300", "100", "--budget-methods", "dpo"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["order"][-4:] == ["train-dpo@100", "eval-dpo@100", "train-dpo@300", "eval-dpo@300"]
    assert plan["stages"]["train-dpo@100"]["max_pairs"] == 100 and plan["stages"]["train-dpo@100"]["name"] == "dpo@100"
    assert plan["stages"]["eval-dpo@300"]["model"].endswith("train/dpo@300/final")
    assert plan["stages"]["train-dpo"]["max_pairs"] is None
