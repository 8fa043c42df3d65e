"""One self-contained HTML page: inline CSS, figures as base64 PNG data URIs, no scripts.

Every piece of text that comes from a file (config values, model output, file
names) goes through :func:`esc`; model text is data and must never become markup.
The pairs' filters are radio buttons and CSS rules (``:checked ~``), so the page
stays script-free and works from a file, a mail attachment or a CI artifact.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone

from stepdpo import __version__
import json
import re

from stepdpo.report.collect import RunData
from stepdpo.report.solutions import Flip, PairSample, ShownPair
from stepdpo.report.tables import Block, Facts, Figure, Flips, Label, Pairs, Table, Text, sections, word_diff
from stepdpo.step_truth import JudgedSolution

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0; background: #f6f7f9; }
main { max-width: 1120px; margin: 0 auto; padding: 20px 28px 60px; background: #fff; }
h1 { font-size: 24px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-top: 8px; border-top: 1px solid #e3e5e8; }
h3 { font-size: 15px; margin: 0 0 8px; }
nav { font-size: 13px; margin: 6px 0 14px; }
nav a { margin-right: 14px; color: #1f5fa8; text-decoration: none; }
.meta { color: #666; font-size: 12.5px; font-weight: normal; }
.missing { color: #777; font-style: italic; margin: 6px 0; }
.error { color: #a8071a; background: #fff1f0; border-left: 3px solid #cf1322; padding: 4px 8px; margin: 6px 0; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; white-space: pre-wrap; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
th, td { border: 1px solid #dde0e4; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.config { max-height: 420px; overflow: auto; }
.config td { text-align: left; }
.config td:first-child { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
figure { margin: 10px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.pair { border: 1px solid #dde0e4; border-radius: 6px; padding: 10px 14px; margin: 14px 0; background: #fcfcfd; }
.label { font-size: 11.5px; text-transform: uppercase; letter-spacing: 0.04em; color: #666; margin: 8px 0 2px; }
pre.text { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; padding: 6px 8px; background: #fff; border: 1px solid #e6e8eb; border-radius: 4px; font: 12.5px/1.45 ui-monospace, Menlo, Consolas, monospace; }
pre.prefix { max-height: 14em; overflow: auto; color: #444; }
.cols { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
pre.chosen { border-color: #b7e1c1; background: #f6fdf8; }
pre.rejected { border-color: #f3c2c2; background: #fff8f8; }
ins { background: #c9f2d2; text-decoration: none; border-radius: 2px; }
del { background: #fbd0d0; text-decoration: line-through; text-decoration-color: #b55; border-radius: 2px; }
details.pair > summary, details.flip > summary { cursor: pointer; font-weight: 600; }
details.flip { border: 1px solid #dde0e4; border-radius: 6px; padding: 8px 12px; margin: 10px 0; background: #fcfcfd; }
.step { white-space: pre-wrap; overflow-wrap: anywhere; margin: 3px 0; padding: 3px 8px; border-left: 4px solid #c8ccd2; background: #fff; font: 12.5px/1.45 ui-monospace, Menlo, Consolas, monospace; }
.step.right { border-left-color: #2ca02c; background: #f6fdf8; }
.step.wrong { border-left-color: #e07a7a; background: #fff8f8; }
.step.first { border-left-color: #cf1322; box-shadow: inset 0 0 0 1px #cf1322; }
.mark { font-weight: 700; margin-right: 6px; }
.badge { display: inline-block; font: 11px/1.6 system-ui, sans-serif; padding: 0 6px; border-radius: 9px; background: #cf1322; color: #fff; margin-left: 6px; }
.verdict { font-size: 13px; margin: 4px 0 6px; }
.verdict.ok { color: #1a7f37; } .verdict.bad { color: #a8071a; }
.pf { position: absolute; opacity: 0; pointer-events: none; }
.filters { margin: 8px 0; font-size: 13px; }
.filters label { display: inline-block; border: 1px solid #c8ccd2; border-radius: 12px; padding: 1px 10px; margin: 2px 4px 2px 0; cursor: pointer; background: #fff; }
"""

