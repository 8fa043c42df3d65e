"""How much data the old grading rule got wrong where answers get cut off (issue 14, item 1).

The old rule graded every response by ``extract_answer`` with the last-number fallback and
ignored ``finish_reason``: a response cut off at the token limit, or ended without a stated
answer, counted as right when its last number (even the ``2`` of a trailing ``Step 2:``)
equalled gold. The new rule (:func:`stepdpo.grading.grade_for_data`) counts a response as
right only when it states a final answer and the model ended it itself.

This script runs the data stages (sample -> rollout localization -> rectify -> pairs ->
SCDPO with judge-free pairs) twice on a model that is often cut off (default: the raw
embedded model, which hits the token limit on most answers), once with the old rule and
once with the new, and counts what changes. Both passes see the same model text: a replay
generator keys every completion by (prompt, sampling settings, how often this prompt was
asked before in the pass) and generates only what the first pass did not ask for (the
rule changes which prefixes the searches test and which errors get rectified). Rollout
verdicts are also re-graded directly: every tested prefix's rollouts under both rules.

Only the grading differs between the passes; the rest is today's code in both (SCDPO stops
where the model stopped, and a step cut at the token limit ends a continuation ungraded;
the old code also graded such a step by its stated answer, so the SCDPO negatives of the
old pass are, if anything, fewer than the old code made).

    OMP_NUM_THREADS=1 .venv/bin/python bench/grading_damage.py

writes bench/results/grading_damage.json and .md (the CPU model, its flags and the load
average are recorded beside the numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

RESULTS = Path(__file__).resolve().parent / "results"

# ---------------------------------------------------------------------------
# The old rule, kept here (not in src) to measure what it did


_OLD_NUMBER_RE = re.compile(r"(?:(?<![\w.)])-)?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")


def old_extract_answer(response: str) -> str | None:
    """``extract_answer`` before issue 14: a stated answer, else the last number anywhere (step markers included)."""
    from stepdpo.grading import extract_answer

    stated = extract_answer(response, last_number_fallback=False)
    if stated is not None:
        return stated
    last = None
    for last in _OLD_NUMBER_RE.finditer(response):
        pass
    return last.group(0) if last is not None else None


def old_grade_for_data(items: Iterable[tuple[str, str, str]], *, timeout_s: float = 5.0) -> list[bool]:
    """The old data grading: the finish reason was ignored, the last number counted."""
    from stepdpo.grading import grade_many

    return grade_many(((old_extract_answer(response), gold) for response, _, gold in items), timeout_s=timeout_s)


GRADED_MODULES = ("stepdpo.generation.graded", "stepdpo.stages.scdpo")
"""Where the stages grade: generate_graded (sampling, rollouts, rectification, judge-free rollouts) and SCDPO's continuations."""


@contextlib.contextmanager
def old_rule() -> Iterator[None]:
    """Every stage that builds data grades by the old rule inside this block."""
    import importlib

    modules = [importlib.import_module(name) for name in GRADED_MODULES]
    saved = [module.grade_for_data for module in modules]
    for module in modules:
        module.grade_for_data = old_grade_for_data
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.grade_for_data = original


# ---------------------------------------------------------------------------
# One model text for both passes


@dataclass
class ReplayGenerator:
    """Completions keyed by (prompt, settings without the seed, occurrence in this pass): asked again, answered the same."""

    inner: Any
    store: dict[tuple, list[list[Any]]] = field(default_factory=dict)
    stage: str = ""
    log: list[tuple[str, str, Any, int]] = field(default_factory=list)
    """(stage, prompt, settings, occurrence) of every prompt asked, in order."""
    generated_prompts: int = 0
    replayed_prompts: int = 0
    generated_tokens: int = 0

    def __post_init__(self) -> None:
        self.name = self.inner.name
        self._seen: Counter = Counter()

    def start_pass(self) -> None:
        self._seen = Counter()

    def generate(self, prompts: list[str], params: Any, seeds: Sequence[int] | None = None) -> list[list[Any]]:
        settings = replace(params, seed=None)
        out: list[list[Any] | None] = [None] * len(prompts)
        missing: list[tuple[int, tuple, int]] = []
        for index, prompt in enumerate(prompts):
            key = (prompt, settings)
            occurrence = self._seen[key]
            self._seen[key] += 1
            self.log.append((self.stage, prompt, settings, occurrence))
            stored = self.store.setdefault(key, [])
            if occurrence < len(stored):
                out[index] = [replace(c) for c in stored[occurrence]]
                self.replayed_prompts += 1
            else:
                missing.append((index, key, occurrence))
        if missing:
            asked = [prompts[index] for index, _, _ in missing]
            fresh = (self.inner.generate(asked, params) if seeds is None
                     else self.inner.generate(asked, params, [seeds[index] for index, _, _ in missing]))
            for (index, key, occurrence), completions in zip(missing, fresh):
                assert len(self.store[key]) == occurrence
                self.store[key].append(completions)
                out[index] = [replace(c) for c in completions]
                self.generated_prompts += 1
                self.generated_tokens += sum(c.num_tokens for c in completions)
        return [completions for completions in out if completions is not None]


