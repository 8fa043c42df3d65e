"""`stepdpo run --rounds N`: on-policy rounds, each sampling and training from the model the round before trained.

Generation is scripted (the tiny random model cannot answer arithmetic) and names itself after the model it was
built for, so the records say which policy made them; training is real (the tiny model).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from stepdpo.cli import main
from stepdpo.errors import ConfigError
from stepdpo.generation.scripted import ScriptedGenerator
from stepdpo.metrics import wilson_interval
from stepdpo.problems import load_problems
from stepdpo.report import ReportConfig, run
from stepdpo.stages import pipeline, rounds
from test_report import PNG_SIGNATURE, _decode_png, _tags, assert_self_contained, html_tables, make_full_run, markdown_tables
from test_run_pipeline import TEST_SPEC, TRAIN_SPEC, _argv, _script

ROUND_2_SPEC = TRAIN_SPEC.replace("seed=1", f"seed={1 + rounds.ROUND_SEED_STEP}")


class Killed(BaseException):
    """What a SIGKILL is to the run: nothing catches it, nothing after it runs."""


def _questions(spec: str) -> set[str]:
    return {p.question.strip() for p in load_problems(spec)}


class Policies:
    """The scripted generator, one per model it is built for (named after it), sharing one record of calls;
    ``kill_at`` makes the n-th completion written for a round-2 problem raise :class:`Killed`."""

    def __init__(self):
        answers = {p.question.strip(): p.answer for spec in (TRAIN_SPEC, ROUND_2_SPEC, TEST_SPEC) for p in load_problems(spec)}
        self.round_2 = _questions(ROUND_2_SPEC)
        self.round_1 = _questions(TRAIN_SPEC)
        self.broken = [p.question.strip() for p in load_problems(TEST_SPEC)[:3]]
        self.written = {1: 0, 2: 0}
        self.kill_at: int | None = None
        script = _script(answers)

        def counted(prompt, params, index):
            for number, questions in ((1, self.round_1), (2, self.round_2)):
                if any(q in prompt for q in questions):
                    self.written[number] += 1
                    if number == 2 and self.kill_at is not None and self.written[2] == self.kill_at:
                        self.kill_at = None
                        raise Killed()
            return script(prompt, params, index)

        self.generator = ScriptedGenerator(counted)

    def build(self, config):
        """The generator of ``config.model``; round 2's trained model answers half of the test problems wrong."""
        generator = replace(self.generator, name=config.model)  # shares the script and the call lists
        if not config.model.endswith("rounds/r2/train/step-dpo/final"):
            return generator
        script, broken = generator.script, self.broken

        def worse(prompt, params, index):
            if any(q in prompt for q in broken):
                return " I give up.\nThe answer is: \\boxed{-1}"
            return script(prompt, params, index)

        return replace(generator, script=worse)


@pytest.fixture
def policies(monkeypatch):
    made = Policies()
    from stepdpo.generation import registry
    from stepdpo.stages import locate, rectify, sample, scdpo

    for module in (registry, locate, rectify, sample, scdpo):
        monkeypatch.setattr(module, "build_generator", made.build)
    return made


