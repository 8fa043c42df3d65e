"""The report as one model of plain strings, shared by the HTML and Markdown renderers.

:func:`sections` turns a :class:`~stepdpo.report.collect.RunData` into
:class:`Section` objects: a title and blocks (:class:`Table`, :class:`Text`,
:class:`Figure`, :class:`Label`, :class:`Facts`, :class:`Pairs`). Cells and texts
are unescaped here; each renderer only escapes them for its own format and lays
the blocks out, so both outputs carry the same cells and lines.
"""

from __future__ import annotations

import difflib
import re
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Literal, Union

from pathlib import Path

from stepdpo.records import LocatedError
from stepdpo.report.budgets import BudgetCurves, budget_curves
from stepdpo.report.collect import METHOD_ORDER, Comparison, Curve, EvalSet, Header, RoundAccuracy, RunData, flatten, order_key
from stepdpo.report.flawed_steps import FlawedStepRow
from stepdpo.report.solutions import Completeness, FlipSet, PairSample
from stepdpo.rundir import Funnel

DASH = "–"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    scroll: bool = False
    """A long table (the flattened config): the HTML page gives it a scrolling box."""


@dataclass
class Text:
    text: str
    kind: Literal["note", "missing", "error"] = "note"
    """'missing': an absent or empty input; 'error': an unreadable one (file, line, field)."""


@dataclass
class Figure:
    key: str
    """A figure key (``ReportPaths.images``); a renderer without that image leaves it out."""
    alt: str


@dataclass
class Label:
    """A sub-heading inside a section."""

    text: str


@dataclass
class Facts:
    """(name, value) lines, e.g. the run directory and the model."""

    items: list[tuple[str, str]]


@dataclass
class Pairs:
    """A sample of the preference pairs, drawn by each renderer in its own diff notation (the HTML page filters them)."""

    sample: PairSample


@dataclass
class Flips:
    """One trained model's flips against the starting model: counts, a few examples of each kind, the full list's file."""

    evaluation: str
    start: str
    sets: list[FlipSet]
    names: dict[str, str]
    """Test set spec -> short display name."""
    jsonl: str
    """File name of the full list, beside the report."""
    examples: int
    """Examples shown per kind and set."""


Block = Union[Table, Text, Figure, Label, Facts, Pairs, Flips]


@dataclass
class Section:
    key: str
    """Anchor id in the HTML page."""
    nav: str
    """Short name for the HTML page's navigation bar."""
    title: str
    blocks: list[Block]


def _fmt(value: float | None, digits: int = 3) -> str:
    return DASH if value is None else f"{value:.{digits}g}"


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}%"


def _seconds(value: float) -> str:
    if value < 90:
        return f"{value:.1f} s"
    if value < 5400:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.2f} h"


def config_table(header: Header, max_value_chars: int = 120) -> Table:
    rows = []
    for key, value in flatten(header.config or {}):
        text = repr(value) if isinstance(value, (list, tuple)) else str(value)
        rows.append([key, text if len(text) <= max_value_chars else text[: max_value_chars - 1] + "…"])
    return Table(["option", "value"], rows, scroll=True)


def wall_table(header: Header) -> Table:
    rows = [[stage, _seconds(seconds)] for stage, seconds in header.wall_s]
    if len(header.wall_s) > 1:
        rows.append(["total", _seconds(sum(s for _, s in header.wall_s))])
    return Table(["stage", "wall time"], rows)


_SPLITS = ("test", "train", "validation", "dev")


def _base_name(spec: str) -> str:
    """A spec without its options: 'synthetic:test?n=64&..' -> 'synthetic', 'gsm8k:train' -> 'gsm8k train',
    'hf:owner/name:split' -> 'name', 'data/my_set.jsonl' -> 'my_set'."""
    head = spec.partition("?")[0]
    if head.startswith("hf:"):
        name, _, split = head[3:].partition(":")
        return name.rsplit("/", 1)[-1] + (f" {split}" if split and split != "test" else "")
    if Path(head).suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"):
        return Path(head).stem
    name, _, split = head.partition(":")
    return name if split in ("", "test") else f"{name} {split}" if split in _SPLITS else head


