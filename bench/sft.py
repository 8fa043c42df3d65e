"""Benchmark of `stepdpo sft`: train with a config, then measure greedy accuracy before and after.

    .venv/bin/python bench/sft.py --config configs/sft_default.yaml \
        --eval "synthetic:test?n=100&min_steps=2&max_steps=4&seed=1" --out bench/results/sft

Accuracy is greedy, with the pipeline's prompt (``PromptFormat.prompt``: chat turn,
"Let's think step by step.", "Step 1:"), left-padded batches, graded by
``stepdpo.grading.is_correct``, and broken down by the number of reasoning steps a
synthetic problem needs (``Problem.metadata['steps']``). Writes ``<out>.json`` and
``<out>.md``; the CPU load average is recorded beside the timings because the
machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from stepdpo.config import config_to_dict, load_config
from stepdpo.grading import is_correct
from stepdpo.models import load_model, load_tokenizer
from stepdpo.problems import load_problems
from stepdpo.records import Problem, atomic_write_json, atomic_write_text
from stepdpo.stages import sft
from stepdpo.steps import PromptFormat


def step_count(problem: Problem) -> str:
    for key in ("steps", "num_steps", "n_steps"):
        if key in problem.metadata:
            return str(problem.metadata[key])
    return "?"


def greedy_accuracy(model_name: str, problems: list[Problem], batch_size: int, max_new_tokens: int, bf16: bool) -> dict[str, Any]:
    """Greedy accuracy of a model on problems, overall and per step count, with a few example responses."""
    tokenizer = load_tokenizer(model_name)
    tokenizer.padding_side = "left"
    model = load_model(model_name).eval()
    fmt = PromptFormat(chat_template_owner=tokenizer)
    prompts = [fmt.prompt(p.question) for p in problems]
    # Similar lengths per batch: less padding.
    order = sorted(range(len(problems)), key=lambda i: len(prompts[i]))
    responses: dict[int, str] = {}
    generated_tokens = 0
    started = time.time()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = output[:, batch["input_ids"].shape[1] :]
        for row, index in enumerate(chunk):
            tokens = new[row]
            tokens = tokens[tokens != tokenizer.pad_token_id]
            generated_tokens += int(tokens.numel())
            responses[index] = "Step 1:" + tokenizer.decode(tokens, skip_special_tokens=True)
    seconds = time.time() - started
    correct = [is_correct(responses[i], p.answer) for i, p in enumerate(problems)]
    by_steps: dict[str, list[bool]] = defaultdict(list)
    for problem, ok in zip(problems, correct):
        by_steps[step_count(problem)].append(ok)
    return {
        "model": model_name,
        "n": len(problems),
        "correct": sum(correct),
        "accuracy": sum(correct) / len(problems),
        "by_steps": {k: {"n": len(v), "correct": sum(v), "accuracy": sum(v) / len(v)} for k, v in sorted(by_steps.items())},
        "boxed_share": sum("\\boxed{" in r for r in responses.values()) / len(problems),
        "generate_seconds": round(seconds, 1),
        "generated_tokens": generated_tokens,
        "examples": [{"question": problems[i].question, "gold": problems[i].answer, "response": responses[i], "correct": correct[i]} for i in range(min(3, len(problems)))],
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["sft"]
    lines = [
        "# SFT benchmark",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['machine']}; load average before / after training: {result['loadavg_before_train']} / {result['loadavg_after_train']}",
        "",
        f"Training: {s['examples']} examples, {s['optimizer_steps']} optimizer steps, {s['response_tokens']} response tokens "
        f"({s['total_tokens']} tokens in all), {s['train_seconds_this_run']} s, final mean train loss {s['train_loss']:.3f}",
        "",
        f"Evaluation: `{result['eval_spec']}`, greedy, max {result['max_new_tokens']} new tokens",
        "",
        "| model | accuracy | boxed | " + " | ".join(f"{k} steps" for k in result["after"]["by_steps"]) + " |",
        "|---|---|---|" + "---|" * len(result["after"]["by_steps"]),
    ]
    for name in ("before", "after"):
        if name not in result:
            continue
        r = result[name]
        cells = " | ".join(f"{v['correct']}/{v['n']}" for v in r["by_steps"].values())
        lines.append(f"| {name} | {r['correct']}/{r['n']} ({100 * r['accuracy']:.0f}%) | {100 * r['boxed_share']:.0f}% | {cells} |")
    lines += ["", "Config:", "", "```yaml", *(f"{k}: {v}" for k, v in result["config"].items()), "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sft_default.yaml")
    parser.add_argument("--eval", default="synthetic:test?n=100&min_steps=2&max_steps=4&seed=1")
    parser.add_argument("--out", default="bench/results/sft")
    parser.add_argument("--run-dir", default="bench/runs/sft", help="Run directory of the training (its model is reused when complete).")
    parser.add_argument("--skip-before", action="store_true", help="Do not evaluate the untrained model.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--no-bf16-eval", action="store_true", help="Evaluate in float32 instead of bf16 autocast.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for training and evaluation (0 = the config's / torch's default).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = load_config(sft.SFTConfig, args.config)
    config.run_dir = args.run_dir
    if args.threads:
        config.threads = args.threads
    eval_problems = load_problems(args.eval)
    result: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "eval_spec": args.eval,
        "max_new_tokens": args.max_new_tokens,
        "config": config_to_dict(config),
    }
    bf16 = not args.no_bf16_eval
    if not args.skip_before:
        result["before"] = greedy_accuracy(config.model, eval_problems, args.batch_size, args.max_new_tokens, bf16)
        print(f"before: {result['before']['correct']}/{result['before']['n']}", flush=True)
    result["loadavg_before_train"] = [round(x, 2) for x in os.getloadavg()]
    started = time.time()
    path = sft.run(config, sft.load_training_problems(config))
    result["train_wall_seconds"] = round(time.time() - started, 1)
    result["loadavg_after_train"] = [round(x, 2) for x in os.getloadavg()]
    result["sft"] = json.loads((Path(sft.output_dir(config)) / "summary.json").read_text())
    result["after"] = greedy_accuracy(str(path), eval_problems, args.batch_size, args.max_new_tokens, bf16)
    result["loadavg_after_eval"] = [round(x, 2) for x in os.getloadavg()]
    print(f"after: {result['after']['correct']}/{result['after']['n']}  {json.dumps(result['after']['by_steps'])}", flush=True)
    atomic_write_json(args.out + ".json", result)
    atomic_write_text(args.out + ".md", markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
