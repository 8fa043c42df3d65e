"""Judge confirmation of rectified steps (``stepdpo rectify --confirm``).

Optional confirmation (``--confirm``, off by default). The paper located
errors with GPT-4(o) and names the weak spot of rectification: a right final
answer can follow a wrong step. With ``confirm`` a judge (an LLM, by default
on an OpenAI-compatible server, key from the environment only) is asked about
every surviving candidate: it sees the problem, a reference solution and the
partial solution ``prefix + candidate``, and labels its steps in the paper's
form (``Step 1: correct; ...; Step k: correct``), read by the judge
localizer's :func:`~stepdpo.localizers.judge.parse_verdict`. A candidate is
kept only when the judge labels step k correct (or, with
``--judge.setting incorrect``, not incorrect) and no earlier step wrong.
Confirmation runs in three resumable steps, each with its own file:

- ``rectify_candidates.jsonl``: the unconfirmed rectifications (sampling is
  never redone);
- ``rectify_verdicts.jsonl``: one verdict per (error, prefix, candidate text),
  so a rerun never asks the judge again about a candidate it has judged;
  unparseable answers are verdicts too (dropped and counted, never guessed);
- ``rectified.jsonl``: an error is written once every one of its candidates
  has a verdict, with the verdicts and the judge's answers in ``evidence``.

A judge call that fails (an API error after the backend's retries) is no
verdict: it is logged to ``rectify_judge_failed.jsonl``, the error stays out
of ``rectified.jsonl``, is counted in the funnel, and is asked again on the
next run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from stepdpo.errors import ConfigError
from stepdpo.generation.base import Completion, SamplingParams
from stepdpo.localizers.base import FAILED_PREFIX, STATUS_OK
from stepdpo.localizers.judge import JudgeConfig, first_wrong, load_template, numbered_solution, parse_verdict, reference_text, render_template
from stepdpo.records import Problem, RecordStore, Rectification, append_failures
from stepdpo.stages.keyed import run_keyed
from stepdpo.steps import PromptFormat, normalize_ws, split_steps

DEFAULT_CONFIRM_TEMPLATE = """You are checking the last step of a partial step-by-step solution to a math problem.

### Problem
{problem}

### Correct reference solution
{reference}

### Partial solution (its last step is the one under review)
{response}

### Task
First write a short analysis (at most 150 words) of whether the last step is mathematically correct and a sound continuation of the steps before it; it need not reach the final answer.
Then, on the last line, judge the steps of the partial solution in order, each as correct, neutral (sound but not useful progress) or incorrect, and stop at the first incorrect step. Use exactly this form:
Step 1: correct; Step 2: correct; Step 3: incorrect"""

CONFIRMED = "confirmed"
REJECTED = "rejected"
PREFIX_REJECTED = "prefix_rejected"
UNPARSEABLE = "unparseable"


def verdict_key(sample_id: str, prefix: str, step: str) -> str:
    """Cache key of a judge verdict: the error, plus a hash of the prefix and the whitespace-normalised candidate."""
    digest = hashlib.sha256((prefix + "\x00" + normalize_ws(step)).encode("utf-8")).hexdigest()[:20]
    return f"{sample_id}|{digest}"


def clip_judgement(text: str, limit: int) -> str:
    """``text`` if at most ``limit`` characters, else its last ``limit`` characters (the verdict ends the answer) after a marker."""
    if limit <= 0 or len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters cut ...]" + text[-limit:]


def decide(labels: list[str] | None, step_number: int, setting: Literal["neutral_or_incorrect", "incorrect"]) -> tuple[str, str]:
    """(verdict, reason) on candidate step k = ``step_number`` from the judge's labels of steps 1..k.

    ``unparseable`` when there are no labels, or they name more steps than k, or stop before k
    without a wrong step; ``prefix_rejected`` when a step before k is the first wrong one (the
    judge never vouched for step k); ``rejected`` when step k is the first wrong one; else
    ``confirmed``. Which labels count as wrong follows ``setting`` (as in the judge localizer).
    """
    if labels is None:
        return UNPARSEABLE, "no verdict of the form 'Step 1: correct; ...'"
    if len(labels) > step_number:
        return UNPARSEABLE, f"verdict names {len(labels)} steps, the partial solution has {step_number}"
    wrong = first_wrong(labels, setting)
    if wrong is not None and wrong < step_number:
        return PREFIX_REJECTED, f"step {wrong} of the prefix judged {labels[wrong - 1]}"
    if len(labels) < step_number:
        return UNPARSEABLE, f"verdict stops at step {len(labels)}, before the candidate step {step_number}"
    if wrong == step_number:
        return REJECTED, f"step {step_number} judged {labels[-1]}"
    return CONFIRMED, f"step {step_number} judged {labels[-1]}"


@dataclass
class StepVerdict:
    """The judge's answer about one candidate step (``rectify_verdicts.jsonl``, keyed by :func:`verdict_key`)."""

    key: str
    sample_id: str
    step_number: int
    step: str
    labels: list[str] | None
    """parse_verdict of the answer; None when it could not be read. The decision is made from these with the current setting."""
    judgement: str
    """The judge's answer, clipped to ``judgement_chars``."""
    judge: str
    status: str = STATUS_OK
    """'ok', or 'failed: <reason>' for a call that failed (logged, never stored, asked again on rerun)."""


