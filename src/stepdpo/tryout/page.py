"""The Gradio page of `stepdpo try`: a problem in, every model's solution out, side by side and judged.

Gradio is imported here only (the ``ui`` extra). The page's answers are the
report's HTML (:func:`stepdpo.report.html.render_solution`), so a solution looks
the same in the report and here, and model text is escaped the same way.
"""

from __future__ import annotations

import os
from typing import Any

from stepdpo.errors import ConfigError
from stepdpo.generation.base import SamplingParams
from stepdpo.records import Problem
from stepdpo.report.html import CSS as REPORT_CSS
from stepdpo.report.html import esc, render_solution
from stepdpo.tryout.models import ModelAnswer, ModelSlot, solve

MAX_CHOICES = 500
"""Problems offered per set in the picker (the first ones)."""

PAGE_CSS = REPORT_CSS.split("body {", 1)[0] + "\n".join(
    line for line in REPORT_CSS.splitlines() if line.startswith((".step", ".mark", ".badge", ".verdict", ".label", ".meta", "pre.text"))
) + """
.try-grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(280px, 1fr)); gap: 14px; }
.try-model { border: 1px solid #dde0e4; border-radius: 8px; padding: 10px 12px; background: #fcfcfd; color: #222; }
.try-model h3 { margin: 0 0 2px; font-size: 16px; }
.try-error { color: #a8071a; background: #fff1f0; border-left: 3px solid #cf1322; padding: 6px 10px; margin: 6px 0; }
.try-note { color: #555; font-size: 13px; margin: 4px 0 10px; }
"""


def render_answers(answers: list[ModelAnswer], gold: str | None, step_truth_known: bool) -> str:
    """Every model's column: label, model path, the judged steps (or the model's error)."""
    if step_truth_known:
        note = "Steps are judged against the problem's known intermediate values; the first wrong step is flagged."
    elif gold is not None:
        note = "No step truth for this problem: only the final answer is graded."
    else:
        note = "No gold answer given: nothing is graded."
    columns = []
    for answer in answers:
        body = (f'<div class="try-error">{esc(answer.error)}</div>' if answer.solution is None
                else render_solution("solution", answer.solution, gold))
        columns.append(f'<div class="try-model" data-model="{esc(answer.label)}"><h3>{esc(answer.label)}</h3>'
                       f'<div class="meta">{esc(answer.model)}</div>{body}</div>')
    return f'<p class="try-note">{esc(note)}</p><div class="try-grid">{"".join(columns)}</div>'


def message(text: str) -> str:
    return f'<div class="try-error">{esc(text)}</div>'


class ProblemSets:
    """The problem sets offered in the picker, each loaded on first use; a set that fails to load says why."""

    def __init__(self, specs: list[str]):
        self.specs = specs
        self._loaded: dict[str, list[Problem]] = {}

    def problems(self, spec: str) -> list[Problem]:
        if spec not in self._loaded:
            from stepdpo.problems import load_problems

            self._loaded[spec] = load_problems(spec, on_bad_row="skip")[:MAX_CHOICES]
        return self._loaded[spec]