def short_set_names(specs: list[str]) -> dict[str, str]:
    """A short display name for each test set spec, unique among ``specs``: the spec's source without its
    options ('synthetic', 'gsm8k', a file's stem); sets that would share a name are numbered in order."""
    bases = {spec: _base_name(spec) for spec in specs}
    counts = Counter(bases.values())
    seen: Counter[str] = Counter()
    names = {}
    for spec in specs:
        base = bases[spec]
        seen[base] += 1
        names[spec] = base if counts[base] == 1 else f"{base} {seen[base]}"
    return names


def eval_table(evals: list[EvalSet]) -> Table:
    extra_keys = sorted({k for e in evals for k in e.extra})
    rows = []
    sets = list(dict.fromkeys(e.test_set for e in evals))
    names = short_set_names(sets)
    for e in sorted(evals, key=lambda e: (sets.index(e.test_set), order_key(e.eval_name, METHOD_ORDER))):
        ci = f"[{_pct(e.ci_low)}, {_pct(e.ci_high)}]" if e.ci_low is not None and e.ci_high is not None else DASH
        counts = f"{e.correct} / {e.total}" if e.correct is not None and e.total is not None else DASH
        rows.append([names[e.test_set], e.test_set, e.eval_name, counts, _pct(e.accuracy), ci, e.ci_source] + [_fmt(e.extra.get(k)) for k in extra_keys])
    return Table(["set", "spec", "evaluation", "correct / n", "accuracy", "95% CI", "CI from"] + extra_keys, rows)


def flip_count_table(flips: dict[str, list[FlipSet]], names: dict[str, str]) -> Table:
    rows = []
    for evaluation, sets in flips.items():
        for s in sets:
            net = len(s.fixed) - len(s.broken)
            rows.append([evaluation, names.get(s.test_set, s.test_set), str(s.problems), str(len(s.fixed)), str(len(s.broken)), f"{net:+d}",
                         "steps" if s.step_truth else "final answer"])
    return Table(["trained", "set", "problems", "fixed (now right)", "broken (now wrong)", "net", "judged by"], rows)


def completeness_table(rows: list[Completeness], names: dict[str, str], start: str | None) -> Table:
    """Per set and evaluation; the change of the final-answer share against the starting evaluation."""
    baseline = {r.test_set: r.final_answer for r in rows if r.evaluation == start}
    out = []
    for r in sorted(rows, key=lambda r: (list(names).index(r.test_set) if r.test_set in names else len(names), r.test_set, order_key(r.evaluation, METHOD_ORDER))):
        change = DASH if r.evaluation == start or r.test_set not in baseline else f"{100 * (r.final_answer - baseline[r.test_set]):+.1f} pp"
        out.append([names.get(r.test_set, r.test_set), r.evaluation, str(r.responses), _pct(r.final_answer), change, _pct(r.truncated),
                    _fmt(r.mean_tokens, 4), _fmt(r.median_tokens, 4), _fmt(r.mean_tokens_answered, 4)])
    return Table(["set", "evaluation", "responses", "state a final answer", "change", "cut at token limit", "mean tokens",
                  "median tokens", "mean tokens (answered)"], out)


def _points_scale(values: list[float | None]) -> float:
    """Compare files may give differences as fractions or as points: all |v| <= 1 means fractions."""
    present = [abs(v) for v in values if v is not None]
    return 100.0 if present and max(present) <= 1.0 else 1.0


def compare_table(comparisons: list[Comparison]) -> Table:
    rows = []
    for c in comparisons:
        scale = _points_scale([c.difference, c.ci_low, c.ci_high])
        diff = DASH if c.difference is None else f"{scale * c.difference:+.1f} pp"
        ci = f"[{scale * c.ci_low:+.1f}, {scale * c.ci_high:+.1f}]" if c.ci_low is not None and c.ci_high is not None else DASH
        p_value = DASH if c.p_value is None else (f"{c.p_value:.2g}" if c.p_value >= 1e-4 else f"{c.p_value:.1e}")
        rows.append([c.source, c.test_set, c.a, c.b, diff, ci, p_value, c.verdict or DASH])
    return Table(["file", "test set", "A", "B", "B − A", "95% CI", "McNemar p", "verdict"], rows)


def _difference(c: Comparison | None) -> str:
    """A paired difference as 'B − A pp [CI]' (its scale as compare_table reads it), or a dash."""
    if c is None or c.difference is None:
        return DASH
    scale = _points_scale([c.difference, c.ci_low, c.ci_high])
    ci = f" [{scale * c.ci_low:+.1f}, {scale * c.ci_high:+.1f}]" if c.ci_low is not None and c.ci_high is not None else ""
    return f"{scale * c.difference:+.1f} pp{ci}"