class StepJudge:
    """Asks a judge about candidate steps, remembering verdicts so that no candidate is asked about twice.

    ``backend`` is a chat backend (``chat(conversations, params)``, e.g. the openai generator) or any
    :class:`Generator`, which then gets the prompt through ``fmt`` (the judge model's chat template).
    Decided verdicts go to ``store``; failed calls to ``failures_path`` (one JSON line each, with a UTC time).
    """

    def __init__(self, config: JudgeConfig, backend: Any, fmt: PromptFormat | None = None,
                 store: RecordStore[StepVerdict] | None = None, failures_path: Path | None = None, judgement_chars: int = 4000):
        if not hasattr(backend, "chat") and fmt is None:
            raise ConfigError("the rectify judge is not a chat backend: it needs the judge model's prompt format")
        self.config = config
        self.backend = backend
        self.fmt = fmt
        self.store = store
        self.failures_path = failures_path
        self.judgement_chars = judgement_chars
        self.template = load_template(config.template) if config.template else DEFAULT_CONFIRM_TEMPLATE
        self.cache: dict[str, StepVerdict] = {v.key: v for v in store.records()} if store is not None else {}
        self.asked = 0
        """Judge calls made by this object (cached verdicts are not calls)."""

    def _ask(self, contents: list[str]) -> list[Completion]:
        params = SamplingParams(n=1, temperature=self.config.temperature, max_new_tokens=self.config.max_new_tokens)
        if hasattr(self.backend, "chat"):
            outputs = self.backend.chat([[{"role": "user", "content": c}] for c in contents], params)
        else:
            assert self.fmt is not None
            outputs = self.backend.generate([self.fmt.opened(c) for c in contents], params)
        self.asked += len(contents)
        return [completions[0] for completions in outputs]

    def verdicts(self, jobs: Sequence[tuple[Problem, Rectification, str]]) -> list[StepVerdict]:
        """One verdict per (problem, rectification, candidate step), in order: remembered ones, then new ones asked in one batch."""
        keys = [verdict_key(rect.sample_id, rect.prefix, step) for _, rect, step in jobs]
        todo: dict[str, tuple[Problem, Rectification, str]] = {}
        for key, job in zip(keys, jobs):
            if key not in self.cache:
                todo.setdefault(key, job)
        # The partial solution as the project cut it (prefix steps, then the candidate as step k), numbered so the labels line up with k.
        contents = [render_template(self.template, problem.question, reference_text(problem), numbered_solution([*split_steps(rect.prefix), step]),
                                    rect.first_wrong_step) for problem, rect, step in todo.values()]
        fresh: dict[str, StepVerdict] = {}
        for (key, (_, rect, step)), completion in zip(todo.items(), self._ask(contents) if contents else []):
            base = dict(key=key, sample_id=rect.sample_id, step_number=rect.first_wrong_step, step=step, judge=getattr(self.backend, "name", ""))
            if completion.finish_reason.startswith("error"):
                # The backend already scrubbed its reason of the API key.
                reason = completion.finish_reason.split(":", 1)[-1].strip() or "request failed"
                fresh[key] = StepVerdict(labels=None, judgement="", status=f"{FAILED_PREFIX}: {reason}", **base)
            else:
                fresh[key] = StepVerdict(labels=parse_verdict(completion.text),
                                         judgement=clip_judgement(completion.text, self.judgement_chars), **base)
        decided = [v for v in fresh.values() if v.status == STATUS_OK]
        failed = [v for v in fresh.values() if v.status != STATUS_OK]
        self.cache.update({v.key: v for v in decided})
        if self.store is not None:
            self.store.append(decided)
        if self.failures_path is not None:
            append_failures(self.failures_path, failed)
        return [self.cache.get(key) or fresh[key] for key in keys]


