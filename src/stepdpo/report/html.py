"""One self-contained HTML page: inline CSS, figures as base64 PNG data URIs, no scripts.

Every piece of text that comes from a file (config values, model output, file
names) goes through :func:`esc`; model text is data and must never become markup.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone

from stepdpo import __version__
from stepdpo.records import StepPair
from stepdpo.report.collect import RunData
from stepdpo.report.tables import Block, Facts, Figure, Label, Pairs, Table, Text, sections, word_diff

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


def render_pair(index: int, pair: StepPair) -> str:
    """One pair: problem, shared prefix, chosen and rejected step side by side with the word diff marked."""
    rejected, chosen = word_diff(pair.rejected, pair.chosen)
    where = f"step {pair.step_index}" if pair.step_index is not None else "step ?"
    facts = " · ".join(esc(x) for x in (pair.kind, where, pair.localizer, pair.dataset) if x)
    return (
        '<div class="pair">'
        f"<h3>{index}. {esc(pair.id)} <span class=\"meta\">{facts}</span></h3>"
        f'<div class="label">Problem</div><pre class="text">{esc(pair.prompt)}</pre>'
        f'<div class="label">Shared prefix</div><pre class="text prefix">{esc(pair.initial_reason_steps)}</pre>'
        '<div class="cols">'
        f'<div><div class="label">Chosen step</div><pre class="text chosen">{_segments(chosen)}</pre></div>'
        f'<div><div class="label">Rejected step</div><pre class="text rejected">{_segments(rejected)}</pre></div>'
        "</div>"
        f'<div class="label">Gold answer</div><pre class="text">{esc(pair.answer)}</pre>'
        "</div>"
    )


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
    if not isinstance(block, Pairs):
        raise TypeError(f"not a report block: {block!r}")
    intro = (f'<p class="meta">The first {len(block.pairs)} of {block.total} pairs. Words only in the chosen step are '
             "<ins>marked</ins>; words only in the rejected step are <del>struck</del>.</p>")
    return intro + "".join(render_pair(i, pair) for i, pair in enumerate(block.pairs, start=1))


def render_html(data: RunData, images: dict[str, bytes]) -> str:
    """The whole page. ``images`` maps figure keys ('accuracy', 'training', 'funnel', 'localization') to PNG bytes."""
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
