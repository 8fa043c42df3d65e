"""The models of `stepdpo try` and what they answer, without any web framework.

A :class:`ModelSlot` loads its model once, when the app starts, and remembers a
load failure as a message for the page instead of raising. :func:`solve` asks
every loaded model the same question in the step format (the prompt ``stepdpo
eval --prompt step`` uses) and judges each answer with :mod:`stepdpo.step_truth`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from stepdpo.errors import ConfigError
from stepdpo.generation.base import GeneratorConfig, SamplingParams, prompt_format
from stepdpo.generation.registry import build_generator
from stepdpo.records import Problem
from stepdpo.report.collect import METHOD_ORDER, order_key
from stepdpo.rundir import RunDir
from stepdpo.step_truth import JudgedSolution, judge_solution, step_values_of
from stepdpo.steps import FIRST_MARKER

log = logging.getLogger(__name__)


def is_run_dir(path: Path) -> bool:
    """A `stepdpo run` directory (not itself a model folder): it has config.yaml, sft/ or train/."""
    return path.is_dir() and not (path / "config.json").is_file() and any((path / name).exists() for name in ("config.yaml", "sft", "train"))


def run_dir_models(root: Path) -> list[tuple[str, str]]:
    """(label, model) of a run: its starting model (RUN/sft/model, else the config's ``model``), then every
    trained one (RUN/train/<method>/final) in method order."""
    run = RunDir(root)
    found: list[tuple[str, str]] = []
    sft_model = run.sft / "model"
    if (sft_model / "config.json").is_file():
        found.append(("sft", str(sft_model)))
    elif run.config.is_file():
        try:
            config = yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{run.config}: not valid YAML ({err})") from None
        if isinstance(config, dict) and isinstance(config.get("model"), str):
            found.append(("base", config["model"]))
    finals = [p for p in (run.root / "train").glob("*/final") if (p / "config.json").is_file()]
    for final in sorted(finals, key=lambda p: order_key(p.parent.name, METHOD_ORDER)):
        found.append((final.parent.name, str(final)))
    if not found:
        raise ConfigError(f"{root}: a run directory without models (no sft/model, no model in config.yaml, no train/<method>/final)")
    return found


def expand_models(specs: list[str], names: list[str]) -> list[tuple[str, str]]:
    """(label, model) for every spec: a run directory gives its models, anything else (a path, a hub id,
    'smollm2-135m') is one model; ``names`` label the specs in order (defaults: the method, or the path's tail)."""
    if names and len(names) != len(specs):
        raise ConfigError(f"try: {len(names)} names for {len(specs)} models")
    out: list[tuple[str, str]] = []
    for i, spec in enumerate(specs):
        path = Path(spec).expanduser()
        if is_run_dir(path):
            models = run_dir_models(path)
            prefix = f"{names[i]}/" if names else (f"{path.name}/" if len(specs) > 1 else "")
            out.extend((prefix + label, model) for label, model in models)
        else:
            out.append((names[i] if names else "/".join(Path(spec).parts[-2:]) or spec, spec))
    labels = [label for label, _ in out]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"try: two models are labelled {', '.join(repeated)}; give --names")
    return out


@dataclass
class ModelSlot:
    """One model of the page: loaded once; ``error`` holds why it could not be, as one line."""

    label: str
    model: str
    generator: Any = None
    prompter: Any = None
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, label: str, model: str, config: GeneratorConfig) -> "ModelSlot":
        slot = cls(label, model)
        try:
            settings = replace(config, model=model)
            slot.prompter = prompt_format(settings)
            slot.generator = build_generator(settings)
        except Exception as err:  # noqa: BLE001 - the page shows any load failure as one line, the other models stay usable
            text = str(err).strip() or type(err).__name__
            slot.error = text if model in text else f"{model}: {text}"
            log.warning("try: %s could not be loaded: %s", label, slot.error)
        return slot

    def answer(self, question: str, params: SamplingParams) -> tuple[str, int, str]:
        """(response from 'Step 1:' on, tokens, finish reason) for one question."""
        prompt = self.prompter.prompt(question)
        with self.lock:  # one generate at a time per model: page events may run in parallel threads
            (completion,) = self.generator.generate([prompt], replace(params, n=1))[0]
        return FIRST_MARKER + completion.text, completion.num_tokens, completion.finish_reason


@dataclass
class ModelAnswer:
    label: str
    model: str
    solution: JudgedSolution | None
    error: str | None = None


def solve(slots: list[ModelSlot], question: str, gold: str | None, problem: Problem | None, params: SamplingParams) -> list[ModelAnswer]:
    """Every model's judged answer to ``question``; steps are judged when ``problem`` (the picked one, unedited)
    carries intermediate values, the final answer when ``gold`` is given."""
    values = step_values_of(problem.metadata) if problem is not None else None
    answers = []
    for slot in slots:
        if slot.error:
            answers.append(ModelAnswer(slot.label, slot.model, None, slot.error))
            continue
        try:
            response, tokens, finish = slot.answer(question, params)
        except Exception as err:  # noqa: BLE001 - one failing model must not hide the others' answers
            answers.append(ModelAnswer(slot.label, slot.model, None, f"generation failed: {err}"))
            continue
        answers.append(ModelAnswer(slot.label, slot.model, judge_solution(response, gold, values, finish_reason=finish, num_tokens=tokens)))
    return answers
