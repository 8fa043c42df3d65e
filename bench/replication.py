"""The replication table: base SFT model, + DPO, + Step-DPO, + SCDPO, + judge-free Step-DPO, over seeds.

Runs ``stepdpo run`` once per seed and tabulates the accuracy of every method on
every test set against the starting (SFT) model:

- the first seed's run trains the SFT model (``stepdpo run --stop-after sft``,
  all cores); every seed then starts from that one SFT model (``--model
  RUN0/sft/model --do-sft false`` for the others), as the paper applies every
  method to one fixed SFT model: the seed changes error collection,
  localization, rectification, pair building and training;
- the evaluation of the SFT model (greedy, on test subsets drawn with
  ``eval.seed``) is computed once, by the first seed, and copied to the others;
- the seeds run ``--parallel`` at a time, each with ``OMP_NUM_THREADS =
  cpu_count // parallel`` (oversubscribed torch threads measured 6-15x slower
  on this CPU).

The table holds, per set and method: the accuracy of each seed with its
paired-bootstrap CI of the difference to the base (from ``stepdpo compare``),
and the pooled difference over all (seed, problem) pairs with its paired
bootstrap CI and McNemar p-value (``stages.compare.compare_sets`` on the
concatenated outcomes).

    .venv/bin/python bench/replication.py --seeds 0 1 2 --parallel 2

Writes bench/results/replication.{json,md}; every run directory keeps its own
report. Rerunning resumes: finished stages are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from stepdpo.records import atomic_write_json, atomic_write_text
from stepdpo.stages.compare import compare_sets

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("dpo", "step-dpo", "scdpo", "judge-free")


def run_command(seed: int, run_dir: Path, args: argparse.Namespace, seed0: Path) -> list[str]:
    command = [sys.executable, "-m", "stepdpo.cli", "run", "--config", args.config, "--run-dir", str(run_dir),
               "--seed", str(seed), "--methods", *args.methods]
    if args.preset:
        command += ["--preset", args.preset]
    if run_dir != seed0:
        command += ["--model", str(seed0 / "sft" / "model"), "--do-sft", "False"]
    return command + args.extra


def share_base_eval(run_dir: Path, seed0: Path) -> None:
    """Give a seed's run the first seed's evaluation of the shared SFT model.

    Greedy decoding of the same model on the same problems (``stepdpo run`` draws test
    subsets with ``eval.seed``, not the run's seed) gives the same answers, so the run's
    own evaluation stage finds it complete instead of computing it again.
    """
    source, target = seed0 / "eval" / "base", run_dir / "eval" / "base"
    if run_dir != seed0 and (source / "results.json").is_file() and not target.exists():
        shutil.copytree(source, target)


def launch(command: list[str], run_dir: Path, threads: int) -> tuple[subprocess.Popen, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "run.log", "a", encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print(f"{' '.join(command)}  (threads {threads}, log {run_dir / 'run.log'})", flush=True)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log


def wait_all(procs: list[tuple[int, subprocess.Popen, Any]]) -> None:
    failed = []
    for seed, proc, log in procs:
        if proc.wait() != 0:
            failed.append(seed)
        log.close()
    if failed:
        raise SystemExit(f"runs failed for seeds {failed}: see their run.log")


def read_results(run_dir: Path, name: str) -> dict[str, Any] | None:
    path = run_dir / "eval" / name / "results.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def pooled(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One results dict whose problems are (seed, problem) pairs, for a pooled paired comparison."""
    sets: dict[str, dict[str, Any]] = {}
    for seed, results in per_seed.items():
        for name, summary in results["sets"].items():
            target = sets.setdefault(name, {"per_problem": {}})["per_problem"]
            target.update({f"{seed}:{pid}": ok for pid, ok in summary["per_problem"].items()})
    return {"sets": sets}


def table(root: Path, seeds: list[int], methods: list[str]) -> dict[str, Any]:
    runs = {seed: root / f"seed{seed}" for seed in seeds}
    base = {seed: read_results(run, "base") for seed, run in runs.items()}
    base = {seed: r for seed, r in base.items() if r is not None}
    out: dict[str, Any] = {"seeds": seeds, "runs": {seed: str(run) for seed, run in runs.items()}, "methods": {}}
    if not base:
        return out
    out["base"] = {seed: {name: {"accuracy": s["accuracy"], "ci_low": s.get("ci_low"), "ci_high": s.get("ci_high"), "n": s.get("problems")}
                          for name, s in results["sets"].items()} for seed, results in base.items()}
    for method in methods:
        trained = {seed: read_results(runs[seed], method) for seed in seeds}
        trained = {seed: r for seed, r in trained.items() if r is not None and seed in base}
        if not trained:
            continue
        per_seed = {}
        for seed, results in trained.items():
            rows = compare_sets(base[seed], results, samples=10_000, seed=seed, alpha=0.05)["rows"]
            per_seed[seed] = {row["set"]: {k: row.get(k) for k in ("accuracy_b", "diff", "ci_low", "ci_high", "p_value", "verdict")} for row in rows}
        pooled_rows = compare_sets(pooled({s: base[s] for s in trained}), pooled(trained), samples=10_000, seed=0, alpha=0.05)["rows"]
        out["methods"][method] = {
            "per_seed": per_seed,
            "pooled": {row["set"]: {k: row.get(k) for k in ("problems", "accuracy_a", "accuracy_b", "diff", "ci_low", "ci_high", "p_value", "verdict")}
                       for row in pooled_rows},
            "pairs": {seed: _pair_count(runs[seed], method) for seed in trained},
        }
    return out


def _pair_count(run_dir: Path, method: str) -> int | None:
    path = run_dir / "funnel" / f"train-{method}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("extra", {}).get("pairs_train")


def _base_cell(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "—"
    return f"{100 * summary['accuracy']:.1f}% [{100 * summary['ci_low']:.1f}, {100 * summary['ci_high']:.1f}]"


def render(result: dict[str, Any], command: str) -> str:
    lines = ["# Replication table (embedded SmolLM2-135M-Instruct after SFT, CPU)", "",
             f"    {command}", "",
             f"Seeds {result['seeds']}; run directories: {', '.join(result['runs'].values())}. "
             "Each cell: accuracy, and the difference to the base with its 95% paired-bootstrap CI. "
             "'pooled' pairs every (seed, problem); p is McNemar's exact test on those pairs.", ""]
    base = result.get("base", {})
    set_names = list(next(iter(base.values()), {}))
    for set_name in set_names:
        sizes = sorted({str(b[set_name]["n"]) for b in base.values() if set_name in b})
        lines += [f"## {set_name} (n = {', '.join(sizes)} per seed)", "",
                  "| model | " + " | ".join(f"seed {s}" for s in result["seeds"]) + " | pooled diff [95% CI] | p | train pairs |",
                  "|---|" + "---|" * len(result["seeds"]) + "---|---|---|",
                  "| base (SFT) | " + " | ".join(_base_cell(base.get(s, {}).get(set_name)) for s in result["seeds"]) + " | | | |"]
        for method, data in result["methods"].items():
            cells = []
            for seed in result["seeds"]:
                row = data["per_seed"].get(seed, {}).get(set_name)
                cells.append("—" if not row or row.get("diff") is None else
                             f"{100 * row['accuracy_b']:.1f}% ({100 * row['diff']:+.1f} [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}])")
            p = data["pooled"].get(set_name, {})
            pooled_cell = "—" if p.get("diff") is None else f"{100 * p['diff']:+.1f} [{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}]"
            p_cell = "—" if p.get("p_value") is None else f"{p['p_value']:.3g}"
            pairs = ", ".join(str(n) for n in data["pairs"].values())
            lines.append(f"| + {method} | " + " | ".join(cells) + f" | {pooled_cell} | {p_cell} | {pairs} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/replication", help="run directories ROOT/seed<N>")
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--preset", default="", help="'' (default) or quick-smollm2 (the embedded model's run on less data)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--parallel", type=int, default=3, help="seeds run this many at a time (after the shared SFT)")
    parser.add_argument("--table-only", action="store_true", help="only tabulate the run directories that exist")
    parser.add_argument("--out", default=str(RESULTS / "replication.json"))
    parser.add_argument("extra", nargs="*", help="more `stepdpo run` flags, after --")
    args = parser.parse_args()

    root = Path(args.root)
    seed0 = root / f"seed{args.seeds[0]}"
    started = time.time()
    walls: dict[str, float] = {}
    if not args.table_only:
        cpus = os.cpu_count() or 1
        sft_proc = launch(run_command(args.seeds[0], seed0, args, seed0) + ["--stop-after", "sft"], seed0, cpus)
        wait_all([(args.seeds[0], *sft_proc)])
        walls["sft"] = round(time.time() - started, 1)
        for at in range(0, len(args.seeds), args.parallel):
            batch = args.seeds[at: at + args.parallel]
            batch_start = time.time()
            threads = max(1, cpus // len(batch))
            for seed in batch:
                share_base_eval(root / f"seed{seed}", seed0)
            wait_all([(seed, *launch(run_command(seed, root / f"seed{seed}", args, seed0), root / f"seed{seed}", threads))
                      for seed in batch])
            walls.update({f"seed{seed}": round(time.time() - batch_start, 1) for seed in batch})

    command = "python bench/replication.py " + " ".join(sys.argv[1:])
    result = {**table(root, args.seeds, args.methods), "command": command, "wall_s": walls,
              "date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_end": os.getloadavg()}
    out = Path(args.out)
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), render(result, command))
    print(out.with_suffix(".md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