def build_page(slots: list[ModelSlot], sets: ProblemSets, max_new_tokens: int, temperature: float) -> Any:
    """The gr.Blocks of the page (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: no calls home
    import gradio as gr

    loaded = [s for s in slots if not s.error]
    failed = [s for s in slots if s.error]
    with gr.Blocks(title="stepdpo try", analytics_enabled=False) as page:
        gr.Markdown("## stepdpo try: the same problem, every model, step by step\n" + "\n".join(
            f"- **{slot.label}**: `{slot.model}`" + (f" — **not loaded**: {slot.error}" if slot.error else "") for slot in slots))
        picked = gr.State(None)
        with gr.Row():
            set_choice = gr.Dropdown(choices=sets.specs, value=None, label="Problem set (pick, or type a spec or a file path)", elem_id="set",
                                     allow_custom_value=True, scale=2)
            problem_choice = gr.Dropdown(choices=[], value=None, label="Problem", elem_id="problem", scale=3)
        question = gr.Textbox(label="Problem (type one, or pick one above)", lines=4, elem_id="question")
        gold = gr.Textbox(label="Gold answer (optional: grades the final answers)", elem_id="gold")
        with gr.Row():
            decoding = gr.Radio(["greedy", "sample"], value="greedy" if temperature == 0 else "sample", label="Decoding", elem_id="decoding")
            temp = gr.Slider(0.05, 1.5, value=temperature or 0.7, step=0.05, label="Temperature (sample)", elem_id="temperature")
            max_tokens = gr.Number(value=max_new_tokens, precision=0, minimum=1, maximum=4096, label="Max new tokens", elem_id="max-tokens")
        solve_button = gr.Button("Solve with every model", variant="primary", elem_id="solve")
        answers = gr.HTML(message(f"{len(failed)} model(s) could not be loaded.") if failed else "", elem_id="answers")

        def choose_set(spec: str | None):
            if not spec:
                return gr.Dropdown(choices=[], value=None), ""
            try:
                problems = sets.problems(spec)
            except Exception as err:  # noqa: BLE001 - a set that cannot be loaded is a message on the page
                return gr.Dropdown(choices=[], value=None), message(f"{spec}: {err}")
            choices = [(f"{i + 1}. {p.question[:80]}", str(i)) for i, p in enumerate(problems)]
            return gr.Dropdown(choices=choices, value=None), ""

        def choose_problem(spec: str | None, index: str | None):
            if not spec or index is None or index == "":
                return gr.update(), gr.update(), None
            problem = sets.problems(spec)[int(index)]
            return problem.question, problem.answer, (spec, int(index))

        def run(text: str, gold_text: str, picked_key, mode: str, temperature_value: float, tokens: float | None) -> str:
            text = (text or "").strip()
            if not text:
                return message("The problem is empty: type one, or pick a set and a problem above.")
            if not loaded:
                return message("No model could be loaded; see the list at the top of the page.")
            if tokens is None or int(tokens) < 1:
                return message("Max new tokens must be at least 1.")
            problem = None
            if picked_key is not None:
                candidate = sets.problems(picked_key[0])[picked_key[1]]
                problem = candidate if candidate.question.strip() == text else None  # an edited problem has no step truth
            gold_answer = (gold_text or "").strip() or None
            if problem is not None and gold_answer != problem.answer:
                problem = None
            params = SamplingParams(temperature=0.0 if mode == "greedy" else float(temperature_value), max_new_tokens=int(tokens))
            results = solve(slots, text, gold_answer, problem, params)
            return render_answers(results, gold_answer, problem is not None and any(r.solution and r.solution.step_truth for r in results))

        set_choice.change(choose_set, inputs=set_choice, outputs=[problem_choice, answers])
        problem_choice.change(choose_problem, inputs=[set_choice, problem_choice], outputs=[question, gold, picked])
        solve_button.click(run, inputs=[question, gold, picked, decoding, temp, max_tokens], outputs=answers)
        question.submit(run, inputs=[question, gold, picked, decoding, temp, max_tokens], outputs=answers)
    return page


def launch(page: Any, host: str, port: int, block: bool) -> str:
    """Serve the page; returns its URL. ``port`` 0 takes a free one; ``block`` False returns at once (tests)."""
    if port < 0 or port > 65535:
        raise ConfigError(f"try: port must be in 0..65535, got {port}")
    page.launch(server_name=host, server_port=port or _free_port(host), prevent_thread_lock=True, inbrowser=False, quiet=True,
                ssr_mode=False, css=PAGE_CSS, show_error=True)
    if block:
        print(f"stepdpo try: open {page.local_url} (Ctrl+C stops it)", flush=True)
        page.block_thread()
    return page.local_url


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
