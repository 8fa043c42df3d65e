"""Generated tokens per second of the hf backend: the embedded model against a naive loop, or models side by side.

    .venv/bin/python bench/generation.py            # writes bench/results/generation.json
    .venv/bin/python bench/generation.py --side-by-side organism smollm2-135m
                                                    # writes bench/results/generation_side_by_side.{json,md}

Side by side (issue 15's setting): every model answers the same 64 synthetic
validation problems (3-5 steps, the step prompt in its own chat template), batch
64, 160 new tokens, T 0.8, top-p 0.95, 2 threads, once with ``dtype=auto``
(bfloat16 autocast where the CPU has avx512_bf16 or amx_bf16) and once in
float32; each timing after a short warm-up, tokens counted up to end-of-sequence.

Prompts are GSM8K test questions in SmolLM2's chat template (about 100
tokens); sampling at T=0.8, max_new_tokens 128. For each batch size B and
samples per prompt n, ``HFGenerator`` generates ``max(B, n)`` rows (B/n
prompts x n samples per batch), so every batch is full once. The naive
baseline is what a first script does: one prompt at a time,
``model.generate(..., num_return_sequences=n)``, float32, no batching across
prompts. Throughput counts generated tokens up to end-of-sequence (padding
after a finished row is not counted). A short torch.profiler trace of one
batch says where the time goes. The CPU is shared with other work: the load
average is recorded beside every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch

from stepdpo import hardware
from stepdpo.generation.base import GeneratorConfig, SamplingParams
from stepdpo.generation.hf import HFGenerator, cpu_supports_bf16
from stepdpo.models import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def make_prompts(tokenizer, count: int) -> list[str]:
    questions = [json.loads(line)["question"] for line in GSM8K.read_text(encoding="utf-8").splitlines()[:count]]
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": q + " Reason step by step."}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]


def naive(model, tokenizer, prompts: list[str], n: int, max_new_tokens: int) -> dict:
    """One prompt at a time with num_return_sequences=n, float32."""
    tokens = 0
    start = time.perf_counter()
    torch.manual_seed(0)
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.8, top_k=0,
                max_new_tokens=max_new_tokens, num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
            )
        for row in out[:, ids.shape[1] :].tolist():
            tokens += next((i + 1 for i, t in enumerate(row) if t == tokenizer.eos_token_id), len(row))
    seconds = time.perf_counter() - start
    return {"rows": len(prompts) * n, "tokens": tokens, "seconds": round(seconds, 2), "tok_per_s": round(tokens / seconds, 1), "load": os.getloadavg()[0]}


def ours(gen: HFGenerator, prompts: list[str], n: int, max_new_tokens: int) -> dict:
    params = SamplingParams(n=n, temperature=0.8, max_new_tokens=max_new_tokens, seed=0)
    start = time.perf_counter()
    out = gen.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(c.num_tokens for cs in out for c in cs)
    return {"rows": len(prompts) * n, "tokens": tokens, "seconds": round(seconds, 2), "tok_per_s": round(tokens / seconds, 1), "load": os.getloadavg()[0]}


def profile(gen: HFGenerator, prompts: list[str], steps: int, params: SamplingParams | None = None, warm_up: bool = True) -> dict:
    """Self CPU time by operator group over one batch of ``steps`` new tokens (T 0.8 unless ``params`` says otherwise)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    params = params or SamplingParams(temperature=0.8, max_new_tokens=steps, seed=0)
    if warm_up:
        gen.generate(prompts, params)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        gen.generate(prompts, params)
        wall = time.perf_counter() - start
    groups: dict[str, float] = defaultdict(float)
    vocab = gen.model.config.vocab_size
    for event in prof.key_averages(group_by_input_shape=True):
        name, shapes = event.key, str(event.input_shapes)
        seconds = event.self_cpu_time_total / 1e6
        if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"):
            groups["vocab projection (lm_head matmul)" if str(vocab) in shapes else "other matmuls (layers)"] += seconds
        elif "attention" in name or "sdpa" in name or "softmax" in name and "_softmax" not in name:
            groups["attention"] += seconds
        elif name in ("aten::multinomial", "aten::sort", "aten::topk", "aten::_softmax", "aten::cumsum", "aten::div_", "aten::div", "aten::exponential_"):
            groups["sampling (softmax, multinomial, sort)"] += seconds
        elif name in ("aten::cat", "aten::index_copy_", "aten::copy_", "aten::index", "aten::slice", "aten::where"):
            groups["cache / copies / indexing"] += seconds
        else:
            groups["other ops"] += seconds
    total = sum(groups.values())
    return {
        "rows": len(prompts),
        "new_tokens": steps,
        "wall_s": round(wall, 2),
        "profiled_op_s": round(total, 2),
        "python_and_framework_overhead_s": round(max(0.0, wall - total), 2),
        "by_group_s": {k: round(v, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
    }


SIDE_BY_SIDE_PROBLEMS = "synthetic:train?n=64&min_steps=3&max_steps=5&difficulty=0&seed=1000"


def cpu_info() -> dict:
    """CPU model, the flags that decide bf16 speed, core count and load: what a timing needs beside it."""
    model, flags = hardware.cpu_info()
    return {"cpu": model, "cores": os.cpu_count(), "flags": hardware.speed_flags(flags),
            "avx512_bf16": cpu_supports_bf16(), "platform": platform.platform(), "torch": torch.__version__}


def side_by_side(models: list[str], args: argparse.Namespace, save: Callable[[dict], None]) -> dict:
    """Each model on the same problems and settings, in each dtype and loop; returns the result dict.

    Timings run in rounds: each round times every setting once, so a change in
    the machine's speed during the run (other tenants, clock) touches every model
    alike, and each round gives its own ratio of the first model to the last.
    ``save`` gets the timings before any profile runs (a profile of a large model
    can take more memory than the machine has), and again with the profiles.
    """
    from stepdpo.generation.base import prompt_format
    from stepdpo.problems import load_problems

    problems = load_problems(args.problems)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=0)
    settings: list[tuple[dict, HFGenerator, list[str]]] = []
    for name in models:
        tokenizer, model = load_tokenizer(name), load_model(name)
        fmt = prompt_format(GeneratorConfig(model=name))
        prompts = [fmt.prompt(p.question) for p in problems]
        lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        for dtype in args.dtypes:
            for loop in args.decode_loops:
                gen = HFGenerator.from_model(model, tokenizer, GeneratorConfig(model=name, dtype=dtype, batch_size=args.batch, decode_loop=loop))
                # Warm-up, the whole batch: the first run of each batch shape pays one-off costs (kernels chosen, buffers allocated).
                gen.generate(prompts, params)
                row = {"model": name, "dtype": dtype, "autocast": str(gen.autocast_dtype), "decode_loop": loop,
                       "parameters": sum(p.numel() for p in model.parameters()),
                       "prompts": len(prompts), "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1), "seconds_each": [], "load_each": []}
                settings.append((row, gen, prompts))
    completions: dict[tuple[str, str, str], list] = {}
    for _ in range(args.repeats):
        for row, gen, prompts in settings:
            row["load_each"].append(round(os.getloadavg()[0], 2))
            start = time.perf_counter()
            out = gen.generate(prompts, params)
            row["seconds_each"].append(round(time.perf_counter() - start, 3))
            completions[(row["model"], row["dtype"], row["decode_loop"])] = [c for cs in out for c in cs]
    rows = [row for row, _, _ in settings]
    for row in rows:
        done = completions[(row["model"], row["dtype"], row["decode_loop"])]
        row["tokens"] = sum(c.num_tokens for c in done)
        row["ended_by_eos"] = sum(c.finish_reason != "length" for c in done)
        seconds = statistics.median(row["seconds_each"])
        row["seconds"], row["tok_per_s"] = round(seconds, 2), round(row["tokens"] / seconds, 1)
        row["load_before"], row["load_after"] = row["load_each"][0], row["load_each"][-1]
        own, generate = (completions.get((row["model"], row["dtype"], loop)) for loop in ("own", "generate"))
        if own is not None and generate is not None:
            row["own_equals_generate"] = f"{sum(a == b for a, b in zip(own, generate))}/{len(own)}"
        print(row, flush=True)
    reference = {(row["dtype"], row["decode_loop"]): row["tok_per_s"] for row in rows if row["model"] == models[-1]}
    for row in rows:
        same_setting = reference.get((row["dtype"], row["decode_loop"]))
        row["x_last_model_same_dtype"] = round(row["tok_per_s"] / same_setting, 1) if same_setting else None

    def best(model: str, round_index: int | None = None) -> float:
        return max(row["tokens"] / (statistics.median(row["seconds_each"]) if round_index is None else row["seconds_each"][round_index])
                   for row in rows if row["model"] == model)

    # Every model but the reference (the last); the first model's ratios are also the headline ones.
    each = {model: {"median": round(best(model) / best(models[-1]), 1), "by_round": [round(best(model, r) / best(models[-1], r), 1) for r in range(args.repeats)]}
            for model in dict.fromkeys(models[:-1] or models)}  # one model alone is its own reference
    results = {"rows": rows, "best_vs_best": each[models[0]]["median"], "best_vs_best_by_round": each[models[0]]["by_round"], "best_vs_best_each": each}
    save(results)
    for row, gen, prompts in settings:
        if row["model"] in args.profile:
            row["profile"] = profile(gen, prompts, steps=args.max_new_tokens, params=params, warm_up=False)  # the timed rounds warmed it up
            print("profile", row["model"], row["dtype"], row["decode_loop"], row["profile"], flush=True)
            save(results)
    return results


def write_side_by_side(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Generation speed side by side (hf backend, CPU)", "",
        "Rerun (e.g. on a quiet machine):", "", f"    {results['command']}", "",
        f"CPU: {results['machine']['cpu']}, {results['machine']['cores']} cores, flags {' '.join(results['machine']['flags'])}; "
        f"torch {results['machine']['torch']}, {results['threads']} threads. Load average (1, 5, 15 min) at start "
        f"{results['load_at_start']}, at end {results['load_at_end']} (the benchmark's own threads make a load of about their number; more means other jobs shared the cores: the load before each setting's timings is beside it).", "",
        f"Prompts: {results['settings']['problems']} (the step prompt in each model's chat template); batch {results['settings']['batch']}, "
        f"{results['settings']['max_new_tokens']} new tokens, T {results['settings']['temperature']}, top-p {results['settings']['top_p']}; "
        f"seconds are the median of {results['settings'].get('repeats', 1)} timing(s) of each setting, taken in rounds (each round times every setting once).", "",
        "`decode loop`: `own` is the hf backend's default (finished rows leave the batch, the KV cache grows in place), "
        "`generate` is transformers' `model.generate`; `same completions` counts the prompts whose completion the two loops agree on.", "",
        "| model | parameters | dtype (autocast) | decode loop | prompt tokens | generated tokens | ended by EOS | seconds | tok/s | x last model, same dtype and loop | same completions | load before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f} M | {r['dtype']} ({r['autocast']}) | {r.get('decode_loop', 'generate')} | {r['prompt_tokens_mean']} | {r['tokens']} | "
                     f"{r['ended_by_eos']}/{r['prompts']} | {r['seconds']} | {r['tok_per_s']} | {r['x_last_model_same_dtype']} | {r.get('own_equals_generate', '')} | "
                     f"{r['load_before']}/{r['load_after']} |")
    lines += ["", f"Best setting of the first model over the best of the last: **{results['best_vs_best']}x** (medians)."]
    if results.get("best_vs_best_by_round"):
        lines += ["", f"The same ratio in each round: {', '.join(f'{x}x' for x in results['best_vs_best_by_round'])}."]
    for model, ratio in list(results.get("best_vs_best_each", {}).items())[1:]:
        lines += ["", f"`{model}`'s best setting over the best of the last: **{ratio['median']}x** (medians; each round: {', '.join(f'{x}x' for x in ratio['by_round'])})."]
    profiled = [r for r in results["rows"] if r.get("profile")]
    if profiled:
        groups = list(dict.fromkeys(g for r in profiled for g in r["profile"]["by_group_s"]))
        lines += ["", "## Where the time goes", "",
                  "Self CPU seconds by operator group (torch.profiler, one more run of the whole batch under the profiler, "
                  "which slows it); overhead is wall time outside any profiled operator (Python, transformers' modules, numpy's top-p sort).", "",
                  "| model | dtype | loop | wall s | " + " | ".join(groups) + " | overhead |", "|---|---|---|---|" + "---|" * (len(groups) + 1)]
        for r in profiled:
            p = r["profile"]
            lines.append(f"| {r['model']} | {r['dtype']} | {r['decode_loop']} | {p['wall_s']} | "
                         + " | ".join(f"{p['by_group_s'].get(g, 0.0):.2f} ({p['by_group_s'].get(g, 0.0) / p['wall_s']:.0%})" for g in groups)
                         + f" | {p['python_and_framework_overhead_s']:.2f} ({p['python_and_framework_overhead_s'] / p['wall_s']:.0%}) |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side-by-side", nargs="+", metavar="MODEL", help="time these models (aliases or paths) side by side instead; the last is the reference")
    parser.add_argument("--problems", default=SIDE_BY_SIDE_PROBLEMS, help="side by side: the prompts' problems")
    parser.add_argument("--batch", type=int, default=64, help="side by side: rows per batch")
    parser.add_argument("--temperature", type=float, default=0.8, help="side by side: sampling temperature")
    parser.add_argument("--top-p", type=float, default=0.95, help="side by side: nucleus threshold")
    parser.add_argument("--dtypes", nargs="+", default=["auto", "float32"], help="side by side: generator dtypes to time")
    parser.add_argument("--repeats", type=int, default=1, help="side by side: time each setting this many times and report the median")
    parser.add_argument("--profile", nargs="*", default=[], metavar="MODEL", help="side by side: also profile one run of each setting of these models by operator group (after the timings are written; a large model's profile takes many GiB)")
    parser.add_argument("--decode-loops", nargs="+", default=["own", "generate"], choices=["own", "generate"], help="side by side: hf decoding loops to time")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 128; 160 side by side")
    parser.add_argument("--naive-prompts", type=int, default=3, help="prompts in the naive baseline, per n")
    parser.add_argument("--bf16-batch", type=int, default=32, help="also time bf16 autocast at this batch size (0: skip)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 avoids spin-waiting threads on a crowded CPU")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "generation.json"))
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side_by_side:
        args.max_new_tokens = args.max_new_tokens or 160
        results = {
            "command": f".venv/bin/python bench/generation.py --side-by-side {' '.join(args.side_by_side)} --threads {args.threads} --batch {args.batch} "
                       f"--max-new-tokens {args.max_new_tokens} --temperature {args.temperature} --top-p {args.top_p} --dtypes {' '.join(args.dtypes)} "
                       f"--decode-loops {' '.join(args.decode_loops)} --repeats {args.repeats}{' --profile ' + ' '.join(args.profile) if args.profile else ''} --out {args.out}",
            "machine": cpu_info(), "threads": torch.get_num_threads(), "load_at_start": [round(x, 2) for x in os.getloadavg()],
            "settings": {"problems": args.problems, "batch": args.batch, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p, "repeats": args.repeats},
        }
        out = Path(args.out).with_name("generation_side_by_side.json") if args.out.endswith("generation.json") else Path(args.out)

        def save(timed: dict) -> None:
            results.update(timed, load_at_end=[round(x, 2) for x in os.getloadavg()])
            write_side_by_side(results, out)

        side_by_side(args.side_by_side, args, save)
        print(f"best vs best: {results['best_vs_best']}x -> {out}")
        return
    args.max_new_tokens = args.max_new_tokens or 128
    tokenizer = load_tokenizer("smollm2-135m")
    prompts = make_prompts(tokenizer, max(args.batch_sizes) * 2)
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    model = load_model("smollm2-135m")
    results: dict = {
        "command": "python bench/generation.py " + " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items() if k != "out"),
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(), "avx512_bf16": cpu_supports_bf16(), "torch": torch.__version__},
        "prompt_tokens": {"mean": round(sum(lengths) / len(lengths), 1), "min": min(lengths), "max": max(lengths)},
        "max_new_tokens": args.max_new_tokens,
        "temperature": 0.8,
        "load_at_start": os.getloadavg(),
        "naive": {},
        "hf": {},
    }
    gen = HFGenerator.from_model(model, tokenizer, GeneratorConfig(dtype="float32"))
    gen.generate(prompts[:2], SamplingParams(max_new_tokens=4))  # warm-up: lazy initialisation is not throughput
    for n in args.ns:
        results["naive"][f"n={n}"] = naive(model, tokenizer, prompts[: args.naive_prompts], n, args.max_new_tokens)
        print("naive", n, results["naive"][f"n={n}"], flush=True)
    for n in args.ns:
        for batch in args.batch_sizes:
            gen.config.batch_size = batch
            rows = max(batch, n)
            key = f"n={n},batch={batch}"
            results["hf"][key] = ours(gen, prompts[: rows // n], n, args.max_new_tokens)
            print("hf", key, results["hf"][key], flush=True)
    if args.bf16_batch:
        bf16 = HFGenerator.from_model(model, tokenizer, GeneratorConfig(dtype="bfloat16", batch_size=args.bf16_batch))
        results["hf_bf16_autocast"] = {f"n=1,batch={args.bf16_batch}": ours(bf16, prompts[: args.bf16_batch], 1, args.max_new_tokens)}
        print("bf16", results["hf_bf16_autocast"], flush=True)
    gen.config.batch_size = 32
    results["profile"] = profile(gen, prompts[:32], steps=16)
    print("profile", results["profile"], flush=True)
    ratios = {}
    for n in args.ns:
        best = max((v for k, v in results["hf"].items() if k.startswith(f"n={n},")), key=lambda v: v["tok_per_s"])
        ratios[f"n={n}"] = round(best["tok_per_s"] / results["naive"][f"n={n}"]["tok_per_s"], 2)
    results["best_over_naive"] = ratios
    results["load_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
