"""The model organism: its tokenizer, a deterministic build, the cached alias, and the pipeline's use of it.

Everything here builds a tiny organism (tens of thousands of parameters, a few
dozen problems) in seconds; the real one is built by bench/organism_build.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from stepdpo.organism.tokenizer import CHAT_TEMPLATE, EOS, train_tokenizer
from stepdpo.problems.synthetic import synthetic_problems
from stepdpo.stages import pretrain
from stepdpo.steps import PromptFormat

TRAIN = "synthetic:train?n=48&min_steps=2&max_steps=4&difficulty=0&seed=0"


def tiny_config(output_dir: Path | str = "", **overrides) -> pretrain.PretrainConfig:
    options = dict(
        data=[TRAIN], validation="synthetic:train?n=6&min_steps=3&max_steps=4&difficulty=0&seed=1000", validation_max_new_tokens=24,
        tokenizer_problems=48, vocab_size=320, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
        max_position_embeddings=512, batch_size=16, threads=1, device="cpu", output_dir=str(output_dir),
    )
    options.update(overrides)
    return pretrain.PretrainConfig(**options)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return pretrain.tokenizer_texts(synthetic_problems(TRAIN), 48)


def test_tokenizer_digits_are_single_tokens_and_text_round_trips(texts):
    tokenizer = train_tokenizer(texts, 320)
    assert len(tokenizer) == 320
    for text in texts[:20] + ["Step 12: 1,205 + 37 = $1242.\nThe answer is: \\boxed{1242}", "  odd\tspacing \n\n and ünïcode ✓"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        pieces = tokenizer.convert_ids_to_tokens(ids)
        assert not any(any(ch.isdigit() for ch in piece) and len(piece) > 1 for piece in pieces), pieces
    number = tokenizer("4096", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(number) == ["4", "0", "9", "6"]


def test_tokenizer_is_deterministic_and_has_the_chat_template(texts, tmp_path):
    first, second = train_tokenizer(texts, 320), train_tokenizer(texts, 320)
    first.save_pretrained(tmp_path / "a")
    second.save_pretrained(tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert first.eos_token == first.pad_token == EOS
    assert first.chat_template == CHAT_TEMPLATE
    opened = first.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True)
    assert opened == "<|user|>\nWhat is 2 + 3?\n<|assistant|>\n"
    # role markers are one token each, never split into bytes
    assert len(first("<|assistant|>", add_special_tokens=False)["input_ids"]) == 1


def test_tokenizer_refuses_a_vocabulary_smaller_than_its_bytes(texts):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts, 200)


def test_config_errors_name_the_option():
    from stepdpo.errors import ConfigError

    with pytest.raises(ConfigError, match="num_heads"):
        pretrain.check_config(tiny_config(hidden_size=30, num_heads=4))
    with pytest.raises(ConfigError, match="num_kv_heads"):
        pretrain.check_config(tiny_config(num_heads=2, num_kv_heads=3))
    with pytest.raises(ConfigError, match="max_length"):
        pretrain.check_config(tiny_config(max_length=600, max_position_embeddings=512))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("organism")
    config = tiny_config(out)
    pretrain.run(config, pretrain.load_problems(config.data, config.seed))
    return out


def test_same_seed_gives_byte_identical_weights_and_another_seed_does_not(built, tmp_path):
    config = tiny_config(tmp_path / "again")
    problems = pretrain.load_problems(config.data, config.seed)
    again = pretrain.run(config, problems)
    assert (again / "model.safetensors").read_bytes() == (built / "model" / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (built / "model" / "tokenizer.json").read_bytes()
    other = pretrain.run(replace(config, seed=1, output_dir=str(tmp_path / "seed1")), problems)
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()


def test_build_records_sizes_and_speed(built):
    import json

    info = json.loads((built / "build.json").read_text())
    assert info["parameters"] > 0 and info["vocab_size"] == 320
    assert info["examples"] == 48 and info["train_tokens"] > info["response_tokens"] > 0
    assert info["train_tokens_per_s"] > 0 and info["seconds"]["build"] >= info["seconds"]["training"]
    assert info["machine"]["cpu_count"] >= 1 and "load_average" in info["machine"]


def test_checkpoint_loads_through_the_project_and_generates_with_the_hf_backend(built):
    from stepdpo.generation.base import GeneratorConfig, SamplingParams, prompt_format
    from stepdpo.generation.hf import HFGenerator
    from stepdpo.models import load_model, load_tokenizer

    path = str(built / "model")
    tokenizer, model = load_tokenizer(path), load_model(path)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    config = GeneratorConfig(model=path, batch_size=4, dtype="float32")
    fmt = prompt_format(config)  # the chat style, through the organism's own template
    question = synthetic_problems("synthetic:test?n=1&min_steps=3&max_steps=3&difficulty=0")[0].question
    prompt = fmt.prompt(question)
    assert prompt.startswith("<|user|>\n") and prompt.endswith("<|assistant|>\nLet's think step by step.\nStep 1:")
    generator = HFGenerator(config)
    greedy = generator.generate([prompt, prompt], SamplingParams(max_new_tokens=12))
    assert greedy[0][0].text == greedy[1][0].text
    assert greedy[0][0].finish_reason in ("stop", "length") and 1 <= greedy[0][0].num_tokens <= 12
    sampled = generator.generate([prompt], SamplingParams(n=3, temperature=0.8, top_p=0.95, max_new_tokens=8, seed=3))
    assert len(sampled[0]) == 3 and all(c.num_tokens <= 8 for c in sampled[0])


def test_a_complete_build_is_not_built_again(built, monkeypatch):
    config = tiny_config(built)
    before = (built / "model" / "model.safetensors").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("a complete organism was trained again")

    monkeypatch.setattr("stepdpo.stages.sft.run", no_training)
    assert pretrain.run(config, []) == built / "model"
    assert (built / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_the_alias_names_the_built_organism_and_says_how_to_build_it(tmp_path, monkeypatch):
    from stepdpo import models
    from stepdpo.errors import ModelLoadError
    from stepdpo.organism import spec

    monkeypatch.setenv("STEPDPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(spec, "organism_config", lambda: tiny_config())
    with pytest.raises(ModelLoadError, match="stepdpo pretrain"):
        models.resolve_model("organism")
    built = pretrain.build(spec.organism_config(), validate_after=False)
    assert models.resolve_model("organism") == str(built)
    assert built == tmp_path / "cache" / "models" / f"organism-{pretrain.fingerprint(tiny_config())}" / "model"
    assert models.load_tokenizer("organism").chat_template == CHAT_TEMPLATE


def test_stepdpo_run_builds_the_organism_once_before_its_stages(tmp_path, monkeypatch):
    from stepdpo.organism import spec
    from stepdpo.stages import pipeline

    monkeypatch.setenv("STEPDPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(spec, "organism_config", lambda: tiny_config())
    calls = []
    real_run = pretrain.run
    monkeypatch.setattr(pretrain, "run", lambda config, problems: calls.append(config) or real_run(config, problems))
    run_config = pipeline.RunConfig(model="organism", do_sft=False, stop_after="sft", run_dir=str(tmp_path / "run"),
                                    eval=replace(pipeline.RunConfig().eval, data=["synthetic:test?n=2&min_steps=2&max_steps=2"], limit=2, max_new_tokens=8))
    for _ in range(2):
        assert pipeline.command(run_config) == 0
    assert len(calls) == 1
    assert spec.is_finished(tiny_config())


def test_fingerprint_follows_what_changes_the_weights():
    base = tiny_config()
    assert pretrain.fingerprint(base) == pretrain.fingerprint(replace(base, threads=2, output_dir="/elsewhere", validation=""))
    assert pretrain.fingerprint(base) != pretrain.fingerprint(replace(base, seed=1))
    assert pretrain.fingerprint(base) != pretrain.fingerprint(replace(base, data=["synthetic:train?n=49"]))


def test_validate_reports_accuracy_by_chain_length_and_first_wrong_steps(built):
    config = tiny_config(built)
    problems = pretrain.load_problems([config.validation], config.seed)
    summary = pretrain.validate(config, built / "model", problems)
    assert summary["problems"] == 6
    assert sum(v["problems"] for v in summary["by_chain_length"].values()) == 6
    assert set(summary["by_chain_length"]) <= {"3", "4"}
    assert sum(summary["first_wrong_step"].values()) == summary["errors"] == 6 - summary["correct"]
    assert (built / "validation.json").is_file() and (built / "validation" / "samples.jsonl").is_file()


def test_score_prompt_labels_every_token_but_the_first(texts):
    from stepdpo.training.sft_data import IGNORE_INDEX, tokenize_example

    tokenizer = train_tokenizer(texts, 320)
    fmt = PromptFormat(style="chat", chat_template_owner=tokenizer)
    problem = synthetic_problems(TRAIN)[0]
    answer_only = tokenize_example(tokenizer, fmt, problem.question, problem.solution)
    everything = tokenize_example(tokenizer, fmt, problem.question, problem.solution, score_prompt=True)
    assert everything.input_ids == answer_only.input_ids
    assert everything.labels == [IGNORE_INDEX] + everything.input_ids[1:]
    n = answer_only.prompt_length
    assert answer_only.labels[:n] == [IGNORE_INDEX] * n and answer_only.labels[n:] == answer_only.input_ids[n:]


def test_a_yaml_section_keeps_the_run_configs_defaults_for_what_it_does_not_set(tmp_path):
    """configs/organism*.yaml set a few options of eval, sample, ...; the rest must stay the run's, not the stage class's."""
    from stepdpo.config import load_config, parse_cli
    from stepdpo.stages.pipeline import RunConfig, section_from_run_config

    path = tmp_path / "run.yaml"
    path.write_text("model: organism\neval: {limit: 5}\nsample: {k: 8}\n")
    config = parse_cli(RunConfig, ["--config", str(path)], prog="stepdpo run")
    # Python callers read the file the same way: load_config, and a stage given the run config (`stepdpo eval --config`).
    assert load_config(RunConfig, path) == config
    assert section_from_run_config("eval", path, {"model": "organism", "eval": {"limit": 5}, "sample": {"k": 8}}).prompt == "step"
    defaults = RunConfig()
    assert config.eval.limit == 5 and config.sample.k == 8
    assert config.eval.prompt == defaults.eval.prompt == "step"
    assert config.eval.data == defaults.eval.data and config.eval.max_new_tokens == defaults.eval.max_new_tokens
    assert config.sample.data == defaults.sample.data and config.sample.max_new_tokens == defaults.sample.max_new_tokens
    shipped_file = str(Path(__file__).resolve().parents[1] / "configs" / "organism.yaml")
    # The quick preset is organism.yaml's settings on less data.
    for argv in (["--config", shipped_file], ["--preset", "quick"]):
        shipped = parse_cli(RunConfig, argv, prog="stepdpo run")
        assert shipped.model == "organism" and not shipped.do_sft
        assert shipped.eval.prompt == "step" and shipped.locate.localizer == "exact"
        assert all("min_steps=3&max_steps=5&difficulty=0" in spec for spec in [shipped.sample.data, *shipped.eval.data])
