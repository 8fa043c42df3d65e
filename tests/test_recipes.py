"""The GPU recipe as written: its dry run, each stage reading its own section, and the global batch check."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from stepdpo import cli
from stepdpo.config import parse_cli
from stepdpo.errors import ConfigError

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "qwen2-7b-instruct-8gpu.yaml"


def _no_model_loading(monkeypatch):
    from stepdpo import models

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not load a model or tokenizer")

    for name in ("load_model", "load_tokenizer", "resolve_model"):
        monkeypatch.setattr(models, name, refuse)


def test_the_recipe_passes_its_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _no_model_loading(monkeypatch)
    assert cli.main(["run", "--config", str(RECIPE), "--dry-run", "True"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["policy"] == "Qwen/Qwen2-7B-Instruct"
    assert plan["generation"].startswith("vllm: 8 engine process(es) x 1 GPU(s)")
    assert plan["order"] == ["eval-base", "sample", "locate", "rectify", "pairs", "train-step-dpo", "eval-step-dpo", "train-dpo", "eval-dpo"]
    assert plan["global_batch"] == {"per_device_batch": 4, "grad_accum": 4, "per_process": 16, "intended": 128, "training_processes": 8}
    stages = plan["stages"]
    assert stages["sample"]["k"] == 8 and stages["sample"]["generator"]["model"] == "Qwen/Qwen2-7B-Instruct"
    assert stages["train-dpo"]["mode"] == "dpo" and stages["train-dpo"]["pairs"] == ["runs/qwen2-7b/pairs/dpo_pairs.jsonl"]
    assert stages["eval-step-dpo"]["model"] == "runs/qwen2-7b/train/step-dpo/final"
    assert not (tmp_path / "runs").exists()  # nothing written


def _stage(name: str, *flags: str):
    import importlib

    module_name, config_name, _ = cli.COMMANDS[name]
    cls = getattr(importlib.import_module(module_name), config_name)
    return parse_cli(cls, ["--config", str(RECIPE), *flags], prog=f"stepdpo {name}", from_other_file=cli._run_config_section(name))


def test_each_stage_command_reads_its_own_section_of_the_recipe():
    sample = _stage("sample")
    assert (sample.data, sample.k, sample.max_new_tokens, sample.run_dir) == ("math:train", 8, 1024, "runs/qwen2-7b")
    assert (sample.generator.backend, sample.generator.data_parallel_size, sample.generator.model) == ("vllm", 8, "Qwen/Qwen2-7B-Instruct")
    assert _stage("sample", "--k", "2").k == 2  # flags still override the section
    assert _stage("locate").localizer == "rollout" and _stage("rectify").r == 20
    train = _stage("train", "--mode", "dpo")
    assert (train.optim.batch_size, train.optim.grad_accum, train.global_batch, train.optim.learning_rate) == (4, 4, 128, 5e-7)
    assert (train.model, train.run_dir, train.mode, train.pairs) == ("Qwen/Qwen2-7B-Instruct", "runs/qwen2-7b", "dpo", [])
    evaluation = _stage("eval", "--model", "runs/qwen2-7b/train/step-dpo/final", "--name", "step-dpo")
    assert evaluation.data == ["math:test", "gsm8k:test"] and evaluation.prompt == "boxed" and evaluation.name == "step-dpo"


def test_a_stage_still_reads_its_own_config_file_strictly(tmp_path):
    from stepdpo.stages.sample import SampleConfig

    own = tmp_path / "sample.yaml"
    own.write_text("k: 3\nrun_dir: runs/x\n")
    parsed = parse_cli(SampleConfig, ["--config", str(own)], prog="stepdpo sample", from_other_file=cli._run_config_section("sample"))
    assert parsed.k == 3 and parsed.run_dir == "runs/x"
    own.write_text("k: 3\nmodle: x\n")
    with pytest.raises(ConfigError, match=r"sample.yaml:2: unknown key 'modle'"):
        parse_cli(SampleConfig, ["--config", str(own)], prog="stepdpo sample", from_other_file=cli._run_config_section("sample"))


def test_a_launch_with_another_global_batch_is_warned_about_at_start(tiny_model_dir, tmp_path, caplog):
    from stepdpo.stages.train import TrainConfig, check_global_batch, preference_optim, run
    from test_train import _config, make_pairs

    assert check_global_batch(TrainConfig(optim=preference_optim(batch_size=4, grad_accum=4), global_batch=128), 8) is None
    assert "launch 8 processes" in check_global_batch(TrainConfig(optim=preference_optim(batch_size=4, grad_accum=4), global_batch=128), 1)
    assert "change batch_size or grad_accum" in check_global_batch(TrainConfig(optim=preference_optim(batch_size=4, grad_accum=3), global_batch=128), 2)
    assert check_global_batch(TrainConfig(optim=preference_optim(batch_size=4, grad_accum=4)), 3) is None  # no intended batch, no check
    with caplog.at_level(logging.WARNING, logger="stepdpo.stages.train"):
        run(_config(tmp_path, "run", model=str(tiny_model_dir), max_steps=1, eval_split=0.0, batch_size=2, global_batch=8), make_pairs(4))
    assert any("global batch 2 = batch_size 2 x grad_accum 1 x 1 process(es), but the config is written for global_batch 8: launch 4 processes"
               in record.getMessage() for record in caplog.records)