# ---------------------------------------------------------------------------
# The data stages, one pass


def run_pass(args: argparse.Namespace, generator: ReplayGenerator, fmt: Any, tokenizer: Any, problems: list[Any]) -> dict[str, Any]:
    from stepdpo.localizers.rollout import RolloutConfig, RolloutLocalizer
    from stepdpo.stages import locate, pairs, rectify, sample, scdpo

    by_id = {p.id: p for p in problems}
    started = time.perf_counter()
    generator.start_pass()
    generator.stage = "sample"
    samples = sample.run(sample.SampleConfig(k=args.k, max_new_tokens=args.max_new_tokens, seed=args.seed, chunk_size=len(problems)),
                         problems, generator, fmt)
    generator.stage = "locate"
    rollout = RolloutConfig(search="binary", rollouts_per_prefix=args.rollouts, max_new_tokens=args.max_new_tokens, seed=args.seed)
    located = locate.run(locate.LocateConfig(localizer="rollout", limit=args.locate_limit, chunk_size=args.locate_limit), by_id, samples,
                         RolloutLocalizer(rollout, generator, fmt))
    generator.stage = "rectify"
    rectified = rectify.run(rectify.RectifyConfig(r=args.r, max_new_tokens=args.max_new_tokens, seed=args.seed, chunk_size=args.locate_limit),
                            by_id, {s.id: s for s in samples}, located, generator, fmt)
    step_pairs, dpo_pairs = pairs.run(pairs.PairsConfig(), by_id, samples, located, rectified)
    generator.stage = "scdpo"
    scdpo_out = scdpo.run(scdpo.SCDPOConfig(branch="random", limit=args.scdpo_limit, max_attempts=2, max_step_tokens=48, max_steps=4,
                                            rollouts=args.rollouts, rollout_max_new_tokens=args.max_new_tokens, seed=args.seed),
                          by_id, samples, generator, fmt, tokenizer)
    return {
        "samples": samples, "located": located, "rectified": rectified, "step_pairs": step_pairs, "dpo_pairs": dpo_pairs,
        "scdpo": scdpo_out, "wall_s": time.perf_counter() - started,
    }


# ---------------------------------------------------------------------------
# Counting


def response_of(prompt: str, text: str) -> str:
    """The graded response of a completion: what follows the step header in the prompt, then the completion."""
    from stepdpo.steps import STEP_HEADER

    return prompt.split(STEP_HEADER, 1)[1] + text


def rollout_verdicts(generator: ReplayGenerator, gold_by_head: dict[str, str], threshold: float) -> dict[str, Any]:
    """Every prefix the rollout localizer tested (in either pass), its rollouts graded under both rules.

    ``gold_by_head`` maps each problem's prompt head (``fmt.head(question)``) to its gold answer.
    """
    from stepdpo.grading import grade_for_data

    queries = sorted({(prompt, settings, occurrence) for stage, prompt, settings, occurrence in generator.log if stage == "locate"},
                     key=lambda q: (q[0], q[2]))
    counts: Counter = Counter()
    for prompt, settings, occurrence in queries:
        [gold] = [answer for head, answer in gold_by_head.items() if prompt.startswith(head)]
        completions = generator.store[(prompt, settings)][occurrence]
        items = [(response_of(prompt, c.text), c.finish_reason, gold) for c in completions]
        old = sum(old_grade_for_data(items))
        new = sum(grade_for_data(items))
        old_alive, new_alive = old / len(items) >= threshold, new / len(items) >= threshold
        counts["prefixes"] += 1
        counts["rollouts"] += len(items)
        counts["rollouts_truncated"] += sum(c.finish_reason == "length" for c in completions)
        counts["rollouts_right_old"] += old
        counts["rollouts_right_new"] += new
        counts["alive_old"] += old_alive
        counts["alive_new"] += new_alive
        counts["alive_to_dead"] += old_alive and not new_alive
        counts["dead_to_alive"] += new_alive and not old_alive
    return dict(counts)


