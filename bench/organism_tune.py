"""Choose the organism's preference-training settings on the validation split, never on the test problems.

Takes a run directory that `stepdpo run --stop_after pairs` filled (its pairs and its base evaluation
on the validation problems), trains one model per setting from the same pairs and evaluates each on the
same validation problems, with its paired difference to the base (bootstrap CI, McNemar p):

    stepdpo run --config configs/organism.yaml --run_dir /tmp/tune/data --stop_after pairs \\
        --sample.data "synthetic:train?n=400&min_steps=3&max_steps=5&difficulty=0&seed=2" \\
        --eval.data "synthetic:train?n=500&min_steps=3&max_steps=5&difficulty=0&seed=1000"
    .venv/bin/python bench/organism_tune.py --run-dir /tmp/tune/data \\
        --setting "step-dpo lr=1e-5 beta=0.4 epochs=1" --setting "dpo lr=1e-5 beta=0.4 epochs=1" ...

A setting is a method of `stepdpo run` and any of lr, beta, epochs, sft_weight, batch (pairs per optimizer step). Each trained model stays
under RUN/train/<setting name> and its evaluation under RUN/eval/<setting name>, so a rerun with more
settings only computes the new ones. Writes bench/results/<--name>.{md,json} with the CPU, its flags and
the load average.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from stepdpo.config import load_config
from stepdpo.hardware import cpu_info, speed_flags
from stepdpo.problems import load_problems
from stepdpo.records import RecordStore, atomic_write_json, atomic_write_text
from stepdpo.report.flawed_steps import flawed_step_rates
from stepdpo.stages import evaluate, pipeline, train
from stepdpo.stages.compare import compare_sets
from stepdpo.stages.evaluate import EvalSample
from stepdpo.steps import split_steps

RESULTS = Path(__file__).resolve().parent / "results"
KNOBS = {"lr": float, "beta": float, "epochs": float, "sft_weight": float, "batch": int}


def parse_setting(text: str) -> tuple[str, dict[str, float]]:
    method, *assignments = text.split()
    if method not in pipeline.METHOD_DATA:
        raise SystemExit(f"--setting {text!r}: unknown method {method!r} (one of {', '.join(pipeline.METHOD_DATA)})")
    knobs = {}
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        if key not in KNOBS:
            raise SystemExit(f"--setting {text!r}: unknown knob {key!r} (one of {', '.join(KNOBS)})")
        knobs[key] = KNOBS[key](value)
    return method, knobs


def setting_name(method: str, knobs: dict[str, float]) -> str:
    return method + "".join(f"_{key}{value:g}" for key, value in sorted(knobs.items()))


def with_knobs(config: train.TrainConfig, knobs: dict[str, float]) -> train.TrainConfig:
    """``config`` with a setting's knobs applied (the ones it does not name keep their values)."""
    optim = replace(config.optim, learning_rate=knobs.get("lr", config.optim.learning_rate), epochs=knobs.get("epochs", config.optim.epochs),
                    batch_size=int(knobs.get("batch", config.optim.batch_size)))
    return replace(config, optim=optim, beta=knobs.get("beta", config.beta), sft_weight=knobs.get("sft_weight", config.sft_weight), report_to=["none"])


def train_config(run: pipeline.RunConfig, method: str, knobs: dict[str, float]) -> train.TrainConfig:
    return replace(with_knobs(pipeline.stage_config(run, "train", method), knobs), name=setting_name(method, knobs))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def read_results(run_dir: Path, name: str) -> dict[str, Any]:
    """``RUN/eval/<name>/results.json``."""
    return read_json(run_dir / "eval" / name / "results.json")


def train_and_evaluate(run: pipeline.RunConfig, config: train.TrainConfig) -> dict[str, Any]:
    """Train ``config`` (unless its final model is complete) and evaluate that model on ``run``'s test sets as
    ``eval/<config.name>`` in ``run``'s folder; its results.json."""
    final = train.resolve_output_dir(config) / "final"
    if not train.is_complete(final):
        train.command(config)
    eval_config = replace(pipeline.stage_config(run, "eval"), model=str(final), name=config.name)
    evaluate.command(replace(eval_config, generator=replace(eval_config.generator, model=str(final))))
    return read_results(Path(run.run_dir), config.name)


def response_shape(run_dir: Path, name: str, spec: str) -> dict[str, Any]:
    """How the responses are built: the share with more steps than their problem's chain, and where errors start."""
    samples = [s for s in RecordStore(run_dir / "eval" / name / "samples.jsonl", EvalSample).records() if s.set == spec]
    problems = {p.id: p for p in load_problems(spec)}
    longer = sum(len(split_steps(s.response)) > int(problems[s.problem_id].metadata["num_steps"]) for s in samples)
    return {**flawed_step_rates(problems, samples).as_json(), "longer_than_chain": longer / len(samples)}