def rounds_blocks(rows: list[RoundAccuracy], errors: list[str]) -> list[Block]:
    """The 'Accuracy by round' section: its errors, figure, one row per round and test set, and what the rows are."""
    blocks: list[Block] = [Text(e, "error") for e in errors]
    if not rows:
        return blocks
    sets = list(dict.fromkeys(r.accuracy.test_set for r in rows))
    names = short_set_names(sets)
    table = []
    for r in sorted(rows, key=lambda r: (sets.index(r.accuracy.test_set), r.round)):
        e = r.accuracy
        ci = f"[{_pct(e.ci_low)}, {_pct(e.ci_high)}]" if e.ci_low is not None and e.ci_high is not None else DASH
        counts = f"{e.correct} / {e.total}" if e.correct is not None and e.total is not None else DASH
        table.append([str(r.round), e.eval_name, names[e.test_set], counts, _pct(e.accuracy), ci,
                      DASH if r.round == 0 else _difference(r.vs_base), DASH if r.round == 0 else _difference(r.vs_previous)])
    method = next((r.accuracy.eval_name for r in rows if r.round > 0), "the trained method")
    return blocks + [
        Figure("rounds", "accuracy after each on-policy round, with 95% confidence intervals"),
        Table(["round", "evaluation", "set", "correct / n", "accuracy", "95% CI", "vs start (B − A, 95% CI)", "vs round before"], table),
        Text(f"Round 0: the starting policy (eval/base); round 1: the run's {method} model; round r: {method} trained again from round "
             f"r−1's model, on errors that model made on new problems (rounds/r<r>/). Differences: paired bootstrap (stepdpo compare)."),
    ]


def select_curves(curves: list[Curve]) -> list[Curve]:
    """Per training run, its eval-split curve, or its train-split one when it logged no eval rows."""
    chosen: dict[str, Curve] = {}
    for curve in curves:
        current = chosen.get(curve.run_name)
        if current is None or (curve.split == "eval" and current.split != "eval"):
            chosen[curve.run_name] = curve
    return list(chosen.values())


def training_table(curves: list[Curve]) -> Table:
    rows = []
    for c in curves:
        last = {m: points[-1][1] for m, points in c.series.items() if points}
        rows.append([c.run_name, c.split, str(len(c.steps)), _fmt(c.steps[-1] if c.steps else None, 6), _fmt(last.get("accuracies")), _fmt(last.get("margins")), _fmt(last.get("loss"))])
    return Table(["run", "split", "points", "last step", "last accuracy", "last margin", "last loss"], rows)


def funnel_table(funnels: list[Funnel]) -> Table:
    rows = []
    for f in funnels:
        dropped = ", ".join(f"{reason}: {count}" for reason, count in sorted((f.dropped or {}).items(), key=lambda kv: -kv[1])) or DASH
        kept = _out_per_in(f.records_in, f.records_out)
        wall = (f.extra or {}).get("wall_s")
        rows.append([f.stage, str(f.records_in), str(f.records_out), kept, dropped, _seconds(float(wall)) if isinstance(wall, (int, float)) else DASH])
    return Table(["stage", "in", "out", "out / in", "dropped (reason: count)", "wall time"], rows)


def _out_per_in(records_in: int, records_out: int) -> str:
    """A share kept for filtering stages; a multiplier for stages that fan out (k samples per problem)."""
    if not records_in:
        return DASH
    ratio = records_out / records_in
    return _pct(ratio) if ratio <= 1 else f"×{ratio:.3g}"


