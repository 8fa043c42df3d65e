"""The powered experiment on the model organism: does Step-DPO improve it, and more than DPO at equal pairs?

One starting checkpoint (the `organism` alias), every arm trained from it with the settings chosen on the
validation split (bench/organism_tune.py; never on these test problems), several seeds:

- **collection** per seed (`stepdpo run --stop_after pairs` on configs/organism.yaml): sample 3-4-step
  train-split problems (problem seed 100 + seed: never 0, the organism's training data, 1000, its
  validation set, nor 2, the tuning data), exact localization, rectification, Step-DPO pairs; plain-DPO
  pairs from every right x wrong combination; SCDPO and judge-free pairs;
- **rollout localizer**: a second run directory with the same samples, located by the policy's own
  rollouts (what a user without a judge gets), rectified and paired again;
- **arms**: Step-DPO (exact), Step-DPO (rollout), DPO count-matched to Step-DPO's pairs and from the same
  problems, SCDPO, judge-free; each evaluated greedily on the seed's own test problems: `--test-n` of 3-4
  steps (the chains the pairs came from) and `--transfer-n` of 5-6 steps (length transfer);
- **pooled** difference of each arm with the base over all (seed, problem) pairs: paired bootstrap CI and
  McNemar's p (`stages.compare.compare_sets`);
- **flawed steps**: the exact localizer on every arm's wrong test responses, the first wrong step's position;
- **data efficiency** (first seed's test problems): Step-DPO and DPO on nested budgets of the first seed's
  pairs (`train.max_pairs`), all of them, and all seeds' pairs together;
- **on-policy rounds** (first seed, `stepdpo run --rounds N`): round r samples new problems from round r-1's
  Step-DPO model and trains from it (it is also the reference), against one round with all seeds' pairs.

    .venv/bin/python bench/organism.py --seeds 1 2 3

Everything goes under --work (default runs/organism-bench) and every stage resumes, so a killed run
continues where it stopped. Writes bench/results/organism.{md,json}: the CPU, its flags, the load
average, and the wall time of every phase.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from matplotlib.figure import Figure

from stepdpo.config import load_config
from stepdpo.hardware import cpu_info, speed_flags
from stepdpo.records import atomic_write_json, atomic_write_text
from stepdpo.report.plots import method_colours
from stepdpo.rundir import budget_run_name
from stepdpo.stages import pipeline, rounds as round_layout
from stepdpo.stages.compare import compare_sets
from stepdpo.training.data import read_pairs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from organism_tune import parse_setting, read_results, response_shape, train_and_evaluate, with_knobs  # noqa: E402  (a sibling script, not a package)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ARMS = ("step-dpo", "dpo", "step-dpo-rollout", "scdpo", "judge-free")
ARM_LABELS = {"step-dpo": "Step-DPO (exact localizer)", "dpo": "DPO (count-matched)", "step-dpo-rollout": "Step-DPO (rollout localizer)",
              "scdpo": "SCDPO (+ naive pairs)", "judge-free": "judge-free"}
# The `stepdpo run` method (training mode, pair files, settings) of an arm that is not one itself.
ARM_METHOD = {"step-dpo-rollout": "step-dpo"}


class Clock:
    """Wall seconds per phase, summed over every invocation that worked on the same --work, and the load average
    (1 min) when each phase ended (kept in files there: phases.json, phase_loads.json)."""

    def __init__(self, folder: Path) -> None:
        self.paths = (folder / "phases.json", folder / "phase_loads.json")
        self.phases, self.loads = (self._read(path) for path in self.paths)

    @staticmethod
    def _read(path: Path) -> dict[str, float]:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def run(self, name: str, step: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        print(f"=== {name}", flush=True)
        result = step()
        seconds = time.perf_counter() - started
        # Reread: another invocation may have added its phases meanwhile.
        self.phases, self.loads = (self._read(path) for path in self.paths)
        earlier = self.phases.get(name, 0.0)
        self.phases[name] = round(earlier + seconds, 1)
        if seconds >= earlier or name not in self.loads:  # a resume that only skipped keeps the working run's load
            self.loads[name] = round(os.getloadavg()[0], 2)
        atomic_write_json(self.paths[0], self.phases)
        atomic_write_json(self.paths[1], self.loads)
        return result

    def total(self) -> float:
        return round(sum(self.phases.values()), 1)


def test_specs(args: argparse.Namespace, seed: int) -> list[str]:
    return [f"synthetic:test?n={args.test_n}&min_steps=3&max_steps=4&difficulty=0&seed={seed}",
            f"synthetic:test?n={args.transfer_n}&min_steps=5&max_steps=6&difficulty=0&seed={seed}"]


def seed_config(args: argparse.Namespace, seed: int) -> pipeline.RunConfig:
    """configs/organism.yaml as one seed's collection run: its problems (seed 100 + seed), test sets and settings."""
    run = load_config(pipeline.RunConfig, ROOT / "configs" / "organism.yaml")
    return replace(
        run, run_dir=str(seed_dir(args, seed)), seed=seed, stop_after="pairs", model=args.model or run.model,
        generator=replace(run.generator, dtype=args.dtype),
        sample=replace(run.sample, data=f"synthetic:train?n={args.problems}&min_steps=3&max_steps=4&difficulty=0&seed={100 + seed}"),
        pairs=replace(run.pairs, max_dpo_pairs_per_problem=0, stop_mismatch=args.stop_mismatch),
        eval=replace(run.eval, data=test_specs(args, seed)),
        train=with_knobs(run.train, args.knobs["step-dpo"]),
    )