def measure(run: pipeline.RunConfig, run_dir: Path, method: str, knobs: dict[str, float], base: dict[str, Any]) -> dict[str, Any]:
    config = train_config(run, method, knobs)
    results = train_and_evaluate(run, config)
    (row,) = compare_sets(base, results, samples=10_000, seed=0, alpha=0.05)["rows"]
    funnel = read_json(run_dir / "funnel" / f"train-{config.name}.json")["extra"]
    (spec,) = base["sets"]
    return {"name": config.name, "method": method, "learning_rate": config.optim.learning_rate, "beta": config.beta,
            "epochs": config.optim.epochs, "sft_weight": config.sft_weight, "batch": config.optim.batch_size, "pairs": funnel.get("pairs_train"),
            "accuracy": row["accuracy_b"], "diff": row["diff"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
            "p_value": row["p_value"], "only_base_right": row["a_only_right"], "only_trained_right": row["b_only_right"],
            "heldout_pref_accuracy": funnel.get("eval rewards/accuracies"), "heldout_margin": funnel.get("eval rewards/margins"),
            "train_margin": funnel.get("train rewards/margins"), **response_shape(run_dir, config.name, spec)}


def render(result: dict[str, Any]) -> str:
    lines = [f"# {result['title']}", "", "    " + result["command"], "",
             f"Validation problems: `{result['validation_set']}` (base accuracy {100 * result['base_accuracy']:.1f} %); pairs from "
             f"`{result['run_dir']}`. CPU {result['cpu']['model']} ({', '.join(result['cpu']['speed_flags']) or 'no bf16 flags'}), "
             f"{result['threads']} threads, load average at the end {result['load_average']}.", "",
             "| setting | pairs | validation accuracy | diff with base [95 % CI] | only base / only trained right | McNemar p | held-out pref. acc. | held-out margin | train margin | longer than the chain | mean first wrong step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    base_shape = result["base_shape"]
    lines.append(f"| base | | {100 * result['base_accuracy']:.1f} % | | | | | | | {100 * base_shape['longer_than_chain']:.1f} % | {base_shape['mean_first_wrong_step']:.2f} |")
    for row in result["rows"]:
        lines.append(f"| {row['name']} | {row['pairs']} | {100 * row['accuracy']:.1f} % | {100 * row['diff']:+.1f} [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}] | "
                     f"{row['only_base_right']} / {row['only_trained_right']} | {row['p_value']:.2g} | {row['heldout_pref_accuracy'] or 0:.2f} | "
                     f"{row['heldout_margin'] or 0:.2f} | {row['train_margin'] or 0:.2f} | {100 * row['longer_than_chain']:.1f} % | {row['mean_first_wrong_step']:.2f} |")
    lines += ["", "Held-out pref. acc.: the share of the held-out pairs (whole problems, train.eval_split) whose chosen side the trained "
              "model prefers more than the reference does (margin > 0); longer than the chain: greedy responses with more steps than "
              "the problem has; mean first wrong step: exact localizer over the wrong responses."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="A run directory filled by `stepdpo run --stop_after pairs` (its eval set is the validation split).")
    parser.add_argument("--setting", action="append", required=True, help="'METHOD lr=.. beta=.. epochs=.. sft_weight=.. batch=..' (repeatable).")
    parser.add_argument("--name", default="organism_tune", help="Result file stem under bench/results.")
    parser.add_argument("--title", default="Choosing the organism's training settings on the validation split")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    run = replace(load_config(pipeline.RunConfig, run_dir / "config.yaml"), run_dir=str(run_dir))  # the folder may have been copied
    base = read_results(run_dir, "base")
    (validation_set,) = base["sets"]
    rows = []
    for text in args.setting:
        method, knobs = parse_setting(text)
        rows.append(measure(run, run_dir, method, knobs, base))
        print(json.dumps(rows[-1]), flush=True)
    cpu_model, flags = cpu_info()
    result = {"title": args.title, "command": "bench/organism_tune.py " + " ".join(f"--setting '{s}'" for s in args.setting),
              "run_dir": str(run_dir), "validation_set": validation_set, "base_accuracy": base["sets"][validation_set]["accuracy"],
              "cpu": {"model": cpu_model, "speed_flags": speed_flags(flags)},
              "threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)), "load_average": [round(x, 2) for x in os.getloadavg()],
              "base_shape": response_shape(run_dir, "base", validation_set), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / f"{args.name}.json", result)
    atomic_write_text(RESULTS / f"{args.name}.md", render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