def sample_grades(samples: Sequence[Any], problems: dict[str, Any]) -> dict[str, Any]:
    """Every sample graded under both rules, with why the new rule disagrees."""
    from stepdpo.grading import extract_answer, grade_for_data

    items = [(s.response, s.finish_reason, problems[s.problem_id].answer) for s in samples]
    old, new = old_grade_for_data(items), grade_for_data(items)
    flipped = [(s, o, n) for s, o, n in zip(samples, old, new) if o != n]
    why: Counter = Counter()
    for s, _, _ in flipped:
        stated = extract_answer(s.response, last_number_fallback=False)
        if s.finish_reason == "length":
            why["cut off at the token limit" + (" (answer stated)" if stated is not None else "")] += 1
        elif stated is None:
            why["ended without a stated answer (last number = gold)"] += 1
        else:
            why["other"] += 1
        if stated is None and old_extract_answer(s.response) != extract_answer(s.response):
            why["of these: the number was a Step marker's"] += 1
    return {
        "samples": len(samples),
        "finish_reasons": dict(Counter(s.finish_reason for s in samples)),
        "right_old": sum(old), "right_new": sum(new),
        "right_to_wrong": sum(o and not n for _, o, n in flipped), "wrong_to_right": sum(n and not o for _, o, n in flipped),
        "why": dict(why),
        "examples": [{"id": s.id, "finish_reason": s.finish_reason, "gold": problems[s.problem_id].answer,
                      "old_predicted": old_extract_answer(s.response), "response_end": s.response[-160:]} for s, _, _ in flipped[:5]],
    }


def pass_counts(result: dict[str, Any]) -> dict[str, Any]:
    scdpo_out = result["scdpo"]
    located_ok = [x for x in result["located"] if x.status == "ok"]
    return {
        "right_samples": sum(s.correct for s in result["samples"]),
        "wrong_samples": sum(not s.correct for s in result["samples"]),
        "located": len(located_ok),
        "first_wrong_step": {x.sample_id: x.first_wrong_step for x in located_ok},
        "rectify_continuations": sum(r.tried for r in result["rectified"]),
        "rectify_reached_gold": sum(r.reached_gold for r in result["rectified"]),
        "rectify_chosen": sum(len(r.chosen) for r in result["rectified"]),
        "step_dpo_pairs": len(result["step_pairs"]),
        "dpo_pairs": len(result["dpo_pairs"]),
        "scdpo_source_solutions": scdpo_out.funnel.records_in,
        "scdpo_pairs": len(scdpo_out.scdpo),
        "scdpo_naive_dpo_pairs": len(scdpo_out.dpo),
        "judge_free_pairs": len(scdpo_out.judge_free),
        "scdpo_attempt_outcomes": dict(sum((Counter(b.outcomes) for b in scdpo_out.branches), Counter())),
        "wall_s": round(result["wall_s"], 1),
    }


def cpu_info() -> dict[str, Any]:
    """The CPU model and the flags that decide matmul speed (from /proc/cpuinfo)."""
    from stepdpo.hardware import cpu_info as read_cpu

    model, flags = read_cpu()
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"model": model, "flags": [f for f in wanted if f in flags], "cpus": os.cpu_count()}


