"""Read what a run directory holds into plain data for the report.

Every reader is tolerant of absence: a missing file gives ``None`` (or an empty
list) and the section says so. Files written by other stages are read loosely
where their schema is still moving (eval results, compare results, trainer
logs): known aliases are accepted and unknown keys ignored. A file that is there
but cannot be read becomes a :class:`SectionError` carrying the InputError text
(file, line, field), shown in its section instead of aborting the whole report.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stepdpo.errors import InputError
from stepdpo.metrics import wilson_interval
from stepdpo.records import LocatedError, StepPair, read_jsonl_dicts, record_from_dict
from stepdpo.report.flawed_steps import FlawedStepRow, read_flawed_steps
from stepdpo.report.solutions import (
    Completeness,
    EvalResponse,
    FlipSet,
    PairSample,
    completeness,
    find_flips,
    load_test_problems,
    pair_files,
    read_responses,
    sample_pairs,
    start_eval,
)
from stepdpo.rundir import Funnel, RunDir, parse_budget_run_name

# Pipeline order of funnel stages; a stage named e.g. "train-dpo" sorts with "train".
STAGE_ORDER = ("sft", "sample", "locate", "rectify", "pairs", "scdpo", "train", "eval", "compare", "report")
# Preferred order of evaluations / training runs, so "base" always comes first.
METHOD_ORDER = ("base", "sft", "dpo", "step-dpo", "scdpo", "judge-free")


class SectionError(Exception):
    """A section's input exists but cannot be read; the message names file, line and field."""


def order_key(name: str, order: tuple[str, ...]) -> tuple[int, str]:
    """Sort key: position of the first entry of ``order`` that ``name`` equals or starts with."""
    lowered = name.lower()
    for index, known in enumerate(order):
        if lowered == known:
            return index, name
    for index, known in enumerate(order):
        if any(lowered.startswith(known + sep) for sep in "-_/@"):
            return index, name
    return len(order), name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SectionError(str(InputError(str(path), f"malformed JSON: {err.msg} at column {err.colno}", err.lineno))) from None
    except UnicodeDecodeError as err:
        raise SectionError(str(InputError(str(path), f"not valid UTF-8 (byte {err.start})"))) from None


def _read_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold one object; anything else is a SectionError naming the file."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise SectionError(str(InputError(str(path), f"expected a JSON object, got {type(data).__name__}")))
    return data


