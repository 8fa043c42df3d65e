"""How fast would an organism of another shape generate? Timed before building one.

    .venv/bin/python bench/organism_shapes.py --threads 2
    .venv/bin/python bench/organism_shapes.py --shape num_kv_heads=3 --shape intermediate_size=512

Building an organism takes about 15 min and every organism number depends on it,
so this times the shapes first: each shape is a freshly initialised
``LlamaForCausalLM`` (``stepdpo.stages.pretrain.build_model``, the organism's own
tokenizer), decoded by the hf backend (own loop, batch 64, T 0.8, top-p 0.95)
on the side-by-side's prompts with end-of-sequence switched off, so that every
row of every shape generates exactly ``--tokens`` tokens and the shapes do the
same work. A random model's speed is its shape's: the built organism is timed
the same way beside them (``built organism``) to show it.

Timings run in rounds (each round times every shape once); a shape's speed is
its median, relative to the default shape's. Writes
bench/results/organism_shapes.{json,md} with the machine (CPU, flags, threads,
load). The estimate against SmolLM2-135M scales the organism's measured
side-by-side speed (bench/results/generation_side_by_side_2threads.json) by a
shape's relative speed: an estimate, not a measurement; a shape's accuracy is
not known until it is built.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from stepdpo.errors import ConfigError
from stepdpo.generation.base import GeneratorConfig, SamplingParams, prompt_format
from stepdpo.generation.hf import HFGenerator
from stepdpo.models import ORGANISM_ALIAS, load_model, load_tokenizer
from stepdpo.problems import load_problems
from stepdpo.stages import pretrain

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from organism_build import parse_options  # noqa: E402  (a sibling script, not a package)

SIDE_BY_SIDE = ROOT / "bench" / "results" / "generation_side_by_side_2threads.json"
DEFAULT_SHAPES = ["num_kv_heads=3", "intermediate_size=512", "num_layers=3"]
PROBLEMS = "synthetic:train?n={n}&min_steps=3&max_steps=5&difficulty=0&seed=1000"  # bench/generation.py --side-by-side's, n=64 there
BUILT = "built organism"


def shape_config(shape: str) -> pretrain.PretrainConfig:
    """``key=value[,key=value]`` onto the default organism config, as bench/organism_build.py's ``--option`` reads them."""
    try:
        config = parse_options(shape.split(","))
        pretrain.check_config(config)
    except ConfigError as error:
        raise SystemExit(f"--shape {shape!r}: {error}") from error
    return config