def _without(data, keys: set[str]):
    """``data`` (parsed JSON) without ``keys``, at any depth."""
    if isinstance(data, dict):
        return {k: _without(v, keys) for k, v in data.items() if k not in keys}
    return [_without(v, keys) for v in data] if isinstance(data, list) else data


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_round_two_samples_and_trains_from_round_one_model(tmp_path, tiny_model_dir, policies):
    run_dir = tmp_path / "run"
    assert main(_argv(run_dir, tiny_model_dir) + ["--methods", "step-dpo", "dpo", "--rounds", "2"]) == 0
    round_2 = run_dir / "rounds" / "r2"
    first_final = run_dir / "train" / "step-dpo" / "final"

    # Round 1 is the run as without rounds; round 2 is a sub-run of its own, training step-dpo only.
    for path in ["samples.jsonl", "train/step-dpo/final/config.json", "train/dpo/final/config.json", "eval/base/results.json",
                 "compare_step-dpo.json", "compare_dpo.json", "report/report.md"]:
        assert (run_dir / path).exists(), path
    for path in ["config.yaml", "problems/train.jsonl", "samples.jsonl", "located.jsonl", "rectified.jsonl", "pairs/step_pairs.jsonl",
                 "train/step-dpo/final/config.json", "eval/step-dpo/results.json", "compare_step-dpo.json",
                 "compare_step-dpo_previous.json", "timings.json", "funnel/sample.json"]:
        assert (round_2 / path).exists(), path
    assert not (round_2 / "train" / "dpo").exists() and not (round_2 / "eval" / "base").exists()

    # Who sampled: the starting model in round 1, round 1's step-dpo model in round 2.
    assert {s["model"] for s in _records(run_dir / "samples.jsonl")} == {str(tiny_model_dir)}
    assert {s["model"] for s in _records(round_2 / "samples.jsonl")} == {str(first_final)}
    round_config = yaml.safe_load((round_2 / "config.yaml").read_text())
    assert round_config["model"] == str(first_final) and round_config["methods"] == ["step-dpo"] and not round_config["do_sft"]

    # Trained from round 1's model, which is also the reference: the first step's loss is log 2 (policy = reference).
    train_config = yaml.safe_load((round_2 / "train/step-dpo/train_config.yaml").read_text())
    assert train_config["model"] == str(first_final) and train_config["run_dir"] == str(round_2)
    first_row = next(row for row in _records(round_2 / "train/step-dpo/metrics.jsonl") if "loss" in row)
    assert first_row["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert json.loads((round_2 / "eval/step-dpo/results.json").read_text())["model"] == str(round_2 / "train/step-dpo/final")

    # New problems: none shares an id or a question with round 1's.
    first = _records(run_dir / "problems/train.jsonl")
    second = _records(round_2 / "problems/train.jsonl")
    assert first and second
    assert not {p["id"] for p in first} & {p["id"] for p in second}
    assert not {p["question"] for p in first} & {p["question"] for p in second}
    assert {p["question"].strip() for p in second} == policies.round_2

    # Compared with the starting policy and with round 1.
    against_start = json.loads((round_2 / "compare_step-dpo.json").read_text())
    against_round_1 = json.loads((round_2 / "compare_step-dpo_previous.json").read_text())
    assert against_start["run_a"]["path"] == str(run_dir / "eval" / "base")
    assert against_round_1["run_a"]["path"] == str(run_dir / "eval" / "step-dpo")
    assert against_start["run_b"]["path"] == against_round_1["run_b"]["path"] == str(round_2 / "eval" / "step-dpo")
    assert against_start["rows"][0]["diff"] == against_round_1["rows"][0]["diff"] == -0.5  # round 2's model breaks half

    # The report's accuracy by round: rounds 0, 1 and 2 of the synthetic test set, each from its own evaluation.
    report = (run_dir / "report/report.md").read_text()
    section = report.split("## Accuracy by round", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip().replace("\\", "") for cell in line.strip("|").split("|")] for line in section.splitlines() if line[:4] in ("| 0 ", "| 1 ", "| 2 ")]
    assert [row[:5] for row in rows] == [["0", "base", "synthetic", "6 / 6", "100.0%"], ["1", "step-dpo", "synthetic", "6 / 6", "100.0%"],
                                         ["2", "step-dpo", "synthetic", "3 / 6", "50.0%"]]
    assert rows[2][6].startswith("-50.0 pp") and rows[2][7].startswith("-50.0 pp") and rows[1][6].startswith("+0.0 pp")
    assert "rounds.png" in section and (run_dir / "report/rounds.png").is_file()
    assert 'id="rounds"' in (run_dir / "report/report.html").read_text()