def localization_tables(located: list[LocatedError]) -> tuple[Table, Table]:
    """(per-localizer summary, status counts)."""
    summary = []
    for localizer in sorted({r.localizer for r in located}):
        group = [r for r in located if r.localizer == localizer]
        steps = [r.first_wrong_step for r in group if r.first_wrong_step is not None]
        rollouts = [r.rollouts for r in group]
        tokens = [r.localizer_tokens for r in group]
        confidences = [r.confidence for r in group if r.confidence is not None]
        summary.append([
            localizer or "(unnamed)",
            str(len(group)),
            str(len(steps)),
            _fmt(statistics.mean(steps) if steps else None),
            _fmt(statistics.median(steps) if steps else None),
            _fmt(statistics.mean(rollouts)),
            _fmt(statistics.median(rollouts)),
            str(max(rollouts)),
            _fmt(statistics.mean(tokens), 4),
            _fmt(statistics.mean(confidences) if confidences else None),
        ])
    status = Counter(r.status for r in located)
    return (
        Table(["localizer", "records", "with a first wrong step", "mean step", "median step", "mean rollouts", "median rollouts", "max rollouts", "mean rollout tokens", "mean confidence"], summary),
        Table(["status", "records"], [[s, str(n)] for s, n in status.most_common()]),
    )


_WORDS = re.compile(r"\s+|[^\s]+")


