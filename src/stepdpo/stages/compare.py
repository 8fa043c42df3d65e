"""`stepdpo compare RUN_A RUN_B`: two evaluations side by side, with paired statistics.

Each argument is an eval output folder (holding ``results.json``) or the
``results.json`` itself. For every set the two runs share, the problems present
in both are joined by id; on those the table gives accuracy A, accuracy B,
their paired difference ``B - A`` with a paired-bootstrap confidence interval,
McNemar's exact p-value, and a verdict: "B better" / "A better" only when the
interval excludes 0 *and* p < alpha, else "noise". A few points of accuracy on a
few hundred problems are often noise; this table says so.

Two evaluations computed differently (another resolved compute dtype, e.g. ``dtype auto``
autocasting to bfloat16 on a CPU with AVX512-BF16 and staying float32 on another, or another
kind of device) are refused: their difference would mix the models with the machines.
``--allow_compute_mismatch True`` compares them anyway, with the difference as a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tyro

from stepdpo import metrics
from stepdpo.config import OptionCheck
from stepdpo.errors import ConfigError, InputError
from stepdpo.records import atomic_write_json, atomic_write_text

# Settings that make two evaluations measure different things when they differ.
_COMPARABLE_SETTINGS = ("prompt", "prompt_style", "n", "temperature", "top_p", "max_new_tokens", "last_number_fallback")
# What computed the numbers (results.json "compute"): a difference here refuses the comparison ...
_COMPUTE_REFUSED = ("compute_dtype", "device")
# ... and one here is a note (the same dtype on another CPU or GPU model gives nearly the same numbers).
_COMPUTE_NOTED = ("cpu", "gpu")


@dataclass
class CompareConfig:
    run_a: tyro.conf.Positional[str] = field(metadata={"help": "First evaluation (the baseline): an eval folder or its results.json."})
    run_b: tyro.conf.Positional[str] = field(metadata={"help": "Second evaluation (the candidate): an eval folder or its results.json."})
    bootstrap_samples: int = field(default=10_000, metadata={"help": "Bootstrap replicates for the confidence interval of the difference."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    alpha: float = field(default=0.05, metadata={"help": "Significance level: the CI is (1 - alpha), the McNemar threshold alpha."})
    output: str = field(default="compare.json", metadata={"help": "Where to write the comparison as JSON; the Markdown table goes beside it (.md). Empty: print only."})
    allow_compute_mismatch: bool = field(default=False, metadata={"help": "Compare evaluations computed differently (resolved compute dtype or device kind, as results.json's 'compute' records) anyway, with a warning; off: refuse."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.at_least(1, "bootstrap_samples")
        check.share("alpha", zero=False, one=False)


def load_results(path: str) -> tuple[Path, dict[str, Any]]:
    """Read an eval's results.json (given the file or its folder) and check that it can be paired."""
    file = Path(path)
    if file.is_dir():
        file = file / "results.json"
    if not file.is_file():
        raise InputError(str(file), "not found (expected an eval output folder or its results.json)")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(str(file), f"malformed JSON: {err.msg}", err.lineno) from None
    sets = results.get("sets") if isinstance(results, dict) else None
    if not isinstance(sets, dict):
        raise InputError(str(file), "missing or not a mapping", None, "sets")
    for name, summary in sets.items():
        if not isinstance(summary, dict) or not isinstance(summary.get("per_problem"), dict):
            raise InputError(str(file), "missing per-problem outcomes (written by stepdpo eval)", None, f"sets.{name}.per_problem")
    return file, results


def verdict(ci_low: float, ci_high: float, p_value: float, alpha: float) -> str:
    """'B better' / 'A better' when the CI excludes 0 and p < alpha; otherwise 'noise'."""
    if p_value < alpha and ci_low > 0:
        return "B better"
    if p_value < alpha and ci_high < 0:
        return "A better"
    return "noise"


def compare_sets(a: dict[str, Any], b: dict[str, Any], samples: int, seed: int, alpha: float) -> dict[str, Any]:
    """Paired comparison of every set the two results share, on the problem ids both hold."""
    rows = []
    for name, set_a in a["sets"].items():
        if name not in b["sets"]:
            continue
        per_a, per_b = set_a["per_problem"], b["sets"][name]["per_problem"]
        common = [pid for pid in per_a if pid in per_b]
        row: dict[str, Any] = {"set": name, "problems": len(common), "only_in_a": len(per_a) - len(common), "only_in_b": len(per_b) - len(common)}
        if common:
            out_a = [bool(per_a[pid]) for pid in common]
            out_b = [bool(per_b[pid]) for pid in common]
            boot = metrics.paired_bootstrap(out_a, out_b, samples=samples, seed=seed, confidence=1 - alpha)
            test = metrics.mcnemar_exact(out_a, out_b)
            row.update(
                accuracy_a=sum(out_a) / len(common),
                accuracy_b=sum(out_b) / len(common),
                diff=boot["diff"],
                ci_low=boot["ci_low"],
                ci_high=boot["ci_high"],
                a_only_right=test["a_only"],
                b_only_right=test["b_only"],
                p_value=test["p_value"],
                verdict=verdict(boot["ci_low"], boot["ci_high"], test["p_value"], alpha),
            )
        else:
            row["verdict"] = "no shared problems"
        rows.append(row)
    return {
        "rows": rows,
        "sets_only_in_a": [s for s in a["sets"] if s not in b["sets"]],
        "sets_only_in_b": [s for s in b["sets"] if s not in a["sets"]],
    }


