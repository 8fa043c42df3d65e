"""The Markdown summary: the same sections as the HTML page, figures as PNG files beside it.

Table cells are escaped for Markdown (pipes, backticks, angle brackets...); model
text goes into fenced blocks whose fence is longer than any backtick run inside,
so nothing the model wrote can end the block or become markup.
"""

from __future__ import annotations

import re

from stepdpo.records import StepPair
from stepdpo.report.collect import RunData
from stepdpo.report.tables import (
    MISSING,
    Table,
    compare_table,
    config_table,
    eval_table,
    funnel_table,
    localization_tables,
    select_curves,
    training_table,
    wall_table,
    word_diff,
)

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def md_escape(text: object) -> str:
    """Escape Markdown/HTML-significant characters and fold newlines, for a table cell or inline text."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\r", " ").replace("\n", " ")


def fenced(text: str, info: str = "text") -> str:
    """A fenced code block that ``text`` cannot close: the fence is one backtick longer than its longest run."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") else text + "\n"
    return f"{fence}{info}\n{body}{fence}\n"


def _table(table: Table) -> str:
    lines = ["| " + " | ".join(md_escape(h) for h in table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines.extend("| " + " | ".join(md_escape(c) for c in row) + " |" for row in table.rows)
    return "\n".join(lines) + "\n"


def _missing(key: str) -> str:
    return f"_{md_escape(MISSING[key])}_\n"


def _errors(errors: list[str]) -> list[str]:
    return [f"> **error:** {md_escape(e)}\n" for e in errors]


def _figure(images: dict[str, str], key: str, alt: str) -> list[str]:
    return [f"![{alt}]({images[key]})\n"] if key in images else []


def _wdiff(pair: StepPair) -> str:
    """wdiff notation: ``[-only in rejected-]{+only in chosen+}``."""
    rejected, chosen = word_diff(pair.rejected, pair.chosen)
    out: list[str] = []
    left = iter(rejected)
    # Walk both sides in order: 'same' segments are shared, so they pair up one to one.
    for kind, text in chosen:
        if kind == "same":
            for l_kind, l_text in left:
                if l_kind == "same":
                    break
                out.append(f"[-{l_text}-]")
            out.append(text)
        else:
            out.append(f"{{+{text}+}}")
    out.extend(f"[-{t}-]" for k, t in left if k != "same")
    return "".join(out)


def render_markdown(data: RunData, images: dict[str, str]) -> str:
    """The summary. ``images`` maps figure keys to file names relative to the Markdown file."""
    header = data.header
    out: list[str] = [f"# Step-DPO run report\n\nRun directory: {md_escape(header.run_dir)}  \nModel: {md_escape(header.model or 'not recorded')}\n"]

    out.append("## Run\n\n### Wall time per stage\n")
    out.extend(_errors([header.wall_error] if header.wall_error else []))
    out.append(_table(wall_table(header)) if header.wall_s else _missing("wall"))
    out.append("### Configuration\n")
    if header.config_error:
        out.extend(_errors([header.config_error]))
    elif header.config is None:
        out.append(_missing("config"))
    else:
        out.append(_table(config_table(header)))

    out.append("## Accuracy before and after training\n")
    out.extend(_errors(data.eval_errors))
    if data.evals:
        out.extend(_figure(images, "accuracy", "accuracy with 95% CI"))
        out.append(_table(eval_table(data.evals)))
    elif not data.eval_errors:
        out.append(_missing("accuracy"))
    out.append("### Paired comparisons\n")
    out.extend(_errors(data.compare_errors))
    out.append(_table(compare_table(data.comparisons)) if data.comparisons else _missing("compare"))

    out.append("## Training: preference accuracy and reward margin (Fig. 2)\n")
    out.extend(_errors(data.train_errors))
    curves = select_curves(data.curves)
    if curves:
        out.extend(_figure(images, "training", "preference accuracy and reward margin over training"))
        out.append(_table(training_table(curves)))
    elif not data.train_errors:
        out.append(_missing("training"))

    out.append("## Pipeline funnel\n")
    out.extend(_errors(data.funnel_errors))
    if data.funnels:
        out.extend(_figure(images, "funnel", "pipeline funnel"))
        out.append(_table(funnel_table(data.funnels)))
    elif not data.funnel_errors:
        out.append(_missing("funnel"))

    out.append("## Localization of first errors\n")
    if data.located_error:
        out.extend(_errors([data.located_error]))
    elif data.located is None:
        out.append(_missing("localization"))
    elif not data.located:
        out.append("_located.jsonl is empty._\n")
    else:
        out.extend(_figure(images, "localization", "first wrong steps, rollout cost, status"))
        summary, status = localization_tables(data.located)
        out.append(_table(summary))
        out.append(_table(status))

    out.append("## Step pairs\n")
    if data.pairs_error:
        out.extend(_errors([data.pairs_error]))
    elif data.pairs is None:
        out.append(_missing("pairs"))
    elif not data.pairs:
        out.append("_pairs/step\\_pairs.jsonl is empty._\n")
    else:
        out.append(f"The first {len(data.pairs)} of {data.pairs_total} pairs; the diff is in wdiff notation: `[-only in rejected-]{{+only in chosen+}}`.\n")
        for index, pair in enumerate(data.pairs, start=1):
            where = f"step {pair.step_index}" if pair.step_index is not None else "step ?"
            out.append(f"### {index}. {md_escape(pair.id)} ({md_escape(pair.kind)}, {where})\n")
            out.append("**Problem**\n\n" + fenced(pair.prompt))
            out.append("**Shared prefix**\n\n" + fenced(pair.initial_reason_steps))
            out.append("**Chosen step**\n\n" + fenced(pair.chosen))
            out.append("**Rejected step**\n\n" + fenced(pair.rejected))
            out.append("**Word diff**\n\n" + fenced(_wdiff(pair)))
            out.append(f"Gold answer: {md_escape(pair.answer)}\n")
    return "\n".join(out)
