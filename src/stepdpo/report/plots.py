"""The report's figures, drawn with matplotlib's Agg canvas and returned as PNG bytes.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot), so no
global backend or figure registry is touched and nothing needs a display.
"""

from __future__ import annotations

import io
from collections import Counter

from matplotlib.figure import Figure

from stepdpo.records import LocatedError
from stepdpo.report.budgets import BudgetCurves
from stepdpo.report.flawed_steps import FlawedStepRow
from stepdpo.report.collect import METHOD_ORDER, Curve, EvalSet, RoundAccuracy, order_key
from stepdpo.report.solutions import Completeness
from stepdpo.report.tables import short_set_names
from stepdpo.rundir import Funnel

DPI = 110
_FIXED_COLOURS = {"base": "#8c8c8c", "sft": "#8c8c8c", "step-dpo": "#1f77b4", "dpo": "#ff7f0e", "scdpo": "#2ca02c", "judge-free": "#9467bd"}
# Spare colours for other runs: none of the fixed ones, so a custom run never looks like a known method.
_CYCLE = ("#d62728", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")


def method_colours(names: list[str]) -> dict[str, str]:
    """A stable colour per evaluation / training run: fixed ones for the known methods."""
    colours: dict[str, str] = {}
    spare = iter(_CYCLE * (len(names) // len(_CYCLE) + 1))
    for name in names:
        fixed = _FIXED_COLOURS.get(name.lower())
        colours[name] = fixed if fixed else next(spare)
    return colours


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def accuracy_chart(evals: list[EvalSet]) -> bytes:
    """Grouped bars: one group per test set, one bar per evaluation, 95% CI as error bars (in %)."""
    sets = list(dict.fromkeys(e.test_set for e in evals))
    names = sorted(dict.fromkeys(e.eval_name for e in evals), key=lambda n: order_key(n, METHOD_ORDER))
    colours = method_colours(names)
    by_key = {(e.test_set, e.eval_name): e for e in evals}
    width = 0.8 / max(1, len(names))
    fig = Figure(figsize=(max(5.0, 1.2 + 1.1 * len(sets) * max(1, len(names)) * 0.55), 3.6))
    ax = fig.add_subplot()
    for j, name in enumerate(names):
        xs, ys, lows, highs = [], [], [], []
        for i, test_set in enumerate(sets):
            entry = by_key.get((test_set, name))
            if entry is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            y = 100 * entry.accuracy
            xs.append(x)
            ys.append(y)
            lows.append(y - 100 * entry.ci_low if entry.ci_low is not None else 0.0)
            highs.append(100 * entry.ci_high - y if entry.ci_high is not None else 0.0)
        bars = ax.bar(xs, ys, width=width * 0.92, color=colours[name], label=name, yerr=[lows, highs], capsize=3, error_kw={"elinewidth": 1})
        ax.bar_label(bars, labels=[f"{y:.1f}" for y in ys], padding=2, fontsize=7)
    names_of = short_set_names(sets)  # full specs run into each other; the table maps names to specs
    ax.set_xticks(range(len(sets)), [names_of[s] for s in sets])
    ax.set_ylabel("accuracy (%)")
    top = max((100 * (e.ci_high if e.ci_high is not None else e.accuracy) for e in evals), default=100)
    ax.set_ylim(0, min(100, top * 1.18 + 2))
    ax.set_title("Accuracy with 95% confidence intervals")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(names), 5), loc="upper left")
    return _png(fig)


def rounds_chart(rows: list[RoundAccuracy]) -> bytes:
    """Accuracy after each on-policy round (0: the starting policy), one line per test set, 95% CIs as error bars (in %)."""
    sets = list(dict.fromkeys(r.accuracy.test_set for r in rows))
    names = short_set_names(sets)
    last = max(r.round for r in rows)
    fig = Figure(figsize=(max(4.5, 2.5 + 0.8 * last), 3.4))
    ax = fig.add_subplot()
    for j, test_set in enumerate(sets):
        points = sorted((r.round, r.accuracy) for r in rows if r.accuracy.test_set == test_set)
        ys = [100 * e.accuracy for _, e in points]
        lows = [y - 100 * e.ci_low if e.ci_low is not None else 0.0 for y, (_, e) in zip(ys, points)]
        highs = [100 * e.ci_high - y if e.ci_high is not None else 0.0 for y, (_, e) in zip(ys, points)]
        # Sets side by side within a round, so their error bars do not hide each other.
        xs = [n + 0.08 * (j - (len(sets) - 1) / 2) for n, _ in points]
        ax.errorbar(xs, ys, yerr=[lows, highs], marker="o", markersize=4, capsize=3, elinewidth=1, color=_CYCLE[j % len(_CYCLE)], label=names[test_set])
    ax.set_xticks(range(last + 1), ["0 (start)"] + [str(n) for n in range(1, last + 1)])
    ax.set_xlabel("rounds of training")
    ax.set_ylabel("accuracy (%)")
    top = max((100 * (r.accuracy.ci_high if r.accuracy.ci_high is not None else r.accuracy.accuracy) for r in rows), default=100)
    ax.set_ylim(0, min(100, top * 1.18 + 2))
    method = next((r.accuracy.eval_name for r in rows if r.round > 0), "")
    ax.set_title(f"Accuracy by round ({method}) with 95% confidence intervals", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def completeness_chart(rows: list[Completeness]) -> bytes:
    """Two panels of grouped bars (one group per test set, one bar per evaluation): the share of responses
    that state a final answer, and their mean length in tokens."""
    sets = list(dict.fromkeys(r.test_set for r in rows))
    labels = short_set_names(sets)
    names = sorted(dict.fromkeys(r.evaluation for r in rows), key=lambda n: order_key(n, METHOD_ORDER))
    colours = method_colours(names)
    by_key = {(r.test_set, r.evaluation): r for r in rows}
    width = 0.8 / max(1, len(names))
    fig = Figure(figsize=(max(8.0, 2.0 + 1.2 * len(sets) * max(1, len(names)) * 0.5), 3.4))
    axes = fig.subplots(1, 2)
    panels = ((lambda r: 100 * r.final_answer, "responses that state a final answer (%)"), (lambda r: r.mean_tokens, "mean response length (tokens)"))
    for ax, (value, title) in zip(axes, panels):
        for j, name in enumerate(names):
            points = [(i - 0.4 + width * (j + 0.5), value(by_key[(s, name)])) for i, s in enumerate(sets) if (s, name) in by_key and value(by_key[(s, name)]) is not None]
            if points:
                bars = ax.bar([x for x, _ in points], [y for _, y in points], width=width * 0.92, color=colours[name], label=name)
                ax.bar_label(bars, labels=[f"{y:.0f}" for _, y in points], padding=2, fontsize=7)
        ax.set_xticks(range(len(sets)), [labels[s] for s in sets])
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 112)
    axes[0].legend(fontsize=8, ncols=min(len(names), 5), loc="upper left")
    fig.tight_layout()
    return _png(fig)


# Panels of the Fig. 2 replica: (metric key, y label).
TRAINING_PANELS = (("accuracies", "preference accuracy"), ("margins", "reward margin (chosen − rejected)"), ("chosen", "reward of chosen (solid) / rejected (dashed)"))


def training_chart(curves: list[Curve]) -> bytes:
    """The paper's Fig. 2: preference accuracy, reward margin and chosen/rejected rewards by step, one line per run."""
    names = list(dict.fromkeys(c.run_name for c in curves))
    colours = method_colours(names)
    fig = Figure(figsize=(11, 3.4))
    axes = fig.subplots(1, len(TRAINING_PANELS))
    for ax, (metric, label) in zip(axes, TRAINING_PANELS):
        drawn = False
        for curve in curves:
            points = curve.series.get(metric, [])
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=2.5, color=colours[curve.run_name], label=f"{curve.run_name} ({curve.split})")
                drawn = True
            if metric == "chosen" and curve.series.get("rejected"):
                rejected = curve.series["rejected"]
                ax.plot([s for s, _ in rejected], [v for _, v in rejected], linestyle="--", color=colours[curve.run_name])
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#888")
        ax.set_xlabel("training step")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    if any(c.series.get("accuracies") for c in curves):
        axes[0].set_ylim(-0.02, 1.02)
    handles, labels = [], []
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            if text not in labels:
                handles.append(handle)
                labels.append(text)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncols=min(len(labels), 6), fontsize=8, bbox_to_anchor=(0.5, -0.06))
    fig.tight_layout()
    return _png(fig)