def render(record: dict[str, Any]) -> str:
    old, new = record["old_rule"], record["new_rule"]
    s, v = record["samples_regraded"], record["rollout_prefixes_regraded"]
    rows = [
        ("samples graded right", old["right_samples"], new["right_samples"]),
        ("wrong samples (to localize)", old["wrong_samples"], new["wrong_samples"]),
        ("errors located (limit %d)" % record["settings"]["locate_limit"], old["located"], new["located"]),
        ("rectify: continuations that reached gold", old["rectify_reached_gold"], new["rectify_reached_gold"]),
        ("rectify: chosen steps", old["rectify_chosen"], new["rectify_chosen"]),
        ("Step-DPO pairs", old["step_dpo_pairs"], new["step_dpo_pairs"]),
        ("plain DPO pairs", old["dpo_pairs"], new["dpo_pairs"]),
        ("SCDPO source solutions (correct samples)", old["scdpo_source_solutions"], new["scdpo_source_solutions"]),
        ("SCDPO pairs", old["scdpo_pairs"], new["scdpo_pairs"]),
        ("judge-free pairs", old["judge_free_pairs"], new["judge_free_pairs"]),
    ]
    lines = [
        "# Grading damage: the old rule vs the data rule on a model that is often cut off",
        "",
        f"Command: `{record['command']}`  ",
        f"Model {record['settings']['model']} ({record['settings']['prompt_style']} prompt), problems `{record['settings']['data']}`, "
        f"k={record['settings']['k']}, max_new_tokens {record['settings']['max_new_tokens']}, rollouts m={record['settings']['rollouts']} "
        f"(binary search, threshold 0.1), rectify r={record['settings']['r']}, SCDPO on up to {record['settings']['scdpo_limit']} correct samples.  ",
        f"CPU: {record['cpu']['model']} ({record['cpu']['cpus']} threads; flags {' '.join(record['cpu']['flags'])}), "
        f"torch threads {record['torch_threads']}; load average before {record['load_average_before'][0]:.2f}, after {record['load_average_after'][0]:.2f}; "
        f"wall {record['wall_s']:.0f} s ({record['generation']['generated_prompts']} prompts generated, {record['generation']['replayed_prompts']} replayed).",
        "",
        "Both passes see the same model text (replayed); only the grading differs. Old rule: the last number of the response "
        "(a Step marker's included), finish reason ignored. New rule: a stated final answer, and the model ended the response.",
        "",
        "| | old rule | new rule |",
        "|---|---|---|",
        *[f"| {name} | {a} | {b} |" for name, a, b in rows],
        "",
        f"**Samples re-graded** ({s['samples']}; finish reasons {s['finish_reasons']}): right {s['right_old']} -> {s['right_new']}; "
        f"{s['right_to_wrong']} right -> wrong, {s['wrong_to_right']} wrong -> right. Why: {s['why']}.",
        "",
        f"**Rollout verdicts re-graded**: {v.get('prefixes', 0)} tested prefixes ({v.get('rollouts', 0)} rollouts, "
        f"{v.get('rollouts_truncated', 0)} cut off at the token limit): rollouts reaching gold {v.get('rollouts_right_old', 0)} -> "
        f"{v.get('rollouts_right_new', 0)}; alive prefixes {v.get('alive_old', 0)} -> {v.get('alive_new', 0)} "
        f"({v.get('alive_to_dead', 0)} alive -> dead, {v.get('dead_to_alive', 0)} dead -> alive).",
        "",
        f"**First wrong step** of errors located in both passes: {record['first_wrong_step_changed']} of {record['located_in_both']} changed.",
        "",
        "Examples of samples the old rule counted right:",
        "",
        *[f"- `{e['id']}` ({e['finish_reason']}, gold {e['gold']}, old answer {e['old_predicted']}): ...{json.dumps(e['response_end'])}" for e in s["examples"]],
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="synthetic:train?n=16&min_steps=2&max_steps=3&difficulty=0&seed=1",
                        help="problem spec (default: the default run's kind of problem)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--locate-limit", type=int, default=8)
    parser.add_argument("--r", type=int, default=4)
    parser.add_argument("--scdpo-limit", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default=str(RESULTS / "grading_damage"), help="writes OUTPUT.json and OUTPUT.md")
    args = parser.parse_args()

    import torch

    from stepdpo.generation.base import GeneratorConfig, prompt_format
    from stepdpo.generation.registry import build_generator
    from stepdpo.models import load_tokenizer
    from stepdpo.problems import load_problems

    load_before = os.getloadavg()
    started = time.perf_counter()
    config = GeneratorConfig(model=args.model, dtype="float32", device="cpu", batch_size=args.batch_size)
    problems = load_problems(args.data, seed=args.seed)
    generator = ReplayGenerator(build_generator(config))
    fmt = prompt_format(config)
    tokenizer = load_tokenizer(args.model)
    with old_rule():
        old = run_pass(args, generator, fmt, tokenizer, problems)
    new = run_pass(args, generator, fmt, tokenizer, problems)

    by_id = {p.id: p for p in problems}
    old_counts, new_counts = pass_counts(old), pass_counts(new)
    both = set(old_counts["first_wrong_step"]) & set(new_counts["first_wrong_step"])
    record = {
        "command": " ".join(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", ""), ".venv/bin/python", "bench/grading_damage.py", *sys.argv[1:]]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"model": args.model, "prompt_style": config.prompt_style, "data": args.data, "k": args.k,
                     "max_new_tokens": args.max_new_tokens, "rollouts": args.rollouts, "locate_limit": args.locate_limit, "r": args.r,
                     "scdpo_limit": args.scdpo_limit, "seed": args.seed},
        "cpu": cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "wall_s": time.perf_counter() - started,
        "generation": {"generated_prompts": generator.generated_prompts, "replayed_prompts": generator.replayed_prompts,
                       "generated_tokens": generator.generated_tokens},
        "samples_regraded": sample_grades(new["samples"], by_id),
        "rollout_prefixes_regraded": rollout_verdicts(generator, {fmt.head(p.question): p.answer for p in problems}, 0.1),
        "located_in_both": len(both),
        "first_wrong_step_changed": sum(old_counts["first_wrong_step"][k] != new_counts["first_wrong_step"][k] for k in both),
        "old_rule": old_counts,
        "new_rule": new_counts,
    }
    from stepdpo.records import atomic_write_json, atomic_write_text

    output = Path(args.output)
    atomic_write_json(output.with_suffix(".json"), record)
    atomic_write_text(output.with_suffix(".md"), render(record))
    print(render(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