def _method_files(root: Path, file_name: str) -> list[tuple[str, Path]]:
    """(name, path) of every ``root/<name>/<file_name>`` (one per evaluation or training run), base first (METHOD_ORDER)."""
    return sorted(((p.parent.name, p) for p in root.glob(f"*/{file_name}")), key=lambda item: order_key(item[0], METHOD_ORDER))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def _first(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in data and data[key] is not None:
            return data[key]
    return None


def _interval(data: dict[str, Any], ci_keys: tuple[str, ...], low_keys: tuple[str, ...], high_keys: tuple[str, ...]) -> tuple[float | None, float | None]:
    """(low, high) from separate keys, else from a ``[low, high]`` list or a ``{"low", "high"}`` object under ``ci_keys``."""
    low, high = _number(_first(data, *low_keys)), _number(_first(data, *high_keys))
    ci = _first(data, *ci_keys)
    if (low is None or high is None) and isinstance(ci, (list, tuple)) and len(ci) == 2:
        low, high = _number(ci[0]), _number(ci[1])
    elif (low is None or high is None) and isinstance(ci, dict):
        low, high = _number(_first(ci, "low", "lo")), _number(_first(ci, "high", "hi"))
    return low, high


# --------------------------------------------------------------------------- header


@dataclass
class Header:
    run_dir: str
    config: dict[str, Any] | None
    config_error: str | None
    model: str | None
    wall_s: list[tuple[str, float]]
    """(stage, seconds) in pipeline order: timings.json, funnel ``extra.wall_s``, eval results."""
    wall_error: str | None = None


def flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings -> [(dotted.key, scalar or short list)], in file order."""
    if isinstance(data, dict):
        rows: list[tuple[str, Any]] = []
        for key, value in data.items():
            rows.extend(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return rows
    return [(prefix, data)]


def find_model(config: dict[str, Any] | None, evals: list["EvalSet"]) -> str | None:
    """The model the run trained: a config key named like ``model``, else the one eval results name."""
    if config:
        for key, value in flatten(config):
            last = key.rsplit(".", 1)[-1]
            if last in ("model", "model_name_or_path", "base_model", "policy") and isinstance(value, str) and value:
                return value
    models = sorted({e.model for e in evals if e.model})
    return ", ".join(models) if models else None


def read_config(run: RunDir) -> tuple[dict[str, Any] | None, str | None]:
    if not run.config.is_file():
        return None, None
    try:
        data = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{run.config}:{mark.line + 1}" if mark else str(run.config)
        return None, f"{where}: not valid YAML ({getattr(err, 'problem', err)})"
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        return None, f"{run.config}: expected a mapping at the top level, got {type(data).__name__}"
    return data, None


# --------------------------------------------------------------------------- evaluation


@dataclass
class EvalSet:
    """Accuracy of one evaluation (a trained model) on one test set."""

    eval_name: str
    test_set: str
    correct: int | None
    total: int | None
    accuracy: float
    """In [0, 1]."""
    ci_low: float | None
    ci_high: float | None
    ci_source: str
    """'reported', 'wilson' (computed here from correct/total) or 'none'."""
    model: str | None = None
    extra: dict[str, float] = field(default_factory=dict)
    """Other numeric metrics reported for the set (pass@k, maj@k, ...)."""
    lengths: dict[str, float] = field(default_factory=dict)
    """``final_answer_rate``, ``truncated_rate``, ``mean_response_tokens`` as `stepdpo eval` reports them."""


_SET_CONTAINERS = ("sets", "test_sets", "results", "per_set", "datasets")
_SET_NAME_KEYS = ("test_set", "set", "name", "dataset", "problems")
_LENGTH_KEYS = ("final_answer_rate", "truncated_rate", "mean_response_tokens")
_SKIP_EXTRA = {"accuracy", "acc", "n", "num_problems", "problems", "total", "count", "num", "correct", "num_correct", "ci_low", "ci_high", "ci", "ci95", "wall_s"}


def _as_fraction(value: float | None, scale_hint: float | None = None) -> float | None:
    if value is None:
        return None
    # A value above 1 can only be a percentage.
    if value > 1.0 or (scale_hint is not None and scale_hint > 1.0):
        return value / 100.0
    return value


def _parse_set(eval_name: str, set_name: str, data: dict[str, Any], model: str | None, path: Path) -> EvalSet:
    total = _number(_first(data, "total", "n", "num_problems", "problems", "count", "num"))
    correct = _number(_first(data, "correct", "num_correct", "n_correct"))
    accuracy = _number(_first(data, "accuracy", "acc"))
    if accuracy is None and correct is not None and total:
        accuracy = correct / total
    if accuracy is None:
        raise SectionError(str(InputError(str(path), "no accuracy (nor correct and n) for the set", None, set_name)))
    accuracy = _as_fraction(accuracy)
    if correct is None and total is not None:
        correct = round(accuracy * total)
    low, high = _interval(data, ("ci", "ci95"), ("ci_low",), ("ci_high",))
    if low is not None and high is not None:
        scale = max(low, high)
        low, high, source = _as_fraction(low, scale), _as_fraction(high, scale), "reported"
    elif correct is not None and total and 0 <= correct <= total:
        (low, high), source = wilson_interval(int(correct), int(total)), "wilson"
    else:
        low, high, source = None, None, "none"
    extra = {k: float(v) for k, v in data.items() if k not in _SKIP_EXTRA and _number(v) is not None and re.search(r"@|pass|maj", k)}
    # `stepdpo eval` writes {"pass_at_k": {"1": .., "8": ..}, "maj_at_k": {...}}; k = 1 repeats the accuracy.
    for key, label in (("pass_at_k", "pass"), ("maj_at_k", "maj")):
        if isinstance(data.get(key), dict):
            extra.update({f"{label}@{k}": float(v) for k, v in data[key].items() if str(k) != "1" and _number(v) is not None})
    return EvalSet(
        eval_name=eval_name,
        test_set=set_name,
        correct=int(correct) if correct is not None else None,
        total=int(total) if total is not None else None,
        accuracy=accuracy,
        ci_low=low,
        ci_high=high,
        ci_source=source,
        model=_first(data, "model") if isinstance(_first(data, "model"), str) else model,
        extra=extra,
        lengths={k: float(data[k]) for k in _LENGTH_KEYS if _number(data.get(k)) is not None},
    )


def parse_eval_results(eval_name: str, data: Any, path: Path) -> list[EvalSet]:
    """Accept the shapes an eval results file plausibly has.

    ``{"sets": {name: metrics}}`` (or ``results``/``test_sets``/...), ``{"sets": [metrics with a name]}``,
    a bare list of such metrics, or one flat metrics dict (one set).
    """
    model = data.get("model") if isinstance(data, dict) and isinstance(data.get("model"), str) else None
    container: Any = data
    if isinstance(data, dict):
        for key in _SET_CONTAINERS:
            if isinstance(data.get(key), (dict, list)):
                container = data[key]
                break
    sets: list[EvalSet] = []
    if isinstance(container, dict) and container is data:
        if _first(data, "accuracy", "acc", "correct") is None:
            raise SectionError(str(InputError(str(path), "neither per-set results nor an accuracy")))
        name = _first(data, *_SET_NAME_KEYS)
        sets.append(_parse_set(eval_name, str(name) if name else "test", data, model, path))
    elif isinstance(container, dict):
        for name, metrics in container.items():
            if isinstance(metrics, dict):
                sets.append(_parse_set(eval_name, str(name), metrics, model, path))
    elif isinstance(container, list):
        for index, metrics in enumerate(container):
            if isinstance(metrics, dict):
                name = _first(metrics, *_SET_NAME_KEYS)
                sets.append(_parse_set(eval_name, str(name) if name else f"set{index + 1}", metrics, model, path))
    else:
        raise SectionError(str(InputError(str(path), f"expected a JSON object or list, got {type(data).__name__}")))
    return sets


def read_evals(run: RunDir) -> tuple[list[EvalSet], list[str], dict[str, float], dict[str, dict[str, Any]]]:
    """All ``eval/<name>/results.json`` files; returns (sets, errors, wall seconds by eval name, settings by eval name)."""
    sets: list[EvalSet] = []
    errors: list[str] = []
    walls: dict[str, float] = {}
    settings: dict[str, dict[str, Any]] = {}
    for name, path in _method_files(run.root / "eval", "results.json"):
        try:
            data = _read_json(path)
            sets.extend(parse_eval_results(name, data, path))
        except SectionError as err:
            errors.append(str(err))
            continue
        wall = _number(_first(data, "wall_time_s", "wall_s")) if isinstance(data, dict) else None
        if wall is not None:
            walls[name] = wall
        if isinstance(data, dict) and isinstance(data.get("settings"), dict):
            settings[name] = data["settings"]
    return sets, errors, walls, settings


@dataclass
class Comparison:
    """One row of a ``stepdpo compare`` result: B minus A on one set."""

    source: str
    test_set: str
    a: str
    b: str
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    verdict: str | None = None


def _run_name(value: Any) -> str | None:
    """A compare side: a name, or ``{"path": ".../eval/<name>[/results.json]"}`` as `stepdpo compare` writes."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        path = Path(value["path"])
        return (path.parent.name if path.suffix == ".json" else path.name) or str(path)
    return None


def _parse_comparison(source: str, set_name: str, data: dict[str, Any], a: str, b: str) -> Comparison:
    low, high = _interval(data, ("ci", "ci95", "bootstrap_ci"), ("ci_low", "diff_ci_low", "difference_ci_low"), ("ci_high", "diff_ci_high", "difference_ci_high"))
    p_value = _first(data, "mcnemar_p", "p_value", "p", "mcnemar_p_value")
    if isinstance(data.get("mcnemar"), dict):
        p_value = _first(data["mcnemar"], "p_value", "p", "pvalue")
    return Comparison(
        source=source,
        test_set=set_name,
        a=str(_first(data, "a", "baseline", "name_a", "eval_a") or a),
        b=str(_first(data, "b", "candidate", "name_b", "eval_b") or b),
        difference=_number(_first(data, "difference", "diff", "delta", "accuracy_difference", "mean_difference")),
        ci_low=low,
        ci_high=high,
        p_value=_number(p_value),
        verdict=data["verdict"] if isinstance(data.get("verdict"), str) else None,
    )


def read_comparisons(run: RunDir) -> tuple[list[Comparison], list[str]]:
    """``RUN/compare*.json`` (and ``RUN/compare/*.json``): flat or with per-set entries."""
    paths = sorted(run.root.glob("compare*.json")) + sorted((run.root / "compare").glob("*.json"))
    rows: list[Comparison] = []
    errors: list[str] = []
    for path in paths:
        if not path.is_file():
            continue
        try:
            data = _read_object(path)
        except SectionError as err:
            errors.append(str(err))
            continue
        a = _run_name(_first(data, "a", "baseline", "name_a", "eval_a", "run_a")) or "A"
        b = _run_name(_first(data, "b", "candidate", "name_b", "eval_b", "run_b")) or "B"
        container = next((data[k] for k in ("rows",) + _SET_CONTAINERS if isinstance(data.get(k), (dict, list))), None)
        if isinstance(container, dict):
            rows.extend(_parse_comparison(path.name, str(name), v, a, b) for name, v in container.items() if isinstance(v, dict))
        elif isinstance(container, list):
            rows.extend(_parse_comparison(path.name, str(_first(v, *_SET_NAME_KEYS) or "test"), v, a, b) for v in container if isinstance(v, dict))
        else:
            rows.append(_parse_comparison(path.name, str(_first(data, *_SET_NAME_KEYS) or "test"), data, a, b))
    return rows, errors


# --------------------------------------------------------------------------- training curves


@dataclass
class Curve:
    """Logged training metrics of one run on one split, by step."""

    run_name: str
    split: str
    steps: list[float]
    series: dict[str, list[tuple[float, float]]]
    """metric ('accuracies', 'margins', 'chosen', 'rejected', 'loss') -> [(step, value)]."""


_METRIC_ALIASES = {
    "rewards/accuracies": "accuracies",
    "rewards/accuracy": "accuracies",
    "preference_accuracy": "accuracies",
    "rewards/margins": "margins",
    "rewards/margin": "margins",
    "reward_margin": "margins",
    "rewards/chosen": "chosen",
    "rewards/rejected": "rejected",
    "loss": "loss",
}


def normalize_metric_row(row: dict[str, Any], index: int) -> tuple[str, float, dict[str, float]]:
    """One trainer log line -> (split, step, {metric: value}).

    Accepts both ``{"split": "eval", "rewards/margins": ...}`` and transformers-style
    ``{"eval_rewards/margins": ...}``; the step is ``step``/``global_step``, else the line index.
    """
    split = row.get("split") if isinstance(row.get("split"), str) else None
    metrics: dict[str, float] = {}
    for key, value in row.items():
        number = _number(value)
        if number is None:
            continue
        name = key
        for prefix in ("eval_", "eval/", "train_", "train/"):
            if key.startswith(prefix):
                name = key[len(prefix):]
                split = split or prefix[:-1].rstrip("/_")
                break
        if name in _METRIC_ALIASES:
            metrics[_METRIC_ALIASES[name]] = number
    step = _number(_first(row, "step", "global_step"))
    return split or "train", step if step is not None else float(index), metrics


def read_training(run: RunDir) -> tuple[list[Curve], list[str]]:
    """``train/<name>/metrics.jsonl`` -> one curve per run and split that logged anything."""
    curves: list[Curve] = []
    errors: list[str] = []
    for name, path in _method_files(run.root / "train", "metrics.jsonl"):
        by_split: dict[str, dict[str, list[tuple[float, float]]]] = {}
        try:
            for index, (_, row) in enumerate(read_jsonl_dicts(path, allow_torn_tail=True)):
                split, step, metrics = normalize_metric_row(row, index)
                for metric, value in metrics.items():
                    by_split.setdefault(split, {}).setdefault(metric, []).append((step, value))
        except InputError as err:
            errors.append(str(err))
            continue
        for split, series in sorted(by_split.items()):
            steps = sorted({s for points in series.values() for s, _ in points})
            curves.append(Curve(name, split, steps, {m: sorted(p) for m, p in series.items()}))
    return curves, errors


# --------------------------------------------------------------------------- funnel


def read_funnels(run: RunDir) -> tuple[list[Funnel], list[str]]:
    """``funnel/*.json`` in pipeline order."""
    funnels: list[Funnel] = []
    errors: list[str] = []
    for path in (run.root / "funnel").glob("*.json"):
        try:
            data = _read_object(path)
        except SectionError as err:
            errors.append(str(err))
            continue
        known = {k: data[k] for k in ("stage", "records_in", "records_out", "dropped", "extra") if k in data}
        known.setdefault("stage", path.stem)
        try:
            funnels.append(record_from_dict(Funnel, known, path))
        except InputError as err:
            errors.append(str(err))
    funnels.sort(key=lambda f: order_key(f.stage, STAGE_ORDER))
    return funnels, errors


def read_timings(run: RunDir) -> tuple[dict[str, float], str | None]:
    """``RUN/timings.json`` ({stage: seconds}, written by `stepdpo run`, summed over its invocations)."""
    path = run.root / "timings.json"
    if not path.is_file():
        return {}, None
    try:
        data = _read_object(path)
    except SectionError as err:
        return {}, str(err)
    return {str(k): float(v) for k, v in data.items() if _number(v) is not None}, None


def stage_wall_times(timings: dict[str, float], funnels: list[Funnel], eval_walls: dict[str, float]) -> list[tuple[str, float]]:
    """(stage, seconds) in pipeline order: the pipeline's timings.json first, then funnel
    ``extra.wall_s`` and eval results' wall time for stages it did not time (e.g. run alone)."""
    walls = dict(timings)
    for f in funnels:
        if f.extra and _number(f.extra.get("wall_s")) is not None:
            walls.setdefault(f.stage, float(f.extra["wall_s"]))
    for name, seconds in eval_walls.items():
        walls.setdefault(f"eval-{name}", seconds)
    return sorted(walls.items(), key=lambda kv: order_key(kv[0], STAGE_ORDER))


# --------------------------------------------------------------------------- records


def read_records(path: Path, record_type: type) -> tuple[list[Any] | None, str | None]:
    """(strictly typed records of a JSONL file, None), (None, None) when it is absent, or (None, the
    InputError text naming file, line and field) when a line does not parse."""
    if not path.is_file():
        return None, None
    try:
        return [record_from_dict(record_type, obj, path, number) for number, obj in read_jsonl_dicts(path, allow_torn_tail=True)], None
    except InputError as err:
        return None, str(err)


# --------------------------------------------------------------------------- on-policy rounds


@dataclass
class RoundAccuracy:
    """One test set's accuracy after ``round`` on-policy rounds (0: the starting policy), with its paired differences."""

    round: int
    accuracy: EvalSet
    vs_base: Comparison | None = None
    vs_previous: Comparison | None = None


def _rounds_method(config: dict[str, Any] | None, round_dirs: list[Path]) -> str | None:
    """The method the rounds trained: ``rounds_method`` of the run's config, else the one evaluation the round folders hold."""
    if config and isinstance(config.get("rounds_method"), str):
        return config["rounds_method"]
    names = {p.name for folder in round_dirs for p in (folder / "eval").glob("*") if p.is_dir()}
    return names.pop() if len(names) == 1 else None


def read_rounds(run: RunDir, config: dict[str, Any] | None) -> tuple[list[RoundAccuracy], list[str]]:
    """Accuracy by round when the run has ``RUN/rounds`` (`stepdpo run --rounds N`): round 0 is ``eval/base``, round 1 the
    run's own ``eval/<method>``, round r ``rounds/r<r>/eval/<method>``; differences from their ``compare_<method>*.json``."""
    folder = run.root / "rounds"
    if not folder.is_dir():
        return [], []
    numbered = sorted((int(p.name[1:]), p) for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"r\d+", p.name))
    method = _rounds_method(config, [p for _, p in numbered])
    if method is None:
        return [], [f"{folder}: no rounds_method in config.yaml, and the rounds do not evaluate exactly one model"]
    # (round, its run folder, evaluation, compare file against the start, compare file against the round before)
    steps = [(0, run.root, "base", None, None), (1, run.root, method, f"compare_{method}.json", f"compare_{method}.json")]
    steps += [(number, path, method, f"compare_{method}.json", f"compare_{method}_previous.json") for number, path in numbered if number >= 2]
    rows: list[RoundAccuracy] = []
    errors: list[str] = []
    for number, path, name, against_base, against_previous in steps:
        sets, eval_errors, _, _ = read_evals(RunDir(path))
        comparisons, compare_errors = read_comparisons(RunDir(path))
        if number >= 2:  # rounds 0 and 1 are the run's own folder, whose errors the accuracy section shows
            errors += eval_errors + compare_errors
        by_file = {(c.source, c.test_set): c for c in comparisons}
        rows += [RoundAccuracy(number, e, by_file.get((against_base, e.test_set)), by_file.get((against_previous, e.test_set)))
                 for e in sets if e.eval_name == name]
    return rows, errors


