"""LLM-judge localization with the Step-DPO paper's protocol.

The judge (any OpenAI-compatible chat model) sees the problem, a correct
reference solution and the wrong answer. It writes a short analysis (at most
about 200 words) and then one verdict per step, stopping at the first
incorrect one: ``Step 1: correct; Step 2: neutral; Step 3: incorrect``.

The judge is shown the student's solution as the project cuts it
(:func:`numbered_solution`): one ``Step i:`` per element of ``split_steps``, so
the numbers it answers with are the numbers the verdict is read against. A
solution's own markers can disagree with that cut: text before ``Step 1:`` is
the project's step 1, and a solution without markers is cut into paragraphs.

Reading the verdict (:func:`parse_verdict`): every ``Step N: <label>`` with a
label in {correct, neutral, incorrect} is found (markdown bold, any case,
``;``/newline separators allowed); the verdict is the part from the *last*
``Step 1:`` label on, and must be numbered 1, 2, 3, … without gaps, so that
mentions in the analysis do not count. No such run → ``unparseable`` (the sample is dropped
and counted, never guessed). The first wrong step is the first step labelled
``neutral`` or ``incorrect`` (the release's setting) or, with
``setting="incorrect"``, the first labelled ``incorrect``. A verdict that
names a step beyond the sample's last one is ``unparseable`` too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, Sequence

from stepdpo.config import OptionCheck
from stepdpo.errors import ConfigError
from stepdpo.generation.base import Completion, SamplingParams
from stepdpo.localizers.base import FAILED_PREFIX, STATUS_NO_WRONG_STEP, STATUS_OK, STATUS_UNPARSEABLE, empty_response
from stepdpo.records import LocatedError, Problem, Sample
from stepdpo.steps import step_body

DEFAULT_JUDGE_TEMPLATE = """You are grading a student's step-by-step solution to a math problem. Its final answer is wrong.

### Problem
{problem}

### Correct reference solution
{reference}

### Student's solution (wrong final answer), in {num_steps} numbered steps
{response}