def test_killed_rounds_run_resumes_to_identical_files(tmp_path, tiny_model_dir, policies):
    argv = _argv(tmp_path / "run", tiny_model_dir) + ["--methods", "step-dpo", "--rounds", "2", "--sample.chunk-size", "2"]
    assert main(argv) == 0
    whole = (tmp_path / "run").rename(tmp_path / "whole")  # the same path again below: paths are inside records and weights

    policies.written = {1: 0, 2: 0}
    policies.kill_at = 6  # in round 2's sampling: its first chunk (2 problems x 2 samples) saved, the second in flight
    with pytest.raises(Killed):
        main(argv)
    again = tmp_path / "run"
    assert len(_records(again / "rounds/r2/samples.jsonl")) == 4 and not (again / "rounds/r2/located.jsonl").exists()
    policies.written = {1: 0, 2: 0}
    assert main(argv) == 0
    assert policies.written[1] == 0  # round 1 is finished: nothing of it is generated again
    assert policies.written[2] == 24 - 4  # round 2: all but the 4 samples saved before the kill (12 samples + 12 rectifications)

    def outputs(root: Path) -> dict[str, bytes]:
        """Every output file, but not what tells one invocation from another: logs of time (timings, trainer logs and
        checkpoints), funnels (what this invocation added), the report, the datasets folders' random fingerprints, and
        in the eval results their times, load and counts of new samples."""
        kept = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            name = str(path.relative_to(root))
            if (path.name in ("timings.json", "metrics.jsonl", "result.json", "state.json") or "checkpoint-" in name
                    or name.startswith(("report/", "funnel/")) or "/funnel/" in name or "/runs/" in name):
                continue
            kept[name] = path.read_bytes()
            if path.name == "results.json":
                kept[name] = json.dumps(_without(json.loads(kept[name]), {"wall_time_s", "load_average", "created", "new_samples"})).encode()
        return kept

    expected, resumed = outputs(whole), outputs(again)
    assert {"rounds/r2/rectified.jsonl", "rounds/r2/train/step-dpo/final/model.safetensors", "rounds/r2/compare_step-dpo.json"} <= set(expected)
    assert sorted(resumed) == sorted(expected)
    assert [name for name in expected if resumed[name] != expected[name]] == []


