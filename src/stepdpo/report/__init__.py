"""`stepdpo report RUN_DIR`: one self-contained HTML page and a Markdown summary of a run.

Reads whatever the run directory holds (layout in :mod:`stepdpo.rundir`), draws
the figures with matplotlib, and writes ``report.html`` (figures embedded as
base64 PNG data URIs, inline CSS, no scripts, no external resources),
``report.md`` with the figures as PNG files beside it, and per trained model
``flips-<name>.jsonl``: every test problem it fixed or broke, both solutions
judged step by step. Every section is optional: missing inputs are named in one
line, so partial runs get a report too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import tyro

from stepdpo.errors import ConfigError
from stepdpo.records import atomic_write_text
from stepdpo.report import plots
from stepdpo.report.budgets import budget_curves
from stepdpo.report.collect import RunData, collect
from stepdpo.report.html import render_html
from stepdpo.report.markdown import render_markdown
from stepdpo.report.solutions import flips_jsonl
from stepdpo.report.tables import flips_file, select_curves
from stepdpo.rundir import RunDir, parse_budget_run_name

log = logging.getLogger(__name__)


@dataclass
class ReportConfig:
    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")] = field(metadata={"help": "The run directory to report on."})
    output: Optional[str] = field(default=None, metadata={"help": "Folder for report.html, report.md and the PNGs (default: RUN_DIR/report)."})
    max_pairs: int = field(default=12, metadata={"help": "How many preference pairs to show per pair file (a seeded random sample of pairs/*_pairs.jsonl)."})


@dataclass
class ReportPaths:
    html: Path
    markdown: Path
    images: dict[str, Path]
    """Figure key ('accuracy', 'budgets', 'rounds', 'lengths', 'flawed', 'training', 'funnel', 'localization') -> PNG file beside the Markdown."""
    flips: dict[str, Path] = field(default_factory=dict)
    """Trained evaluation -> its full list of flips (JSONL) beside the page."""


def draw_figures(data: RunData) -> dict[str, bytes]:
    """PNG bytes of each figure whose section has data."""
    figures: dict[str, bytes] = {}
    # Models trained on a pair budget have their own figure; here they would crowd out the methods.
    full_runs = [e for e in data.evals if parse_budget_run_name(e.eval_name) is None]
    if full_runs:
        figures["accuracy"] = plots.accuracy_chart(full_runs)
    budgets = budget_curves(data)
    if budgets and budgets.points:
        figures["budgets"] = plots.budget_chart(budgets)
    if data.rounds:
        figures["rounds"] = plots.rounds_chart(data.rounds)
    if data.completeness:
        figures["lengths"] = plots.completeness_chart(data.completeness)
    curves = select_curves(data.curves)
    if curves:
        figures["training"] = plots.training_chart(curves)
    if data.funnels:
        figures["funnel"] = plots.funnel_chart(data.funnels)
    if data.located:
        figures["localization"] = plots.localization_chart(data.located)
    if data.flawed_steps:
        figures["flawed"] = plots.flawed_step_chart(data.flawed_steps)
    return figures


def run(config: ReportConfig) -> ReportPaths:
    """Collect the run directory, draw the figures, write report.html, report.md and the PNGs."""
    if config.max_pairs < 0:
        raise ConfigError(f"max_pairs must be >= 0, got {config.max_pairs}")
    root = Path(config.run_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: run directory not found")
    output = Path(config.output) if config.output else RunDir(root).report
    data = collect(root, max_pairs=config.max_pairs)
    figures = draw_figures(data)
    output.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    for key, png in figures.items():
        path = output / f"{key}.png"
        path.write_bytes(png)
        images[key] = path
    flips: dict[str, Path] = {}
    for name, flip_sets in data.flips.items():
        flips[name] = output / flips_file(name)
        atomic_write_text(flips[name], flips_jsonl(flip_sets))
    html_path = output / "report.html"
    md_path = output / "report.md"
    atomic_write_text(html_path, render_html(data, figures))
    atomic_write_text(md_path, render_markdown(data, {key: path.name for key, path in images.items()}))
    for path in (html_path, md_path, *flips.values()):
        path.chmod(0o644)  # atomic writes come out 0600 (mkstemp); a report is meant to be read and served
    return ReportPaths(html=html_path, markdown=md_path, images=images, flips=flips)


def command(config: ReportConfig) -> int:
    paths = run(config)
    print(f"report: {paths.html}\nsummary: {paths.markdown}")
    for key, path in paths.images.items():
        log.info("figure %s: %s", key, path)
    return 0