def funnel_chart(funnels: list[Funnel]) -> bytes:
    """Horizontal bars per stage in pipeline order (top to bottom): records in (light) and out (dark)."""
    stages = [f.stage for f in funnels]
    fig = Figure(figsize=(8, 0.9 + 0.42 * len(stages)))
    ax = fig.add_subplot()
    ys = list(range(len(stages)))
    ins = [f.records_in for f in funnels]
    outs = [f.records_out for f in funnels]
    ax.barh([y - 0.2 for y in ys], ins, height=0.38, color="#a6c8e6", label="records in")
    bars = ax.barh([y + 0.2 for y in ys], outs, height=0.38, color="#1f77b4", label="records out")
    ax.bar_label(bars, labels=[str(o) for o in outs], padding=3, fontsize=7)
    ax.set_yticks(ys, stages)
    ax.invert_yaxis()
    ax.set_xlabel("records")
    ax.set_xlim(0, max(ins + outs + [1]) * 1.12)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Pipeline funnel")
    return _png(fig)


def localization_chart(located: list[LocatedError]) -> bytes:
    """Three panels: first-wrong-step histogram, rollouts per decision, status counts."""
    fig = Figure(figsize=(11, 3.2))
    ax_step, ax_cost, ax_status = fig.subplots(1, 3)
    steps = [r.first_wrong_step for r in located if r.first_wrong_step is not None]
    if steps:
        top = max(steps)
        counts = Counter(steps)
        ax_step.bar(range(1, top + 1), [counts.get(k, 0) for k in range(1, top + 1)], color="#1f77b4")
        ax_step.set_xticks(range(1, top + 1) if top <= 20 else range(1, top + 1, max(1, top // 10)))
    else:
        ax_step.text(0.5, 0.5, "no first wrong step found", ha="center", va="center", transform=ax_step.transAxes, color="#888")
    ax_step.set_xlabel("first wrong step (1-based)")
    ax_step.set_ylabel("located errors")
    ax_step.set_title("Where the first error falls", fontsize=9)
    rollouts = [r.rollouts for r in located]
    if any(rollouts):
        # Whole-number bins (rollouts are counts), at most ~25 of them.
        width = max(1, -(-(max(rollouts) - min(rollouts) + 1) // 25))
        ax_cost.hist(rollouts, bins=range(min(rollouts), max(rollouts) + width + 1, width), color="#ff7f0e", edgecolor="white", linewidth=0.5)
        ax_cost.set_xlabel("rollouts per located sample")
    else:
        ax_cost.text(0.5, 0.5, "no rollouts recorded", ha="center", va="center", transform=ax_cost.transAxes, color="#888")
    ax_cost.set_title("Rollout cost", fontsize=9)
    statuses = Counter(_status_group(r.status) for r in located)
    labels = [s for s, _ in statuses.most_common()]
    ax_status.barh(labels, [statuses[s] for s in labels], color="#2ca02c")
    ax_status.invert_yaxis()
    ax_status.set_title("Status", fontsize=9)
    ax_status.set_xlabel("records")
    for ax in (ax_step, ax_cost, ax_status):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _status_group(status: str) -> str:
    """'failed: <details>' statuses are grouped under 'failed' so the chart stays readable."""
    return status.split(":", 1)[0].strip() or "(empty)"


def flawed_step_chart(rows: list[FlawedStepRow]) -> bytes:
    """Grouped bars per test set: for each position of the first wrong step (and 'none located'), the share of the
    problems of each evaluation; the legend gives each evaluation's share right."""
    sets = list(dict.fromkeys(r.test_set for r in rows))
    labels = short_set_names(sets)
    names = list(dict.fromkeys(r.evaluation for r in rows))
    colours = method_colours(names)
    top = max((r.rates.max_position for r in rows), default=0)
    categories = [str(j) for j in range(1, top + 1)] + ["none\nlocated"]
    width = 0.8 / max(1, len(names))
    fig = Figure(figsize=(min(14.0, max(6.0, 1.5 + 0.45 * len(categories) * max(1, len(names)))), 3.4 * len(sets)))
    axes = fig.subplots(len(sets), 1, squeeze=False)[:, 0]
    for ax, test_set in zip(axes, sets):
        for row in (r for r in rows if r.test_set == test_set):
            rates = row.rates
            shares = [100 * rates.share(rates.first_wrong.get(k, 0)) for k in range(1, top + 1)] + [100 * rates.share(rates.unlocated)]
            xs = [i - 0.4 + width * (names.index(row.evaluation) + 0.5) for i in range(len(categories))]
            bars = ax.bar(xs, shares, width=width * 0.92, color=colours[row.evaluation],
                          label=f"{row.evaluation} (right {100 * rates.share(rates.right):.1f}%, n={rates.problems})")
            ax.bar_label(bars, labels=[f"{y:.0f}" for y in shares], padding=2, fontsize=7)
        ax.set_xticks(range(len(categories)), categories)
        ax.set_xlabel("first wrong step")
        ax.set_ylabel("test problems (%)")
        ax.set_title(f"{labels[test_set]}: first wrong step by position, per model", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, max([100 * r.rates.share(c) for r in rows for c in [*r.rates.first_wrong.values(), r.rates.unlocated]] + [1]) * 1.2 + 2)
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def budget_chart(curves: BudgetCurves) -> bytes:
    """Accuracy (95% CI) against pairs on a log axis, one line per method and a panel per test set; the full-data
    run is the square marker at a line's end, the starting model the dashed level with its CI band."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    sets = curves.test_sets
    labels = short_set_names(sets)
    methods = list(dict.fromkeys(p.method for p in curves.points))
    colours = method_colours(methods)
    fig = Figure(figsize=(7.0, 3.6 * len(sets)))
    axes = fig.subplots(len(sets), 1, squeeze=False)[:, 0]
    for ax, test_set in zip(axes, sets):
        base = curves.base.get(test_set)
        if base is not None:
            ax.axhline(100 * base.accuracy, color="#555", linestyle="--", linewidth=1, label=f"{curves.start} ({100 * base.accuracy:.1f}%)")
            if base.ci_low is not None and base.ci_high is not None:
                ax.axhspan(100 * base.ci_low, 100 * base.ci_high, color="#8c8c8c", alpha=0.15, linewidth=0)
        ticks: set[int] = set()
        for index, method in enumerate(methods):
            points = [p for p in curves.points if p.method == method and p.result.test_set == test_set]
            if not points:
                continue
            ticks.update(p.pairs for p in points)
            shift = 1.04 ** (index - (len(methods) - 1) / 2)  # methods side by side at equal budgets, their CIs apart
            xs = [p.pairs * shift for p in points]
            ys = [100 * p.result.accuracy for p in points]
            low = [y - 100 * p.result.ci_low if p.result.ci_low is not None else 0.0 for y, p in zip(ys, points)]
            high = [100 * p.result.ci_high - y if p.result.ci_high is not None else 0.0 for y, p in zip(ys, points)]
            ax.errorbar(xs, ys, yerr=[low, high], color=colours[method], marker="o", markersize=4, capsize=3, linewidth=1.5, label=method)
            full = [(x, y) for x, y, p in zip(xs, ys, points) if p.full]
            if full:
                ax.plot([x for x, _ in full], [y for _, y in full], linestyle="none", marker="s", markersize=8, markerfacecolor="white",
                        markeredgecolor=colours[method], markeredgewidth=1.5)
        ax.set_xscale("log")
        if ticks:
            ax.set_xticks(sorted(ticks))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlim(min(ticks) / 1.5, max(ticks) * 1.5)
        ax.set_xlabel("preference pairs trained on (log scale; square: all of the method's pairs)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{labels[test_set]}: accuracy by pair budget", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _png(fig)
