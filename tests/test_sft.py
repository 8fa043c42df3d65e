"""SFT: prompt masking, loss going down, saving, skipping and resuming, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepdpo.records import Problem
from stepdpo.stages.sft import SFTConfig, command, is_complete, run
from stepdpo.steps import PromptFormat
from stepdpo.training.options import LoRAConfig, OptimizerConfig
from stepdpo.training.sft_data import IGNORE_INDEX, SFTCollator, build_examples, tokenize_example

SOLUTION = "Step 1: 3 + 4 = 7.\nStep 2: 7 * 2 = 14.\nThe answer is: \\boxed{14}"


def _problems(n: int = 6) -> list[Problem]:
    return [
        Problem(id=f"p{i}", question=f"Tom has {i + 3} apples and buys 4 more, then doubles them. How many?", answer=str(2 * (i + 7)),
                solution=f"Step 1: {i + 3} + 4 = {i + 7}.\nStep 2: {i + 7} * 2 = {2 * (i + 7)}.\nThe answer is: \\boxed{{{2 * (i + 7)}}}")
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tokenizer(embedded_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_tokenizer_dir)


def _config(tmp_path: Path, model_dir: Path, **overrides) -> SFTConfig:
    # Optimizer options go to the nested optim config, lora_* ones to the nested LoRA config.
    optim = dict(batch_size=2, epochs=1.0, learning_rate=1e-3, warmup_ratio=0.0, lr_scheduler="constant")
    optim.update({k: overrides.pop(k) for k in list(overrides) if k in optim or k in ("max_steps", "grad_accum", "weight_decay")})
    lora = {k[len("lora_"):]: overrides.pop(k) for k in list(overrides) if k.startswith("lora_")}
    if overrides.pop("lora", False):
        lora["enabled"] = True
    base = dict(model=str(model_dir), run_dir=str(tmp_path / "run"), bf16=False, logging_steps=1, save_steps=2)
    base.update(overrides)
    return SFTConfig(optim=OptimizerConfig(**optim), lora=LoRAConfig(**lora), **base)


def test_labels_mask_exactly_the_prompt(tokenizer):
    fmt = PromptFormat(chat_template_owner=tokenizer)
    question = "What is (3 + 4) * 2?"
    example = tokenize_example(tokenizer, fmt, question, SOLUTION)
    prompt_ids = tokenizer(fmt.head(question), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert example.prompt_length == n
    assert example.input_ids[:n] == prompt_ids
    assert example.labels[:n] == [IGNORE_INDEX] * n
    assert example.labels[n:] == example.input_ids[n:]
    assert example.input_ids[-1] == tokenizer.eos_token_id
    # The scored tokens decode to exactly the solution followed by the end of the turn.
    assert tokenizer.decode(example.input_ids[n:-1]) == SOLUTION
    assert tokenizer.decode(example.input_ids) == fmt.head(question) + SOLUTION + tokenizer.eos_token


def test_build_examples_drops_and_counts(tokenizer):
    fmt = PromptFormat(chat_template_owner=tokenizer)
    triples = [("a", "q", SOLUTION), ("b", "q", ""), ("c", "q " * 400, SOLUTION)]
    examples, stats = build_examples(triples, tokenizer, fmt, max_length=200)
    assert [e.id for e in examples] == ["a"]
    assert stats.kept == 1
    assert stats.dropped == {"no solution": 1, "longer than max_length=200": 1}


def test_collator_pads_right_and_masks_padding():
    batch = SFTCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def _response_loss(model_dir: Path, tokenizer, problems: list[Problem]) -> float:
    """Mean NLL of the solution tokens under the model saved in ``model_dir``."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    fmt = PromptFormat(chat_template_owner=tokenizer)
    examples, _ = build_examples(((p.id, p.question, p.solution) for p in problems), tokenizer, fmt, 1024)
    batch = SFTCollator(tokenizer.pad_token_id)([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
    with torch.no_grad():
        return float(model(**batch).loss)


def test_training_reduces_loss_saves_and_skips(tmp_path, tiny_model_dir, tokenizer):
    problems = _problems()
    config = _config(tmp_path, tiny_model_dir, epochs=4.0)
    path = run(config, problems)
    assert is_complete(path)
    assert _response_loss(path, tokenizer, problems) < _response_loss(tiny_model_dir, tokenizer, problems) - 0.5
    # Loss logged per step, and a final summary.
    lines = [json.loads(line) for line in (tmp_path / "run" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == list(range(1, 13))
    assert lines[-1]["summary"]["examples"] == 6 and lines[-1]["summary"]["optimizer_steps"] == 12
    assert lines[-1]["summary"]["compute"]["device"] == "cpu" and lines[-1]["summary"]["compute"]["compute_dtype"] == "float32"
    assert not (tmp_path / "run" / "sft" / "checkpoints").exists()
    # A complete model is not trained again.
    before = (path / "model.safetensors").stat().st_mtime_ns
    assert run(config, problems) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == before


def test_rerun_resumes_from_last_checkpoint(tmp_path, tiny_model_dir):
    problems = _problems()
    # First run: stop after 2 of the 6 steps of 2 epochs, keeping its checkpoint, then drop the model as if killed.
    first = _config(tmp_path, tiny_model_dir, epochs=2.0, max_steps=2, keep_checkpoints=True)
    path = run(first, problems)
    assert (tmp_path / "run" / "sft" / "checkpoints" / "checkpoint-2").is_dir()
    import shutil

    shutil.rmtree(path)
    second = _config(tmp_path, tiny_model_dir, epochs=2.0)
    run(second, problems)
    summary = json.loads((tmp_path / "run" / "sft" / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2")
    assert summary["optimizer_steps"] == 6
    logs = [json.loads(line) for line in (tmp_path / "run" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [log["step"] for log in logs if "loss" in log] == [1, 2, 3, 4, 5, 6]


def test_lora_is_merged_into_saved_model(tmp_path, tiny_model_dir, tokenizer):
    problems = _problems()
    path = run(_config(tmp_path, tiny_model_dir, lora=True, lora_r=4, lora_alpha=8, epochs=2.0, learning_rate=1e-2), problems)
    names = json.loads((path / "config.json").read_text())
    assert names["model_type"] == "llama"
    assert not (path / "adapter_config.json").exists()
    assert _response_loss(path, tokenizer, problems) < _response_loss(tiny_model_dir, tokenizer, problems)


def test_cli_sft_on_jsonl(tmp_path, tiny_model_dir):
    from stepdpo.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "problem": p.question, "steps": p.solution}) + "\n" for p in _problems(4)))
    status = main(["sft", "--model", str(tiny_model_dir), "--data", str(data), "--question_field", "problem", "--solution_field", "steps",
                   "--run_dir", str(tmp_path / "run"), "--optim.batch_size", "2", "--bf16", "False", "--optim.epochs", "1"])
    assert status == 0
    assert is_complete(tmp_path / "run" / "sft" / "model")
    funnel = json.loads((tmp_path / "run" / "funnel" / "sft.json").read_text())
    assert funnel["records_in"] == 4 and funnel["records_out"] == 4


def test_cli_reports_missing_field(tmp_path, tiny_model_dir, capsys):
    from stepdpo.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"question": "q"}) + "\n")
    assert main(["sft", "--model", str(tiny_model_dir), "--data", str(data), "--run_dir", str(tmp_path / "run")]) == 2
    assert f"{data}:1: field 'solution'" in capsys.readouterr().err