@pytest.mark.parametrize("flags, option", [
    (["--rounds", "0"], "rounds"),
    (["--rounds", "2", "--methods", "dpo"], "rounds_method"),
    (["--rounds", "2", "--rounds-method", "scdpo", "--methods", "step-dpo", "dpo"], "rounds_method"),
    (["--rounds", "3", "--rounds-sample-data", TRAIN_SPEC.replace("seed=1", "seed=7")], "rounds_sample_data"),
    (["--rounds", "2", "--sample.data", "gsm8k:train"], "rounds_sample_data"),
])
def test_bad_rounds_options_are_refused_naming_them(tmp_path, capsys, flags, option):
    run_dir = tmp_path / "run"
    assert main(["run", "--run-dir", str(run_dir), "--do-sft", "False", "--model", str(tmp_path / "model"), *flags]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"option {option} " in error[0]
    assert not run_dir.exists()


def test_rounds_given_problems_already_used_are_refused_before_anything_runs(tmp_path):
    config = pipeline.RunConfig(run_dir=str(tmp_path / "run"), model=str(tmp_path / "model"), do_sft=False, rounds=3,
                                sample=replace(pipeline.RunConfig().sample, data=TRAIN_SPEC),
                                rounds_sample_data=[ROUND_2_SPEC, TRAIN_SPEC.replace("n=6", "n=3")])
    config.validate()
    with pytest.raises(ConfigError, match=r"option rounds_sample_data\[1\]: round 3's problems .* also in round 1's"):
        pipeline.command(config)
    assert not (tmp_path / "run").exists()


def test_dry_run_plans_every_round_from_the_round_before():
    config = pipeline.RunConfig(run_dir="runs/r", model="m", do_sft=False, methods=["step-dpo", "dpo"], rounds=3,
                                sample=replace(pipeline.RunConfig().sample, data=TRAIN_SPEC))
    plan = pipeline.plan(config)
    assert plan["order"][-12:] == [f"round{n}/{stage}" for n in (2, 3) for stage in
                                   ("sample", "locate", "rectify", "pairs", "train-step-dpo", "eval-step-dpo")]
    for number in (2, 3):
        previous = "runs/r/train/step-dpo/final" if number == 2 else "runs/r/rounds/r2/train/step-dpo/final"
        stages = {name.partition("/")[2]: stage for name, stage in plan["stages"].items() if name.startswith(f"round{number}/")}
        assert stages["sample"]["generator"]["model"] == previous and stages["sample"]["run_dir"] == f"runs/r/rounds/r{number}"
        assert stages["locate"]["generator"]["model"] == previous and stages["rectify"]["generator"]["model"] == previous
        assert stages["train-step-dpo"]["model"] == previous
        assert stages["eval-step-dpo"]["model"] == f"runs/r/rounds/r{number}/train/step-dpo/final"
        assert stages["sample"]["data"] == TRAIN_SPEC.replace("seed=1", f"seed={1 + (number - 1) * rounds.ROUND_SEED_STEP}")
    # Without rounds, the plan is the run's alone.
    assert not [name for name in pipeline.plan(replace(config, rounds=1))["order"] if name.startswith("round")]
    # A method trained on SCDPO's data brings its stage into every round, and only that method is trained there.
    judge_free = pipeline.plan(replace(config, rounds=2, methods=["step-dpo", "judge-free"], rounds_method="judge-free"))
    assert [name for name in judge_free["order"] if name.startswith("round2/")] == [
        f"round2/{stage}" for stage in ("sample", "locate", "rectify", "pairs", "scdpo", "train-judge-free", "eval-judge-free")]
    assert judge_free["stages"]["round2/scdpo"]["judge_free"] and \
        judge_free["stages"]["round2/scdpo"]["generator"]["model"] == "runs/r/train/judge-free/final"
    assert judge_free["stages"]["round2/train-judge-free"]["pairs"] == ["runs/r/rounds/r2/pairs/judge_free_pairs.jsonl"]


# ----------------------------------------------------------------------------- the report's accuracy by round


def _compare_file(path: Path, a: Path, b: Path, diff: float, ci: tuple[float, float], p_value: float) -> None:
    """As `stepdpo compare` writes it, for the synthetic set of test_report's run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "rows": [{"set": "synthetic:2step:test", "problems": 200, "diff": diff, "ci_low": ci[0], "ci_high": ci[1], "p_value": p_value,
                  "verdict": "B better" if ci[0] > 0 else "noise"}],
        "run_a": {"path": str(a)}, "run_b": {"path": str(b)}}), encoding="utf-8")


def add_rounds(root: Path) -> None:
    """Rounds 2 and 3 of step-dpo as `stepdpo run --rounds 3` writes them beside test_report's run (round 1: its eval/step-dpo)."""
    _compare_file(root / "compare_step-dpo.json", root / "eval/base", root / "eval/step-dpo", 0.085, (0.03, 0.14), 0.0041)
    for number, correct in ((2, 88), (3, 95)):
        folder = root / "rounds" / f"r{number}"
        (folder / "eval/step-dpo").mkdir(parents=True)
        (folder / "eval/step-dpo/results.json").write_text(json.dumps({"model": f"{folder}/train/step-dpo/final", "sets": {
            "synthetic:2step:test": {"problems": 200, "accuracy": correct / 200, "correct": correct, "total": 200}}}), encoding="utf-8")
        previous = root / "eval/step-dpo" if number == 2 else root / "rounds/r2/eval/step-dpo"
        _compare_file(folder / "compare_step-dpo.json", root / "eval/base", folder / "eval/step-dpo", (correct - 62) / 200, (0.06, 0.2), 0.0001)
        _compare_file(folder / "compare_step-dpo_previous.json", previous, folder / "eval/step-dpo", 0.045 if number == 2 else 0.035, (-0.01, 0.1), 0.2)


def test_report_shows_accuracy_by_round_in_html_and_markdown(tmp_path):
    root = make_full_run(tmp_path / "run")
    plain = run(ReportConfig(run_dir=str(root))).html.read_text(encoding="utf-8")
    assert 'id="rounds"' not in plain  # a run without rounds has no such section
    add_rounds(root)
    paths = run(ReportConfig(run_dir=str(root)))
    page, md = paths.html.read_text(encoding="utf-8"), paths.markdown.read_text(encoding="utf-8")
    assert '<section id="rounds">' in page and "## Accuracy by round" in md
    assert paths.images["rounds"].read_bytes().startswith(PNG_SIGNATURE) and "](rounds.png)" in md
    assert assert_self_contained(page) == assert_self_contained(plain) + 1
    tables = html_tables(page)
    assert tables == markdown_tables(md)
    by_round = next(t for t in tables if t[0][:2] == ["round", "evaluation"])
    synthetic = [row for row in by_round[1:] if row[2] == "synthetic:2step:test"]
    # Round 0 is the start, round 1 the run's own step-dpo model, rounds 2 and 3 their folders; the rounds' method
    # comes from the one evaluation the round folders hold (this config.yaml names none).
    assert [row[:6] for row in synthetic] == [
        ["0", "base", "synthetic:2step:test", "62 / 200", "31.0%", "[24.9%, 37.8%]"],
        ["1", "step-dpo", "synthetic:2step:test", "79 / 200", "39.5%", _wilson_cell(79)],
        ["2", "step-dpo", "synthetic:2step:test", "88 / 200", "44.0%", _wilson_cell(88)],
        ["3", "step-dpo", "synthetic:2step:test", "95 / 200", "47.5%", _wilson_cell(95)],
    ]
    assert [row[6:] for row in synthetic] == [["–", "–"], ["+8.5 pp [+3.0, +14.0]", "+8.5 pp [+3.0, +14.0]"],
                                               ["+13.0 pp [+6.0, +20.0]", "+4.5 pp [-1.0, +10.0]"],
                                               ["+16.5 pp [+6.0, +20.0]", "+3.5 pp [-1.0, +10.0]"]]
    assert [row[0] for row in by_round[1:] if row[2] != "synthetic:2step:test"] == ["0", "1"]  # gsm8k: rounds 2 and 3 did not evaluate it

    # An unreadable round file is named in the section; the other rounds are still shown.
    (root / "rounds/r3/eval/step-dpo/results.json").write_text("{not json", encoding="utf-8")
    page = run(ReportConfig(run_dir=str(root))).html.read_text(encoding="utf-8")
    section = page[page.index('<section id="rounds">'):page.index("</section>", page.index('<section id="rounds">'))]
    assert "rounds/r3/eval/step-dpo/results.json:1: malformed JSON" in section and "88 / 200" in section and "95 / 200" not in section


def _wilson_cell(correct: int) -> str:
    low, high = wilson_interval(correct, 200)
    return f"[{100 * low:.1f}%, {100 * high:.1f}%]"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium binary (Debian: apt-get install chromium)")
def test_accuracy_by_round_renders_in_headless_chromium(tmp_path):
    root = make_full_run(tmp_path / "run")
    add_rounds(root)
    page = run(ReportConfig(run_dir=str(root))).html
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    section = dom.stdout[dom.stdout.index('<section id="rounds">'):]
    section = section[:section.index("</section>")]
    images = [attrs for tag, attrs in _tags(section) if tag == "img"]
    assert len(images) == 1 and len(_decode_png(images[0]["src"] or "")) > 5_000
    assert "Accuracy by round" in section and "95 / 200" in section