def confirmed(rect: Rectification, verdicts: Sequence[StepVerdict], setting: Literal["neutral_or_incorrect", "incorrect"], judge: str) -> Rectification:
    """``rect`` with only the candidates the judge confirmed; every candidate's verdict, reason, labels and answer in ``evidence``.

    If a call failed, the result is marked pending (``evidence["status"] = "failed: ..."``, candidates
    untouched): it is reported, not stored, and judged again on the next run.
    """
    failures = [v.status for v in verdicts if v.status != STATUS_OK]
    if failures:
        return Rectification(**{**rect.__dict__, "evidence": {"status": failures[0], "judge": judge, "failed_calls": len(failures)}})
    rows: list[dict[str, Any]] = []
    chosen: list[str] = []
    full: list[str] = []
    for step, whole, v in zip(rect.chosen, rect.full_chosen, verdicts):
        verdict, reason = decide(v.labels, rect.first_wrong_step, setting)
        rows.append({"step": step, "verdict": verdict, "reason": reason, "labels": v.labels, "judgement": v.judgement})
        if verdict == CONFIRMED:
            chosen.append(step)
            full.append(whole)
    evidence = {"judge": judge, "setting": setting, "candidates": rows}
    return Rectification(**{**rect.__dict__, "chosen": chosen, "full_chosen": full, "evidence": evidence})


def is_pending(rect: Rectification) -> bool:
    """True for a rectification whose judge calls failed (not stored; judged again on rerun)."""
    return str(rect.evidence.get("status", "")).startswith(FAILED_PREFIX)


def confirm_all(unconfirmed: Sequence[Rectification], problems: dict[str, Problem], judge: StepJudge,
                setting: Literal["neutral_or_incorrect", "incorrect"], store: RecordStore[Rectification] | None,
                chunk_size: int = 8) -> list[Rectification]:
    """Judge the candidates of ``unconfirmed`` chunk by chunk; store each error whose candidates all have a verdict.

    Returns the judged rectifications of this run, pending ones (a failed call) included.
    """
    def make(chunk: list[Rectification], seeds: list[int]) -> list[Rectification]:
        verdicts = iter(judge.verdicts([(problems[rect.problem_id], rect, step) for rect in chunk for step in rect.chosen]))
        return [confirmed(rect, [next(verdicts) for _ in rect.chosen], setting, getattr(judge.backend, "name", "")) for rect in chunk]

    def save(judged: list[Rectification]) -> None:
        if store is not None:
            store.append([r for r in judged if not is_pending(r)])

    return run_keyed(unconfirmed, make, stage="confirm", seed=None, key=lambda r: r.sample_id, save=save,
                     chunk_size=chunk_size, unit="error").new
