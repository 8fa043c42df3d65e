"""The Markdown summary: the same sections as the HTML page, figures as PNG files beside it.

Table cells are escaped for Markdown (pipes, backticks, angle brackets...); model
text goes into fenced blocks whose fence is longer than any backtick run inside,
so nothing the model wrote can end the block or become markup.
"""

from __future__ import annotations

import re

from stepdpo.records import StepPair
from stepdpo.report.collect import RunData
from stepdpo.report.tables import Block, Facts, Figure, Label, Pairs, Table, Text, sections, word_diff

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


def render_pair(index: int, pair: StepPair) -> str:
    """One pair: its facts as a heading, then problem, shared prefix, both steps and their word diff in fences."""
    where = f"step {pair.step_index}" if pair.step_index is not None else "step ?"
    return "\n".join([
        f"### {index}. {md_escape(pair.id)} ({md_escape(pair.kind)}, {where})\n",
        "**Problem**\n\n" + fenced(pair.prompt),
        "**Shared prefix**\n\n" + fenced(pair.initial_reason_steps),
        "**Chosen step**\n\n" + fenced(pair.chosen),
        "**Rejected step**\n\n" + fenced(pair.rejected),
        "**Word diff**\n\n" + fenced(_wdiff(pair)),
        f"Gold answer: {md_escape(pair.answer)}\n",
    ])


def render_block(block: Block, images: dict[str, str]) -> str:
    """One block of the shared model as Markdown; a figure without its file is left out."""
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Text):
        return {"note": "{}\n", "missing": "_{}_\n", "error": "> **error:** {}\n"}[block.kind].format(md_escape(block.text))
    if isinstance(block, Figure):
        return f"![{md_escape(block.alt)}]({images[block.key]})\n" if block.key in images else ""
    if isinstance(block, Label):
        return f"### {block.text}\n"
    if isinstance(block, Facts):
        return "  \n".join(f"{md_escape(name)}: {md_escape(value)}" for name, value in block.items) + "\n"
    if not isinstance(block, Pairs):
        raise TypeError(f"not a report block: {block!r}")
    intro = f"The first {len(block.pairs)} of {block.total} pairs; the diff is in wdiff notation: `[-only in rejected-]{{+only in chosen+}}`.\n"
    return "\n".join([intro] + [render_pair(i, pair) for i, pair in enumerate(block.pairs, start=1)])


def render_markdown(data: RunData, images: dict[str, str]) -> str:
    """The summary. ``images`` maps figure keys to file names relative to the Markdown file."""
    out = ["# Step-DPO run report\n"]
    for section in sections(data):
        out.append(f"## {section.title}\n")
        out.extend(text for text in (render_block(block, images) for block in section.blocks) if text)
    return "\n".join(out)