def compute_differences(results_a: dict[str, Any], results_b: dict[str, Any]) -> tuple[dict[str, list[Any]], dict[str, list[Any]], list[str]]:
    """(refused, noted, unrecorded): the recorded compute keys whose values differ between A and B.

    ``refused`` holds compute_dtype and the device kind ('cpu', 'cuda', ...), ``noted`` the CPU and GPU
    models; ``unrecorded`` names the sides whose results.json has no compute record (written before
    it existed), where nothing can be checked.
    """
    compute_a, compute_b = results_a.get("compute"), results_b.get("compute")
    unrecorded = [side for side, compute in (("A", compute_a), ("B", compute_b)) if not isinstance(compute, dict)]
    if unrecorded:
        return {}, {}, unrecorded
    assert isinstance(compute_a, dict) and isinstance(compute_b, dict)

    def value(compute: dict[str, Any], key: str) -> Any:
        return str(compute.get(key)).split(":")[0] if key == "device" else compute.get(key)

    refused = {k: [value(compute_a, k), value(compute_b, k)] for k in _COMPUTE_REFUSED if value(compute_a, k) != value(compute_b, k)}
    noted = {k: [compute_a.get(k), compute_b.get(k)] for k in _COMPUTE_NOTED if compute_a.get(k) != compute_b.get(k)}
    return refused, noted, []


def run(config: CompareConfig, results_a: dict[str, Any], results_b: dict[str, Any]) -> dict[str, Any]:
    """The comparison of two results dicts (as written by ``stepdpo eval``).

    Raises ConfigError when the two were computed differently (see :func:`compute_differences`), unless
    ``config.allow_compute_mismatch``.
    """
    config.validate()
    refused, noted, unrecorded = compute_differences(results_a, results_b)
    if refused and not config.allow_compute_mismatch:
        differ = ", ".join(f"{k} {a!r} (A) vs {b!r} (B)" for k, (a, b) in refused.items())
        raise ConfigError(
            f"compare: {config.run_a} and {config.run_b} were computed differently ({differ}), so their difference "
            "mixes the models with the machines; evaluate both the same way (e.g. --generator.dtype float32) "
            "or pass --allow_compute_mismatch True"
        )
    comparison = compare_sets(results_a, results_b, config.bootstrap_samples, config.seed, config.alpha)
    settings_a, settings_b = results_a.get("settings", {}), results_b.get("settings", {})
    comparison.update(
        run_a={"path": config.run_a, "model": results_a.get("model"), "fingerprint": results_a.get("fingerprint")},
        run_b={"path": config.run_b, "model": results_b.get("model"), "fingerprint": results_b.get("fingerprint")},
        settings_differ={k: [settings_a.get(k), settings_b.get(k)] for k in _COMPARABLE_SETTINGS if settings_a.get(k) != settings_b.get(k)},
        compute_a=results_a.get("compute"),
        compute_b=results_b.get("compute"),
        compute_differ=refused,
        compute_noted=noted,
        compute_unrecorded=unrecorded,
        bootstrap_samples=config.bootstrap_samples,
        seed=config.seed,
        alpha=config.alpha,
    )
    return comparison


def render_markdown(comparison: dict[str, Any]) -> str:
    """The comparison as a Markdown table plus notes on what could not be paired."""
    level = round(100 * (1 - comparison["alpha"]))
    lines = [
        f"A: {comparison['run_a']['model']} ({comparison['run_a']['path']})",
        f"B: {comparison['run_b']['model']} ({comparison['run_b']['path']})",
        "",
        f"| set | problems | accuracy A | accuracy B | B - A [{level}% paired bootstrap CI] | A only / B only right | McNemar p | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in comparison["rows"]:
        if "diff" not in row:
            lines.append(f"| {row['set']} | 0 | | | | | | {row['verdict']} |")
            continue
        lines.append(
            f"| {row['set']} | {row['problems']} | {100 * row['accuracy_a']:.1f}% | {100 * row['accuracy_b']:.1f}% "
            f"| {100 * row['diff']:+.1f} [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}] "
            f"| {row['a_only_right']} / {row['b_only_right']} | {row['p_value']:.3g} | {row['verdict']} |"
        )
    notes = [f"WARNING: computed differently (--allow_compute_mismatch): {key} = {value_a!r} (A) vs {value_b!r} (B); "
             "the difference mixes the models with the machines" for key, (value_a, value_b) in comparison.get("compute_differ", {}).items()]
    notes += [f"computed on different hardware: {key} = {value_a!r} (A) vs {value_b!r} (B)" for key, (value_a, value_b) in comparison.get("compute_noted", {}).items()]
    notes += [f"compute not recorded for {side} (results.json older than the record): dtype and device unchecked" for side in comparison.get("compute_unrecorded", [])]
    for row in comparison["rows"]:
        if row["only_in_a"] or row["only_in_b"]:
            notes.append(f"{row['set']}: compared on shared problems only ({row['only_in_a']} only in A, {row['only_in_b']} only in B)")
    for side in ("a", "b"):
        if comparison[f"sets_only_in_{side}"]:
            notes.append(f"sets only in {side.upper()}: {', '.join(comparison[f'sets_only_in_{side}'])}")
    for key, (value_a, value_b) in comparison["settings_differ"].items():
        notes.append(f"settings differ: {key} = {value_a!r} (A) vs {value_b!r} (B)")
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def command(config: CompareConfig) -> int:
    _, results_a = load_results(config.run_a)
    _, results_b = load_results(config.run_b)
    comparison = run(config, results_a, results_b)
    markdown = render_markdown(comparison)
    print(markdown, end="")
    if config.output:
        output = Path(config.output)
        atomic_write_json(output, comparison)
        atomic_write_text(output.with_suffix(".md"), markdown)
        print(f"written: {output} and {output.with_suffix('.md')}")
    return 0
