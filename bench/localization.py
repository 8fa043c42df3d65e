"""Rollout localization against ground truth on synthetic problems, and the data-pipeline funnel.

Samples step-wise answers to ``synthetic:`` problems (whose intermediate values
are known), locates the first wrong step of each wrong answer with the exact
localizer (ground truth) and with rollouts (linear scan and binary search),
then rectifies and builds pairs from the binary-search decisions. Reports:

- agreement with exact: share of samples where the rollout step equals the
  exact step, and share within one step;
- cost per localized sample: rollouts and generated tokens (binary vs linear);
- the funnel and the wall time of every stage; ``os.getloadavg()`` beside them
  (the CPU is shared).

    .venv/bin/python bench/localization.py --model smollm2-135m --problems 6 --k 2

Writes bench/results/localization.{json,md} and bench/results/pipeline_funnel.{json,md}.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stepdpo.config import parse_cli
from stepdpo.generation.base import GeneratorConfig, prompt_format
from stepdpo.generation.registry import build_generator
from stepdpo.localizers.exact import ExactLocalizer
from stepdpo.localizers.rollout import RolloutConfig, RolloutLocalizer
from stepdpo.problems import load_problems
from stepdpo.records import atomic_write_json, atomic_write_text
from stepdpo.rundir import Funnel
from stepdpo.stages import locate, pairs, rectify, sample


@dataclass
class BenchConfig:
    model: str = field(default="smollm2-135m", metadata={"help": "Policy: the SFT'd model folder when there is one, else the embedded model."})
    data: str = field(default="synthetic:train?n=200&min_steps=2&max_steps=4&seed=0", metadata={"help": "Synthetic problem spec."})
    problems: int = field(default=6, metadata={"help": "Problems sampled."})
    k: int = field(default=2, metadata={"help": "Samples per problem."})
    rollouts_per_prefix: int = field(default=4, metadata={"help": "Rollouts per tested prefix (m)."})
    max_wrong: int = field(default=8, metadata={"help": "Wrong samples localized (the cost grows with it)."})
    rectify_r: int = field(default=4, metadata={"help": "Continuations per located error."})
    max_new_tokens: int = field(default=96, metadata={"help": "Token limit of samples, rollouts and continuations."})
    batch_size: int = field(default=32, metadata={"help": "Generator batch size."})
    out: str = field(default="bench/results", metadata={"help": "Where the result files go."})


def agreement(exact: dict[str, int], found: dict[str, int]) -> dict[str, float | int]:
    keys = [key for key in exact if key in found]
    if not keys:
        return {"compared": 0, "exact_match": 0.0, "within_one": 0.0}
    return {"compared": len(keys),
            "exact_match": sum(found[key] == exact[key] for key in keys) / len(keys),
            "within_one": sum(abs(found[key] - exact[key]) <= 1 for key in keys) / len(keys),
            "mean_signed_offset": sum(found[key] - exact[key] for key in keys) / len(keys)}


def main(argv: list[str]) -> int:
    cfg = parse_cli(BenchConfig, argv, prog="bench/localization.py")
    gen_config = GeneratorConfig(model=cfg.model, batch_size=cfg.batch_size, device="cpu")
    load_before = os.getloadavg()
    timings: dict[str, float] = {}
    funnels: dict[str, dict] = {}

    started = time.perf_counter()
    generator = build_generator(gen_config)
    fmt = prompt_format(gen_config)
    timings["load_model_s"] = time.perf_counter() - started
    problems = load_problems(cfg.data, limit=cfg.problems, seed=0)
    by_id = {p.id: p for p in problems}

    started = time.perf_counter()
    sample_config = sample.SampleConfig(k=cfg.k, max_new_tokens=cfg.max_new_tokens, generator=gen_config)
    samples = sample.run(sample_config, problems, generator, fmt)
    timings["sample_s"] = time.perf_counter() - started
    stats = sample.summarize(samples, cfg.k)
    funnels["sample"] = asdict(Funnel("sample", len(problems), len(samples), extra={**stats, "wall_s": round(timings["sample_s"], 2)}))

    wrong = [s for s in samples if not s.correct][: cfg.max_wrong]
    items = [(by_id[s.problem_id], s) for s in wrong]
    exact = {x.sample_id: x.first_wrong_step for x in ExactLocalizer().locate_many(items) if x.first_wrong_step is not None}

    results: dict[str, dict] = {}
    located_by_search = {}
    for search in ("linear", "binary"):
        rollout = RolloutConfig(search=search, rollouts_per_prefix=cfg.rollouts_per_prefix, max_new_tokens=cfg.max_new_tokens)
        started = time.perf_counter()
        located = RolloutLocalizer(rollout, generator, fmt).locate_many(items)
        wall = time.perf_counter() - started
        timings[f"locate_{search}_s"] = wall
        located_by_search[search] = located
        found = {x.sample_id: x.first_wrong_step for x in located if x.first_wrong_step is not None}
        ok = [x for x in located if x.status == "ok"]
        results[search] = {**agreement(exact, found), "localized": len(ok),
                           "rollouts_per_localized": sum(x.rollouts for x in ok) / len(ok) if ok else 0.0,
                           "tokens_per_localized": sum(x.localizer_tokens for x in ok) / len(ok) if ok else 0.0,
                           "wall_s": round(wall, 2)}
        funnels[f"locate_{search}"] = asdict(locate.funnel_for(located, len(wrong), wall))

    located = located_by_search["binary"]
    started = time.perf_counter()
    rectify_config = rectify.RectifyConfig(r=cfg.rectify_r, max_new_tokens=cfg.max_new_tokens, generator=gen_config)
    rectified = rectify.run(rectify_config, by_id, {s.id: s for s in samples}, located, generator, fmt)
    timings["rectify_s"] = time.perf_counter() - started
    funnels["rectify"] = asdict(rectify.funnel_for(rectified, sum(x.status == "ok" for x in located), timings["rectify_s"]))

    started = time.perf_counter()
    pair_funnel = Funnel("pairs", records_in=len(rectified))
    step_pairs, dpo_pairs = pairs.run(pairs.PairsConfig(), by_id, samples, located, rectified, pair_funnel)
    with tempfile.TemporaryDirectory() as tmp:
        pairs.write_pairs(step_pairs, Path(tmp), "step_pairs")
    timings["pairs_s"] = time.perf_counter() - started
    pair_funnel.records_out = len(step_pairs)
    pair_funnel.extra = {"dpo_pairs": len(dpo_pairs), "wall_s": round(timings["pairs_s"], 2)}
    funnels["pairs"] = asdict(pair_funnel)

    env = {"model": cfg.model, "data": cfg.data, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
           "cpu_count": os.cpu_count(), "config": asdict(cfg)}
    out = Path(cfg.out)
    result = {"env": env, "sampling": stats, "wrong_localized": len(wrong), "exact_labels": len(exact),
              "exact_step_histogram": {str(k): sum(v == k for v in exact.values()) for k in sorted(set(exact.values()))},
              "rollout": results, "timings_s": {k: round(v, 2) for k, v in timings.items()}}
    atomic_write_json(out / "localization.json", result)
    atomic_write_json(out / "pipeline_funnel.json", {"env": env, "funnels": funnels, "timings_s": result["timings_s"]})
    rows = "\n".join(f"| {s} | {r['compared']} | {r['exact_match']:.2f} | {r['within_one']:.2f} | {r['rollouts_per_localized']:.1f} | "
                     f"{r['tokens_per_localized']:.0f} | {r['wall_s']:.1f} |" for s, r in results.items())
    atomic_write_text(out / "localization.md", (
        f"# Rollout localization vs exact (synthetic)\n\nmodel `{cfg.model}`, data `{cfg.data}`, {cfg.problems} problems x {cfg.k} samples, "
        f"m={cfg.rollouts_per_prefix}, max_new_tokens={cfg.max_new_tokens}; loadavg before {load_before}, after {env['loadavg_after']}.\n\n"
        f"sample accuracy {stats['accuracy']:.3f}; wrong samples localized {len(wrong)}; exact labels {len(exact)} "
        f"(first-wrong-step histogram {result['exact_step_histogram']}).\n\n"
        "| search | compared | exact match | within 1 | rollouts / sample | tokens / sample | wall s |\n|---|---|---|---|---|---|---|\n"
        f"{rows}\n\nCommand: `.venv/bin/python bench/localization.py {' '.join(argv)}`\n"))
    atomic_write_text(out / "pipeline_funnel.md", "# Pipeline funnel (bench/localization.py)\n\n" + "\n\n".join(
        "```\n" + Funnel(**f).render() + "\n```" for f in funnels.values()) + f"\n\ntimings (s): {result['timings_s']}\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