def describe(config) -> str:
    """A model's sizes from its transformers config."""
    return (f"hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads ({config.num_key_value_heads} kv), "
            f"MLP {config.intermediate_size}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", action="append", default=None, help=f"a shape to time, as size=integer pairs joined by commas (default: {' '.join(DEFAULT_SHAPES)})")
    parser.add_argument("--model", default=ORGANISM_ALIAS, help="the built organism (alias or folder): its tokenizer, and its trained weights timed beside the shapes")
    parser.add_argument("--prompts", type=int, default=64, help="how many of the side-by-side's prompts")
    parser.add_argument("--tokens", type=int, default=96, help="tokens every row generates (the built organism's completions average 96 on these prompts)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="rounds; each shape's time is its median")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "organism_shapes.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = load_tokenizer(args.model)
    problems = load_problems(PROBLEMS.format(n=args.prompts))
    prompts = [prompt_format(GeneratorConfig(model=args.model)).prompt(p.question) for p in problems]
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=args.tokens, seed=0)
    shapes = {"default": pretrain.PretrainConfig(), **{shape: shape_config(shape) for shape in args.shape or DEFAULT_SHAPES}}
    models = {BUILT: load_model(args.model)} | {name: pretrain.build_model(config, tokenizer).eval() for name, config in shapes.items()}
    generators = {}
    for name, model in models.items():
        gen = HFGenerator.from_model(model, tokenizer, GeneratorConfig(model=args.model, dtype="float32", batch_size=args.batch))
        gen.eos_ids = []  # every row runs to --tokens: the shapes do the same work whatever their weights say
        gen.generate(prompts, params)  # warm-up: the first run of each batch shape pays one-off costs
        generators[name] = gen
    seconds: dict[str, list[float]] = {name: [] for name in models}
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    for _ in range(args.repeats):
        for name, gen in generators.items():
            start = time.perf_counter()
            out = gen.generate(prompts, params)
            seconds[name].append(round(time.perf_counter() - start, 3))
            assert all(c.num_tokens == args.tokens for cs in out for c in cs), f"{name}: a row ended before {args.tokens} tokens"

    side = json.loads(SIDE_BY_SIDE.read_text()) if SIDE_BY_SIDE.is_file() else None
    organism_tok_s = reference_tok_s = None
    if side:
        first, last = side["rows"][0]["model"], side["rows"][-1]["model"]  # the organism, then the reference model
        organism_tok_s = max(r["tok_per_s"] for r in side["rows"] if r["model"] == first)
        reference_tok_s = max(r["tok_per_s"] for r in side["rows"] if r["model"] == last)
    default_s = statistics.median(seconds["default"])
    rows = []
    for name, model in models.items():
        median = statistics.median(seconds[name])
        relative = default_s / median
        rows.append({
            "shape": name, "sizes": describe(model.config), "parameters": sum(p.numel() for p in model.parameters()),
            "seconds_each": seconds[name], "tok_per_s": round(len(prompts) * args.tokens / median, 1), "relative_to_default": round(relative, 3),
            "estimated_x_smollm2": round(organism_tok_s * relative / reference_tok_s, 1) if side else None,
        })
    result = {
        "command": f".venv/bin/python bench/organism_shapes.py --threads {args.threads} --prompts {args.prompts} --tokens {args.tokens} --batch {args.batch} --repeats {args.repeats}"
                   + "".join(f" --shape {s}" for s in args.shape or []),
        "machine": pretrain.machine() | {"load_at_start": load_at_start, "load_at_end": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"problems": PROBLEMS.format(n=args.prompts), "tokens": args.tokens, "batch": args.batch, "temperature": 0.8, "top_p": 0.95, "dtype": "float32", "decode_loop": "own"},
        "side_by_side": {"file": str(SIDE_BY_SIDE.relative_to(ROOT)), "organism_tok_s": organism_tok_s, "reference_tok_s": reference_tok_s} if side else None,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(render(result), encoding="utf-8")
    for row in rows:
        print(row, flush=True)


def render(result: dict) -> str:
    machine, settings, side = result["machine"], result["settings"], result["side_by_side"]
    lines = [
        "# Organism shapes: generation speed before building one", "",
        "    " + result["command"], "",
        f"CPU: {machine['cpu']}, {machine['cpu_count']} cores, flags {' '.join(machine['flags'])}; torch {machine['torch']}, "
        f"{machine['torch_threads']} threads; load average at start {machine['load_at_start']}, at end {machine['load_at_end']} "
        "(the benchmark's own threads make a load of about their number).", "",
        f"Each shape freshly initialised (random weights), prompts `{settings['problems']}` (the side-by-side's), batch {settings['batch']}, T {settings['temperature']}, "
        f"top-p {settings['top_p']}, {settings['dtype']}, the own decoding loop, end-of-sequence off: every row generates exactly "
        f"{settings['tokens']} tokens. Seconds: median of the rounds (each round times every shape once). `built organism` is the trained "
        "default shape timed the same way: random weights time like trained ones.", "",
    ]
    if side:
        lines += [f"Estimated x SmolLM2-135M: the organism's best side-by-side speed ({side['organism_tok_s']} tok/s, `{side['file']}`) "
                  f"times the shape's speed relative to the default, over SmolLM2-135M's best there ({side['reference_tok_s']} tok/s). "
                  "An estimate: only a built organism measures it, and only a build says a shape's accuracy.", ""]
    lines += ["| shape | sizes | parameters | seconds (each round) | tok/s | relative to default | estimated x SmolLM2 |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['shape']} | {r['sizes']} | {r['parameters'] / 1e6:.2f} M | {', '.join(map(str, r['seconds_each']))} | {r['tok_per_s']} | "
                     f"{r['relative_to_default']} | {r['estimated_x_smollm2'] if r['estimated_x_smollm2'] is not None else ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