@dataclass
class RunData:
    """Everything the report shows; ``None`` means the input file is absent."""

    header: Header
    evals: list[EvalSet]
    eval_errors: list[str]
    comparisons: list[Comparison]
    compare_errors: list[str]
    curves: list[Curve]
    train_errors: list[str]
    funnels: list[Funnel]
    funnel_errors: list[str]
    located: list[LocatedError] | None
    located_error: str | None
    pairs: PairSample | None
    """A sample of every pair file; None when there is none."""
    pairs_errors: list[str] = field(default_factory=list)
    flips: dict[str, list[FlipSet]] = field(default_factory=dict)
    """Trained evaluation -> its flips against the starting model, per test set."""
    start_eval: str | None = None
    completeness: list[Completeness] = field(default_factory=list)
    """From every evaluation's samples.jsonl, else its results.json."""
    sample_errors: list[str] = field(default_factory=list)
    flawed_steps: list[FlawedStepRow] = field(default_factory=list)
    """First wrong step by position, per evaluation and test set with known intermediate values."""
    rounds: list[RoundAccuracy] = field(default_factory=list)
    """Accuracy by on-policy round (empty without RUN/rounds)."""
    rounds_errors: list[str] = field(default_factory=list)


def read_eval_responses(run: RunDir, names: list[str]) -> tuple[dict[str, list[EvalResponse]], list[str]]:
    """``eval/<name>/samples.jsonl`` of each evaluation that has one; unreadable files become errors."""
    responses: dict[str, list[EvalResponse]] = {}
    errors: list[str] = []
    for name in names:
        path = run.eval(name) / "samples.jsonl"
        if not path.is_file():
            continue
        try:
            responses[name] = read_responses(path)
        except InputError as err:
            errors.append(str(err))
    return responses, errors


