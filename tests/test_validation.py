"""Options are checked when a command starts: a bad value fails in a second, naming the option, before any model loads."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stepdpo.cli import main
from stepdpo.errors import ConfigError
from stepdpo.stages.pipeline import RunConfig


@pytest.fixture
def nothing_loads(monkeypatch):
    """Any model, tokenizer, generator or SFT run started by the command under test is an error."""
    from stepdpo import models
    from stepdpo.generation import registry
    from stepdpo.stages import evaluate, locate, rectify, sample, scdpo, sft

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    for module, name in ((models, "load_model"), (models, "load_tokenizer"), (sft, "command"), (registry, "build_generator"),
                         (locate, "build_generator"), (rectify, "build_generator"), (sample, "build_generator"),
                         (scdpo, "build_generator"), (evaluate, "load_sets")):
        monkeypatch.setattr(module, name, refuse)


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("flags, option", [
    (["--sample.k", "-3"], "sample.k"),  # the example: today 17 minutes of SFT come first
    (["--train.beta", "-1"], "train.beta"),
    (["--train.max-prompt-length", "2048"], "train.max_length"),
    (["--scdpo.temperature-cap", "0.5"], "scdpo.temperature_cap"),
    (["--rectify.top-p", "0"], "rectify.top_p"),
    (["--eval.n", "4"], "eval.temperature"),
    (["--generator.batch-size", "0"], "generator.batch_size"),
    (["--sft.optim.learning-rate", "0"], "sft.optim.learning_rate"),
])
def test_run_refuses_a_bad_option_of_any_stage_before_loading_a_model(tmp_path, capsys, nothing_loads, flags, option):
    run_dir = tmp_path / "run"
    assert main(["run", "--run-dir", str(run_dir), *flags]) == 2
    assert f"option {option} " in one_line_error(capsys)
    assert not run_dir.exists()  # nothing written either


@pytest.mark.parametrize("argv, option", [
    (["sample", "--k", "0"], "k"),
    (["sample", "--generator.max-retries", "-1"], "generator.max_retries"),
    (["locate", "--localizer", "file"], "labels"),
    (["locate", "--localizer", "rollout", "--rollout.alive-threshold", "1.5"], "rollout.alive_threshold"),
    (["rectify", "--r", "0"], "r"),
    (["rectify", "--confirm", "True", "--judge.template", "/nonexistent/judge.txt"], "judge.template"),
    (["pairs", "--max-pairs-per-error", "-1"], "max_pairs_per_error"),
    (["scdpo", "--max-attempts", "0"], "max_attempts"),
    (["sft", "--optim.epochs", "0"], "optim.epochs"),
    (["train", "--loss-type", "ipo", "--label-smoothing", "0.1"], "label_smoothing"),
    (["train", "--eval-split", "1"], "eval_split"),
    (["eval", "--top-p", "0"], "top_p"),
    (["compare", "a", "b", "--alpha", "1"], "alpha"),
    (["grade", "responses.jsonl", "--timeout-s", "0"], "timeout_s"),
])
def test_each_stage_command_refuses_a_bad_option_first(tmp_path, capsys, monkeypatch, nothing_loads, argv, option):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert f"option {option} " in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_run_checks_only_the_stages_it_runs_with_the_generator_it_passes():
    RunConfig(stop_after="sft", train=replace(RunConfig().train, beta=-1.0)).validate()  # training never comes
    RunConfig(do_sft=False, sft=replace(RunConfig().sft, optim=replace(RunConfig().sft.optim, epochs=0.0))).validate()
    RunConfig(sample=replace(RunConfig().sample, generator=replace(RunConfig().generator, batch_size=0))).validate()  # replaced by the run's
    with pytest.raises(ConfigError, match="option scdpo.max_steps "):
        RunConfig(methods=["judge-free"], scdpo=replace(RunConfig().scdpo, max_steps=0)).validate()
    RunConfig(methods=["step-dpo"], scdpo=replace(RunConfig().scdpo, max_steps=0)).validate()  # no method needs SCDPO
    for preset in ("default", "quick", "quick-smollm2"):
        RunConfig.preset_config(preset).validate()