def word_diff(rejected: str, chosen: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Word-level diff of two steps: (rejected segments, chosen segments).

    Each segment is (kind, text) with kind 'same', 'del' (only in rejected) or 'ins'
    (only in chosen); concatenating a side's texts gives that side back exactly.
    """
    a = _WORDS.findall(rejected)
    b = _WORDS.findall(chosen)
    # (changed?, rejected text, chosen text) runs; a whitespace-only match between two changes is
    # folded into them, so a rewritten phrase shows as one marked run rather than word confetti.
    runs: list[tuple[bool, str, str]] = []
    opcodes = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    for index, (tag, i1, i2, j1, j2) in enumerate(opcodes):
        left_text, right_text = "".join(a[i1:i2]), "".join(b[j1:j2])
        inner_blank = tag == "equal" and not left_text.strip() and 0 < index < len(opcodes) - 1
        changed = tag != "equal" or inner_blank
        if changed and runs and runs[-1][0]:
            runs[-1] = (True, runs[-1][1] + left_text, runs[-1][2] + right_text)
        else:
            runs.append((changed, left_text, right_text))
    left: list[tuple[str, str]] = []
    right: list[tuple[str, str]] = []
    for changed, left_text, right_text in runs:
        if not changed:
            left.append(("same", left_text))
            right.append(("same", right_text))
            continue
        if left_text:
            left.append(("del", left_text))
        if right_text:
            right.append(("ins", right_text))
    return left, right


# One line per section whose input is absent, shared by both renderers.
MISSING = {
    "config": "No config.yaml in this run directory.",
    "wall": "No stage recorded its wall time (timings.json, funnel extra.wall_s).",
    "accuracy": "No evaluation results (eval/<name>/results.json) in this run directory.",
    "compare": "No paired comparisons (compare*.json) in this run directory.",
    "training": "No training metrics (train/<name>/metrics.jsonl) in this run directory.",
    "funnel": "No funnel files (funnel/<stage>.json) in this run directory.",
    "localization": "No located errors (located.jsonl) in this run directory.",
    "pairs": "No preference pairs (pairs/*_pairs.jsonl) in this run directory.",
    "flips": "No evaluation samples (eval/<name>/samples.jsonl) of the starting model and a trained one to compare.",
    "completeness": "No evaluation samples or final-answer rates in this run directory.",
    "flawed": "No evaluation samples on problems with known intermediate values (synthetic sets) in this run directory.",
}

FLIP_EXAMPLES = 4
"""Examples of each kind (fixed, broken) shown per trained model and test set."""


def flips_file(evaluation: str) -> str:
    """The full list's file name for one trained model."""
    return f"flips-{re.sub(r'[^A-Za-z0-9._-]+', '-', evaluation)}.jsonl"


def agreement_line(funnels: list[Funnel]) -> str | None:
    """The locate funnel's agreement with ground truth (``extra.vs_exact_*``, on synthetic problems), as one line."""
    for f in funnels:
        extra = f.extra or {}
        if f.stage == "locate" and all(isinstance(extra.get(f"vs_exact_{k}"), (int, float)) for k in ("exact", "within_one", "compared")):
            return (f"agreement with ground truth: {_pct(extra['vs_exact_exact'])} same step, "
                    f"{_pct(extra['vs_exact_within_one'])} within one (n={int(extra['vs_exact_compared'])})")
    return None


def _state(error: str | None, records: list | None, missing_key: str, file_name: str) -> list[Block]:
    """What a section built on one records file shows instead of its content (its error, its absence or
    its emptiness); empty when there are records to show."""
    if error:
        return [Text(error, "error")]
    if records is None:
        return [Text(MISSING[missing_key], "missing")]
    return [] if records else [Text(f"{file_name} is empty.", "missing")]


def _listed(errors: list[str], present: bool, content: list[Block], missing_key: str) -> list[Block]:
    """A section built on several files: their errors, then the content, or the missing line when there are no errors either."""
    blocks: list[Block] = [Text(e, "error") for e in errors]
    if present:
        return blocks + content
    return blocks if errors else [Text(MISSING[missing_key], "missing")]


def sections(data: RunData) -> list[Section]:
    """The whole report in order: Run, Accuracy, Pair budgets, Rounds (each when the run has them), Flips, Completeness, Where errors start,
    Training, Pipeline funnel, Localization, Step pairs."""
    header = data.header
    if header.config_error:
        config: Block = Text(header.config_error, "error")
    else:
        config = Text(MISSING["config"], "missing") if header.config is None else config_table(header)
    overview: list[Block] = [
        Facts([("Run directory", header.run_dir), ("Model", header.model or "not recorded")]),
        Label("Wall time per stage"),
        *([Text(header.wall_error, "error")] if header.wall_error else []),
        wall_table(header) if header.wall_s else Text(MISSING["wall"], "missing"),
        Label("Configuration"),
        config,
    ]
    accuracy = _listed(data.eval_errors, bool(data.evals), [
        Figure("accuracy", "accuracy per test set and evaluation, with 95% confidence intervals"),
        eval_table(data.evals),
        Text('CI from: "reported" by stepdpo eval; "wilson" computed here (Wilson score interval) from correct / n.'),
    ], "accuracy")
    accuracy += [Label("Paired comparisons"), *_listed(data.compare_errors, bool(data.comparisons), [compare_table(data.comparisons)], "compare")]
    curves = select_curves(data.curves)
    training = _listed(data.train_errors, bool(curves), [
        Figure("training", "preference accuracy, reward margin and rewards over training steps"),
        training_table(curves),
        Text("Eval split of each run; a run that logged no eval rows is shown on its train split."),
    ], "training")
    funnel = _listed(data.funnel_errors, bool(data.funnels), [Figure("funnel", "records in and out per pipeline stage"), funnel_table(data.funnels)], "funnel")
    localization = _state(data.located_error, data.located, "localization", "located.jsonl") or [
        Figure("localization", "histogram of first wrong steps, rollout cost and status counts"), *localization_tables(data.located or [])]
    agreement = agreement_line(data.funnels)
    if agreement:
        localization.append(Text(agreement))
    pairs = _listed(data.pairs_errors, bool(data.pairs and data.pairs.shown), [Pairs(data.pairs)] if data.pairs else [], "pairs")
    names = short_set_names(list(dict.fromkeys([e.test_set for e in data.evals] + [r.test_set for r in data.completeness])))
    flip_blocks: list[Block] = [Text(e, "error") for e in data.sample_errors]
    if any(data.flips.values()):
        flip_blocks += [
            Text(f"Test problems each trained model gets right that the starting model ({data.start_eval}) got wrong (fixed), and the reverse "
                 "(broken), from the first response of each evaluation. Steps are marked right or wrong where the problems' intermediate "
                 "values are known (synthetic sets); elsewhere only the final answer is."),
            flip_count_table(data.flips, names),
            *[Flips(name, data.start_eval or "", sets, names, flips_file(name), FLIP_EXAMPLES) for name, sets in data.flips.items() if sets],
        ]
    elif not data.sample_errors:
        flip_blocks.append(Text(MISSING["flips"], "missing"))
    lengths = [Figure("lengths", "share of responses that state a final answer, and their mean length, per set and evaluation"),
               completeness_table(data.completeness, names, data.start_eval),
               Text("Does training on partial steps make the model write partial answers? 'State a final answer': a box, 'The answer is' "
                    "or '####' (not just a last number); 'change': against the starting model.")] if data.completeness else [Text(MISSING["completeness"], "missing")]
    curves = budget_curves(data)
    rounds = [Section("rounds", "Rounds", "Accuracy by round (on-policy rounds)", rounds_blocks(data.rounds, data.rounds_errors))] \
        if data.rounds or data.rounds_errors else []
    return [
        Section("overview", "Run", "Run", overview),
        Section("accuracy", "Accuracy", "Accuracy before and after training", accuracy),
        *([Section("budgets", "Pair budgets", "Accuracy by pair budget (data efficiency)", budget_blocks(curves, names))] if curves else []),
        *rounds,
        Section("flips", "Flips", "What training changed: problems fixed and broken", flip_blocks),
        Section("lengths", "Completeness", "Length and completeness of the responses", lengths),
        Section("flawed", "First wrong step", "Where errors start: first wrong step by position", flawed_step_blocks(data.flawed_steps, names)),
        Section("training", "Training (Fig. 2)", "Training: preference accuracy and reward margin (the paper's Fig. 2)", training),
        Section("funnel", "Pipeline funnel", "Pipeline funnel", funnel),
        Section("localization", "Localization", "Localization of first errors", localization),
        Section("pairs", "Pairs", "Preference pairs (a sample)", pairs),
    ]


def flawed_step_table(rows: list[FlawedStepRow], names: dict[str, str]) -> Table:
    """Per set and evaluation: shares of the judged problems right, first wrong at each step, wrong with none located."""
    top = max((r.rates.max_position for r in rows), default=0)
    out = []
    for row in rows:
        rates = row.rates
        reasons = ", ".join(f"{why}: {n}" for why, n in rates.unlocated_reasons.items()) or DASH
        out.append([names.get(row.test_set, row.test_set), row.evaluation, str(rates.problems), _pct(rates.share(rates.right)),
                    *[_pct(rates.share(rates.first_wrong.get(j, 0))) for j in range(1, top + 1)],
                    _pct(rates.share(rates.unlocated)), reasons, _fmt(rates.mean_position())])
    return Table(["set", "evaluation", "problems", "right", *[f"first wrong: step {j}" for j in range(1, top + 1)],
                  "wrong, no step located", "why none located", "mean first wrong step"], out)


def flawed_step_blocks(rows: list[FlawedStepRow], names: dict[str, str]) -> list[Block]:
    """The process metric's section: what it counts, the figure, the table."""
    if not rows:
        return [Text(MISSING["flawed"], "missing")]
    return [
        Text("Each test problem with known intermediate values counts once (its first response): right, wrong with its first wrong "
             "step at a position (the exact localizer), or wrong with no step located; the shares of a row sum to 100%. "
             "Does training remove the errors at the step it trained on, or move them later?"),
        Figure("flawed", "share of test problems whose first wrong step is at each position, per model"),
        flawed_step_table(rows, names),
    ]


def budget_table(curves: BudgetCurves, names: dict[str, str]) -> Table:
    """Per set: the starting model, then each method from its smallest budget to its full-data run."""
    rows = []
    for test_set in curves.test_sets:
        base = curves.base.get(test_set)
        shown = ([(curves.start or "start", DASH, DASH, base)] if base else []) + [
            (p.result.eval_name, p.method, f"{p.pairs} (all)" if p.full else str(p.pairs), p.result) for p in curves.points if p.result.test_set == test_set]
        for evaluation, method, pairs, e in shown:
            ci = f"[{_pct(e.ci_low)}, {_pct(e.ci_high)}]" if e.ci_low is not None and e.ci_high is not None else DASH
            counts = f"{e.correct} / {e.total}" if e.correct is not None and e.total is not None else DASH
            change = DASH if base is None or e is base else f"{100 * (e.accuracy - base.accuracy):+.1f} pp"
            rows.append([names.get(test_set, test_set), evaluation, method, pairs, counts, _pct(e.accuracy), ci, change])
    return Table(["set", "evaluation", "method", "pairs", "correct / n", "accuracy", "95% CI", "vs start"], rows)


def budget_blocks(curves: BudgetCurves, names: dict[str, str]) -> list[Block]:
    """The data-efficiency section: what the curve is, the figure, the table, budgets without an evaluation."""
    blocks: list[Block] = [
        Text("Each method trained again on a seeded subset of its pairs (each budget's pairs inside every larger one's), evaluated "
             "on the same test problems; the last point of a line is the method's full-data run, the dashed line the starting model "
             "(band: its 95% CI). These models are left out of the accuracy chart; the paired comparisons above include them."),
    ]
    if curves.points:
        blocks += [Figure("budgets", "accuracy by pair budget per method, with 95% confidence intervals"), budget_table(curves, names)]
    return blocks + [Text(note, "missing") for note in curves.notes]
