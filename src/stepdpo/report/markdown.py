"""The Markdown summary: the same sections as the HTML page, figures as PNG files beside it.

Table cells are escaped for Markdown (pipes, backticks, angle brackets...); model
text goes into fenced blocks whose fence is longer than any backtick run inside,
so nothing the model wrote can end the block or become markup.
"""

from __future__ import annotations

import re

from stepdpo.records import StepPair
from stepdpo.report.collect import RunData
from stepdpo.report.solutions import Flip, ShownPair
from stepdpo.report.tables import Block, Facts, Figure, Flips, Label, Pairs, Table, Text, sections, word_diff
from stepdpo.step_truth import JudgedSolution

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


def render_pair(index: int, shown: ShownPair) -> str:
    """One pair: its facts as a heading, then problem, shared prefix, both steps, their word diff and why it was located there."""
    pair = shown.pair
    where = f"step {pair.step_index}" if pair.step_index is not None else "whole solution"
    reaches = "reaches gold" if shown.chosen_reaches_gold else "does not reach gold"
    located = shown.located
    why = (f"Located by {md_escape(located.localizer)} ({md_escape(located.status)}, confidence {md_escape(located.confidence)}, "
           f"rollouts {located.rollouts})\n") if located is not None else ""
    return "\n".join([
        f"### {index}. {md_escape(pair.id)} ({md_escape(shown.method)}, {where}, chosen continuation {reaches})\n",
        "**Problem**\n\n" + fenced(pair.prompt),
        "**Shared prefix**\n\n" + fenced(pair.initial_reason_steps),
        "**Chosen step**\n\n" + fenced(pair.chosen),
        "**Rejected step**\n\n" + fenced(pair.rejected),
        "**Word diff**\n\n" + fenced(_wdiff(pair)),
        why + f"Gold answer: {md_escape(pair.answer)}\n",
    ])


def _solution(title: str, solution: JudgedSolution) -> str:
    """Steps one per line, each prefixed with its mark: right, wrong (<- first wrong step), unchecked."""
    lines = []
    for step in solution.steps:
        mark = {"right": "[right]", "wrong": "[wrong]", "unchecked": "[ ]"}[step.status]
        flag = "   <- first wrong step" if solution.first_wrong_step == step.number else ""
        lines.append(f"{mark} {step.text.rstrip()}{flag}")
    verdict = f"answer {solution.predicted}: {'right' if solution.correct else 'wrong'}" + ("" if solution.has_final_answer else ", no final answer stated")
    return f"**{md_escape(title)}** ({md_escape(verdict)})\n\n" + fenced("\n".join(lines) or "(empty response)")


def render_flip(flip: Flip) -> str:
    return "\n".join([
        f"#### {md_escape(flip.problem_id)} ({flip.kind}, gold {md_escape(flip.gold)})\n",
        *([fenced(flip.question)] if flip.question else []),
        _solution(f"{flip.start} (before)", flip.start_solution),
        _solution(f"{flip.evaluation} (after)", flip.trained_solution),
    ])


def render_flips(block: Flips) -> str:
    out = [f"### {md_escape(block.evaluation)} against {md_escape(block.start)} (full list: [{block.jsonl}]({block.jsonl}))\n"]
    for flip_set in block.sets:
        name = block.names.get(flip_set.test_set, flip_set.test_set)
        out.append(f"{md_escape(name)}: {len(flip_set.fixed)} fixed, {len(flip_set.broken)} broken of {flip_set.problems}\n")
        out.extend(render_flip(flip) for flip in flip_set.fixed[: block.examples] + flip_set.broken[: block.examples])
    return "\n".join(out)


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
    if isinstance(block, Flips):
        return render_flips(block)
    if not isinstance(block, Pairs):
        raise TypeError(f"not a report block: {block!r}")
    totals = ", ".join(f"{method}: {len([s for s in block.sample.shown if s.method == method])} of {total}" for method, total in block.sample.totals.items())
    intro = f"A seeded random sample of each pair file ({md_escape(totals)}); the diff is in wdiff notation: `[-only in rejected-]{{+only in chosen+}}`.\n"
    return "\n".join([intro] + [render_pair(i, shown) for i, shown in enumerate(block.sample.shown, start=1)])


def render_markdown(data: RunData, images: dict[str, str]) -> str:
    """The summary. ``images`` maps figure keys to file names relative to the Markdown file."""
    out = ["# Step-DPO run report\n"]
    for section in sections(data):
        out.append(f"## {section.title}\n")
        out.extend(text for text in (render_block(block, images) for block in section.blocks) if text)
    return "\n".join(out)