def rollout_config(args: argparse.Namespace, run: pipeline.RunConfig, seed: int) -> pipeline.RunConfig:
    """The seed's run with the rollout localizer, in a directory that starts from the seed's problems, samples and base evaluation."""
    source, (target, _) = seed_dir(args, seed), arm_folders(args, seed)["step-dpo-rollout"]
    for name in ("problems", "samples.jsonl", "eval/base"):
        if not (target / name).exists():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (source / name).is_dir() else shutil.copy2)(source / name, target / name)
    return replace(run, run_dir=str(target), methods=["step-dpo"], pairs=replace(run.pairs, dpo=False),
                   locate=replace(run.locate, localizer="rollout", limit=args.rollout_limit))


def matched_dpo_file(seed_dir: Path) -> tuple[Path, int]:
    """DPO pairs of the problems that have Step-DPO pairs (RUN/pairs/dpo_matched.jsonl), and Step-DPO's count."""
    steps = read_pairs([seed_dir / "pairs" / "step_pairs.jsonl"])
    problems = {pair.problem_id for pair in steps}
    target = seed_dir / "pairs" / "dpo_matched.jsonl"
    lines = [line for line in (seed_dir / "pairs" / "dpo_pairs.jsonl").read_text(encoding="utf-8").splitlines()
             if line.strip() and json.loads(line)["problem_id"] in problems]
    atomic_write_text(target, "".join(line + "\n" for line in lines))
    return target, len(steps)


def train_and_eval(args: argparse.Namespace, run: pipeline.RunConfig, arm: str, name: str, pair_files: list[Path],
                   max_pairs: int | None = None) -> dict[str, Any]:
    """Train ``name`` from ``run``'s policy on ``pair_files`` (``max_pairs`` of them) with the arm's settings, and evaluate it."""
    method = ARM_METHOD.get(arm, arm)
    config = with_knobs(pipeline.stage_config(run, "train", method), args.knobs[method])
    return train_and_evaluate(run, replace(config, name=name, pairs=[str(p) for p in pair_files], max_pairs=max_pairs))


def trained_pairs(run_dir: Path, name: str) -> int | None:
    path = run_dir / "funnel" / f"train-{name}.json"
    if not path.is_file():
        return None
    extra = json.loads(path.read_text(encoding="utf-8"))["extra"]
    return (extra.get("pairs_train") or 0) + (extra.get("pairs_eval") or 0)


def pooled(per_seed: dict[int, dict[str, Any]], spec_of: Callable[[int], str]) -> dict[str, Any]:
    """One results dict of (seed, problem) outcomes for the set ``spec_of(seed)`` of every seed."""
    outcomes = {f"{seed}:{pid}": ok for seed, results in per_seed.items() for pid, ok in results["sets"][spec_of(seed)]["per_problem"].items()}
    return {"sets": {"pooled": {"per_problem": outcomes}}}