def read_flips(responses: dict[str, list[EvalResponse]], settings: dict[str, dict[str, Any]]) -> tuple[str | None, dict[str, list[FlipSet]]]:
    """The starting evaluation and, for every other evaluation with samples, its flips against it."""
    names = sorted(responses, key=lambda n: order_key(n, METHOD_ORDER))
    start = start_eval(names)
    if start is None:
        return None, {}
    problems: dict[str, dict[str, Any]] = {}
    for test_set in dict.fromkeys(r.set for r in responses[start]):
        problems[test_set] = load_test_problems(test_set, settings.get(start, {}))
    return start, {name: find_flips(name, start, responses[start], responses[name], problems) for name in names if name != start}


def completeness_rows(evals: list[EvalSet], responses: dict[str, list[EvalResponse]]) -> list[Completeness]:
    """Per evaluation and set: from its samples when there are any, else from the rates its results.json reports."""
    rows: list[Completeness] = []
    for name in sorted({e.eval_name for e in evals} | set(responses), key=lambda n: order_key(n, METHOD_ORDER)):
        if name in responses:
            rows.extend(completeness(name, responses[name]))
            continue
        for e in evals:
            if e.eval_name == name and "final_answer_rate" in e.lengths:
                rows.append(Completeness(name, e.test_set, e.total or 0, e.lengths["final_answer_rate"], e.lengths.get("truncated_rate"),
                                         e.lengths.get("mean_response_tokens")))
    return rows