def esc(text: object) -> str:
    """HTML-escape anything (quotes included), so file contents can only ever be text."""
    return html.escape(str(text), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(table: Table) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = "".join(f'<td class="num">{esc(c)}</td>' if _numeric(c) else f"<td>{esc(c)}</td>" for c in row)
        body.append(f"<tr>{cells}</tr>")
    markup = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="config">{markup}</div>' if table.scroll else markup


def _numeric(cell: str) -> bool:
    stripped = cell.replace("%", "").replace(" ", "").replace("/", "").replace("+", "").replace("-", "").replace(".", "").replace("e", "")
    return stripped.isdigit()


def _segments(segments: list[tuple[str, str]]) -> str:
    out = []
    for kind, text in segments:
        if kind == "ins":
            out.append(f"<ins>{esc(text)}</ins>")
        elif kind == "del":
            out.append(f"<del>{esc(text)}</del>")
        else:
            out.append(esc(text))
    return "".join(out)


def _slug(text: object) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-") or "x"


def render_pair(index: int, shown: ShownPair) -> str:
    """One pair (a <details>): problem, shared prefix, chosen and rejected step side by side with the word diff
    marked, why the rejected step was located there, and whether the chosen continuation reaches the gold answer."""
    pair = shown.pair
    rejected, chosen = word_diff(pair.rejected, pair.chosen)
    where = f"step {pair.step_index}" if pair.step_index is not None else "whole solution"
    reaches = "chosen continuation reaches gold" if shown.chosen_reaches_gold else "chosen continuation does not reach gold"
    facts = " · ".join(esc(x) for x in (shown.method, where, pair.localizer, reaches) if x)
    located = shown.located
    if located is not None:
        evidence = json.dumps(located.evidence, ensure_ascii=False, default=str)
        evidence = evidence if len(evidence) <= 600 else evidence[:599] + "…"
        numbers = ", ".join(f"{k} {v}" for k, v in (("confidence", located.confidence), ("rollouts", located.rollouts)) if v)
        why = (f'<div class="label">Why step {esc(located.first_wrong_step)}</div><p class="meta">located by <b>{esc(located.localizer)}</b> '
               f"({esc(located.status)}{', ' + esc(numbers) if numbers else ''})</p><pre class=\"text\">{esc(evidence)}</pre>")
    elif pair.localizer or pair.provenance:
        why = (f'<div class="label">Why this pair</div><p class="meta">{esc(pair.localizer or pair.kind)}</p>'
               f'<pre class="text">{esc(json.dumps(pair.provenance, ensure_ascii=False, default=str)[:600])}</pre>')
    else:
        why = ""
    step_class = f"s-{pair.step_index}" if pair.step_index is not None else "s-none"
    return (
        f'<details class="pair m-{_slug(shown.method)} {step_class}" open>'
        f"<summary>{index}. {esc(pair.id)} <span class=\"meta\">{facts}</span></summary>"
        f'<div class="label">Problem</div><pre class="text">{esc(pair.prompt)}</pre>'
        f'<div class="label">Shared prefix</div><pre class="text prefix">{esc(pair.initial_reason_steps)}</pre>'
        '<div class="cols">'
        f'<div><div class="label">Chosen step</div><pre class="text chosen">{_segments(chosen)}</pre></div>'
        f'<div><div class="label">Rejected step</div><pre class="text rejected">{_segments(rejected)}</pre></div>'
        "</div>"
        f"{why}"
        f'<div class="label">Gold answer</div><pre class="text">{esc(pair.answer)}</pre>'
        "</details>"
    )


def render_pairs(sample: PairSample) -> str:
    """Filters (method, step index) as radio buttons driving CSS rules, then every sampled pair."""
    methods = list(dict.fromkeys(s.method for s in sample.shown))
    steps = sorted({s.pair.step_index for s in sample.shown if s.pair.step_index is not None})
    groups = [("m", "method", [(_slug(m), m) for m in methods]),
              ("s", "step", [(str(k), f"step {k}") for k in steps] + ([("none", "whole solution")] if any(s.pair.step_index is None for s in sample.shown) else []))]
    inputs, labels, rules = [], [], []
    for group, title, options in groups:
        inputs.append(f'<input class="pf" type="radio" name="pf-{group}" id="pf-{group}-all" checked>')
        row = [f'<label for="pf-{group}-all">all</label>']
        rules.append(f"#pf-{group}-all:checked ~ .filters label[for=pf-{group}-all]")
        for value, text in options:
            inputs.append(f'<input class="pf" type="radio" name="pf-{group}" id="pf-{group}-{value}">')
            row.append(f'<label for="pf-{group}-{value}">{esc(text)}</label>')
            rules.append(f"#pf-{group}-{value}:checked ~ .filters label[for=pf-{group}-{value}]")
        labels.append(f'<div><b>{title}:</b> {"".join(row)}</div>')
    hide = [f"#pf-{group}-{value}:checked ~ .pairlist .pair:not(.{group}-{value}) {{ display: none; }}" for group, _, options in groups for value, _ in options]
    style = "<style>" + ", ".join(rules) + " { background: #1f5fa8; color: #fff; border-color: #1f5fa8; }\n" + "\n".join(hide) + "</style>"
    totals = ", ".join(f"{method}: {len([s for s in sample.shown if s.method == method])} of {total}" for method, total in sample.totals.items())
    intro = (f'<p class="meta">A seeded random sample of each pair file ({esc(totals)}). Words only in the chosen step are '
             "<ins>marked</ins>; words only in the rejected step are <del>struck</del>. Filter:</p>")
    pairs = "".join(render_pair(i, shown) for i, shown in enumerate(sample.shown, start=1))
    return f'{style}{intro}<div class="pairbrowser">{"".join(inputs)}<div class="filters">{"".join(labels)}</div><div class="pairlist">{pairs}</div></div>'


def render_solution(title: str, solution: JudgedSolution, gold: str | None) -> str:
    """A solution step by step: each step marked right, wrong or unchecked, the first wrong step flagged, then the
    verdict (none without a ``gold`` answer). Also the body of each model's column in `stepdpo try`."""
    steps = []
    for step in solution.steps:
        first = solution.first_wrong_step == step.number
        mark = {"right": "✓", "wrong": "✗", "unchecked": "·"}[step.status]
        why = f" (true value {step.expected})" if step.status == "wrong" and step.expected is not None else ""
        badge = '<span class="badge">first wrong step</span>' if first else ""
        steps.append(f'<div class="step {step.status}{" first" if first else ""}" title="{esc(step.status + why)}">'
                     f'<span class="mark">{mark}</span>{esc(step.text)}{badge}</div>')
    answer = solution.predicted if solution.predicted is not None else "none"
    verdict = f"answer {answer}: {'right' if solution.correct else f'wrong (gold {gold})'}" if gold is not None else f"answer {answer} (no gold answer given)"
    if not solution.has_final_answer:
        verdict += " · no final answer stated"
    for note in solution.notes:
        verdict += f" · {note}"
    return (f'<div><div class="label">{esc(title)}</div>{"".join(steps) or "<p class=missing>(empty response)</p>"}'
            f'<p class="verdict {"ok" if solution.correct else "bad" if gold is not None else ""}">{esc(verdict)}</p></div>')


def render_flip(flip: Flip, open_: bool) -> str:
    arrow = "wrong → right" if flip.kind == "fixed" else "right → wrong"
    return (
        f'<details class="flip {flip.kind}"{" open" if open_ else ""}><summary>{esc(flip.problem_id)} '
        f'<span class="meta">{esc(flip.kind)}: {esc(arrow)} · gold {esc(flip.gold)}</span></summary>'
        + (f'<div class="label">Problem</div><pre class="text">{esc(flip.question)}</pre>' if flip.question else "")
        + '<div class="cols">'
        + render_solution(f"{flip.start} (before)", flip.start_solution, flip.gold)
        + render_solution(f"{flip.evaluation} (after)", flip.trained_solution, flip.gold)
        + "</div></details>"
    )


def render_flips(block: Flips) -> str:
    parts = [f'<h3>{esc(block.evaluation)} against {esc(block.start)} <span class="meta">full list: '
             f'<a href="{esc(block.jsonl)}">{esc(block.jsonl)}</a></span></h3>']
    for flip_set in block.sets:
        name = block.names.get(flip_set.test_set, flip_set.test_set)
        judged = "steps judged against the known intermediate values" if flip_set.step_truth else "final answer only (no step truth for this set)"
        parts.append(f'<div class="label">{esc(name)}: {len(flip_set.fixed)} fixed, {len(flip_set.broken)} broken of {flip_set.problems} · {esc(judged)}</div>')
        for kind, flips in (("fixed", flip_set.fixed), ("broken", flip_set.broken)):
            shown = flips[: block.examples]
            if shown:
                parts.append(f'<p class="meta">{len(shown)} of {len(flips)} {kind}:</p>')
                parts.extend(render_flip(flip, open_=i == 0) for i, flip in enumerate(shown))
    return "".join(parts)


TEXT_CLASSES = {"note": "meta", "missing": "missing"}


def render_block(block: Block, images: dict[str, bytes]) -> str:
    """One block of the shared model as HTML; a figure without its image is left out."""
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Text):
        if block.kind == "error":
            return f'<div class="error">{esc(block.text)}</div>'
        return f'<p class="{TEXT_CLASSES[block.kind]}">{esc(block.text)}</p>'
    if isinstance(block, Figure):
        png = images.get(block.key)
        return f'<figure><img src="{data_uri(png)}" alt="{esc(block.alt)}"></figure>' if png else ""
    if isinstance(block, Label):
        return f'<div class="label">{esc(block.text)}</div>'
    if isinstance(block, Facts):
        return "<p>" + "<br>".join(f"<b>{esc(name)}:</b> {esc(value)}" for name, value in block.items) + "</p>"
    if isinstance(block, Flips):
        return render_flips(block)
    if not isinstance(block, Pairs):
        raise TypeError(f"not a report block: {block!r}")
    return render_pairs(block.sample)


def render_html(data: RunData, images: dict[str, bytes]) -> str:
    """The whole page. ``images`` maps figure keys (see ``ReportPaths.images``) to PNG bytes."""
    parts = sections(data)
    body = "".join(
        f'<section id="{section.key}"><h2>{esc(section.title)}</h2>{"".join(render_block(b, images) for b in section.blocks)}</section>'
        for section in parts
    )
    nav = "".join(f'<a href="#{section.key}">{esc(section.nav)}</a>' for section in parts)
    run_dir = data.header.run_dir
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(f'Step-DPO run report: {run_dir}')}</title><style>{CSS}</style></head>"
        f"<body><main><h1>Step-DPO run report</h1>"
        f'<p class="meta">{esc(run_dir)} · generated {esc(stamp)} by stepdpo {esc(__version__)}</p>'
        f"<nav>{nav}</nav>{body}</main></body></html>\n"
    )