def compare(base: dict[str, Any], arm: dict[str, Any]) -> dict[str, Any]:
    (row,) = compare_sets(base, arm, samples=10_000, seed=0, alpha=0.05)["rows"]
    return {key: row[key] for key in ("problems", "accuracy_a", "accuracy_b", "diff", "ci_low", "ci_high", "a_only_right", "b_only_right", "p_value", "verdict")}


def versus(args: argparse.Namespace, base: dict[int, dict[str, Any]], arm: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``arm``'s results against ``base``'s (seed -> results.json each), pooled over their seeds, on each kind of test set."""
    kinds = {"in_distribution": lambda s: in_dist(args, s), "transfer": lambda s: transfer(args, s)}
    return {kind: compare(pooled(base, spec_of), pooled(arm, spec_of)) for kind, spec_of in kinds.items()}


PHASES = ("arms", "rollout", "curve", "rounds", "analysis")


def seed_dir(args: argparse.Namespace, seed: int) -> Path:
    return Path(args.work) / f"seed{seed}"


def in_dist(args: argparse.Namespace, seed: int) -> str:
    return test_specs(args, seed)[0]


def transfer(args: argparse.Namespace, seed: int) -> str:
    return test_specs(args, seed)[1]


def arm_folders(args: argparse.Namespace, seed: int) -> dict[str, tuple[Path, str]]:
    """arm -> (run directory, training/evaluation name) of one seed."""
    folder = seed_dir(args, seed)
    return {"step-dpo": (folder, "step-dpo"), "dpo": (folder, "dpo-matched"), "step-dpo-rollout": (Path(str(folder) + "-rollout"), "step-dpo"),
            "scdpo": (folder, "scdpo"), "judge-free": (folder, "judge-free")}


def seed_arms(args: argparse.Namespace, clock: Clock, seed: int) -> None:
    """Collect one seed's data and train and evaluate its arms (the rollout arm too, when asked)."""
    folder, run, names = seed_dir(args, seed), seed_config(args, seed), arm_folders(args, seed)
    clock.run(f"seed {seed}: collect", lambda: pipeline.command(replace(run, methods=["step-dpo", "dpo", "scdpo", "judge-free"])))
    dpo_file, step_count = matched_dpo_file(folder)
    for arm in ("step-dpo", "scdpo", "judge-free"):
        pair_file = folder / "pairs" / pipeline.METHOD_DATA[arm][1][0]
        clock.run(f"seed {seed}: {arm}", lambda: train_and_eval(args, run, arm, names[arm][1], [pair_file]))
    clock.run(f"seed {seed}: dpo", lambda: train_and_eval(args, run, "dpo", names["dpo"][1], [dpo_file], max_pairs=step_count))
    if "rollout" in args.phases and seed in args.seeds[: args.rollout_seeds]:
        rollout = rollout_config(args, run, seed)
        clock.run(f"seed {seed}: rollout collect", lambda: pipeline.command(rollout))
        clock.run(f"seed {seed}: step-dpo-rollout", lambda: train_and_eval(
            args, rollout, "step-dpo-rollout", names["step-dpo-rollout"][1], [Path(rollout.run_dir) / "pairs" / "step_pairs.jsonl"]))


def union_files(args: argparse.Namespace) -> tuple[Path, Path]:
    """All seeds' Step-DPO pairs and count-matched DPO pairs, one file each (the data-efficiency curve's last point)."""
    folder = Path(args.work) / "all-seeds-pairs"
    folder.mkdir(parents=True, exist_ok=True)
    files = (folder / "step_pairs.jsonl", folder / "dpo_matched.jsonl")
    for target, name in zip(files, ("step_pairs.jsonl", "dpo_matched.jsonl")):
        atomic_write_text(target, "".join((seed_dir(args, s) / "pairs" / name).read_text(encoding="utf-8") for s in args.seeds))
    return files


def curve(args: argparse.Namespace, clock: Clock) -> None:
    """Step-DPO and DPO on nested budgets of the first seed's pairs and on all seeds' pairs, from the organism."""
    first = args.seeds[0]
    folder, run = seed_dir(args, first), seed_config(args, first)
    union_step, union_dpo = union_files(args)
    union_count = len(read_pairs([union_step]))
    step_count = len(read_pairs([folder / "pairs" / "step_pairs.jsonl"]))
    for arm, pair_file, union_file in (("step-dpo", folder / "pairs" / "step_pairs.jsonl", union_step),
                                       ("dpo", folder / "pairs" / "dpo_matched.jsonl", union_dpo)):
        for budget in [b for b in args.budgets if b < step_count]:
            clock.run(f"curve {budget_run_name(arm, budget)}", lambda: train_and_eval(args, run, arm, budget_run_name(arm, budget), [pair_file], max_pairs=budget))
        if arm in args.union_methods:
            clock.run(f"curve {arm}@all-seeds", lambda: train_and_eval(args, run, arm, f"{arm}@all-seeds", [union_file], max_pairs=union_count))


def rounds(args: argparse.Namespace, clock: Clock) -> None:
    """`stepdpo run --rounds N` on the first seed's run: round r samples fresh problems from round r-1's Step-DPO
    model, which is also its reference (RUN/rounds/r<r>); round 1 is the Step-DPO arm already trained there."""
    run = seed_config(args, args.seeds[0])
    clock.run(f"rounds 2-{args.rounds}", lambda: pipeline.command(replace(run, stop_after="", methods=["step-dpo"], rounds=args.rounds)))


def analysis(args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    """Every number of the result file, from the run directories (nothing is computed here but statistics)."""
    first = args.seeds[0]
    base = {s: read_results(seed_dir(args, s), "base") for s in args.seeds}
    table: dict[str, Any] = {}
    arms: dict[str, dict[int, dict[str, Any]]] = {}
    for arm in ARMS:
        per_seed, counts = {}, {}
        for seed in args.seeds:
            folder, name = arm_folders(args, seed)[arm]
            if (folder / "eval" / name / "results.json").is_file():
                per_seed[seed], counts[str(seed)] = read_results(folder, name), trained_pairs(folder, name)
        if not per_seed:
            continue
        arms[arm] = per_seed
        seeds = sorted(per_seed)
        table[arm] = {"seeds": seeds, "pairs": counts, "pooled": versus(args, {s: base[s] for s in seeds}, per_seed),
                      "per_seed": {str(s): versus(args, {s: base[s]}, {s: per_seed[s]}) for s in seeds}}
    step_vs_dpo = versus(args, arms["dpo"], arms["step-dpo"])
    first_set = in_dist(args, first)
    flawed = {"base": response_shape(seed_dir(args, first), "base", first_set)}
    for arm, (folder, name) in arm_folders(args, first).items():
        if (folder / "eval" / name / "samples.jsonl").is_file():
            flawed[arm] = response_shape(folder, name, first_set)
    folder = seed_dir(args, first)

    def on_first_set(results: dict[str, Any]) -> dict[str, Any]:
        return versus(args, {first: base[first]}, {first: results})["in_distribution"]

    data_efficiency: dict[str, list[dict[str, Any]]] = {}
    for arm, full_name in (("step-dpo", "step-dpo"), ("dpo", "dpo-matched")):
        names = [budget_run_name(arm, b) for b in args.budgets] + [full_name, f"{arm}@all-seeds"]
        data_efficiency[arm] = [{"pairs": trained_pairs(folder, name), "name": name, **on_first_set(read_results(folder, name))}
                                for name in names if (folder / "eval" / name / "results.json").is_file()]
    round_rows = [{"round": 0, "pairs": 0, **on_first_set(base[first])}]
    for number in range(1, args.rounds + 1):
        round_dir = round_layout.round_dir(folder, number)
        if (round_dir / "eval" / "step-dpo" / "results.json").is_file():
            round_rows.append({"round": number, "pairs": trained_pairs(round_dir, "step-dpo"), **on_first_set(read_results(round_dir, "step-dpo"))})
    cpu_model, flags = cpu_info()
    return {
        "command": "bench/organism.py " + shlex.join(sys.argv[1:]),
        "seeds": args.seeds, "settings": args.knobs, "stop_mismatch": args.stop_mismatch, "problems_per_seed": args.problems, "test_sets": {str(s): test_specs(args, s) for s in args.seeds},
        "base": {str(s): {"in_distribution": base[s]["sets"][in_dist(args, s)]["accuracy"], "transfer": base[s]["sets"][transfer(args, s)]["accuracy"]} for s in args.seeds},
        "arms": table, "step_dpo_vs_dpo": step_vs_dpo, "flawed_steps": flawed, "data_efficiency": data_efficiency, "rounds": round_rows,
        "cpu": {"model": cpu_model, "speed_flags": speed_flags(flags)}, "threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)),
        "load_average_end": [round(x, 2) for x in os.getloadavg()], "phases_s": clock.phases, "phase_loads": clock.loads, "wall_s": clock.total(),
        "whole_run": whole_run(args),
    }


def whole_run(args: argparse.Namespace) -> dict[str, Any] | None:
    """The wall time of the whole experiment, when bench/organism_2cores.sh ran it (its WORK/wall.json)."""
    path = Path(args.work) / "wall.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                        help="What this invocation does (everything resumes, so two invocations can split the seeds and a last one pools them).")
    parser.add_argument("--work", default="runs/organism-bench", help="Where every run directory goes (resumable).")
    parser.add_argument("--problems", type=int, default=900, help="Train-split problems sampled per seed (k=4 samples each).")
    parser.add_argument("--test-n", type=int, default=1000, help="Test problems of 3-4 steps per seed.")
    parser.add_argument("--transfer-n", type=int, default=500, help="Test problems of 5-6 steps per seed (length transfer).")
    parser.add_argument("--rollout-limit", type=int, default=600, help="Wrong samples the rollout localizer locates per seed.")
    parser.add_argument("--rollout-seeds", type=int, default=1, help="How many of the seeds get the rollout-localizer arm (it is the slowest).")
    parser.add_argument("--budgets", type=int, nargs="*", default=[100, 300], help="Pair budgets below the full set for the data-efficiency curve (first seed).")
    parser.add_argument("--union-methods", nargs="*", default=["step-dpo", "dpo"], help="Methods also trained on all seeds' pairs together.")
    parser.add_argument("--rounds", type=int, default=3, help="On-policy Step-DPO rounds on the first seed (1 = none beyond the arm).")
    parser.add_argument("--stop-mismatch", choices=["keep", "drop", "whole"], default="keep", help="pairs.stop_mismatch of every run (chosen on validation).")
    parser.add_argument("--dtype", default="auto", help="Generation dtype (auto: bf16 autocast where the CPU has avx512_bf16, the faster for the one-key/value-head organism).")
    parser.add_argument("--setting", action="append", default=[], help="'METHOD lr=.. beta=.. epochs=.. sft_weight=.. batch=..' chosen on validation (bench/organism_tune.py).")
    parser.add_argument("--model", default="", help="The starting checkpoint (alias or folder); '' = configs/organism.yaml's, the organism alias.")
    parser.add_argument("--name", default="organism", help="Result file stem under bench/results.")
    args = parser.parse_args()
    args.knobs = {method: {} for method in pipeline.METHOD_DATA}
    for text in args.setting:
        method, knobs = parse_setting(text)
        args.knobs[method] = knobs
    Path(args.work).mkdir(parents=True, exist_ok=True)
    clock = Clock(Path(args.work))
    if "arms" in args.phases:
        for seed in args.seeds:
            seed_arms(args, clock, seed)
    if "curve" in args.phases:
        curve(args, clock)
    if "rounds" in args.phases:
        rounds(args, clock)
    if "analysis" in args.phases:
        result = analysis(args, clock)
        RESULTS.mkdir(exist_ok=True)
        result["figure"] = f"{args.name}.png"
        figure(result).savefig(RESULTS / result["figure"], format="png", dpi=110, bbox_inches="tight")
        atomic_write_json(RESULTS / f"{args.name}.json", result)
        atomic_write_text(RESULTS / f"{args.name}.md", render(result))
        print(render(result))
    return 0


def figure(result: dict[str, Any]) -> Figure:
    """The first seed's data-efficiency curve and rounds as differences with the base (paired 95 % CIs).

    The report's pair-budget figure draws absolute accuracy from `stepdpo run --pair_budgets` names; the
    bench's full-data DPO run is ``dpo-matched`` and its largest point ``@all-seeds``, and on 1000
    problems the paired difference is what the CIs can resolve.
    """
    def plot_diffs(ax, xs: list[float], rows: list[dict[str, Any]], **style: Any) -> None:
        ax.errorbar(xs, [100 * r["diff"] for r in rows], capsize=3, marker="o", **style,
                    yerr=[[100 * (r["diff"] - r["ci_low"]) for r in rows], [100 * (r["ci_high"] - r["diff"]) for r in rows]])

    fig = Figure(figsize=(10.0, 3.8))
    curve_ax, rounds_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    # A run without its funnel file has no pair count to place it.
    curves = {arm: [p for p in points if p["pairs"]] for arm, points in result["data_efficiency"].items()}
    colours = method_colours(list(curves))
    for index, (arm, points) in enumerate(curves.items()):
        shift = 1.05 ** (index - (len(curves) - 1) / 2)  # CIs side by side at equal budgets
        plot_diffs(curve_ax, [p["pairs"] * shift for p in points], points, color=colours[arm], label=ARM_LABELS[arm])
    pairs = sorted({p["pairs"] for points in curves.values() for p in points})
    curve_ax.set_xscale("log")
    curve_ax.set_xticks(pairs, [str(n) for n in pairs])
    curve_ax.minorticks_off()
    curve_ax.set_xlabel("preference pairs trained on (log scale; the largest: all seeds' pairs)")
    curve_ax.set_title(f"Data efficiency, seed {result['seeds'][0]}", fontsize=10)
    done = [r for r in result["rounds"] if r["round"] > 0]
    plot_diffs(rounds_ax, [r["round"] for r in done], done, color=colours.get("step-dpo"))
    rounds_ax.set_xticks([r["round"] for r in done])
    rounds_ax.set_xlabel("on-policy Step-DPO round")
    rounds_ax.set_title(f"Rounds, seed {result['seeds'][0]}", fontsize=10)
    for ax in (curve_ax, rounds_ax):
        ax.axhline(0, color="#555", linestyle="--", linewidth=1)
        ax.set_ylabel("accuracy - base, 3-4 steps (points)")
        ax.grid(alpha=0.3)
    curve_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _diff(row: dict[str, Any]) -> str:
    return f"{100 * row['diff']:+.1f} [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}]"


def render(result: dict[str, Any]) -> str:
    seeds = result["seeds"]
    lines = ["# The model organism, powered: Step-DPO against the base, DPO, SCDPO and judge-free", "", "    .venv/bin/python " + result["command"], "",
             f"Seeds {seeds}; {result['problems_per_seed']} sampled problems per seed; settings chosen on the validation split: "
             f"`{json.dumps(result['settings'])}`, pairs.stop_mismatch `{result['stop_mismatch']}`. CPU {result['cpu']['model']} ({', '.join(result['cpu']['speed_flags'])}), {result['threads']} threads, "
             f"load average when this invocation ended {result['load_average_end']} (each phase's in the last table); the phases took {result['wall_s'] / 60:.1f} min in all (summed; see the last table).", "",
             "Base (the organism) accuracy per seed, 3-4 steps / 5-6 steps: " + ", ".join(
                 f"seed {s}: {100 * v['in_distribution']:.1f} / {100 * v['transfer']:.1f} %" for s, v in result["base"].items()), "",
             "## Every arm against the base, pooled over seeds (paired bootstrap 95 % CI, McNemar p)", "",
             "| arm | seeds | pairs per seed | 3-4 steps: accuracy | diff [95 % CI] | p | 5-6 steps: accuracy | diff [95 % CI] | p |", "|---|---|---|---|---|---|---|---|---|"]
    for arm, row in result["arms"].items():
        a, t = row["pooled"]["in_distribution"], row["pooled"]["transfer"]
        lines.append(f"| {ARM_LABELS[arm]} | {len(row['seeds'])} | {', '.join(str(v) for v in row['pairs'].values())} | {100 * a['accuracy_b']:.1f} % (base {100 * a['accuracy_a']:.1f}) | "
                     f"{_diff(a)} | {a['p_value']:.2g} | {100 * t['accuracy_b']:.1f} % (base {100 * t['accuracy_a']:.1f}) | {_diff(t)} | {t['p_value']:.2g} |")
    s = result["step_dpo_vs_dpo"]
    lines += ["", f"Step-DPO against count-matched DPO (pooled): 3-4 steps {_diff(s['in_distribution'])} (p {s['in_distribution']['p_value']:.2g}); "
              f"5-6 steps {_diff(s['transfer'])} (p {s['transfer']['p_value']:.2g}).", "",
              "Per seed (3-4 steps, diff with base):", "", "| arm | " + " | ".join(f"seed {x}" for x in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for arm, row in result["arms"].items():
        lines.append(f"| {ARM_LABELS[arm]} | " + " | ".join(_diff(row["per_seed"][str(x)]["in_distribution"]) if str(x) in row["per_seed"] else "" for x in seeds) + " |")
    positions = sorted({k for v in result["flawed_steps"].values() for k in v["shares"]}, key=lambda k: (k != "right", not k.isdigit(), k))
    lines += ["", f"## Where the errors start (exact localizer, seed {seeds[0]}'s 3-4-step test problems, % of all problems)", "",
              "| model | " + " | ".join(f"first wrong at step {k}" if k.isdigit() else k for k in positions) + " | mean first wrong step | longer than the chain |",
              "|---|" + "---|" * (len(positions) + 2)]
    for name, v in result["flawed_steps"].items():
        lines.append(f"| {ARM_LABELS.get(name, name)} | " + " | ".join(f"{100 * v['shares'].get(k, 0):.1f}" for k in positions)
                     + f" | {v['mean_first_wrong_step']} | {100 * v['longer_than_chain']:.1f} % |")
    lines += ["", f"## Data efficiency (seed {seeds[0]}'s test problems, 3-4 steps; nested budgets of its pairs, all of them, and all seeds' pairs)", "",
              "| method | model | pairs trained on | accuracy | diff with base [95 % CI] | p |", "|---|---|---|---|---|---|"]
    for arm, points in result["data_efficiency"].items():
        for p in points:
            lines.append(f"| {ARM_LABELS[arm]} | {p['name']} | {p['pairs']} | {100 * p['accuracy_b']:.1f} % | {_diff(p)} | {p['p_value']:.2g} |")
    if "figure" in result:
        lines += ["", f"![Seed {seeds[0]}: accuracy minus the base against pairs, and after each round, with paired 95 % CIs]({result['figure']})"]
    lines += ["", f"## On-policy rounds of Step-DPO (seed {seeds[0]}'s test problems, 3-4 steps)", "", "| round | pairs this round | accuracy | diff with base [95 % CI] | p |", "|---|---|---|---|---|"]
    for r in result["rounds"]:
        lines.append(f"| {r['round']} | {r['pairs']} | {100 * r['accuracy_b']:.1f} % | {_diff(r) if r['round'] else ''} | {r['p_value']:.2g} |")
    loads = result.get("phase_loads", {})
    lines += ["", "## Wall time per phase (s), and the load average (1 min) when it ended", ""]
    if whole := result.get("whole_run"):
        # Seeds added to the work folder later (their phases are in the table) were not in the timed whole.
        timed = whole.get("seeds", seeds)
        scope = "The whole experiment" if timed == seeds else f"The experiment on seeds {timed} (the others ran later; their phases are in the table)"
        lines += [f"{scope}: **{whole['wall_s'] / 60:.1f} min** of wall time on {whole['cores']} cores as {whole['processes']} "
                  f"1-thread processes (`bench/organism_2cores.sh`; {whole['started']} to {whole['ended']}, load average at the end "
                  f"{whole['load_average_end']}); the phases below sum the processes' times.", ""]
    lines += ["| phase | s | load |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {loads.get(k, 'not recorded')} |" for k, v in result["phases_s"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