def read_pairs(run: RunDir, located: list[LocatedError] | None, per_method: int) -> PairSample | None:
    """A seeded sample of ``per_method`` pairs of every ``pairs/*_pairs.jsonl``; None when there is no pair file."""
    files = pair_files(run)
    if not files:
        return None
    loaded: list[tuple[str, list[StepPair]]] = []
    errors: list[str] = []
    for method, path in files:
        records, error = read_records(path, StepPair)
        if error:
            errors.append(error)
        else:
            loaded.append((method, records or []))
    sample = sample_pairs(loaded, located, per_method)
    sample.errors = errors
    return sample


def collect(run_dir: str | Path, max_pairs: int = 12) -> RunData:
    """Read a run directory; never raises for missing or unreadable section inputs. ``max_pairs`` is per pair file."""
    run = RunDir(run_dir)
    config, config_error = read_config(run)
    timings, timings_error = read_timings(run)
    evals, eval_errors, eval_walls, eval_settings = read_evals(run)
    comparisons, compare_errors = read_comparisons(run)
    curves, train_errors = read_training(run)
    funnels, funnel_errors = read_funnels(run)
    located, located_error = read_records(run.located, LocatedError)
    # Models trained on a pair budget (`step-dpo@300`) have their own section: their responses are not read.
    eval_names = sorted({e.eval_name for e in evals} | {p.name for p in (run.root / "eval").glob("*") if (p / "samples.jsonl").is_file()},
                        key=lambda n: order_key(n, METHOD_ORDER))
    responses, sample_errors = read_eval_responses(run, [n for n in eval_names if parse_budget_run_name(n) is None])
    start, flips = read_flips(responses, eval_settings)
    header = Header(
        run_dir=str(run.root),
        config=config,
        config_error=config_error,
        model=find_model(config, evals),
        wall_s=stage_wall_times(timings, funnels, eval_walls),
        wall_error=timings_error,
    )
    pairs = read_pairs(run, located, max_pairs)
    rounds, rounds_errors = read_rounds(run, config)
    return RunData(
        header=header,
        evals=evals,
        eval_errors=eval_errors,
        comparisons=comparisons,
        compare_errors=compare_errors,
        curves=curves,
        train_errors=train_errors,
        funnels=funnels,
        funnel_errors=funnel_errors,
        located=located,
        located_error=located_error,
        pairs=pairs,
        pairs_errors=pairs.errors if pairs else [],
        flips=flips,
        start_eval=start,
        completeness=completeness_rows([e for e in evals if parse_budget_run_name(e.eval_name) is None], responses),
        sample_errors=sample_errors,
        flawed_steps=read_flawed_steps(responses, eval_settings),
        rounds=rounds,
        rounds_errors=rounds_errors,
    )
