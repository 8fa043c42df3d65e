"""What per-row seeded sampling costs the hf backend, per generated token.

    .venv/bin/python bench/keyed_sampler.py     # writes bench/results/keyed_sampler.{json,md}

``HFGenerator`` samples each row from its own seed (``KeyedSampler``: the
temperature/top-p warpers (top-p sorted by numpy on a CPU, also timed with torch.sort), then Gumbel-max with noise from a generator reseeded
per row and position). Before, generate sampled every row of a batch from one
RNG (warpers, softmax, one ``torch.multinomial``). This times both on the same
scores (SmolLM2's vocabulary, B rows, T=0.8, top_p=0.95), and, for scale, one
greedy decoding step of the embedded model on B rows with a ~100-token prompt.
The CPU is shared with other work: the load average is recorded beside every number.
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

from stepdpo.generation.base import SamplingParams
from stepdpo.generation.hf import KeyedSampler
from transformers import TopPLogitsWarper
from stepdpo.hardware import cpu_info

ROOT = Path(__file__).resolve().parents[1]


def cpu_description() -> dict:
    model, flags = cpu_info()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma")
    return {"model": model, "flags": [f for f in wanted if f in flags], "cores": os.cpu_count()}


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def shared_rng_step(params: SamplingParams, scores: torch.Tensor) -> torch.Tensor:
    """generate's own sampling step before the change: warpers, softmax, one multinomial for the batch."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    ids = torch.zeros((scores.shape[0], 1), dtype=torch.long)
    warped = TopPLogitsWarper(params.top_p)(ids, TemperatureLogitsWarper(params.temperature)(ids, scores))
    return torch.multinomial(torch.softmax(warped, dim=-1), 1)


def decode_step_ms(rows: int, repeats: int) -> float:
    """Milliseconds per generated token of the embedded model, greedy, on ``rows`` rows of a ~100-token prompt."""
    from stepdpo.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m", dtype="float32", device="cpu").eval()
    ids = tokenizer(["Natalia sold clips to 48 of her friends in April. " * 8] * rows, return_tensors="pt")["input_ids"]
    steps = 32

    def run():
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=steps,
                           min_new_tokens=steps, pad_token_id=tokenizer.pad_token_id)

    return median_ms(run, max(1, repeats // 20)) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-model", action="store_true", help="Skip the embedded model's decoding step.")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = SamplingParams(temperature=0.8, top_p=0.95)
    rows_out = []
    for rows in args.rows:
        scores = torch.randn(rows, args.vocab, generator=torch.Generator().manual_seed(0)) * 3
        ids = torch.zeros((rows, 120), dtype=torch.long)
        sampler = KeyedSampler(params, list(range(rows)), prompt_width=100, device="cpu")
        # The same sampler with transformers' own top-p warper (torch.sort) instead of the numpy-sorted one.
        torch_sorted = KeyedSampler(params, list(range(rows)), prompt_width=100, device="cpu")
        torch_sorted.warpers[-1] = TopPLogitsWarper(params.top_p)
        load = os.getloadavg()[0]
        row = {"rows": rows, "load_before": round(load, 2),
               "keyed_ms": round(median_ms(lambda: sampler(ids, scores), args.repeats), 3),
               "keyed_torch_sort_ms": round(median_ms(lambda: torch_sorted(ids, scores), args.repeats), 3),
               "shared_rng_ms": round(median_ms(lambda: shared_rng_step(params, scores), args.repeats), 3)}
        if not args.no_model:
            row["decode_step_ms"] = round(decode_step_ms(rows, args.repeats), 2)
            # A sampled step now costs a greedy step plus the keyed sampler.
            row["keyed_share_of_step"] = round(row["keyed_ms"] / (row["decode_step_ms"] + row["keyed_ms"]), 4)
        row["load_after"] = round(os.getloadavg()[0], 2)
        rows_out.append(row)
        print(row, flush=True)
    result = {"cpu": cpu_description(), "torch": torch.__version__, "threads": args.threads, "vocab": args.vocab,
              "params": {"temperature": params.temperature, "top_p": params.top_p}, "repeats": args.repeats, "rows": rows_out,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "keyed_sampler.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = ["# Per-row seeded sampling (KeyedSampler) vs one shared RNG, per generated token", "",
             f"CPU {result['cpu']['model']} ({', '.join(result['cpu']['flags'])}; {result['cpu']['cores']} cores), "
             f"torch {torch.__version__}, {args.threads} thread(s), vocab {args.vocab}, T={params.temperature}, "
             f"top_p={params.top_p}, median of {args.repeats} calls; the CPU was shared (load average per row).", "",
             "`keyed`: the hf backend's sampler (top-p sorted by numpy on a CPU); `keyed, torch.sort`: the same with transformers' "
             "TopPLogitsWarper, as before; `shared-RNG`: generate's own sampling (transformers' warpers, one multinomial).", "",
             "| rows | keyed ms/token | keyed, torch.sort ms/token | shared-RNG ms/token | embedded model decode ms/token | keyed share of a step | load before/after |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows_out:
        lines.append(f"| {row['rows']} | {row['keyed_ms']} | {row['keyed_torch_sort_ms']} | {row['shared_rng_ms']} | {row.get('decode_step_ms', '-')} | "
                     f"{row.get('keyed_share_of_step', '-')} | {row['load_before']} / {row['load_after']} |")
    lines += ["", "Command: `" + " ".join([".venv/bin/python", "bench/keyed_sampler.py", *sys.argv[1:]]) + "`", ""]
    (out / "keyed_sampler.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
