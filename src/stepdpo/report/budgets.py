"""The data-efficiency curve: accuracy of each method trained on a pair budget, against the pairs it had.

`stepdpo run --pair_budgets 100 300` trains each of ``budget_methods`` again on that many of its
pairs (``train/<method>@<n>``) and evaluates it as ``eval/<method>@<n>``. Here those evaluations
become one curve per method and test set: the budget points (x = the budget), the method's
full-data run as the last point (x = the pairs its training read, from ``funnel/train-<method>.json``)
and the starting model as the level to beat. Budgets the run configured but did not evaluate are
named with the reason (the method had no more pairs than the budget, or the run has not got there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stepdpo.report.collect import EvalSet, RunData
from stepdpo.report.solutions import start_eval
from stepdpo.rundir import parse_budget_run_name


@dataclass
class BudgetPoint:
    """One model of a curve on one test set."""

    method: str
    pairs: int
    """The pair budget, or for the full-data run the pairs its training read."""
    full: bool
    """The method's full-data run (all of its pairs)."""
    result: EvalSet


@dataclass
class BudgetCurves:
    """Every curve of a run, with the starting model's accuracy per test set."""

    start: str | None
    base: dict[str, EvalSet]
    """Test set -> the starting model's accuracy on it."""
    points: list[BudgetPoint]
    """Per method, smallest pair count first; test sets mixed (filter by ``result.test_set``)."""
    notes: list[str] = field(default_factory=list)
    """Configured budgets without an evaluation, and why."""

    @property
    def test_sets(self) -> list[str]:
        """Sets with a budget's evaluation (a full-data run alone is no curve)."""
        return list(dict.fromkeys(p.result.test_set for p in self.points if not p.full))


def _configured(config: dict | None) -> tuple[list[int], list[str]]:
    """(pair_budgets, budget_methods) of the run's config.yaml, when it has them."""
    config = config or {}
    budgets = config.get("pair_budgets") if isinstance(config.get("pair_budgets"), list) else []
    methods = config.get("budget_methods") if isinstance(config.get("budget_methods"), list) else []
    return [n for n in budgets if type(n) is int], [str(m) for m in methods]


def budget_curves(data: RunData) -> BudgetCurves | None:
    """The curves of a run; None when it has no evaluation of a pair budget and configured none."""
    budgets, methods = _configured(data.header.config)
    budget_evals = [(parse_budget_run_name(e.eval_name), e) for e in data.evals]
    evaluated = [(parsed, e) for parsed, e in budget_evals if parsed is not None]
    if not evaluated and not budgets:
        return None
    read = {f.stage[len("train-"):]: f.records_in for f in data.funnels if f.stage.startswith("train-")}
    methods = list(dict.fromkeys(methods + [method for (method, _), _ in evaluated]))
    notes = []
    points = [BudgetPoint(method, n, False, e) for (method, n), e in evaluated]
    for method in methods:
        full = read.get(method)
        if full is not None:
            points.extend(BudgetPoint(method, full, True, e) for e in data.evals if e.eval_name == method)
        elif any(e.eval_name == method for e in data.evals):
            notes.append(f"{method}: the pairs of its full-data run are not recorded (funnel/train-{method}.json), so it is not on the curve.")
        done = {n for (m, n), _ in evaluated if m == method}
        for n in sorted(set(budgets) - done):
            if full is not None and n >= full:
                notes.append(f"{method}@{n}: not trained: {method} has {full} pairs, all of them in its full-data run.")
            else:
                notes.append(f"{method}@{n}: configured but not evaluated (no eval/{method}@{n}/results.json).")
    points.sort(key=lambda p: (methods.index(p.method), p.pairs, p.full))
    names = list(dict.fromkeys(e.eval_name for e in data.evals))
    start = start_eval([n for n in names if parse_budget_run_name(n) is None])
    base = {e.test_set: e for e in data.evals if e.eval_name == start}
    return BudgetCurves(start, base, points, notes)