### Task
First write a short analysis (at most 200 words) of where the student's reasoning goes wrong, comparing it with the reference solution.
Then, on the last line, judge the student's steps in order, by the numbers shown above (Step 1 to Step {num_steps}), each as correct, neutral (sound but not useful progress) or incorrect, and stop at the first incorrect step. Use exactly this form:
Step 1: correct; Step 2: neutral; Step 3: incorrect"""

_PLACEHOLDER = re.compile(r"\{(problem|reference|response|num_steps)\}")
_VERDICT = re.compile(r"Step\s*(\d{1,4})[\s*_]*[:：.\-–][\s*_]*(correct|neutral|incorrect)\b", re.IGNORECASE)


def render_template(template: str, problem: str, reference: str, response: str, num_steps: int | None = None) -> str:
    """Fill ``{problem}``, ``{reference}``, ``{response}`` and ``{num_steps}`` in one pass (filled text is never re-scanned, braces in math are safe)."""
    values = {"problem": problem.strip(), "reference": reference.strip(), "response": response.strip(),
              "num_steps": "?" if num_steps is None else str(num_steps)}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def numbered_solution(steps: Sequence[str]) -> str:
    """The solution as the project cut it: step i (``steps[i-1]``, from ``split_steps``) behind an explicit ``Step i:``.

    A step's own marker, if any, is replaced, so the judge never sees two numberings: a preamble
    before ``Step 1:`` becomes ``Step 1:`` and the student's ``Step 1:`` becomes ``Step 2:``; a
    paragraph of a solution without markers gets the number of its paragraph.
    """
    return "\n".join(f"Step {i}: {step_body(step)}" for i, step in enumerate(steps, start=1))


def parse_verdict(text: str) -> list[str] | None:
    """Per-step labels ('correct' / 'neutral' / 'incorrect') for steps 1..L, or None when unreadable.

    The verdict is everything from the last ``Step 1: <label>`` on; its steps must be numbered
    1, 2, …, L without gaps or repeats, else the whole verdict is unreadable.
    """
    found = [(int(m.group(1)), m.group(2).lower()) for m in _VERDICT.finditer(text)]
    starts = [i for i, (number, _) in enumerate(found) if number == 1]
    if not starts:
        return None
    verdict = found[starts[-1]:]
    if [number for number, _ in verdict] != list(range(1, len(verdict) + 1)):
        return None
    return [label for _, label in verdict]


def first_wrong(labels: list[str], setting: Literal["neutral_or_incorrect", "incorrect"]) -> int | None:
    """1-based index of the first step the setting counts as wrong, None if there is none."""
    wrong = {"neutral", "incorrect"} if setting == "neutral_or_incorrect" else {"incorrect"}
    for i, label in enumerate(labels, start=1):
        if label in wrong:
            return i
    return None


class ChatBackend(Protocol):
    name: str

    def chat(self, conversations: list[list[dict]], params: SamplingParams) -> list[list[Completion]]: ...


@dataclass
class JudgeConfig:
    """Options of the LLM-judge localizer (the judge model itself is the stage's generator, openai backend)."""

    setting: Literal["neutral_or_incorrect", "incorrect"] = field(default="neutral_or_incorrect", metadata={"help": "Which verdict marks the first wrong step: the first step judged neutral or incorrect (the release's default), or incorrect only."})
    template: str | None = field(default=None, metadata={"help": "Path to a prompt template file with {problem}, {reference}, {response} (the solution with the project's step numbers) and optionally {num_steps}; default: the built-in paper protocol."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Token limit of the judge's answer (analysis + verdict)."})
    temperature: float = field(default=0.0, metadata={"help": "Judge sampling temperature (0 = greedy)."})

    def validate(self, prefix: str = "") -> None:
        """Refuse options that cannot work, before anything is loaded; the error names the option (``prefix`` + field)."""
        check = OptionCheck(self, prefix)
        check.at_least(1, "max_new_tokens")
        check.at_least(0, "temperature")
        check.require(self.template is None or Path(self.template).is_file(), "template", "must be a readable file")


def load_template(path: str | None) -> str:
    if path is None:
        return DEFAULT_JUDGE_TEMPLATE
    try:
        template = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read judge template ({err.strerror})") from None
    missing = [name for name in ("problem", "response") if "{" + name + "}" not in template]  # {reference}, {num_steps}: optional
    if missing:
        raise ConfigError(f"{path}: judge template lacks placeholder(s) {', '.join('{' + m + '}' for m in missing)}")
    return template


def reference_text(problem: Problem) -> str:
    """The reference solution shown to the judge; the gold answer alone when no worked solution is known."""
    if problem.solution:
        return problem.solution
    return f"(No worked solution available.) The correct final answer is {problem.answer}."


class JudgeLocalizer:
    """Asks a chat model for the paper's step verdicts and reads the first wrong step from them."""

    name = "judge"

    def __init__(self, config: JudgeConfig, backend: ChatBackend):
        if not hasattr(backend, "chat"):
            raise ConfigError("the judge localizer needs a chat backend: set --generator.backend openai")
        self.config = config
        self.backend = backend
        self.template = load_template(config.template)

    def locate_many(self, items: Sequence[tuple[Problem, Sample]]) -> list[LocatedError]:
        results: list[LocatedError | None] = [empty_response(p, s, self.name) for p, s in items]
        todo = [j for j, r in enumerate(results) if r is None]
        conversations = [[{"role": "user", "content": render_template(self.template, items[j][0].question, reference_text(items[j][0]),
                                                                      numbered_solution(items[j][1].steps), len(items[j][1].steps))}]
                         for j in todo]
        params = SamplingParams(n=1, temperature=self.config.temperature, max_new_tokens=self.config.max_new_tokens)
        outputs = self.backend.chat(conversations, params) if conversations else []
        for j, completions in zip(todo, outputs):
            problem, sample = items[j]
            results[j] = self._decide(problem, sample, completions[0])
        return [r for r in results if r is not None]

    def _decide(self, problem: Problem, sample: Sample, completion: Completion) -> LocatedError:
        base = dict(sample_id=sample.id, problem_id=problem.id, localizer=self.name, localizer_tokens=completion.num_tokens)
        if completion.finish_reason.startswith("error"):
            reason = completion.finish_reason.split(":", 1)[-1].strip() or "request failed"
            return LocatedError(first_wrong_step=None, status=f"{FAILED_PREFIX}: {reason}", **base)
        evidence = {"judgement": completion.text, "setting": self.config.setting}
        labels = parse_verdict(completion.text)
        if labels is None:
            return LocatedError(first_wrong_step=None, status=STATUS_UNPARSEABLE, evidence=evidence, **base)
        evidence["labels"] = labels
        if len(labels) > len(sample.steps):
            evidence["reason"] = f"verdict names {len(labels)} steps, the sample has {len(sample.steps)}"
            return LocatedError(first_wrong_step=None, status=STATUS_UNPARSEABLE, evidence=evidence, **base)
        k = first_wrong(labels, self.config.setting)
        if k is None:
            return LocatedError(first_wrong_step=None, status=STATUS_NO_WRONG_STEP, evidence=evidence, **base)
        return LocatedError(first_wrong_step=k, status=STATUS_OK, evidence=evidence, **base)
