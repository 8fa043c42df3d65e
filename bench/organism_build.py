"""Build the model organism and record what it costs and how good it is.

    .venv/bin/python bench/organism_build.py                 # the default organism (the 'organism' alias)
    .venv/bin/python bench/organism_build.py --threads 1 --overwrite
    .venv/bin/python bench/organism_build.py --option hidden_size=192 --option learning_rate=3e-3 --output-dir /tmp/org

writes bench/results/organism_build.{json,md}: build seconds (tokenizer, training),
parameters, training tokens/s, the machine (CPU model, flags, threads, load
average), and on the validation problems (train split, a seed the training data
does not use; never synthetic:test) greedy accuracy by chain length and the
distribution of the first wrong step of every error (exact localizer).
A folder already built is not built again (its recorded timings are reported);
--overwrite times a fresh build.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from stepdpo.config import config_from_dict
from stepdpo.stages import pretrain

ROOT = Path(__file__).resolve().parents[1]


def parse_options(pairs: list[str]) -> pretrain.PretrainConfig:
    """``key=value`` strings onto the default config; values are JSON (``3e-3``, ``["a", "b"]``, ``true``) or else plain strings."""
    options = dataclasses.asdict(pretrain.PretrainConfig())
    floats = {f.name for f in dataclasses.fields(pretrain.PretrainConfig) if f.type in (float, "float")}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        options[key] = float(parsed) if key in floats and isinstance(parsed, int) else parsed
    return config_from_dict(pretrain.PretrainConfig, options, "--option")


def loss_curve(path: Path, points: int = 8) -> list[dict]:
    """Every k-th logged training loss (k chosen to give about ``points`` of them), and the last."""
    logs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    losses = [{"step": log["step"], "epoch": round(log["epoch"], 3), "loss": log["loss"]} for log in logs if "loss" in log]
    if not losses:
        return []
    every = max(1, len(losses) // points)
    return losses[::every] + ([losses[-1]] if (len(losses) - 1) % every else [])


def render(result: dict) -> str:
    build, val, cfg = result["build"], result["validation"], result["config"]
    machine = build["machine"]
    lines = [
        "# The model organism: build and validation", "",
        "    " + result["command"], "",
        f"Built {result['built_at']} on {machine['cpu']} ({machine['cpu_count']} cores; {' '.join(machine['flags'])}), "
        f"torch {machine['torch']}, {machine['torch_threads']} threads, load average at the end of the build {machine['load_average']} "
        f"(a load above the thread count means other jobs shared the cores). Folder: `{result['output_dir']}`.", "",
        "| | |", "|---|---|",
        f"| model | LlamaForCausalLM, hidden {cfg['hidden_size']}, {cfg['num_layers']} layers, {cfg['num_heads']} heads ({cfg['num_kv_heads']} kv), MLP {cfg['intermediate_size']} |",
        f"| parameters | {build['parameters']:,} |",
        f"| tokenizer | byte-level BPE, {build['vocab_size']} tokens, digits single tokens, trained on {cfg['tokenizer_problems']} problems |",
        f"| training data | {', '.join(cfg['data'])} ({build['examples']} examples, {cfg['epochs']} epoch) |",
        f"| training | lr {cfg['learning_rate']} {cfg['lr_scheduler']}, batch {cfg['batch_size']}, {build['optimizer_steps']} steps, bf16 autocast {build['bf16_autocast']}, mean loss over the run {build['train_loss']:.3f} |",
        f"| tokens trained | {build['train_tokens']:,.0f} ({build['response_tokens']:,.0f} scored) |",
        f"| training tokens/s | {build.get('train_tokens_per_s', 'n/a (resumed build)')} |",
        f"| build seconds | {build['seconds']['build']} (tokenizer {build['seconds']['tokenizer']}, training {build['seconds']['training']}) = {build['seconds']['build'] / 60:.1f} min |",
        f"| CPU seconds of the build process | {build.get('cpu_seconds', 'n/a')} (at {machine['torch_threads']} thread(s): what the build costs without other jobs on the cores) |",
        "", f"## Validation (greedy, `{val['set']}`)", "",
        f"Accuracy **{100 * val['accuracy']:.1f} %** [{100 * val['ci_low']:.1f}, {100 * val['ci_high']:.1f}] ({val['correct']}/{val['total']}); "
        f"{val['truncated']} responses cut at {cfg['validation_max_new_tokens']} tokens; {val['seconds']} s for {val['generated_tokens']} tokens.", "",
        "| chain length | problems | accuracy |", "|---|---|---|",
    ]
    lines += [f"| {n} | {v['problems']} | {100 * v['accuracy']:.1f} % |" for n, v in val["by_chain_length"].items()]
    lines += ["", f"First wrong step of the {val['errors']} errors (exact localizer): "
              + ", ".join(f"step {k}: {v}" for k, v in val["first_wrong_step"].items())
              + f"; **{100 * (val['errors_first_wrong_after_step_1'] or 0):.0f} %** of errors start after step 1.", "",
              "Training loss (per scored token; with score_prompt the question is scored too): " + ", ".join(f"step {p['step']}: {p['loss']:.3f}" for p in result["loss_curve"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a PretrainConfig option (repeatable)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the build")
    parser.add_argument("--output-dir", default="", help="build here ('' = the alias's cache folder)")
    parser.add_argument("--overwrite", action="store_true", help="build again even when the folder holds a finished build")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "organism_build.json"))
    args = parser.parse_args()

    config = dataclasses.replace(parse_options(args.option), threads=args.threads, output_dir=args.output_dir, overwrite=args.overwrite)
    started = time.perf_counter()
    final = pretrain.build(config)
    out_dir = pretrain.output_dir(config)
    result = {
        "command": ".venv/bin/python bench/organism_build.py " + " ".join([f"--option {o}" for o in args.option] + [f"--threads {args.threads}"]
                                                                        + ([f"--output-dir {args.output_dir}"] if args.output_dir else []) + (["--overwrite"] if args.overwrite else [])),
        "built_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "output_dir": str(out_dir),
        "model_dir": str(final),
        "config": dataclasses.asdict(config),
        "build": json.loads((out_dir / "build.json").read_text(encoding="utf-8")),
        "validation": json.loads((out_dir / "validation.json").read_text(encoding="utf-8")),
        "loss_curve": loss_curve(out_dir / "metrics.jsonl"),
        "this_invocation_seconds": round(time.perf_counter() - started, 1),
        "load_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(render(result), encoding="utf-8")
    print(render(result))


if __name__ == "__main__":
    main()
